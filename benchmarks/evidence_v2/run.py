"""Evidence v2: does the contrastive reward help PPO with a *learned* reward model? (README.md, issue 17)

    python -m benchmarks.evidence_v2.run            # the full experiment (config.json), resumable run by run
    python -m benchmarks.evidence_v2.run --smoke    # a short RM, one arm, one seed, a few steps: the pipeline only
    python -m benchmarks.evidence_v2.run --arms oracle --seeds 1 --config pilot.json --out DIR   # a pilot

The experiment is its config.json (committed before any non-oracle run) and its analysis (analyze.py) over the
lab's arm x seed runner (lab/experiment.py, whose docstring gives the order of work). Run from the repository root
with the project venv (make venv); `make evidence-v2` does.
"""

from pathlib import Path

from benchmarks.evidence_v2 import analyze
from lab import experiment

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    experiment.main("evidence_v2", HERE / "config.json", HERE, analyze.analyze, doc=__doc__)
