"""Evidence v3's smoke mode (python -m benchmarks.evidence_v3.run --smoke) runs its whole pipeline, lean.

The SFT policy and the reward model's own backbone (the testbed's SFT recipe with the config's `rm.backbone`
settings, a few steps) trained in code; a noisy-label reward model trained from that backbone by OpenRLHF's train_rm
on CPU and its accuracy against clean gold labels; one arm (cr_mean), one seed, one short episode of the real
`train_ppo_ray` serving that RM with `--reward.model_name_or_path`, whose in-job stage writes the baseline store;
the checkpoints evaluated on gold; v3's analysis (peak, gold at raw's peak KL). Checks that real numbers came out,
not the outcome, and that a rerun trains nothing. (v2's smoke test covers the archive and eos_check paths of the
same runner.)
"""

import json
import math

import pytest
from cpu_runs import assert_trained_on_reward_minus_baseline, run_evidence_smoke  # tests/e2e

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

RUNNER = "benchmarks.evidence_v3.run"


def test_evidence_v3_smoke(tmp_path):
    work = tmp_path / "work"
    cfg, results, _ = run_evidence_smoke(RUNNER, work)
    smoke = cfg["smoke"]
    assert results["complete"] and results["runs_done"] == 1

    # the reward model: trained from its own backbone on noisy pairs by train_rm, measured against clean gold labels
    backbone = json.loads((work / "rm_backbone" / "sft_done.json").read_text())
    assert backbone["steps"] == smoke["rm_backbone_steps"]
    recipe = {**cfg["sft"], **cfg["rm"]["backbone"]}  # the policy's recipe with the backbone's settings
    built = json.loads((work / "rm_backbone" / "config.json").read_text())
    assert (built["hidden_size"], built["num_hidden_layers"]) == (recipe["hidden_size"], recipe["num_hidden_layers"])
    rm = results["reward_models"]["rm_noisy"]
    assert rm["backbone"] == "rm_backbone" and 0 < rm["flipped"] < rm["pairs"]
    for where in ("accuracy_train_prompts_fresh_pairs", "accuracy_heldout_prompts"):
        assert 0.0 <= rm[where]["accuracy"] <= 1.0 and rm[where]["pairs"] > 0

    (arm,) = smoke["arms"]
    run = json.loads((work / "runs" / arm / "seed1" / "result.json").read_text())
    command = json.loads((work / "runs" / arm / "seed1" / "command.json").read_text())
    assert command[command.index("--reward.model_name_or_path") + 1] == str(work / "rm_noisy")
    steps = smoke["n_train_prompts"] * smoke["num_episodes"] // cfg["ppo"]["prompts_per_step"]
    assert run["steps"] == steps and run["wrote_store"]
    assert_trained_on_reward_minus_baseline(run["scalars"], steps)
    assert sorted(map(int, run["along"])) == list(range(1, steps + 1))
    for point in run["along"].values():
        assert -1.0 <= point["heldout"]["gold"] <= 1.0
        assert all(math.isfinite(x) for r in point["train"]["rm"]["rm_noisy"] for x in r)
    a = results["arms"][arm]
    assert math.isfinite(a["heldout_gold_final"]["mean"]) and math.isfinite(a["kl_final"]["mean"])
    v3, best = results["extra"]["peak_and_matched_kl"][arm], max(p["heldout"]["gold"] for p in run["along"].values())
    assert v3["peak_heldout_gold"]["mean"] == best
    assert run["along"][str(v3["peak_step"]["1"])]["heldout"]["gold"] == best
    # served vs rolled out, and the whole run's memory (Ray, vLLM engine, actor, critic, reference, reward model)
    end = run["heldout"]
    assert 0.0 <= end["empty"] <= 1.0 and 0.0 < end["p_eos_first"] < 1.0
    assert -1.0 <= end["rollout_style"]["gold"] <= 1.0 and end["rollout_style"]["mean_chars"] > 0
    assert run["memory"]["peak_processes"] >= 5 and run["memory"]["samples"] >= 10
    assert 2 * 2 ** 30 < run["memory"]["peak_pss_bytes"] <= run["memory"]["peak_rss_bytes"]
    served = results["extra"]["served_and_cost"][arm]
    assert served["peak_pss_gib"]["mean"] == run["memory"]["peak_pss_bytes"] / 2 ** 30
    assert (work / "evidence_v3.png").stat().st_size > 10_000

    # a rerun resumes: nothing is built, trained or sampled again
    _, _, again = run_evidence_smoke(RUNNER, work)
    assert "train_ppo_ray ..." not in again and "train_rm" not in again and "backbone ready" not in again
