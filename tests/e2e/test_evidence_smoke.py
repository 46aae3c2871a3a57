"""The evidence experiment's smoke mode (python -m benchmarks.evidence.run --smoke) runs its whole pipeline.

One arm (cr_mean: the contrastive reward, mean shape), one seed, one short episode through the real
`train_ppo_ray` on CPU (lab/harness.py), after the SFT policy is trained in code and the baseline store
is written by `openrlhf-contrastive sample --contrastive.backend hf`; then the held-out evaluation and the
analysis. Checks the pipeline produced real numbers, not the outcome. About 1-2 minutes on 2 idle cores.
"""

import json
import math

import pytest
from cpu_runs import assert_trained_on_reward_minus_baseline, run_evidence_smoke  # tests/e2e

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

RUNNER = "benchmarks.evidence.run"


def test_evidence_smoke(tmp_path):
    work = tmp_path / "work"
    cfg, results, _ = run_evidence_smoke(RUNNER, work)
    smoke = cfg["smoke"]
    assert results["complete"] and results["runs_done"] == 1
    store = results["baseline_store"]
    assert store["k"] == cfg["ppo"]["k"] and store["prompts"] == smoke["n_train_prompts"]
    assert store["generations"] == cfg["ppo"]["k"] * smoke["n_train_prompts"]

    (arm,) = smoke["arms"]
    a = results["arms"][arm]
    steps = smoke["n_train_prompts"] * smoke["num_episodes"] // cfg["ppo"]["prompts_per_step"]
    assert a["runs_done"] == 1 and a["steps"] == [steps]
    for key in ("heldout_gold_final", "train_gold_final", "train_proxy_final", "kl_final", "critic_loss_final"):
        assert math.isfinite(a[key]["mean"]), key
    assert -1.0 <= a["heldout_gold_final"]["mean"] <= 1.0
    assert 0.0 <= a["heldout_gold_win_rate_vs_sft"]["mean"] <= 1.0
    assert a["generations_per_run"] == {"online": steps * cfg["ppo"]["prompts_per_step"],
                                        "offline": store["generations"],
                                        "total": steps * cfg["ppo"]["prompts_per_step"] + store["generations"],
                                        "rollouts_per_prompt_per_step": 1}
    # gold is logged per step beside the proxy (extra_logs), and the contrastive transform ran on the proxy
    for tag in ("train/gold", "train/reward", "train/kl", "train/critic_loss", "train/contrastive/baseline"):
        assert tag in a["logged_tags"], tag
    run = json.loads((work / "runs" / arm / "seed1" / "result.json").read_text())
    assert all(-1.0 <= run["scalars"]["train/gold"][str(step)] <= 1.0 for step in range(1, steps + 1))
    assert_trained_on_reward_minus_baseline(run["scalars"], steps)
    assert (work / "evidence.png").stat().st_size > 10_000

    # a rerun resumes: nothing is trained or sampled again
    _, _, again = run_evidence_smoke(RUNNER, work)
    assert "train_ppo_ray ..." not in again and "openrlhf-contrastive sample" not in again
