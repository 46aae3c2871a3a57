"""`openrlhf-contrastive inspect STORE`: what a baseline store holds, as text and as a PNG report.

    openrlhf-contrastive inspect ./baselines [--rollouts scored.jsonl] [--prompts prompts.jsonl] [--png report.png]
                                             [--json]

Printed: k, number of prompts, provenance (the fingerprint the stage wrote), the distribution of the per-prompt
baseline means and stds, whether a per-prompt baseline can help this reward (`openrlhf_contrastive.diagnose`: the
variance decomposition and its verdict), the hardest and easiest prompts, the coverage of the given prompts or
rollouts, and the refresh generations (--contrastive.refresh_every) with how far b(x) moved at each; with --json the
same figures as one JSON object. The PNG (matplotlib, Agg) shows

    1. per-prompt baseline means, sorted, with the k baseline rewards of each prompt as dots: difficulty
    2. baseline std against baseline mean: reward uncertainty against difficulty
    2b. the predicted spread of r - b relative to r against k (the decomposition), the store's leave-one-out ratio
       and, with --rollouts, the rollouts' measured ratio
    3. with --rollouts: the spread across prompts of the raw reward r and of the contrastive r - b
    4. with --rollouts: r against the prompt's baseline b for every rollout
    5. (the demo's training part) reward r and r - b per PPO step of each training run
    6. (the demo's training part) each trained policy's win rate against the SFT baselines, with its interval

A rollouts file is JSON lines of {"prompt": exact prompt string, "label": optional, "reward": r}, as the demo
writes them; rollouts of prompts missing from the store count against the coverage and are left out of 3 and 4.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openrlhf_contrastive.diagnose import Diagnosis, diagnose, spread_ratio
from openrlhf_contrastive.store import (
    BaselineStore,
    StoreError,
    list_generations,
    prompt_key,
    prompt_keys,
    read_prompt_texts,
    read_responses,
)


@dataclass
class ScoredRollouts:
    """Rollouts matched with the store: raw reward r and baseline mean b of each rollout whose prompt is stored."""

    keys: np.ndarray  # (n,) uint64, every rollout
    hit: np.ndarray  # (n,) bool
    reward: np.ndarray  # (m,) r of the hits
    baseline: np.ndarray  # (m,) baseline mean of the hits' prompts

    @property
    def coverage(self) -> float:
        return float(self.hit.mean()) if len(self.hit) else float("nan")

    @property
    def spread_ratio(self) -> float:
        """Measured std(r - b) / std(r) over the matched rollouts (NaN where r does not vary)."""
        spread = self.reward.std() if len(self.reward) else 0.0
        return float((self.reward - self.baseline).std() / spread) if spread > 0 else float("nan")


@dataclass
class TrainingRun:
    """One PPO run of the demo's training part: per step the mean reward r and r - b of its rollouts, and the trained
    policy's win rate P(r > r_j) against the SFT baselines with its 95% interval."""

    name: str
    steps: list[int]
    reward: list[float]
    reward_minus_baseline: list[float]
    win_rate: float
    win_rate_interval: list[float]


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not a JSON line ({e}). Each line must be one JSON object.") from None
    return rows


def label_keyed(store: BaselineStore) -> bool:
    return bool(store.fingerprint.get("prompt", {}).get("label_key"))


def match_rollouts(store: BaselineStore, rows: list[dict], source: str = "rollouts") -> ScoredRollouts:
    """Look up the prompt of each scored rollout {"prompt", "label"?, "reward"} in the store."""
    bad = [i for i, row in enumerate(rows) if "prompt" not in row or "reward" not in row]
    if bad:
        raise ValueError(
            f"{source}: line {bad[0] + 1} lacks 'prompt' or 'reward'. Each rollout is a JSON object with the exact "
            'prompt string OpenRLHF built, its reward and (when the store is label-keyed) its label: {"prompt": ..., '
            '"label": ..., "reward": 0.3}.'
        )
    keyed = label_keyed(store)
    keys = np.array([prompt_key(r["prompt"], str(r.get("label")) if keyed else None) for r in rows], dtype=np.uint64)
    _, hit = store.lookup(keys)
    rows_by = np.searchsorted(store.keys, keys[hit])
    reward = np.array([float(r["reward"]) for r in rows], dtype=np.float64)[hit]
    return ScoredRollouts(keys, hit, reward, store.mean[rows_by])


