"""Analysis of evidence v2: results.json, results_table.md, evidence_v2.png from the finished runs.

    python -m benchmarks.evidence_v2.run --analyze-only [--out WORK] [--results DIR] [--smoke]

The lab's analysis (lab/analysis.py, whose docstring says what is measured) with v2's names: the claims compare
cr_mean and reinforce_cr with raw, and robustness is cr_mean's gain over raw with the noisy RM minus that with the
clean one (seeds 1-3).
"""

from __future__ import annotations

from pathlib import Path

from lab import analysis
from lab.analysis import empty_responses, empty_table  # noqa: F401 (tests/unit/test_evidence_v2_empty_responses.py)

V2 = analysis.Analysis(
    title="Evidence v2",
    experiment="evidence v2: contrastive vs raw-reward PPO and its alternatives with a learned reward model "
               "(benchmarks/evidence_v2)",
    png="evidence_v2.png",
    contrastive=(("cr_mean", "raw"), ("reinforce_cr", "raw")),
    robustness=(("cr_mean", "raw", "gain_at_25pct_noise"), ("cr_mean_clean", "raw_clean", "gain_at_0pct_noise"),
                "noisy_minus_clean"),
    robustness_text="held-out gold gain over raw at 25% label noise {worse}, at 0% {better}; noisy minus clean {diff}",
)


def analyze(work: Path, results_dir: Path, cfg: dict, s: dict, archive: Path | None = None) -> dict:
    return analysis.analyze(work, results_dir, cfg, s, V2, archive)
