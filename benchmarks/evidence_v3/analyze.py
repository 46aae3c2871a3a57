"""Analysis of evidence v3: results.json, results_table.md, evidence_v3.png from the finished runs.

    python -m benchmarks.evidence_v3.run --analyze-only [--out WORK] [--results DIR] [--smoke]

The lab's analysis (lab/analysis.py: the arm table, the five claims, the reward models, the PNG with gold against
step and against KL) with v3's names, plus v3's own measures (results.json `extra`):
  - `peak_and_matched_kl`: peak held-out gold along each run and the step where it peaks; gold at matched KL: for
    each seed, the KL at which that seed's `raw` run peaks (train/kl, mean of the 8 steps up to the checkpoint), and
    each run's best held-out gold at a KL at most that (its gold-vs-KL frontier; added after seed 1, see
    best_within_kl) and its gold interpolated where its path (the SFT start at KL 0, then the checkpoints in step
    order) first reaches that KL (the measure configured first; a run that never reaches it has none), each
    paired with raw's peak;
  - `served_and_cost`: at the end, the empty-response share and P(EOS first) of the policy sampled as served, gold
    sampled as served and as OpenRLHF's rollouts sample, generations, wall time and peak memory of the run;
  - `refresh` (issue 25, a later addition): each arm that refreshes its baselines from the current policy
    (--contrastive.refresh_every) against the same arm without refresh, paired by seed: held-out gold at the end,
    and at equal total generations (offline + online + refresh: its gold interpolated along its checkpoints where
    it had spent what the arm without refresh spent in its whole run); the refreshes' cost and how far b(x) moved;
    the share of rollouts beating their baseline over the last 32 steps (a stale baseline is beaten more often);
  - `predictions`: predict.py's table (the store's prediction beside the outcome for every RM), once it has run.
The claims compare cr_mean with raw and reinforce_cr with reinforce_raw (the same estimator without the store);
robustness is cr_mean's gain over raw with the weaker reward model (rm_weak, seeds 1-3) minus that with rm_noisy.
"""

from __future__ import annotations

import json
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


