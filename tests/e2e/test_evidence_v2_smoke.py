"""Evidence v2's smoke mode (python -m benchmarks.evidence_v2.run --smoke) runs its whole pipeline.

The SFT policy trained in code; a noisy-label reward model trained by OpenRLHF's train_rm on CPU (lab/cpu_training/)
and its accuracy against clean gold labels; one arm (cr_mean), one seed, one short episode of the real
`train_ppo_ray` serving that RM with `--reward.model_name_or_path` (OpenRLHF's RewardModelActor group), whose
in-job stage writes the baseline store; the checkpoints evaluated on gold; the analysis. Checks that the pipeline
produced real numbers, not the outcome, that a rerun resumes without training anything, and that a finished run
archived with --archive (the committed copy that lets a later session resume the full run) is restored from it.
With --keep-checkpoints, eos_check.py re-evaluates the kept checkpoints: it must reproduce run.py's numbers.
"""

import json
import math
import subprocess
import sys

import pytest
from cpu_runs import assert_trained_on_reward_minus_baseline, run_evidence_smoke  # tests/e2e

from lab import harness

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

RUNNER = "benchmarks.evidence_v2.run"


def test_evidence_v2_smoke(tmp_path):
    work, archive = tmp_path / "work", tmp_path / "archive"
    cfg, results, _ = run_evidence_smoke(RUNNER, work, "--archive", str(archive), "--keep-checkpoints")
    smoke = cfg["smoke"]
    assert results["complete"] and results["runs_done"] == 1

    # the reward model: trained on noisy pairs by train_rm, measured against clean gold labels
    rm = results["reward_models"]["rm_noisy"]
    assert rm["pairs"] > 0 and 0 < rm["flipped"] < rm["pairs"]
    for where in ("accuracy_train_prompts_fresh_pairs", "accuracy_heldout_prompts"):
        assert 0.0 <= rm[where]["accuracy"] <= 1.0
    assert sum(b["pairs"] for b in rm["accuracy_train_prompts_fresh_pairs"]["by_flip_rate"].values()) == \
        rm["accuracy_train_prompts_fresh_pairs"]["pairs"]

    (arm,) = smoke["arms"]
    run = json.loads((work / "runs" / arm / "seed1" / "result.json").read_text())
    command = json.loads((work / "runs" / arm / "seed1" / "command.json").read_text())
    assert command[command.index("--reward.model_name_or_path") + 1] == str(work / "rm_noisy")
    assert "--reward.remote_url" not in command
    steps = smoke["n_train_prompts"] * smoke["num_episodes"] // cfg["ppo"]["prompts_per_step"]
    assert run["steps"] == steps and run["wrote_store"]
    assert run["generations"]["offline"] == cfg["ppo"]["k"] * smoke["n_train_prompts"]
    # the in-job stage scored k SFT samples of every training prompt with the served RM, and PPO trained on r - b
    from lab.testbed import prompt_text
    from openrlhf_contrastive.store import BaselineStore, prompt_keys

    store = BaselineStore.load(work / "baselines_rm_noisy")

    point_words = json.loads((work / "sft_train_eval.json").read_text())["words"]
    assert len(store) == smoke["n_train_prompts"] and store.k == cfg["ppo"]["k"]
    assert_trained_on_reward_minus_baseline(run["scalars"], steps)
    # every checkpoint and the end evaluated on gold, the RM scores of the training-prompt samples kept
    assert sorted(map(int, run["along"])) == list(range(1, steps + 1))
    for point in run["along"].values():
        assert -1.0 <= point["heldout"]["gold"] <= 1.0 and 0.0 <= point["heldout"]["gold_win_rate_vs_sft"] <= 1.0
        scores = point["train"]["rm"]["rm_noisy"]
        assert len(scores) == smoke["n_train_eval_prompts"] and all(math.isfinite(x) for r in scores for x in r)
    a = results["arms"][arm]
    assert math.isfinite(a["heldout_gold_final"]["mean"]) and math.isfinite(a["kl_final"]["mean"])
    share = results["claims"]["per_arm"][arm]["beat_share_end"]["mean"]
    assert 0.0 <= share <= 1.0
    assert (work / "evidence_v2.png").stat().st_size > 10_000

    # the archived copy, with what a later session needs to compare its rebuilt models against
    assert json.loads((archive / arm / "seed1.json").read_text()) == run
    prov = run["provenance"]
    assert len(prov["plugin_commit"]) == 40 and len(prov["sft_digest"]) == len(prov["rm_digest"]) == 16
    assert prov["rm_digests"] == {"rm_noisy": prov["rm_digest"]}
    # the run carries the stored baselines its RM scores were compared with (a later session retrains the RMs)
    assert run["baselines"]["rm_noisy"] == pytest.approx([float(b.mean()) for b in
                                                          store.lookup(prompt_keys([prompt_text(w) for w in
                                                                                    point_words]))[0]])
    assert results["runs_without_baselines"] == [] and results["provenance"]["groups"][0]["runs"] == [f"{arm} seed 1"]

    # the kept checkpoints, re-evaluated by eos_check.py: run.py's held-out gold reproduced exactly with run.py's
    # sampling, and the probability of an empty response (which OpenRLHF's rollouts never sample) measured
    proc = subprocess.run([sys.executable, "-m", "benchmarks.evidence_v2.eos_check", "--work", str(work)],
                          cwd=harness.REPO, capture_output=True, text=True, timeout=600, env=harness.run_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checked = json.loads((work / "eos_check.json").read_text())[f"{arm}/seed1"]
    assert sorted(checked["steps"]) == sorted(run["along"])
    for step, row in checked["steps"].items():
        assert row["min0"]["gold"] == run["along"][step]["heldout"]["gold"] == row["recorded_min0_gold"]
        assert 0.0 <= row["p_eos_first"] <= 1.0 and -1.0 <= row["min1"]["gold"] <= 1.0

    # a rerun resumes: nothing is trained or sampled again
    _, _, again = run_evidence_smoke(RUNNER, work)
    assert "train_ppo_ray ..." not in again and "train_rm" not in again

    # a finished run lost from the work directory (a new session) comes back from the archive, not from training
    (work / "runs" / arm / "seed1" / "result.json").unlink()
    _, restored, again = run_evidence_smoke(RUNNER, work, "--archive", str(archive))
    assert "train_ppo_ray ..." not in again and restored["runs_done"] == 1
    assert json.loads((work / "runs" / arm / "seed1" / "result.json").read_text()) == run
    assert (work / "runs" / arm / "seed1" / "restored_from_archive").exists()  # never stamped by this session
