"""The analysis every learned-RM evidence experiment reports (v2, v3): from the finished runs of lab.experiment to
results.json, results_table.md (arm table, claims table, reward models, empty responses) and a PNG.

An experiment names what is its own in an `Analysis` (its title, its main reward model, the arms each claim compares,
the pair of reward models the robustness claim reads); everything else is the same code. Per arm (over seeds: mean
and 95% t-interval): held-out gold and gold win rate against the SFT samples at the end, the paired difference to
`raw` (same seeds), the fraction of the oracle's gold gain recovered (per seed, against the oracle of the same seed),
peak gold along the run, KL at the end, critic loss, generations and wall time; gold along training (held-out, at
every checkpoint) against step and KL. Then the paper's five claims, each measured (claims()). Runs that are not
finished are left out (their count is in `runs_done`).
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from lab import reward_models, testbed
from lab.experiment import RESTORED
from lab.stats import TAG_CRITIC, TAG_KL, TAG_PROXY, ci, last_mean, load_runs, series, smooth

TAG_BEAT = "train/contrastive/beat_baseline"
TAG_ROLLOUT_LEN = "train/rollout/response_length_mean"  # tokens per rollout response, EOS included
EOS_CHECK = "eos_check.json"  # an eos_check's output, next to results.json


@dataclass(frozen=True)
class Analysis:
    """What one experiment's analysis names. `contrastive`: (arm, reference arm) pairs each claim compares, paired
    by seed; `robustness`: ((arm, reference, key) at the worse reward model, (arm, reference, key) at the better one,
    key of their difference) and the sentence of the claims table ({worse}, {better}, {diff})."""

    title: str  # results_table.md's first words and the PNG's title, e.g. "Evidence v2"
    experiment: str  # results.json's "experiment"
    png: str  # the PNG's file name
    contrastive: tuple
    robustness: tuple
    robustness_text: str
    main_rm: str = "rm_noisy"  # the reward model whose stored baselines the oracle's baseline-based measures use
    plot_title: str = "PPO on a learned reward model"


def kl_at(run: dict, step: int, window: int = 8) -> float | None:
    """train/kl (per step, noisy) as the mean over the `window` steps up to `step`."""
    kl = [v for k, v in series(run, TAG_KL) if step - window < k <= step]
    return statistics.mean(kl) if kl else None


def final(run: dict) -> dict:
    return run["along"][max(run["along"], key=int)]


def paired(runs: dict, arm: str, ref: str, value) -> dict | None:
    """ci over the seeds both arms ran of value(run_arm) - value(run_ref)."""
    common = sorted(set(runs.get(arm, {})) & set(runs.get(ref, {})))
    if not common:
        return None
    return ci([value(runs[arm][k]) - value(runs[ref][k]) for k in common]) | {"seeds": common}


def store_means(work: Path, rm: str, words: list[str]) -> list[float] | None:
    """The stored baseline b(x) (mean of the k SFT rewards) of each word, from the store the in-job stage wrote."""
    from openrlhf_contrastive.store import BaselineStore, holds_baselines, prompt_keys

    path = work / f"baselines_{rm}"
    if not holds_baselines(path):
        return None
    store = BaselineStore.load(path)
    rewards, hit = store.lookup(prompt_keys([testbed.prompt_text(w) for w in words]))
    return [float(r.mean()) if h else None for r, h in zip(rewards, hit)]


def baseline_rm(cfg: dict, arm: str, spec: Analysis) -> str:
    """The reward model whose stored baselines an arm's baseline-based measures use (the oracle: the main RM's)."""
    rm = cfg["arms"][arm]["reward"]
    return rm if rm != "gold" else spec.main_rm


def stamp_baselines(work: Path, cfg: dict, words: list[str], archive: Path | None, spec: Analysis) -> None:
    """Give every run finished in this work directory the stored baselines b(x) of the evaluated training prompts
    that its RM scores are compared with (baseline_rm): this session's store, written with this session's reward
    model, the one that scored the run's samples, as soon as that store exists. A later session retrains the reward
    models and rewrites the stores, so a run carries its own (in result.json and its archived copy); a run restored
    from the archive is never stamped by another session, and one whose session ended before its store existed
    stays without (excluded from the baseline-based measures, listed in results.json)."""
    current: dict = {}
    for path in sorted((work / "runs").glob("*/seed*/result.json")):
        if (path.parent / RESTORED).exists():
            continue
        r = json.loads(path.read_text())
        rm = baseline_rm(cfg, r["arm"], spec)
        if "baselines" in r:
            continue
        if rm not in current:
            current[rm] = store_means(work, rm, words)
        if current[rm] is None:
            continue
        r["baselines"] = {rm: current[rm]}
        path.write_text(json.dumps(r))
        if archive is not None and (archive / r["arm"] / f"seed{r['seed']}.json").exists():
            (archive / r["arm"] / f"seed{r['seed']}.json").write_text(json.dumps(r))


def advantage_input(cfg: dict, run: dict, point: dict, baselines: dict) -> list[float] | None:
    """Per evaluated training prompt: the mean of the reward the arm's advantage is computed from (gold for the
    oracle, the RM score r for raw / rloo, r - b(x) for the contrastive arms)."""
    a = cfg["arms"][run["arm"]]
    if a["reward"] == "gold":
        return point["train"]["gold_per_prompt"]
    scores = point["train"].get("rm", {}).get(a["reward"])
    if scores is None:
        return None
    means = [statistics.mean(r) for r in scores]
    if "--reward_fn" not in a["reward_flags"]:
        return means
    b = baselines.get(a["reward"])
    return None if b is None else [m - bx for m, bx in zip(means, b)]


def beat_share(run: dict, point: dict, cfg: dict, baselines: dict, spec: Analysis) -> float | None:
    """Share of the policy's samples (evaluated training prompts) whose RM score beats the stored baseline mean."""
    rm = baseline_rm(cfg, run["arm"], spec)
    scores, b = point["train"].get("rm", {}).get(rm), baselines.get(rm)
    if scores is None or b is None:
        return None
    return statistics.mean(1.0 if r > bx else 0.0 for rs, bx in zip(scores, b) for r in rs)


