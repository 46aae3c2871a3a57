"""`openrlhf-contrastive demo` end to end on the tiny model, in a fresh process.

Stage only (`openrlhf-contrastive demo`): without the tests' flash_attn stand-in on the path (the stage must not need it): store,
rollouts, summary and PNG.

`python -m lab.demo` (what `make demo` runs): the stage, then, on the evidence testbed's tiny policy and noisy proxy
reward, two real train_ppo_ray runs (with --reward_fn contrastive, whose in-job stage writes the store, and without)
through the lab's CPU harness and `openrlhf-contrastive evaluate` of both policies.
The training test took 156 s on 2 cores beside an evidence run (both training runs at once), nearly all
of it the start-up of the two train_ppo_ray runs; each tiny PPO step takes about a second.
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

REPO = Path(__file__).resolve().parent.parent.parent
PROMPTS, K = 4, 2
TRAIN_PROMPTS, TRAIN_PER_STEP = 8, 4  # the training part: two PPO steps on 8 words of the evidence testbed
TINY = ["--tiny", "--max-prompts", str(PROMPTS), "--k", str(K), "--rollouts", "2", "--max-new-tokens", "8", "--cpus", "2"]


def demo(tmp_path: Path, *flags: str, timeout: int, module: str = "openrlhf_contrastive.cli demo") -> subprocess.CompletedProcess:
    # This repository's package first (a clone's editable install is the same), and no flash_attn stand-in.
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", *module.split(), *TINY, *flags,
               "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the demo stops its training runs (sessions of their own) on its way out
        stdout, stderr = process.communicate()
        pytest.fail(f"the demo ran longer than {timeout} s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def png_height(path: Path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    return struct.unpack(">I", data[20:24])[0]  # the IHDR chunk: width, height


def test_tiny_demo_runs_end_to_end_without_test_support(tmp_path):
    run = demo(tmp_path, timeout=480)
    assert "tiny random Llama" in run.stdout
    assert "contrastive reward r - b" in run.stdout and "rollout reward r" in run.stdout
    assert "stage only" in run.stdout
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["prompts"], summary["k"], summary["rollouts"], summary["hit"]) == (PROMPTS, K, 8, 1.0)
    assert "training" not in summary and not (out / "training").exists()
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all(r["contrastive"] == pytest.approx(r["reward"] - r["baseline"], abs=1e-5) for r in rows)
    assert png_height(out / "report.png") == pytest.approx(2 * 4.75 * 110, abs=2)  # 4 panels
    assert "flash_attn" not in run.stderr


def test_tiny_demo_trains_with_and_without_the_store_and_evaluates_both(tmp_path):
    from openrlhf_contrastive.store import BaselineStore

    run = demo(tmp_path, "--train-prompts", str(TRAIN_PROMPTS), "--train-prompts-per-step", str(TRAIN_PER_STEP),
               timeout=2400, module="lab.demo")
    out = tmp_path / "out" / "training"
    steps = {name: json.loads((out / name / "steps.json").read_text()) for name in ("contrastive", "raw")}
    total = TRAIN_PROMPTS // TRAIN_PER_STEP
    assert "evidence testbed's tiny policy" in run.stdout
    # Both runs trained every step, and the step lines (with the proxy reward file's gold) were printed as they came.
    for name, logged in steps.items():
        assert [s["step"] for s in logged] == list(range(1, total + 1)), name
        for s in logged:
            assert f"{name:<11} step {s['step']:>2}/{total}  reward r {s['reward']:+.3f}" in run.stdout
            assert f"gold {s['gold']:+.3f}" in run.stdout
    # The contrastive run's in-job stage wrote the store: k baselines of every training prompt, scored by the noisy
    # proxy, whose rewards vary within and across prompts (the demo's data are not degenerate).
    store = BaselineStore.load(out / "baselines")
    assert len(store) == TRAIN_PROMPTS and store.k == 4
    assert store.rewards.std(axis=1).mean() > 0.01 and store.mean.std() > 0.05
    # One pass over the prompts in equal steps: the logged per-step baselines average to the stored mean; r - b is
    # the plugin's value. The raw run has no plugin metrics.
    contrastive, raw = steps["contrastive"], steps["raw"]
    assert sum(s["contrastive/baseline"] for s in contrastive) / total == pytest.approx(store.mean.mean(), abs=1e-4)
    assert all(s["contrastive/hit"] == 1.0 for s in contrastive)
    for s in contrastive:
        assert s["contrastive/reward"] == pytest.approx(s["contrastive/raw_reward"] - s["contrastive/baseline"], abs=1e-5)
    assert not any(key.startswith("contrastive/") for s in raw for key in s)
    # Each trained policy evaluated against the store: win rates in [0, 1] inside their intervals, printed side by side.
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    training = {t["name"]: t for t in summary["training"]}
    assert len(training) == 2
    for name in ("contrastive", "raw"):
        report = json.loads((out / "evaluation" / name / "evaluation.json").read_text())
        assert report["policy"] == str(out / name / "ckpt")
        assert report["prompts"]["evaluated"] == TRAIN_PROMPTS and report["k"] == 4
        figures = report["rewards"][report["store_reward"]]
        lo, hi = figures["win_rate_interval"]
        assert 0.0 <= lo <= figures["win_rate"] <= hi <= 1.0 and lo < hi  # rewards that vary give an interval
        assert f"win rate {figures['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]" in run.stdout
        assert figures["win_rate"] in [t["win_rate"] for t in training.values()]
    # The raw run's r - b subtracts the contrastive run's baseline of the same step (the same prompts, checked).
    raw_curve = next(t for t in training.values() if "raw" in t["name"])
    assert raw_curve["reward_minus_baseline"] == pytest.approx(
        [r["reward"] - c["contrastive/baseline"] for r, c in zip(raw, contrastive)], abs=1e-6)
    assert "not evidence" in run.stdout and '"Does it help?"' in run.stdout
    assert png_height(tmp_path / "out" / "report.png") == pytest.approx(3 * 4.75 * 110, abs=2)  # 6 panels
