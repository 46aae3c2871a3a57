"""The prediction beside the outcome (issue 24, item 4): for every reward model the evidence experiments trained on,
what the store's variance decomposition predicts, next to what was measured.

    python -m benchmarks.evidence_v3.predict [--out FILE]     # default benchmarks/evidence_v3/predictions.json

For each reward (v1's proxy; v2's rm_noisy and rm_clean; v3's rm_noisy and rm_weak):
  - the store: k SFT samples of each of the experiment's 1024 training prompts (its config's k, temperature and
    length; transformers on CPU, a fixed seed), scored by that reward, and openrlhf_contrastive.diagnose over it:
    ICC (the prompts' share of the reward variance) and the predicted std(r - b) / std(r), what `inspect` prints
    for a user's store. The stores the runs used are not all kept (v1's and v2's were written by sessions that
    ended), so the same store is drawn again here, the same way for all five; for v3 the in-job store of the run
    is diagnosed too, when its work directory holds it;
  - measured on fresh SFT samples: 8 more SFT samples of each of 256 of those prompts (another seed) scored by the
    reward, r - b with b from the store above: std(r - b) / std(r), the quantity predicted;
  - measured in training: `contrastive/spread_ratio` at step 1 (a batch of fresh SFT rollouts, v3's runs; the
    metric did not exist when v1 and v2 ran);
  - the outcome: held-out gold of the contrastive arm minus raw (paired by seed, mean and 95% interval), from the
    experiment's results.json.

Needs each experiment's work directory with its SFT policy and reward models: v2's and v3's runners build them
(`python -m benchmarks.evidence_v2.run --rm-only --out .cache/evidence_v2/full`; v3's full run); v1's SFT policy is
built here (its proxy is a formula). Run from the repository root with the project venv.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from lab import harness, reward_models, testbed
from lab.stats import ci

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
CACHE = harness.REPO / ".cache"
SEED = 4242  # the redrawn stores' sampling seed; SEED + 1 the fresh samples'
FRESH_PROMPTS, FRESH_SAMPLES = 256, 8
TAG_SPREAD = "train/contrastive/spread_ratio"

# (experiment, its folder, work directory, reward: "proxy" or a reward model, contrastive arm, its raw arm)
SOURCES = [
    ("v1", BENCH / "evidence", CACHE / "evidence" / "predict", "proxy", "cr_mean", "raw"),
    ("v2", BENCH / "evidence_v2", CACHE / "evidence_v2" / "full", "rm_noisy", "cr_mean", "raw"),
    ("v2", BENCH / "evidence_v2", CACHE / "evidence_v2" / "full", "rm_clean", "cr_mean_clean", "raw_clean"),
    ("v3", HERE, CACHE / "evidence_v3" / "full", "rm_noisy", "cr_mean", "raw"),
    ("v3", HERE, CACHE / "evidence_v3" / "full", "rm_weak", "cr_mean_weak", "raw_weak"),
]


def rewards_of(cfg: dict, work: Path, reward: str, words: list[str], responses: list[list[str]]) -> np.ndarray:
    if reward == "proxy":
        return np.array([[testbed.proxy(w, y, cfg["proxy"]) for y in ys] for w, ys in zip(words, responses)])
    return np.array(reward_models.score(work / reward, words, responses))


def redrawn_store(cfg: dict, work: Path) -> tuple[list[str], list[list[str]]]:
    """k SFT samples of every training prompt (cached in work/predict_store_samples.json)."""
    path = work / "predict_store_samples.json"
    words, _ = testbed.split_prompts(cfg)
    if path.exists():
        return words, json.loads(path.read_text())
    p = cfg["ppo"]
    responses = testbed.sample_responses(work / "sft", words, p["k"], p["temperature"], p["max_new_tokens"], SEED)
    path.write_text(json.dumps(responses))
    return words, responses


def fresh_ratio(cfg: dict, work: Path, reward: str, words: list[str], store: np.ndarray) -> dict:
    """std(r - b) / std(r) over fresh SFT samples (FRESH_SAMPLES of each of the first FRESH_PROMPTS training
    prompts, another seed; cached in work/predict_fresh_samples.json) with b each prompt's store mean."""
    path = work / "predict_fresh_samples.json"
    if path.exists():
        responses = json.loads(path.read_text())
    else:
        p = cfg["ppo"]
        responses = testbed.sample_responses(work / "sft", words[:FRESH_PROMPTS], FRESH_SAMPLES, p["temperature"],
                                             p["max_new_tokens"], SEED + 1)
        path.write_text(json.dumps(responses))
    r = rewards_of(cfg, work, reward, words[:FRESH_PROMPTS], responses)
    d = r - store[:FRESH_PROMPTS].mean(axis=1, keepdims=True)
    return {"ratio": float(d.std() / r.std()), "prompts": FRESH_PROMPTS, "samples": int(r.size)}