def prompt_coverage(store: BaselineStore, prompts: list[str], labels: list[str] | None = None) -> float:
    """Fraction of `prompts` (exact OpenRLHF prompt strings) that have baselines in the store."""
    _, hit = store.lookup(prompt_keys(prompts, labels if label_keyed(store) else None))
    return float(hit.mean()) if len(hit) else float("nan")


def generations(store: BaselineStore) -> list[dict]:
    """The refresh generations of the store, oldest first: policy step, prompts, mean baseline, and how far b(x) (the
    mean of a prompt's k baselines) moved from the baselines in use just before it (the newest older generation that
    holds the prompt, else the SFT store): the mean and the mean absolute shift over its prompts."""
    current = dict(zip(store.keys.tolist(), store.mean.tolist()))
    out = []
    for step, path in list_generations(store.path):
        generation = BaselineStore.load(path)
        before = np.array([current.get(key, np.nan) for key in generation.keys.tolist()])
        moved = generation.mean - before
        known = np.isfinite(moved)
        out.append({
            "policy_step": step, "path": str(path), "prompts": len(generation),
            "baseline_mean": float(generation.mean.mean()) if len(generation) else None,
            "mean_shift": float(moved[known].mean()) if known.any() else None,
            "mean_abs_shift": float(np.abs(moved[known]).mean()) if known.any() else None,
        })
        current.update(zip(generation.keys.tolist(), generation.mean.tolist()))
    return out


def describe(store: BaselineStore, rollouts: ScoredRollouts | None = None, coverage: float | None = None, examples: int = 3,
             diagnosis: Diagnosis | None = None) -> str:
    """The text summary `inspect` prints (`diagnosis`: the store's, computed here when not given)."""
    texts = read_prompt_texts(store.path)
    fp = dict(store.fingerprint)
    info = fp.pop("info", {})
    q = np.quantile(store.mean, [0, 0.25, 0.5, 0.75, 1]) if len(store) else [float("nan")] * 5
    lines = [
        f"baseline store {store.path}",
        f"  prompts {len(store)}, k = {store.k} baseline rewards each ({len(store) * store.k} scored responses)",
        "  provenance:",
        *(f"    {name:<16} {json.dumps(value)}" for name, value in sorted(fp.items())),
        *(f"    info.{name:<11} {json.dumps(value)}" for name, value in sorted(info.items())),
        "  baseline mean per prompt: min {:.3f}  q25 {:.3f}  median {:.3f}  q75 {:.3f}  max {:.3f}".format(*q),
    ]
    if len(store):
        lines += [
            f"  mean over prompts {store.mean.mean():.4f}, spread of prompt means (std) {store.mean.std():.4f}, "
            f"median within-prompt std {np.median(store.std):.4f}",
        ]
    lines += ["  " + line for line in (diagnosis or diagnose(store.rewards)).lines()]
    if len(store):
        order = np.argsort(store.mean, kind="stable")
        for title, idx in (("hardest (lowest baseline)", order[:examples]), ("easiest (highest baseline)", order[::-1][:examples])):
            lines.append(f"  {title}:")
            for i in idx:
                prompt, _, label = texts.get(int(store.keys[i]), "?").partition("\x00")  # label keyed: prompt NUL label
                shown = f"...{prompt[-80:]!r}" + (f"  label {label!r}" if label else "")
                lines.append(f"    mean {store.mean[i]:+.3f}  std {store.std[i]:.3f}  {shown}")
        if store.has_responses:  # --contrastive.keep_responses: the k texts behind the rewards
            responses = read_responses(store.path)
            lines.append("  kept responses (the hardest and the easiest prompt):")
            for i in dict.fromkeys((int(order[0]), int(order[-1]))):
                lines.append(f"    prompt ...{texts.get(int(store.keys[i]), '?').partition(chr(0))[0][-60:]!r}")
                for text, reward in zip(responses.get(int(store.keys[i]), []), store.rewards[i]):
                    lines.append(f"      r {reward:+.3f}  {text[:100]!r}" + ("..." if len(text) > 100 else ""))
    refreshed = generations(store)
    if refreshed:
        lines.append("  refresh generations (--contrastive.refresh_every), sampled from the policy after PPO step s:")
        for g in refreshed:
            moved = "" if g["mean_shift"] is None else (
                f", b(x) moved {g['mean_shift']:+.4f} on average ({g['mean_abs_shift']:.4f} in absolute value)")
            lines.append(f"    s = {g['policy_step']}: {g['prompts']} prompts, mean baseline {g['baseline_mean']:.4f}{moved}")
    if coverage is not None:
        lines.append(f"  coverage of the given prompts: {coverage:.1%}")
    if rollouts is not None:
        lines.append(f"  coverage of the rollouts' prompts: {rollouts.coverage:.1%} of {len(rollouts.hit)} rollouts")
        if len(rollouts.reward):
            r, c = rollouts.reward, rollouts.reward - rollouts.baseline
            lines.append(
                f"  rollouts: r mean {r.mean():+.4f} std {r.std():.4f};  r - b mean {c.mean():+.4f} std {c.std():.4f} "
                f"({rollouts.spread_ratio:.3f}x);  beat their baseline {np.mean(c > 0):.1%}"
            )
    return "\n".join(lines)