def first_crossing(points: list[tuple[float, float]], x: float) -> float | None:
    """y linearly interpolated where the path of (x, y) points first reaches `x`; None if it never does."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1 or x1 <= x <= x0:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def gold_at_kl(path: list[tuple[float, float, int]], kl: float) -> float | None:
    """Gold linearly interpolated where the path first reaches `kl`; None if it never does."""
    return first_crossing([(k, g) for k, g, _ in path], kl)


def best_within_kl(path: list[tuple[float, float, int]], kl: float) -> float:
    """The run's gold-vs-KL frontier at `kl`: the highest gold of its points (the SFT start included) whose KL is at
    most `kl`. Added after seed 1's results: KL is not monotonic along these runs (it rises over the first 20-40
    steps, then falls while gold rises), so where a path "first reaches" a KL is in its early dip, and
    gold_at_kl there compares dips, not policies."""
    return max(g for k, g, _ in path if k <= kl)


def peak(run: dict) -> tuple[float, int]:
    """The highest held-out gold along the run and its step."""
    step = max(run["along"], key=lambda k: (run["along"][k]["heldout"]["gold"], -int(k)))
    return run["along"][step]["heldout"]["gold"], int(step)


def raw_of(cfg: dict, arm: str) -> str:
    """The raw arm a run is matched with: `gae` on the same reward model without --reward_fn (raw_weak for the
    weaker RM's arms); `raw` for the oracle."""
    a = cfg["arms"][arm]
    same = [name for name, b in cfg["arms"].items()
            if b["reward"] == a["reward"] and b["estimator"] == "gae" and not b["reward_flags"]]
    return same[0] if same and a["reward"] != "gold" else "raw"


def peak_and_matched_kl(work: Path, cfg: dict, summary: dict) -> tuple[dict, str]:
    """Peak gold and its step, and gold at raw's peak KL (paired by seed), per arm; and their markdown table."""
    runs, sft_gold = load_runs(work), summary["sft"]["heldout_gold"]
    out: dict = {}
    if sft_gold is None:
        return out, ""
    for arm, by_seed in runs.items():
        ref = raw_of(cfg, arm)
        raw = runs.get(ref, {})
        target = {seed: analysis.kl_at(r, peak(r)[1]) for seed, r in raw.items()}
        at_kl = {seed: gold_at_kl(gold_path(r, sft_gold), target[seed]) for seed, r in by_seed.items()
                 if target.get(seed) is not None}
        reached = {seed: g for seed, g in at_kl.items() if g is not None}
        frontier = {seed: best_within_kl(gold_path(r, sft_gold), target[seed]) for seed, r in by_seed.items()
                    if target.get(seed) is not None}
        out[arm] = {"raw_arm": ref, "peak_heldout_gold": ci([peak(r)[0] for r in by_seed.values()]),
                    "peak_step": {seed: peak(r)[1] for seed, r in sorted(by_seed.items())},
                    "raw_peak_kl": {seed: target[seed] for seed in sorted(at_kl)},
                    "gold_at_raw_peak_kl": ci(list(reached.values())),
                    "seeds_not_reaching_raw_peak_kl": sorted(set(at_kl) - set(reached)),
                    "gold_at_raw_peak_kl_minus_raw_peak": ci([g - peak(raw[seed])[0] for seed, g in reached.items()]),
                    "best_within_raw_peak_kl": ci([frontier[seed] for seed in sorted(frontier)]),
                    "best_within_raw_peak_kl_minus_raw_peak": ci([frontier[seed] - peak(raw[seed])[0]
                                                                  for seed in sorted(frontier)])}
    lines = ["Peak and matched KL (the KL where the same seed's raw run on the same RM peaks: the best gold a run reached within "
             "that KL, its frontier; and gold where its path first reaches that KL, which lies in the early dip "
             "because KL is not monotonic along these runs):", "",
             "| arm (its raw) | peak held-out gold | peak step by seed | best gold within raw's peak KL | minus raw's peak "
             "(paired) | gold where the path first reaches it | minus raw's peak (paired) | seeds not reaching that "
             "KL |", "|---|---|---|---|---|---|---|---|"]
    for arm, a in out.items():
        steps = ", ".join(f"{seed}: {step}" for seed, step in a["peak_step"].items())
        lines.append(f"| {arm} ({a['raw_arm']}) | {analysis.fmt(a['peak_heldout_gold'])} | {steps} "
                     f"| {analysis.fmt(a['best_within_raw_peak_kl'])} "
                     f"| {analysis.fmt(a['best_within_raw_peak_kl_minus_raw_peak'])} "
                     f"| {analysis.fmt(a['gold_at_raw_peak_kl'])} "
                     f"| {analysis.fmt(a['gold_at_raw_peak_kl_minus_raw_peak'])} "
                     f"| {', '.join(map(str, a['seeds_not_reaching_raw_peak_kl'])) or '-'} |")
    return out, "\n".join(lines)


GIB = 2 ** 30


def served_and_cost(runs: dict) -> tuple[dict, str]:
    """Per arm at the end, on the held-out prompts: whether the policy learned to answer nothing (the empty share
    sampled as served, P(EOS first)) and gold sampled both ways; and what a run cost: generations (online + offline),
    wall time, peak memory of the whole train_ppo_ray (PSS: what the run's processes hold, shared pages once)."""
    out: dict = {}
    for arm, by_seed in runs.items():
        rs = [r for _, r in sorted(by_seed.items()) if "p_eos_first" in r["heldout"]]
        if not rs:
            continue
        g = {key: round(sum(r["generations"].get(key, 0) for r in rs) / len(rs))  # the mean over runs
             for key in ("online", "offline", "refresh", "total")}
        out[arm] = {"runs": len(rs),
                    "empty_served": ci([r["heldout"]["empty"] for r in rs]),
                    "p_eos_first": ci([r["heldout"]["p_eos_first"] for r in rs]),
                    "gold_served": ci([r["heldout"]["gold"] for r in rs]),
                    "gold_as_rolled_out": ci([r["heldout"]["rollout_style"]["gold"] for r in rs]),
                    "generations": g,
                    "wall_s": ci([r["wall_s"] for r in rs]),
                    "peak_pss_gib": ci([r["memory"]["peak_pss_bytes"] / GIB for r in rs]),
                    "peak_rss_gib": ci([r["memory"]["peak_rss_bytes"] / GIB for r in rs])}
    lines = ["Served policy and cost per run (held-out prompts at the end; memory of the whole train_ppo_ray run, "
             "sampled each second; runs of this code only):", "",
             "| arm | runs | empty responses (served) | P(EOS first) | gold served | gold as rolled out (EOS masked "
             "first) | generations (online + offline + refresh) | wall s | peak memory GiB, PSS (RSS summed) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, a in out.items():
        g = a["generations"]
        lines.append(f"| {arm} | {a['runs']} | {analysis.fmt(a['empty_served'])} | {analysis.fmt(a['p_eos_first'])} "
                     f"| {analysis.fmt(a['gold_served'])} | {analysis.fmt(a['gold_as_rolled_out'])} "
                     f"| {g['online']} + {g['offline']} + {g.get('refresh', 0)} | {analysis.fmt(a['wall_s'], 0)} "
                     f"| {analysis.fmt(a['peak_pss_gib'], 2)} ({a['peak_rss_gib']['mean']:.2f}) |")
    return out, "\n".join(lines)


REFRESH_FLAGS = ("--contrastive.refresh_every", "--contrastive.refresh_prompts")


def without_refresh(cfg: dict, arm: str) -> str | None:
    """The arm a refreshing arm is compared with: the same reward, estimator, samples and reward flags but the
    refresh flags (and their values); None for an arm that does not refresh."""
    a = cfg["arms"][arm]
    flags = a["reward_flags"]
    kept = [f for i, f in enumerate(flags) if f not in REFRESH_FLAGS and (i == 0 or flags[i - 1] not in REFRESH_FLAGS)]
    if kept == flags:
        return None
    same = [name for name, b in cfg["arms"].items() if b["reward_flags"] == kept and all(
        b.get(key) == a.get(key) for key in ("reward", "estimator", "n_samples_per_prompt", "prompts_per_step"))]
    return same[0] if same else None


def generations_at(run: dict, step: int) -> float:
    """Generations a run had spent by the end of PPO step `step`: offline (the SFT store), online (its rollouts, the
    same number every step) and the refreshes sampled before that step (a refresh at policy step p runs before the
    batch of step p + 1)."""
    g = run["generations"]
    refreshes = (run.get("refresh") or {}).get("refreshes", [])
    return (g["offline"] + g["online"] / run["steps"] * step
            + sum(r["generations"] for r in refreshes if r["policy_step"] < step))


def gold_at_generations(run: dict, sft_gold: float, spent: float) -> float | None:
    """Held-out gold linearly interpolated along the run (the SFT start at its offline generations, then every
    checkpoint) where it had spent `spent` generations; None if the run ended first."""
    path = [(run["generations"]["offline"], sft_gold)] + [
        (generations_at(run, int(k)), run["along"][k]["heldout"]["gold"]) for k in sorted(run["along"], key=int)]
    return first_crossing(path, spent)


def beat_share_last(run: dict, steps: int = 32) -> float | None:
    """Mean share of rollouts beating their stored baseline over the run's last `steps` PPO steps."""
    series = run["scalars"].get("train/contrastive/beat_baseline", {})
    last = sorted(series, key=int)[-steps:]
    return sum(series[k] for k in last) / len(last) if last else None


def refresh_comparison(cfg: dict, runs: dict, sft_gold: float | None) -> tuple[dict, str]:
    """Each refreshing arm against the same arm without refresh (issue 25), paired by seed; and its table."""
    out: dict = {}
    for arm, by_seed in runs.items():
        base = without_refresh(cfg, arm)
        if base is None or sft_gold is None:
            continue
        ref = runs.get(base, {})
        paired = sorted(set(by_seed) & set(ref))
        refreshes = [r for run in by_seed.values() for r in (run.get("refresh") or {}).get("refreshes", [])]
        equal = {seed: gold_at_generations(by_seed[seed], sft_gold, ref[seed]["generations"]["total"])
                 for seed in paired}
        out[arm] = {
            "without_refresh": base,
            "refresh_every": cfg["arms"][arm]["reward_flags"][
                cfg["arms"][arm]["reward_flags"].index("--contrastive.refresh_every") + 1],
            "runs": len(by_seed), "paired_seeds": paired,
            "generations": ci([r["generations"]["total"] for r in by_seed.values()]),
            "generations_without": ci([r["generations"]["total"] for r in ref.values()]),
            "refresh_generations": ci([r["generations"].get("refresh", 0) for r in by_seed.values()]),
            "refresh_seconds_per_run": ci([sum(x["seconds"] for x in (r.get("refresh") or {}).get("refreshes", []))
                                           for r in by_seed.values()]),
            "wall_s": ci([r["wall_s"] for r in by_seed.values()]),
            "wall_s_without": ci([r["wall_s"] for r in ref.values()]),
            "mean_abs_shift": ci([x["mean_abs_shift"] for x in refreshes]),
            "mean_shift": ci([x["mean_shift"] for x in refreshes]),
            "beat_share_last_32": ci([beat_share_last(r) for r in by_seed.values()]),
            "beat_share_last_32_without": ci([beat_share_last(r) for r in ref.values()]),
            "heldout_gold": ci([r["heldout"]["gold"] for r in by_seed.values()]),
            "heldout_gold_minus_without": ci([by_seed[seed]["heldout"]["gold"] - ref[seed]["heldout"]["gold"]
                                              for seed in paired]),
            "gold_at_equal_generations": ci([equal[seed] for seed in paired]),
            "gold_at_equal_generations_minus_without": ci([
                equal[seed] - ref[seed]["heldout"]["gold"] for seed in paired if equal[seed] is not None]),
        }
    if not out:
        return out, ""
    lines = ["Baselines refreshed from the current policy (issue 25, a later addition): each refreshing arm against the "
             "same arm without refresh, paired by seed; generations are offline + online + refresh, and 'at equal "
             "generations' is the refreshing run's held-out gold interpolated along its checkpoints where it had "
             "spent what the arm without refresh spent in its whole run:", "",
             "| arm (without refresh) | runs | refresh every | generations (without) | refresh s per run | wall s "
             "(without) | mean abs shift of b(x) per refresh | beating b(x), last 32 steps (without) | held-out gold "
             "| minus without (paired) | gold at equal generations | minus without's end (paired) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, a in out.items():
        lines.append(
            f"| {arm} ({a['without_refresh']}) | {a['runs']} | {a['refresh_every']} "
            f"| {analysis.fmt(a['generations'], 0)} ({analysis.fmt(a['generations_without'], 0)}) "
            f"| {analysis.fmt(a['refresh_seconds_per_run'], 0)} "
            f"| {analysis.fmt(a['wall_s'], 0)} ({analysis.fmt(a['wall_s_without'], 0)}) "
            f"| {analysis.fmt(a['mean_abs_shift'])} "
            f"| {analysis.fmt(a['beat_share_last_32'])} ({analysis.fmt(a['beat_share_last_32_without'])}) "
            f"| {analysis.fmt(a['heldout_gold'])} | {analysis.fmt(a['heldout_gold_minus_without'])} "
            f"| {analysis.fmt(a['gold_at_equal_generations'])} "
            f"| {analysis.fmt(a['gold_at_equal_generations_minus_without'])} |")
    return out, "\n".join(lines)


def predictions() -> tuple[dict | None, str]:
    """predict.py's table (the prediction beside the outcome for every RM), when it has been run."""
    from benchmarks.evidence_v3 import predict

    path = Path(__file__).resolve().parent / "predictions.json"
    if not path.exists():
        return None, ""
    rows = json.loads(path.read_text())["rows"]
    return rows, ("The prediction beside the outcome (benchmarks/evidence_v3/predict.py; its gains are read from "
                  "each experiment's results.json when predict.py ran):\n\n" + predict.table(rows))


def analyze(work: Path, results_dir: Path, cfg: dict, s: dict, archive: Path | None = None) -> dict:
    def extra(work: Path, cfg: dict, summary: dict) -> tuple[dict, str]:
        peak_kl, peak_text = peak_and_matched_kl(work, cfg, summary)
        runs = load_runs(work)
        served, served_text = served_and_cost(runs)
        refresh, refresh_text = refresh_comparison(cfg, runs, summary["sft"]["heldout_gold"])
        predicted, predicted_text = predictions()
        return ({"peak_and_matched_kl": peak_kl, "served_and_cost": served, "refresh": refresh,
                 "predictions": predicted},
                "\n\n".join(t for t in (peak_text, served_text, refresh_text, predicted_text) if t))

    return analysis.analyze(work, results_dir, cfg, s, V3, archive, extra=extra)