def paired_gain(results: dict, arm: str, raw: str) -> dict | None:
    """Held-out gold of `arm` minus `raw` at the end, paired by seed, from an experiment's results.json."""
    a, b = results["arms"].get(arm, {}), results["arms"].get(raw, {})
    if not a.get("runs_done") or not b.get("runs_done"):
        return None
    va = dict(zip(a["seeds"], a["heldout_gold_final"]["values"]))
    vb = dict(zip(b["seeds"], b["heldout_gold_final"]["values"]))
    common = sorted(set(va) & set(vb))
    return ci([va[s] - vb[s] for s in common]) | {"seeds": common} if common else None


def step1_spread(folder: Path, arm: str) -> dict | None:
    """contrastive/spread_ratio and its prediction at each archived run's first step."""
    measured, predicted = [], []
    for path in sorted((folder / "runs" / arm).glob("seed*.json")):
        scalars = json.loads(path.read_text())["scalars"]
        if TAG_SPREAD in scalars:
            first = min(scalars[TAG_SPREAD], key=int)
            measured.append(scalars[TAG_SPREAD][first])
            predicted.append(scalars.get(TAG_SPREAD + "_predicted", {}).get(first))
    if not measured:
        return None
    return ci(measured) | {"predicted_in_run": [p for p in predicted if p is not None]}


def run_store(work: Path, reward: str) -> dict | None:
    """The diagnosis of the in-job store a run wrote (v3), when the work directory holds it."""
    from openrlhf_contrastive import diagnose
    from openrlhf_contrastive.store import BaselineStore, holds_baselines

    path = work / f"baselines_{reward}"
    if not holds_baselines(path):
        return None
    store = BaselineStore.load(path)
    return diagnose.diagnose(np.asarray(store.rewards)).to_dict() | {"path": str(path)}


def predict(experiment: str, folder: Path, work: Path, reward: str, arm: str, raw: str) -> dict:
    from openrlhf_contrastive import diagnose

    cfg = testbed.load_config(folder / "config.json")
    if reward == "proxy":
        testbed.build_sft_policy(work / "sft", cfg, log=lambda m: print(m, file=sys.stderr))
    elif not (work / f"{reward}_done.json").exists():
        raise SystemExit(f"predict: {work / reward} is not built, so {experiment}'s {reward} cannot be scored. Build "
                         f"it with its runner (see this module's docstring), then run this again.")
    words, responses = redrawn_store(cfg, work)
    store = rewards_of(cfg, work, reward, words, responses)
    results_path = folder / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"arms": {}}
    rm_info = json.loads((work / f"{reward}_done.json").read_text()) if reward != "proxy" else {}
    return {"experiment": experiment, "reward": reward, "contrastive_arm": arm, "raw_arm": raw,
            "rm_accuracy_train_prompts": rm_info.get("accuracy_train_prompts_fresh_pairs", {}).get("accuracy"),
            # the RM the runs used (v2's were trained on another machine: the same recipe, other numbers)
            "runs_rm_accuracy_train_prompts": results.get("reward_models", {}).get(reward, {}).get(
                "accuracy_train_prompts_fresh_pairs", {}).get("accuracy"),
            "store": {"prompts": len(words), "k": cfg["ppo"]["k"], "seed": SEED},
            "diagnosis": diagnose.diagnose(store).to_dict(),
            "run_store_diagnosis": run_store(work, reward) if experiment == "v3" else None,
            "measured_fresh_sft": fresh_ratio(cfg, work, reward, words, store),
            "measured_step1": step1_spread(folder, arm),
            "gain_heldout_gold": paired_gain(results, arm, raw)}


def fmt_ci(x: dict | None) -> str:
    if not x:
        return "-"
    lo, hi = x.get("ci95") or (None, None)
    return f"{x['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] (n={x['n']})" if lo is not None else f"{x['mean']:+.3f} (n={x['n']})"


def table(rows: list[dict]) -> str:
    lines = ["| experiment | reward | RM accuracy here (the runs' RM) | ICC [95%] | predicted std(r-b)/std(r) at k [95%] "
             "| measured on fresh SFT samples | spread_ratio at step 1 | held-out gold, contrastive minus raw |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, acc = r["diagnosis"], r["rm_accuracy_train_prompts"]
        fresh, step1 = r["measured_fresh_sft"], r["measured_step1"]
        runs_acc = r.get("runs_rm_accuracy_train_prompts")
        acc_s = "-" if acc is None else f"{acc:.3f}" + ("" if runs_acc is None else f" ({runs_acc:.3f})")
        fresh_s = "-" if not fresh else f"{fresh['ratio']:.3f}"
        step1_s = "-" if not step1 else f"{step1['mean']:.3f} (n={step1['n']})"
        lines.append(
            f"| {r['experiment']} | {r['reward']} | {acc_s} "
            f"| {d['icc']:.3f} [{d['icc_interval'][0]:.3f}, {d['icc_interval'][1]:.3f}] "
            f"| {d['predicted_ratio']:.3f} [{d['predicted_ratio_interval'][0]:.3f}, "
            f"{d['predicted_ratio_interval'][1]:.3f}] (k={d['k']}) | {fresh_s} | {step1_s} "
            f"| {fmt_ci(r['gain_heldout_gold'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "predictions.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = [predict(*source) for source in SOURCES]
    args.out.write_text(json.dumps({"seed": SEED, "rows": rows}, indent=1))
    print(table(rows))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