def figures(store: BaselineStore, rollouts: ScoredRollouts | None = None, coverage: float | None = None,
            diagnosis: Diagnosis | None = None) -> dict:
    """What `inspect --json` prints: the figures of `describe` as one JSON-ready object."""
    out = {
        "store": str(store.path),
        "prompts": len(store),
        "k": store.k,
        "fingerprint": store.fingerprint,
        "keep_responses": store.has_responses,
        "baseline_mean": float(store.mean.mean()) if len(store) else None,
        "spread_of_prompt_means": float(store.mean.std()) if len(store) else None,
        "median_within_prompt_std": float(np.median(store.std)) if len(store) else None,
        "diagnosis": (diagnosis or diagnose(store.rewards)).to_dict(),
        "coverage_of_prompts": coverage,
        "rollouts": None,
    }
    refreshed = generations(store)
    if refreshed:
        out["generations"] = refreshed
    if rollouts is not None:
        r, c = rollouts.reward, rollouts.reward - rollouts.baseline
        out["rollouts"] = {
            "count": len(rollouts.hit), "coverage": rollouts.coverage,
            "reward_mean": float(r.mean()) if len(r) else None, "reward_std": float(r.std()) if len(r) else None,
            "contrastive_std": float(c.std()) if len(r) else None, "spread_ratio": rollouts.spread_ratio,
            "beat_baseline": float(np.mean(c > 0)) if len(r) else None,
        }
    return out


