"""Analysis of the evidence experiment: results.json and evidence.png from whatever runs are finished.

    python -m benchmarks.evidence.run --analyze-only [--out .cache/evidence/full] [--results benchmarks/evidence] [--smoke]

Per arm (over seeds: mean and 95% t-interval): held-out gold reward of the final policy, its gold win rate
against the SFT policy's samples, held-out proxy; from the per-step training logs: final gold and proxy (mean of
the last 8 steps), peak gold (max over steps of an 8-step moving average), KL to the reference at the end,
critic loss; wall time and generations. Also the per-seed paired difference to the `raw` arm (same seeds,
same prompt order). Runs that are not finished are left out (their count is in `runs_done`).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from lab.stats import TAG_CRITIC, TAG_GOLD, TAG_KL, TAG_PROXY, ci, last_mean, load_runs, peak_smoothed, series, smooth


def settings(cfg: dict, smoke: bool) -> dict:
    """The effective settings: config.json, with the smoke overrides in --smoke mode."""
    s = {
        "arms": list(cfg["arms"]),
        "seeds": list(cfg["ppo"]["seeds"]),
        "num_episodes": cfg["ppo"]["num_episodes"],
        "n_train": cfg["task"]["n_train_prompts"],
        "n_heldout": cfg["task"]["n_heldout_prompts"],
    }
    if smoke:
        sm = cfg["smoke"]
        s.update(arms=sm["arms"], seeds=sm["seeds"], num_episodes=sm["num_episodes"], n_train=sm["n_train_prompts"],
                 n_heldout=sm["n_heldout_prompts"])
    return s


def summarize(work: Path, cfg: dict, s: dict) -> dict:
    runs = load_runs(work)
    sft_path = work / "sft_heldout.json"
    sft = json.loads(sft_path.read_text()) if sft_path.exists() else None
    store_path = work / "baselines_done.json"
    store = json.loads(store_path.read_text()) if store_path.exists() else None
    arms = {}
    for arm in s["arms"]:
        by_seed = runs.get(arm, {})
        rs = [by_seed[k] for k in sorted(by_seed)]
        if not rs:
            arms[arm] = {"runs_done": 0}
            continue
        tags = sorted(set().union(*(r["scalars"] for r in rs)))
        arms[arm] = {
            "runs_done": len(rs),
            "seeds": sorted(by_seed),
            "heldout_gold_final": ci([r["heldout"]["gold"] for r in rs]),
            "heldout_gold_win_rate_vs_sft": ci([r["heldout"]["gold_win_rate_vs_sft"] for r in rs]),
            "heldout_proxy_final": ci([r["heldout"]["proxy"] for r in rs]),
            "heldout_mean_chars": ci([r["heldout"]["mean_chars"] for r in rs]),
            "train_gold_final": ci([last_mean(r, TAG_GOLD) for r in rs]),
            "train_gold_peak": ci([peak_smoothed(r, TAG_GOLD) for r in rs]),
            "train_proxy_final": ci([last_mean(r, TAG_PROXY) for r in rs]),
            "kl_final": ci([last_mean(r, TAG_KL) for r in rs]),
            "critic_loss_final": ci([last_mean(r, TAG_CRITIC) for r in rs]),
            "steps": [r["steps"] for r in rs],
            "wall_s": ci([r["wall_s"] for r in rs]),
            "generations_per_run": rs[0]["generations"],
            "logged_tags": tags,
        }
    raw = runs.get("raw", {})
    for arm in s["arms"]:
        if arm == "raw" or arm not in runs:
            continue
        common = sorted(set(raw) & set(runs[arm]))
        if common:
            arms[arm]["paired_vs_raw"] = {
                "seeds": common,
                "heldout_gold_diff": ci([runs[arm][k]["heldout"]["gold"] - raw[k]["heldout"]["gold"] for k in common]),
                "heldout_win_rate_diff": ci([runs[arm][k]["heldout"]["gold_win_rate_vs_sft"]
                                             - raw[k]["heldout"]["gold_win_rate_vs_sft"] for k in common]),
            }
    sft_summary = None
    if sft:
        sft_summary = {"heldout_gold": statistics.mean(g for gs in sft["gold"] for g in gs),
                       "heldout_proxy": statistics.mean(g for gs in sft["proxy"] for g in gs),
                       "gold_win_rate_vs_sft": 0.5}
    sft_train_path = work / "sft_train.json"
    sft_train = None
    if sft_train_path.exists():
        st = json.loads(sft_train_path.read_text())
        sft_train = {"gold": statistics.mean(g for gs in st["gold"] for g in gs),
                     "proxy": statistics.mean(g for gs in st["proxy"] for g in gs)}
    n_done = sum(a["runs_done"] for a in arms.values())
    return {
        "experiment": "contrastive vs raw-reward PPO under a noisy proxy reward (benchmarks/evidence)",
        "complete": n_done == len(s["arms"]) * len(s["seeds"]),
        "runs_done": n_done,
        "runs_planned": len(s["arms"]) * len(s["seeds"]),
        "settings": s,
        "plugin_commit": (work / "pkg_commit.txt").read_text().strip() if (work / "pkg_commit.txt").exists() else None,
        "baseline_store": store,
        "sft": sft_summary,
        "sft_train": sft_train,
        "arms": arms,
        "total_wall_s": sum(r["wall_s"] + r.get("eval_s", 0) for a in runs.values() for r in a.values())
                        + (store or {}).get("seconds", 0),
        "config": cfg,
    }


def plot(work: Path, png: Path, s: dict, summary: dict, window: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = load_runs(work)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    colors = dict(zip(s["arms"], ["tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple"]))
    ref = summary.get("sft_train") or {}
    for arm in s["arms"]:
        rs = list(runs.get(arm, {}).values())
        if not rs:
            continue
        label = f"{arm} (n={len(rs)})"
        kls = [dict(series(r, TAG_KL)) for r in rs]
        for col, tag, name in ((0, TAG_GOLD, "gold reward"), (1, TAG_PROXY, "proxy reward (trained on)")):
            per_run = [dict(series(r, tag)) for r in rs]
            steps = sorted(set.intersection(*(set(p) for p in per_run), *(set(k) for k in kls)))
            if not steps:
                continue
            y = smooth(np.array([[p[t] for t in steps] for p in per_run]), window)
            k = smooth(np.array([[kk[t] for t in steps] for kk in kls]), window)
            ax = axes[0, col]
            ax.plot(steps, y.mean(0), color=colors[arm], label=label)
            ax.fill_between(steps, y.min(0), y.max(0), color=colors[arm], alpha=0.15)
            ax.set_xlabel("PPO step")
            ax.set_ylabel(f"{name}, rollouts ({window}-step mean)")
            # Gao-style: reward against KL. train/kl is not monotone in the step, so pool every (KL, reward) point
            # of the arm (all seeds, 8-step means) and show the mean reward per KL decile, +- its standard error.
            ax2 = axes[1, col]
            kx, ky = k.ravel(), y.ravel()
            edges = np.unique(np.quantile(kx, np.linspace(0, 1, 11)))
            which = np.clip(np.searchsorted(edges, kx, side="right") - 1, 0, len(edges) - 2)
            bx, bm, bs = [], [], []
            for b in range(len(edges) - 1):
                sel = which == b
                if sel.sum() >= 2:
                    bx.append(kx[sel].mean())
                    bm.append(ky[sel].mean())
                    bs.append(ky[sel].std(ddof=1) / np.sqrt(sel.sum()))
            bx, bm, bs = map(np.array, (bx, bm, bs))
            ax2.plot(bx, bm, color=colors[arm], label=label, marker="o", ms=3)
            ax2.fill_between(bx, bm - bs, bm + bs, color=colors[arm], alpha=0.15)
            ax2.set_xlabel(f"KL to reference (train/kl, {window}-step mean; points: KL deciles over steps and seeds)")
            ax2.set_ylabel(f"{name}, rollouts ({window}-step mean)")
    for col, key in ((0, "gold"), (1, "proxy")):
        for row in (0, 1):
            ax = axes[row, col]
            if key in ref:
                ax.axhline(ref[key], color="k", ls=":", lw=1, label="SFT policy (same prompts)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"PPO on a noisy proxy: gold (left) and proxy (right) vs step (top; mean over seeds, band min-max) "
                 f"and vs KL (bottom; mean per KL decile, band +-1 s.e.); "
                 f"{summary['runs_done']}/{summary['runs_planned']} runs",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def table(summary: dict) -> str:
    def f(x, nd=3):
        if not x or x.get("mean") is None:
            return "-"
        if x.get("ci95"):
            return f"{x['mean']:.{nd}f} [{x['ci95'][0]:.{nd}f}, {x['ci95'][1]:.{nd}f}]"
        return f"{x['mean']:.{nd}f}"

    lines = ["| arm | runs | held-out gold | gold win rate vs SFT | held-out gold minus raw (paired) | peak train gold "
             "| final train gold | final train proxy | KL at end | critic loss at end | wall s/run | generations/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    if summary.get("sft"):
        st = summary.get("sft_train") or {}
        gt = f"{st['gold']:.3f}" if "gold" in st else "-"
        pt = f"{st['proxy']:.3f}" if "proxy" in st else "-"
        lines.append(f"| SFT (start) | - | {summary['sft']['heldout_gold']:.3f} | 0.500 | - | - | {gt} | {pt} | 0 "
                     f"| - | - | - |")
    for arm, a in summary["arms"].items():
        if not a.get("runs_done"):
            lines.append(f"| {arm} | 0 | - | - | - | - | - | - | - | - | - | - |")
            continue
        paired = f(a.get("paired_vs_raw", {}).get("heldout_gold_diff"))
        g = a["generations_per_run"]
        gens = f"{g['online']} + {g['offline']} offline" if g["offline"] else f"{g['online']}"
        lines.append(f"| {arm} | {a['runs_done']} | {f(a['heldout_gold_final'])} | "
                     f"{f(a['heldout_gold_win_rate_vs_sft'])} | {paired} | {f(a['train_gold_peak'])} | "
                     f"{f(a['train_gold_final'])} | {f(a['train_proxy_final'])} | {f(a['kl_final'], 4)} | "
                     f"{f(a['critic_loss_final'], 4)} | {a['wall_s']['mean']:.0f} | {gens} |")
    return "\n".join(lines)


def analyze(work: Path, results_dir: Path, cfg: dict, s: dict) -> dict:
    results_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(work, cfg, s)
    (results_dir / "results.json").write_text(json.dumps(summary, indent=1))
    (results_dir / "results_table.md").write_text(table(summary) + "\n")
    try:
        plot(work, results_dir / "evidence.png", s, summary)
    except Exception as exc:  # a plot problem must not stop the experiment
        print(f"[analyze] plot failed: {exc!r}", file=sys.stderr)
    return summary