def bucket_gain(runs: dict, arm: str, ref: str, prompts_bucket: list[int], bucket: int) -> dict | None:
    """Paired (same seed) gold gain of arm over ref at the end, on the evaluated training prompts of one bucket."""
    idx = [i for i, b in enumerate(prompts_bucket) if b == bucket]

    def gold(run):
        g = final(run)["train"]["gold_per_prompt"]
        return statistics.mean(g[i] for i in idx)

    return paired(runs, arm, ref, gold) if idx else None


def claims(work: Path, cfg: dict, runs: dict, sets: dict, spec: Analysis) -> dict:
    """The paper's five claims, each as a measured quantity (see README.md for what would support each)."""
    words = sets["train"]["words"]
    rates = [reward_models.flip_rate(w, cfg) for w in words]
    flip_b = [reward_models.flip_bucket(r, cfg) for r in rates]
    sft_gold = [statistics.mean(g) for g in sets["train"]["gold"]]
    cut = sorted(sft_gold)
    terciles = [cut[len(cut) // 3], cut[2 * len(cut) // 3]] if cut else [0, 0]
    diff_b = [0 if g < terciles[0] else 1 if g < terciles[1] else 2 for g in sft_gold]  # 0: hardest third
    out: dict = {"flip_bucket_prompts": [flip_b.count(b) for b in range(reward_models.FLIP_BUCKETS)],
                 "difficulty_terciles_sft_gold": terciles}
    for arm, ref in spec.contrastive:
        hi = bucket_gain(runs, arm, ref, flip_b, reward_models.FLIP_BUCKETS - 1)
        lo = bucket_gain(runs, arm, ref, flip_b, 0)
        both = sorted(set(hi["seeds"]) & set(lo["seeds"])) if hi and lo else []
        out[f"uncertainty_{arm}"] = {
            "gain_over_raw_high_flip": hi, "gain_over_raw_low_flip": lo,
            "high_minus_low": ci([hi["values"][hi["seeds"].index(k)] - lo["values"][lo["seeds"].index(k)]
                                  for k in both]) if both else None}
        out[f"difficulty_{arm}"] = {name: bucket_gain(runs, arm, ref, diff_b, b)
                                   for b, name in enumerate(("hard", "medium", "easy"))}
        hard, easy = out[f"difficulty_{arm}"]["hard"], out[f"difficulty_{arm}"]["easy"]
        both = sorted(set(hard["seeds"]) & set(easy["seeds"])) if hard and easy else []
        out[f"difficulty_{arm}"]["hard_minus_easy"] = ci(
            [hard["values"][hard["seeds"].index(k)] - easy["values"][easy["seeds"].index(k)] for k in both]
        ) if both else None

    def heldout_gold(run):
        return run["heldout"]["gold"]

    (w_arm, w_ref, w_key), (b_arm, b_ref, b_key), diff_key = spec.robustness
    worse, better = paired(runs, w_arm, w_ref, heldout_gold), paired(runs, b_arm, b_ref, heldout_gold)
    both = sorted(set(worse["seeds"]) & set(better["seeds"])) if worse and better else []
    out["robustness"] = {
        w_key: worse, b_key: better,
        diff_key: ci([worse["values"][worse["seeds"].index(k)] - better["values"][better["seeds"].index(k)]
                      for k in both]) if both else None}
    per_seed = {}  # arm -> measure -> {seed: value}
    for arm, by_seed in runs.items():
        m = per_seed.setdefault(arm, {"beat_share_end": {}, "beat_share_mean_along": {}, "logged_beat_baseline": {},
                                      "advantage_input_spread": {}, "critic_loss_mean": {}})
        for seed, r in by_seed.items():
            points = [r["along"][k] for k in sorted(r["along"], key=int)]
            baselines = r.get("baselines", {})  # the run's own session's stores (stamp_baselines)
            shares = [beat_share(r, p, cfg, baselines, spec) for p in points]
            if shares and None not in shares:
                m["beat_share_end"][seed], m["beat_share_mean_along"][seed] = shares[-1], statistics.mean(shares)
            if series(r, TAG_BEAT):
                m["logged_beat_baseline"][seed] = statistics.mean(v for _, v in series(r, TAG_BEAT))
            spreads = [advantage_input(cfg, r, p, baselines) for p in points]
            if spreads and None not in spreads:
                m["advantage_input_spread"][seed] = statistics.mean(statistics.stdev(v) for v in spreads)
            if series(r, TAG_CRITIC):
                m["critic_loss_mean"][seed] = statistics.mean(v for _, v in series(r, TAG_CRITIC))
    out["per_arm"] = {arm: {name: ci([v[k] for k in sorted(v)]) for name, v in m.items()} for arm, m in per_seed.items()}
    for arm, ref in spec.contrastive:
        out[f"vs_{ref}_{arm}"] = {}
        for name in ("beat_share_end", "beat_share_mean_along", "advantage_input_spread", "critic_loss_mean"):
            a, b = per_seed.get(arm, {}).get(name, {}), per_seed.get(ref, {}).get(name, {})
            common = sorted(set(a) & set(b))
            out[f"vs_{ref}_{arm}"][name] = ci([a[k] - b[k] for k in common]) if common else None
    return out


def summarize(work: Path, cfg: dict, s: dict, spec: Analysis, checked: dict | None = None) -> dict:
    runs = load_runs(work)
    sets = {name: json.loads((work / f"{file}.json").read_text())
            for name, file in (("heldout", "sft_heldout"), ("train", "sft_train_eval")) if (work / f"{file}.json").exists()}
    sft_gold = statistics.mean(g for gs in sets["heldout"]["gold"] for g in gs) if "heldout" in sets else None
    arms = {}
    for arm in s["arms"]:
        rs = [runs.get(arm, {})[k] for k in sorted(runs.get(arm, {}))]
        if not rs:
            arms[arm] = {"runs_done": 0}
            continue
        steps = sorted(rs[0]["along"], key=int)
        arms[arm] = {
            "runs_done": len(rs), "seeds": sorted(runs[arm]),
            "heldout_gold_final": ci([r["heldout"]["gold"] for r in rs]),
            "heldout_gold_win_rate_vs_sft": ci([r["heldout"]["gold_win_rate_vs_sft"] for r in rs]),
            "heldout_gold_peak_along": ci([max(p["heldout"]["gold"] for p in r["along"].values()) for r in rs]),
            "along": {k: {"heldout_gold": ci([r["along"][k]["heldout"]["gold"] for r in rs if k in r["along"]]),
                          "kl": ci([kl_at(r, int(k)) for r in rs if k in r["along"]])}
                      for k in steps},
            "kl_final": ci([last_mean(r, TAG_KL) for r in rs]),
            "critic_loss_final": ci([last_mean(r, TAG_CRITIC) for r in rs if series(r, TAG_CRITIC)]),
            "train_reward_final": ci([last_mean(r, TAG_PROXY) for r in rs]),
            "wall_s": ci([r["wall_s"] for r in rs]),
            "eval_s": ci([r["eval_s"] for r in rs]),
            "steps": [r["steps"] for r in rs],
            "generations_per_run": rs[0]["generations"],
            "store_written_by": [f"seed {r['seed']}" for r in rs if r.get("wrote_store")],
        }
        if arm != "raw" and "raw" in runs:
            arms[arm]["paired_vs_raw"] = {
                "heldout_gold_diff": paired(runs, arm, "raw", lambda r: r["heldout"]["gold"]),
                "heldout_win_rate_diff": paired(runs, arm, "raw", lambda r: r["heldout"]["gold_win_rate_vs_sft"])}
        if sft_gold is not None and "oracle" in runs:
            common = sorted(set(runs[arm]) & set(runs["oracle"]))
            arms[arm]["oracle_gain_recovered"] = ci(
                [(runs[arm][k]["heldout"]["gold"] - sft_gold) / (runs["oracle"][k]["heldout"]["gold"] - sft_gold)
                 for k in common if runs["oracle"][k]["heldout"]["gold"] != sft_gold])
    rm_info = {rm: json.loads((work / f"{rm}_done.json").read_text())
               for rm in s["reward_models"] if (work / f"{rm}_done.json").exists()}
    n_done = sum(a["runs_done"] for a in arms.values())
    return {
        "experiment": spec.experiment,
        "complete": n_done == len(s["runs"]), "runs_done": n_done, "runs_planned": len(s["runs"]),
        "settings": s,
        "plugin_commit": (work / "pkg_commit.txt").read_text().strip() if (work / "pkg_commit.txt").exists() else None,
        "sft": {"heldout_gold": sft_gold, "gold_win_rate_vs_sft": 0.5,
                "train_eval_gold": statistics.mean(g for gs in sets["train"]["gold"] for g in gs) if "train" in sets else None},
        "reward_models": rm_info,
        "arms": arms,
        "claims": claims(work, cfg, runs, sets, spec) if "train" in sets else None,
        "runs_without_baselines": sorted(f"{arm} seed {k}" for arm, by_seed in runs.items() for k, r in by_seed.items()
                                         if baseline_rm(cfg, arm, spec) not in r.get("baselines", {})),
        "provenance": provenance_summary(runs),
        "empty_responses": empty_responses(runs, checked or {}),
        "total_wall_s": sum(r["wall_s"] + r.get("eval_s", 0) for a in runs.values() for r in a.values())
                        + sum(i.get("train_seconds", 0) for i in rm_info.values()),
        "config": cfg,
    }


def empty_responses(runs: dict, checked: dict) -> dict:
    """Per arm: the evaluated responses at the end against the rollouts' (OpenRLHF samples rollouts with vLLM
    min_tokens=1, so a policy that ends most responses at their first token still rolls out full-length ones), and,
    for the runs eos_check.py re-evaluated, the probability of an empty response and gold sampled both ways."""
    out = {}
    for arm, by_seed in runs.items():
        rows = {}
        for seed, r in sorted(by_seed.items()):
            c = checked.get(f"{arm}/seed{seed}", {})
            end = c.get("steps", {}).get(str(c.get("end")), {})
            rows[seed] = {"eval_chars_end": r["heldout"]["mean_chars"],
                          "rollout_tokens_end": last_mean(r, TAG_ROLLOUT_LEN),
                          "p_eos_first_end": end.get("p_eos_first"),
                          "p_eos_first_max": max((x["p_eos_first"] for x in c.get("steps", {}).values()), default=None),
                          "gold_as_evaluated": end.get("min0", {}).get("gold"),
                          "gold_as_rolled_out": end.get("min1", {}).get("gold"),
                          "win_rate_as_rolled_out": end.get("min1", {}).get("gold_win_rate_vs_sft")}
        short = [k for k, v in rows.items() if v["rollout_tokens_end"] and v["eval_chars_end"] < 0.5 * v["rollout_tokens_end"]]
        out[arm] = {"runs": rows, "seeds_evaluated_short": short}
    return out


def empty_table(summary: dict) -> str:
    lines = ["| arm | seed | evaluated chars/response at end | rollout tokens/response (last 8 steps) | P(EOS first) at end "
             "(max along) | held-out gold: sampled as evaluated | sampled as rolled out (EOS masked first) |",
             "|---|---|---|---|---|---|---|"]
    for arm, a in summary["empty_responses"].items():
        for seed, v in a["runs"].items():
            if v["p_eos_first_end"] is None and seed not in a["seeds_evaluated_short"]:
                continue  # only the runs eos_check.py re-evaluated and the runs whose evaluated responses are short
            eos = "-" if v["p_eos_first_end"] is None else f"{v['p_eos_first_end']:.3f} ({v['p_eos_first_max']:.3f})"
            gold = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(f"| {arm} | {seed} | {v['eval_chars_end']:.1f} | {v['rollout_tokens_end']:.1f} | {eos} "
                         f"| {gold(v['gold_as_evaluated'])} | {gold(v['gold_as_rolled_out'])} |")
    return "\n".join(lines)


def provenance_summary(runs: dict) -> dict:
    """Which runs share a plugin commit, reward models and machine (runs of different sessions use reward models
    trained again by the same recipe: see README.md)."""
    groups: dict = {}
    for arm, by_seed in runs.items():
        for seed, r in sorted(by_seed.items()):
            p = r.get("provenance", {})
            key = json.dumps({k: p.get(k) for k in ("plugin_commit", "sft_digest", "machine")}, sort_keys=True)
            groups.setdefault(key, {"runs": [], "rm_digests": {}})
            groups[key]["runs"].append(f"{arm} seed {seed}")
            if p.get("rm_digest"):
                groups[key]["rm_digests"].setdefault(p["rm_digest"], []).append(f"{arm} seed {seed}")
    return {"groups": [{**json.loads(k), **v} for k, v in groups.items()]}


def fmt(x, nd=3) -> str:
    if not x or x.get("mean") is None:
        return "-"
    if x.get("ci95"):
        return f"{x['mean']:.{nd}f} [{x['ci95'][0]:.{nd}f}, {x['ci95'][1]:.{nd}f}]"
    return f"{x['mean']:.{nd}f}"


def table(summary: dict) -> str:
    lines = ["| arm | runs | held-out gold | gold win rate vs SFT | gold minus raw (paired) | oracle gain recovered "
             "| peak held-out gold | KL at end | critic loss at end | generations/run | wall s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if summary["sft"]["heldout_gold"] is not None:
        lines.append(f"| SFT (start) | - | {summary['sft']['heldout_gold']:.3f} | 0.500 | - | 0 | - | 0 | - | - | - |")
    for arm, a in summary["arms"].items():
        if not a.get("runs_done"):
            lines.append(f"| {arm} | 0 | - | - | - | - | - | - | - | - | - |")
            continue
        g = a["generations_per_run"]
        gens = f"{g['online']} + {g['offline']} offline" if g["offline"] else f"{g['online']}"
        gens += f" + {g['refresh']} refresh" if g.get("refresh") else ""
        lines.append(
            f"| {arm} | {a['runs_done']} | {fmt(a['heldout_gold_final'])} | {fmt(a['heldout_gold_win_rate_vs_sft'])} "
            f"| {fmt(a.get('paired_vs_raw', {}).get('heldout_gold_diff'))} | {fmt(a.get('oracle_gain_recovered'), 2)} "
            f"| {fmt(a['heldout_gold_peak_along'])} | {fmt(a['kl_final'], 4)} | {fmt(a['critic_loss_final'], 4)} "
            f"| {gens} | {a['wall_s']['mean']:.0f} |")
    return "\n".join(lines)


def rm_table(summary: dict) -> str:
    """Each reward model's pairwise accuracy against clean gold labels on fresh pairs, overall and by flip rate."""
    lines = ["| reward model | pairs (flipped) | train s | accuracy, fresh pairs of training prompts | by flip rate of the prompt "
             "| accuracy, held-out prompts |", "|---|---|---|---|---|---|"]
    for rm, info in summary["reward_models"].items():
        tr, ho = info["accuracy_train_prompts_fresh_pairs"], info["accuracy_heldout_prompts"]
        buckets = "; ".join(f"{k}: {b['accuracy']:.3f} ({b['pairs']})" for k, b in tr["by_flip_rate"].items())
        lines.append(f"| {rm} | {info['pairs']} ({info['flipped']}) | {info['train_seconds']:.0f} | {tr['accuracy']:.3f} "
                     f"({tr['pairs']} pairs) | {buckets} | {ho['accuracy']:.3f} ({ho['pairs']} pairs) |")
    return "\n".join(lines)


def verdict(x: dict | None, sign: int = 1) -> str:
    """Supported when the 95% interval of the (signed) measure lies above 0."""
    if not x or x.get("mean") is None:
        return "pending (no runs yet)"
    if not x.get("ci95"):
        return f"pending (n={x['n']})"
    lo, hi = sorted(sign * v for v in x["ci95"])
    if lo > 0:
        return "yes"
    if hi < 0:
        return "no: the opposite"
    return "not shown (interval includes 0)"


def claims_table(summary: dict, spec: Analysis) -> str:
    c = summary.get("claims") or {}
    rows = []
    for arm, ref in spec.contrastive:
        u, d, v = c.get(f"uncertainty_{arm}", {}), c.get(f"difficulty_{arm}", {}), c.get(f"vs_{ref}_{arm}", {})
        rows += [
            (f"penalizes reward uncertainty ({arm})",
             f"gold gain over {ref} on the prompts of the highest flip-rate quarter {fmt(u.get('gain_over_raw_high_flip'))}, "
             f"lowest {fmt(u.get('gain_over_raw_low_flip'))}; high minus low {fmt(u.get('high_minus_low'))}",
             verdict(u.get("high_minus_low"))),
            (f"calibrates by task difficulty ({arm})",
             f"gold gain over {ref} on the hardest third of prompts (SFT gold) {fmt(d.get('hard'))}, easiest "
             f"{fmt(d.get('easy'))}; hard minus easy {fmt(d.get('hard_minus_easy'))}",
             verdict(d.get("hard_minus_easy"))),
            (f"encourages improvement over baselines ({arm})",
             f"share of samples beating their stored baseline (end), minus {ref}'s {fmt(v.get('beat_share_end'))}; "
             f"mean along training, minus {ref}'s {fmt(v.get('beat_share_mean_along'))}",
             verdict(v.get("beat_share_end"))),
            (f"reduces variance ({arm})",
             f"across-prompt std of the reward entering the advantage, minus {ref}'s "
             f"{fmt(v.get('advantage_input_spread'))}; critic loss (mean over steps) minus {ref}'s "
             f"{fmt(v.get('critic_loss_mean'), 4)}",
             verdict(v.get("advantage_input_spread"), sign=-1)),
        ]
    r = c.get("robustness", {})
    (_, _, w_key), (_, _, b_key), diff_key = spec.robustness
    rows.insert(0, ("improves robustness (cr_mean)",
                    spec.robustness_text.format(worse=fmt(r.get(w_key)), better=fmt(r.get(b_key)),
                                                diff=fmt(r.get(diff_key))),
                    verdict(r.get(diff_key))))
    lines = ["| claim | measured (mean [95% interval over seeds], paired by seed) | supported here? |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {v} |" for a, b, v in rows]
    return "\n".join(lines)


def plot(work: Path, png: Path, s: dict, summary: dict, spec: Analysis) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = load_runs(work)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = dict(zip(s["arms"], ["black", "tab:gray", "tab:blue", "tab:cyan", "tab:orange", "tab:red",
                                  "tab:olive", "tab:purple", "tab:brown"]))
    sft = summary["sft"]["heldout_gold"]
    for arm in s["arms"]:
        rs = list(runs.get(arm, {}).values())
        if not rs:
            continue
        label = f"{arm} (n={len(rs)})"
        a = summary["arms"][arm]["along"]
        steps = [0] + [int(k) for k in a]
        gold = [sft] + [a[k]["heldout_gold"]["mean"] for k in a]
        lo = [sft] + [min(a[k]["heldout_gold"]["values"]) for k in a]
        hi = [sft] + [max(a[k]["heldout_gold"]["values"]) for k in a]
        axes[0].plot(steps, gold, color=colors[arm], label=label, marker="o", ms=3)
        axes[0].fill_between(steps, lo, hi, color=colors[arm], alpha=0.12)
        for r in rs:
            pts = [(kl_at(r, int(k)), r["along"][k]["heldout"]["gold"]) for k in sorted(r["along"], key=int)]
            pts = [p for p in pts if p[0] is not None]
            axes[1].plot([0] + [p[0] for p in pts], [sft] + [p[1] for p in pts], color=colors[arm], alpha=0.5,
                         marker="o", ms=2, label=label if r is rs[0] else None)
        crit = [dict(series(r, TAG_CRITIC)) for r in rs]
        if crit and crit[0]:
            ks = sorted(set.intersection(*(set(c) for c in crit)))
            y = smooth(np.array([[c[k] for k in ks] for c in crit]), 8).mean(0)
            axes[2].plot(ks, y, color=colors[arm], label=label)
    axes[0].set(xlabel="PPO step", ylabel="held-out gold (checkpoint samples)",
                title="gold along training (mean over seeds, band min-max)")
    axes[1].set(xlabel="KL to reference (train/kl, mean of the 8 steps up to the checkpoint)", ylabel="held-out gold",
                title="gold against KL (one line per run, in step order)")
    axes[2].set(xlabel="PPO step", ylabel="critic loss (8-step mean)", title="critic loss (gae arms)")
    for ax in axes:
        if sft is not None and ax is not axes[2]:
            ax.axhline(sft, color="k", ls=":", lw=1, label="SFT policy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{spec.title.lower()}: {spec.plot_title}; {summary['runs_done']}/{summary['runs_planned']} runs",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def analyze(work: Path, results_dir: Path, cfg: dict, s: dict, spec: Analysis, archive: Path | None = None,
            extra=None) -> dict:
    """Write results.json, results_table.md and the PNG; `extra(work, summary)` adds an experiment's own measures
    (results.json `extra`, and a markdown section after the arm table)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    if (work / "sft_train_eval.json").exists():
        stamp_baselines(work, cfg, json.loads((work / "sft_train_eval.json").read_text())["words"], archive, spec)
    checked = results_dir / EOS_CHECK
    summary = summarize(work, cfg, s, spec, json.loads(checked.read_text()) if checked.exists() else None)
    section = ""
    if extra is not None:
        summary["extra"], section = extra(work, cfg, summary)
        section = f"{section}\n\n"
    status = "complete" if summary["complete"] else f"PARTIAL: {summary['runs_done']} of {summary['runs_planned']} runs"
    (results_dir / "results.json").write_text(json.dumps(summary, indent=1))
    (results_dir / "results_table.md").write_text(f"{spec.title}, {status}.\n\n{table(summary)}\n\n{section}"
                                                  f"{claims_table(summary, spec)}\n\n{rm_table(summary)}\n\n"
                                                  f"Empty responses (eos_check.py; README.md):\n\n{empty_table(summary)}\n")
    try:
        plot(work, results_dir / spec.png, s, summary, spec)
    except Exception as exc:  # a plot problem must not stop the experiment
        print(f"[analyze] plot failed: {exc!r}", file=sys.stderr)
    return summary