def plot(store: BaselineStore, png: str | Path, rollouts: ScoredRollouts | None = None, title: str | None = None,
         training: list[TrainingRun] | None = None, training_policy: str = "", diagnosis: Diagnosis | None = None) -> Path:
    """Write the PNG report (3 panels, 5 with rollouts, 7 with training runs; 2b: `diagnosis`, computed here when
    not given) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_rollouts = rollouts is not None and len(rollouts.reward) > 0
    rows = 1 + with_rollouts + bool(training)
    fig = plt.figure(figsize=(16, 4.75 * rows))
    grid = fig.add_gridspec(rows, 6)  # three panels in the first row, two in each other
    axes = np.array([[fig.add_subplot(grid[0, 0:2]), fig.add_subplot(grid[0, 2:4])]]
                    + [[fig.add_subplot(grid[row, 0:3]), fig.add_subplot(grid[row, 3:6])] for row in range(1, rows)])
    fig.suptitle(title or f"baseline store {store.path}: {len(store)} prompts, k = {store.k}", fontsize=12)

    # 1. difficulty: per-prompt baseline means, sorted, with each prompt's k rewards
    ax = axes[0, 0]
    order = np.argsort(store.mean, kind="stable")
    x = np.arange(len(order))
    ax.scatter(np.repeat(x, store.k), store.rewards[order].ravel(), s=6, color="tab:gray", alpha=0.45, label="baseline rewards r_j")
    ax.plot(x, store.mean[order], color="tab:blue", lw=2, label="baseline mean b(x)")
    ax.set(xlabel="prompt (sorted by baseline mean)", ylabel="reward", title="1. Per-prompt baseline: prompt difficulty")
    ax.legend(loc="upper left", fontsize=8)

    # 2. uncertainty against difficulty
    ax = axes[0, 1]
    ax.scatter(store.mean, store.std, s=16, color="tab:purple", alpha=0.45)
    ax.set(xlabel="baseline mean b(x)", ylabel=f"baseline std over k = {store.k}",
           title="2. Reward uncertainty (std) against difficulty (mean)")

    # 2b. the decomposition: will r - b spread less than r?
    plot_decomposition(fig.add_subplot(grid[0, 4:6]), diagnosis or diagnose(store.rewards),
                       rollouts.spread_ratio if with_rollouts else None)

    if with_rollouts:
        r, b = rollouts.reward, rollouts.baseline
        keys = rollouts.keys[rollouts.hit]
        uniq, inverse = np.unique(keys, return_inverse=True)
        per_prompt_r = np.bincount(inverse, weights=r) / np.bincount(inverse)
        per_prompt_c = np.bincount(inverse, weights=r - b) / np.bincount(inverse)

        # 3. spread across prompts of r and of r - b
        ax = axes[1, 0]
        bins = np.linspace(min(per_prompt_r.min(), per_prompt_c.min()), max(per_prompt_r.max(), per_prompt_c.max()), 25)
        ax.hist(per_prompt_r, bins=bins, alpha=0.55, color="tab:orange", label=f"raw r (std across prompts {per_prompt_r.std():.3f})")
        ax.hist(per_prompt_c, bins=bins, alpha=0.55, color="tab:green", label=f"contrastive r - b (std {per_prompt_c.std():.3f})")
        ax.axvline(0, color="black", lw=0.8)
        ax.set(xlabel="per-prompt mean of the rollouts' reward", ylabel="prompts",
               title=f"3. Spread across {len(uniq)} prompts: r vs r - b")
        ax.legend(fontsize=8, loc="best")

        # 4. every rollout: r against its prompt's baseline
        ax = axes[1, 1]
        beat = r > b
        ax.scatter(b[beat], r[beat], s=14, color="tab:green", alpha=0.5, label=f"above baseline ({beat.mean():.0%})")
        ax.scatter(b[~beat], r[~beat], s=14, color="tab:red", alpha=0.5, label=f"at or below ({1 - beat.mean():.0%})")
        lo, hi = min(b.min(), r.min()), max(b.max(), r.max())
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="r = b")
        ax.set(xlabel="baseline mean b(x) of the rollout's prompt", ylabel="rollout reward r",
               title=f"4. {len(r)} rollouts: reward against baseline")
        ax.legend(fontsize=8)

    if training:
        plot_training(axes[-1], training, training_policy)

    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_decomposition(ax, d: Diagnosis, measured: float | None = None) -> None:
    """2b. Predicted std(r - b) / std(r) for fresh SFT samples against k (95% band), the store's leave-one-out ratio
    and, when given, the rollouts' `measured` ratio."""
    if not d.available:
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(d.verdict, 50)), ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
        ax.set(xticks=[], yticks=[], title="2b. Will r - b spread less than r?")
        return
    ks = np.arange(1, 65)
    ratio = [spread_ratio(d.icc, k) for k in ks]
    lo, hi = ([spread_ratio(icc, k) for k in ks] for icc in d.icc_interval[::-1])
    ax.fill_between(ks, lo, hi, color="tab:blue", alpha=0.2, label="95% interval (bootstrap over prompts)")
    ax.plot(ks, ratio, color="tab:blue", lw=2, label=f"predicted: sqrt((1 - ICC)(1 + 1/k)), ICC {d.icc:.2f}")
    ax.axhline(1, color="black", lw=0.8, label="r - b spreads as much as r")
    ax.plot([d.k], [d.predicted_ratio], "o", color="tab:blue", ms=7, label=f"store's k = {d.k}: {d.predicted_ratio:.2f}")
    ax.plot([d.k - 1], [d.loo_ratio], "x", color="tab:purple", ms=8,
            label=f"leave-one-out on the store (k - 1): {d.loo_ratio:.2f}")
    if measured is not None and np.isfinite(measured):
        ax.plot([d.k], [measured], "s", color="tab:green", ms=7, label=f"rollouts' std(r - b) / std(r): {measured:.2f}")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="baselines per prompt k", ylabel="std(r - b) / std(r)",
           title=f"2b. Will r - b spread less than r? V {d.between:.3g}, S {d.within:.3g}")
    ax.legend(fontsize=7)


