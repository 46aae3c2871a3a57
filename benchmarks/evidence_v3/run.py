"""Evidence v3: does the contrastive reward raise what PPO gets from a useful but imperfect RM? (README.md, issue 24)

    python -m benchmarks.evidence_v3.run            # the full experiment (config.json), resumable run by run
    python -m benchmarks.evidence_v3.run --smoke    # a short RM, one arm, one seed, a few steps: the pipeline only
    python -m benchmarks.evidence_v3.run --rm-only --config pilot.json --out DIR          # a reward-model pilot
    python -m benchmarks.evidence_v3.run --arms raw oracle --seeds 1 --config pilot.json --out DIR   # a PPO pilot

The experiment is its config.json (committed before any comparison run) and its analysis (analyze.py) over the
lab's arm x seed runner (lab/experiment.py, whose docstring gives the order of work). Run from the repository root
with the project venv (make venv); `make evidence-v3` does.
"""

from pathlib import Path

from benchmarks.evidence_v3 import analyze
from lab import experiment

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    experiment.main("evidence_v3", HERE / "config.json", HERE, analyze.analyze, doc=__doc__)
