"""Running the real train_ppo_ray (or another command) on CPU for the e2e tests, through the lab's harness.

Shared by test_train_ppo_ray_cpu.py (reward-function file, agent) and test_reward_model_cpu.py (reward model): the
flags of one small PPO run (lab.harness builds them, as for the demo and the evidence experiments), the launch in
its own session (every process of the run is killed with it), tensorboard scalars and store snapshots.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from lab import harness

REPO = harness.REPO
RUN_TIMEOUT_S = int(os.environ.get("E2E_RUN_TIMEOUT_S", "900"))

QUESTIONS = [
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
    "List three prime numbers.",
    "What is two plus two?",
]
K = 4
STEP1 = 1
STEPS = range(1, len(QUESTIONS) + 1)
ATOL = 1e-5
SAMPLING = harness.Sampling(max_len=64, max_new_tokens=16, temperature=1.0)
# One rollout per PPO step keeps vLLM's sampling reproducible across runs: OpenRLHF sends the rollouts of a batch as
# concurrent requests without per-request seeds, so with several of them the engine's shared generator serves them in
# an order that depends on timing; a lone first request draws the same tokens in every run.
PPO = harness.PPO(estimator="gae", prompts_per_step=1, episodes=1, seed=42, warmup_ratio=None)  # OpenRLHF's defaults


def train_flags(work: Path, out: Path, reward: list[str], critic: Path | None = None) -> list[str]:
    """OpenRLHF flags of one small PPO run: 4 prompts, one rollout per PPO step -> 4 PPO steps.

    `reward` gives the reward (--reward.remote_url FILE, --reward.model_name_or_path RM, or nothing with an agent).
    """
    return (harness.testbed_flags(work / "policy", work / "prompts.jsonl", reward, SAMPLING) + harness.CPU_PLACEMENT
            + harness.ppo_flags(PPO, critic or work / "critic") + harness.output_flags(out))


def contrastive_flags(store: Path) -> list[str]:
    return harness.contrastive_flags(store, K)


def run_launcher(args: list[str], out: Path, name: str) -> tuple[int, Path]:
    """`python lab/cpu_training/launch.py ARGS` in `out` (created), output in out/<name>.log; (exit code, log)."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}.log"
    start = time.time()
    rc = harness.run_in_own_session(harness.launch_command(args), log, RUN_TIMEOUT_S, cwd=out, env=harness.run_env())
    print(f"{name}: {' '.join(args[:3]) if args[:1] == ['-m'] else 'train_ppo_ray'} took {time.time() - start:.0f} s (log {log})")
    return rc, log


def launch(work: Path, name: str, reward: list[str], extra: list[str], critic: Path | None = None) -> dict:
    """Run train_ppo_ray through the CPU launcher; return its tensorboard scalars {tag: {step: value}}."""
    out = work / name
    rc, log = run_launcher([*train_flags(work, out, reward, critic), *extra], out, "train")
    assert rc == 0, f"{name}: train_ppo_ray exited with {rc}; last lines of {log}:\n{harness.tail(log, 60)}"
    return harness.read_scalars(out / "tb")


def store_files(store: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(store.iterdir())}


def assert_trained_on_reward_minus_baseline(scalars: dict, steps: int) -> None:
    """At every PPO step of an evidence run, the logged contrastive reward is the logged reward r minus the logged
    baseline b: PPO trained on r - b."""
    import pytest

    for step in map(str, range(1, steps + 1)):
        assert scalars["train/contrastive/reward"][step] == pytest.approx(
            scalars["train/reward"][step] - scalars["train/contrastive/baseline"][step], abs=1e-5), step


def run_evidence_smoke(module: str, work: Path, *extra: str) -> tuple[dict, dict, str]:
    """`python -m MODULE --smoke --out work *extra` (an evidence experiment's whole pipeline, scaled down, resumable
    in `work`). Returns the experiment's config.json, the run's results.json and what the runner printed."""
    import json

    proc = subprocess.run([sys.executable, "-m", module, "--smoke", "--out", str(work), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=harness.run_env())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    folder = REPO.joinpath(*module.split(".")[:-1])
    cfg = json.loads((folder / "config.json").read_text())
    return cfg, json.loads((work / "results.json").read_text()), proc.stdout
