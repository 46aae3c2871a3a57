"""`openrlhf-contrastive demo` end to end on the tiny model, in a fresh process without the tests' flash_attn
stand-in on the path (the demo must not need it): store, rollouts, summary and PNG."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]


def test_tiny_demo_runs_end_to_end_without_test_support(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "openrlhf_contrastive.cli", "demo", "--tiny", "--max-prompts", "4", "--k", "2",
               "--rollouts", "2", "--max-new-tokens", "8", "--cpus", "2",
               "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "tiny random Llama" in run.stdout
    assert "contrastive reward r - b" in run.stdout and "rollout reward r" in run.stdout
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["prompts"], summary["k"], summary["rollouts"], summary["hit"]) == (4, 2, 8, 1.0)
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all(r["contrastive"] == pytest.approx(r["reward"] - r["baseline"], abs=1e-5) for r in rows)
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "flash_attn" not in run.stderr
