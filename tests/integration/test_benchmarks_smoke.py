"""Every benchmark runs in its --smoke mode (tiny sizes, nothing recorded) so that none of them rots."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("bench_*.py")))
def test_benchmark_smoke(script):
    before = (BENCHMARKS / "results.json").read_bytes() if (BENCHMARKS / "results.json").exists() else None
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script[:-3]}", "--smoke"], capture_output=True, text=True, timeout=900,
        env=dict(os.environ), cwd=BENCHMARKS.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "{" in result.stdout  # the figures, printed as JSON
    after = (BENCHMARKS / "results.json").read_bytes() if (BENCHMARKS / "results.json").exists() else None
    assert after == before, "a smoke run must not overwrite the measured results"