def plot_training(axes, runs: list[TrainingRun], policy: str = "") -> None:
    """5. r and r - b per PPO step of every run; 6. each trained policy's win rate against the SFT baselines.
    `policy` names the trained policy in the titles where it is not the one of panels 1-4."""
    on = f" ({policy})" if policy else ""
    colors = ["tab:green", "tab:orange", "tab:blue", "tab:red"]
    ax = axes[0]
    for run, color in zip(runs, colors):
        ax.plot(run.steps, run.reward, color=color, lw=2, marker="o", ms=3, label=f"{run.name}: reward r")
        ax.plot(run.steps, run.reward_minus_baseline, color=color, lw=1.5, ls="--", marker="o", ms=3,
                label=f"{run.name}: r - b")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="PPO step", ylabel="mean over the step's rollouts", title=f"5. Training{on}: r and r - b per PPO step")
    ax.legend(fontsize=8)

    ax = axes[1]
    x = np.arange(len(runs))
    rates = np.array([run.win_rate for run in runs])
    lo = np.array([run.win_rate_interval[0] for run in runs])
    hi = np.array([run.win_rate_interval[1] for run in runs])
    ax.bar(x, rates, color=colors[: len(runs)], alpha=0.7, yerr=[rates - lo, hi - rates], capsize=8)
    for xi, rate, top in zip(x, rates, hi):
        ax.text(xi, top + 0.02, f"{rate:.3f}", ha="center", fontsize=9)
    ax.axhline(0.5, color="black", lw=0.8, label="SFT start (0.5)")
    ax.set(xticks=x, xticklabels=[run.name for run in runs], ylim=(0, 1.05), ylabel="P(r > r_j), ties half",
           title=f"6. Trained policy{on} vs its SFT baselines (95% interval)")
    ax.legend(fontsize=8, loc="lower right")


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(
        prog="openrlhf-contrastive inspect",
        description="Summarise a baseline store (prompts, k, provenance, baseline distribution, whether a per-prompt "
        "baseline can help this reward: the variance decomposition, coverage) and write a PNG report.",
    )
    parser.add_argument("store", help="the baseline store directory (--contrastive.baseline_path)")
    parser.add_argument("--rollouts", help='JSON lines of scored rollouts {"prompt", "label"?, "reward"}: adds their coverage and the spread of r and r - b')
    parser.add_argument("--prompts", help='JSON lines {"prompt": exact OpenRLHF prompt string, "label"?}: prints their coverage')
    parser.add_argument("--png", help="where to write the report (default: STORE/report.png)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of text")
    args = parser.parse_args(argv)
    try:
        store = BaselineStore.load(args.store)
        rollouts = match_rollouts(store, read_jsonl(args.rollouts), args.rollouts) if args.rollouts else None
        coverage = None
        if args.prompts:
            rows = read_jsonl(args.prompts)
            coverage = prompt_coverage(store, [r["prompt"] for r in rows], [str(r.get("label")) for r in rows])
    except (StoreError, ValueError, OSError) as e:
        print(f"openrlhf-contrastive inspect: {e}", flush=True)
        return 2
    diagnosis = diagnose(store.rewards)
    png = plot(store, args.png or Path(args.store) / "report.png", rollouts, diagnosis=diagnosis)
    if args.json:
        print(json.dumps({**figures(store, rollouts, coverage, diagnosis), "png": str(png)}, indent=2))
    else:
        print(describe(store, rollouts, coverage, diagnosis=diagnosis))
        print(f"report written to {png}")
    return 0
