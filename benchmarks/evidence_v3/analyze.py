"""Analysis of evidence v3: results.json, results_table.md, evidence_v3.png from the finished runs.

    python -m benchmarks.evidence_v3.run --analyze-only [--out WORK] [--results DIR] [--smoke]

The lab's analysis (lab/analysis.py: the arm table, the five claims, the reward models, the PNG with gold against
step and against KL) with v3's names, plus v3's own measures (`extra`):
  - peak held-out gold along each run and the step where it peaks;
  - gold at matched KL: for each seed, the KL at which that seed's `raw` run peaks (train/kl, mean of the 8 steps up
    to the checkpoint), and each run's held-out gold interpolated at that KL along its own gold-vs-KL path (from the
    SFT start at KL 0, checkpoints in step order; a run that never reaches that KL has none), paired with raw's peak.
The claims compare cr_mean with raw and reinforce_cr with reinforce_raw (the same estimator without the store);
robustness is cr_mean's gain over raw with the weaker reward model (rm_weak, seeds 1-3) minus that with rm_noisy.
"""

from __future__ import annotations

from pathlib import Path

from lab import analysis
from lab.stats import ci, load_runs

V3 = analysis.Analysis(
    title="Evidence v3",
    experiment="evidence v3: contrastive vs raw-reward PPO, critic-free with and without the offline baseline, at a "
               "useful learned reward model and a weaker one (benchmarks/evidence_v3)",
    png="evidence_v3.png",
    contrastive=(("cr_mean", "raw"), ("reinforce_cr", "reinforce_raw")),
    robustness=(("cr_mean_weak", "raw_weak", "gain_at_weak_rm"), ("cr_mean", "raw", "gain_at_strong_rm"),
                "weak_minus_strong"),
    robustness_text="held-out gold gain over raw with the weaker RM {worse}, with the stronger {better}; "
                    "weak minus strong {diff}",
)


def gold_path(run: dict, sft_gold: float) -> list[tuple[float, float, int]]:
    """(KL, held-out gold, step) from the SFT start (KL 0) through every checkpoint in step order."""
    points = [(0.0, sft_gold, 0)]
    for k in sorted(run["along"], key=int):
        kl = analysis.kl_at(run, int(k))
        if kl is not None:
            points.append((kl, run["along"][k]["heldout"]["gold"], int(k)))
    return points


def gold_at_kl(path: list[tuple[float, float, int]], kl: float) -> float | None:
    """Gold linearly interpolated where the path first reaches `kl`; None if it never does."""
    for (k0, g0, _), (k1, g1, _) in zip(path, path[1:]):
        if k0 <= kl <= k1 or k1 <= kl <= k0:
            return g0 if k1 == k0 else g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
    return None


def peak(run: dict) -> tuple[float, int]:
    """The highest held-out gold along the run and its step."""
    step = max(run["along"], key=lambda k: (run["along"][k]["heldout"]["gold"], -int(k)))
    return run["along"][step]["heldout"]["gold"], int(step)


def extra(work: Path, cfg: dict, summary: dict) -> tuple[dict, str]:
    """Peak gold and its step, and gold at raw's peak KL (paired by seed), per arm; and their markdown table."""
    runs, sft_gold = load_runs(work), summary["sft"]["heldout_gold"]
    out: dict = {}
    if sft_gold is None:
        return out, ""
    raw = runs.get("raw", {})
    target = {seed: analysis.kl_at(r, peak(r)[1]) for seed, r in raw.items()}
    for arm, by_seed in runs.items():
        at_kl = {seed: gold_at_kl(gold_path(r, sft_gold), target[seed]) for seed, r in by_seed.items()
                 if target.get(seed) is not None}
        reached = {seed: g for seed, g in at_kl.items() if g is not None}
        out[arm] = {"peak_heldout_gold": ci([peak(r)[0] for r in by_seed.values()]),
                    "peak_step": {seed: peak(r)[1] for seed, r in sorted(by_seed.items())},
                    "raw_peak_kl": {seed: target[seed] for seed in sorted(at_kl)},
                    "gold_at_raw_peak_kl": ci(list(reached.values())),
                    "seeds_not_reaching_raw_peak_kl": sorted(set(at_kl) - set(reached)),
                    "gold_at_raw_peak_kl_minus_raw_peak": ci([g - peak(raw[seed])[0] for seed, g in reached.items()])}
    lines = ["Peak and matched KL (gold at the KL where the same seed's raw run peaks, along each run's own path):", "",
             "| arm | peak held-out gold | peak step by seed | gold at raw's peak KL | minus raw's peak (paired) "
             "| seeds not reaching that KL |", "|---|---|---|---|---|---|"]
    for arm, a in out.items():
        steps = ", ".join(f"{seed}: {step}" for seed, step in a["peak_step"].items())
        lines.append(f"| {arm} | {analysis.fmt(a['peak_heldout_gold'])} | {steps} "
                     f"| {analysis.fmt(a['gold_at_raw_peak_kl'])} "
                     f"| {analysis.fmt(a['gold_at_raw_peak_kl_minus_raw_peak'])} "
                     f"| {', '.join(map(str, a['seeds_not_reaching_raw_peak_kl'])) or '-'} |")
    return out, "\n".join(lines)


def analyze(work: Path, results_dir: Path, cfg: dict, s: dict, archive: Path | None = None) -> dict:
    return analysis.analyze(work, results_dir, cfg, s, V3, archive, extra=extra)
