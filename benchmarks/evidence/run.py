"""Evidence v1: contrastive vs raw-reward PPO under a noisy programmatic proxy reward, through the real
`python -m openrlhf.cli.train_ppo_ray` on CPU (the lab's harness, lab/harness.py).

    python -m benchmarks.evidence.run            # the full experiment (config.json), resumable
    python -m benchmarks.evidence.run --smoke    # one arm, one seed, a few steps: checks the pipeline only

What v1 does beyond the lab's runner (lab/experiment.py, which v2 and later experiments use as they are): every arm
trains on the testbed's noisy proxy (lab/testbed_reward.py with this config's proxy section), the baseline store is
written once before any run by `openrlhf-contrastive sample --contrastive.backend hf` and shared by every
contrastive arm, and only the final policy is evaluated (held-out gold and proxy). Everything is cached in --out;
a run's result.json is written last and marks it done; the analysis (analyze.py) runs after every finished run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks.evidence import analyze
from lab import experiment, harness, testbed

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.json"
REWARD_FILE = harness.REPO / "lab" / "testbed_reward.py"
log = experiment.log


def sampling(cfg: dict) -> harness.Sampling:
    p = cfg["ppo"]
    return harness.Sampling(p["data_max_len"], p["max_new_tokens"], p["temperature"])


def arm_flags(cfg: dict, s: dict, arm: str, seed: int, work: Path, out: Path) -> list[str]:
    """One arm's train_ppo_ray flags: v1's arms keep their own prompts per step (rloo_k: fewer prompts, more steps)."""
    p, a = cfg["ppo"], cfg["arms"][arm]
    n = a.get("n_samples_per_prompt", 1)
    ppo = harness.PPO(estimator=a["estimator"], prompts_per_step=a.get("prompts_per_step", p["prompts_per_step"] // n),
                      n_samples=n, episodes=s["num_episodes"], seed=seed, actor_lr=p["actor_lr"],
                      critic_lr=p["critic_lr"], kl_init_coef=p["kl_init_coef"], max_epochs=p.get("max_epochs", 1))
    flags = (harness.testbed_flags(work / "sft", work / "train_prompts.jsonl", ["--reward.remote_url", str(REWARD_FILE)],
                                   sampling(cfg))
             + harness.CPU_PLACEMENT + harness.ppo_flags(ppo, work / "sft") + harness.output_flags(out)
             + list(a["reward_flags"]))
    if "--reward_fn" in a["reward_flags"]:
        flags += ["--contrastive.baseline_path", str(work / "baselines"), "--contrastive.k", str(p["k"])]
    return flags


def baseline_store(cfg: dict, work: Path, env: dict) -> dict:
    """The shared store: `openrlhf-contrastive sample --contrastive.backend hf`, k SFT samples per training prompt."""
    done = work / "baselines_done.json"
    if done.exists():
        return json.loads(done.read_text())
    flags = harness.testbed_flags(work / "sft", work / "train_prompts.jsonl", ["--reward.remote_url", str(REWARD_FILE)],
                                  sampling(cfg)) + harness.CPU_PLACEMENT + [
        "--contrastive.baseline_path", str(work / "baselines"), "--contrastive.k", str(cfg["ppo"]["k"]),
        "--contrastive.backend", "hf", "--train.seed", "0"]
    log("baseline store: openrlhf-contrastive sample --contrastive.backend hf")
    start = time.time()
    command = [sys.executable, "-m", "openrlhf_contrastive.cli", "sample", *flags]
    rc = harness.run_in_own_session(command, work / "sample.log", experiment.RUN_TIMEOUT_S, cwd=work, env=env)
    if rc != 0:
        raise SystemExit(f"openrlhf-contrastive sample exited with {rc}:\n{harness.tail(work / 'sample.log')}")
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(work / "baselines")
    info = {"prompts": len(store), "k": store.k, "generations": len(store) * store.k, "seconds": time.time() - start,
            "mean_baseline": float(store.mean.mean())}
    done.write_text(json.dumps(info, indent=1))
    log(f"baseline store: {info}")
    return info


def one_run(cfg: dict, s: dict, arm: str, seed: int, work: Path, sft_eval: dict, store_info: dict,
            env: dict) -> dict | None:
    out = work / "runs" / arm / f"seed{seed}"
    if (out / "result.json").exists():
        return json.loads((out / "result.json").read_text())
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts over
    out.mkdir(parents=True)
    flags = arm_flags(cfg, s, arm, seed, work, out)
    (out / "command.json").write_text(json.dumps(harness.launch_command(flags), indent=1))
    log(f"{arm} seed {seed}: train_ppo_ray ...")
    start = time.time()
    rc = harness.run_in_own_session(harness.launch_command(flags), out / "train.log", experiment.RUN_TIMEOUT_S,
                                    cwd=out, env=env)
    seconds = time.time() - start
    if rc != 0:
        log(f"{arm} seed {seed}: train_ppo_ray exited with {rc} after {seconds:.0f} s; see {out / 'train.log'}")
        (out / "failed.txt").write_text(f"rc {rc}\n{harness.tail(out / 'train.log', 80)}")
        return None
    scalars = harness.read_scalars(out / "tb")
    e, p, a = cfg["eval"], cfg["ppo"], cfg["arms"][arm]
    t0 = time.time()
    responses, scored = experiment.sample_scored(cfg, out / "ckpt", sft_eval, e["samples_per_prompt"], e["seed"] + seed)
    proxy = [testbed.proxy(w, y, cfg["proxy"]) for w, ys in zip(sft_eval["words"], responses) for y in ys]
    steps = sorted(scalars.get("train/reward", {}))
    n = a.get("n_samples_per_prompt", 1)
    online = len(steps) * a.get("prompts_per_step", p["prompts_per_step"] // n) * n
    offline = store_info["generations"] if "--reward_fn" in a["reward_flags"] else 0
    result = {
        "arm": arm, "seed": seed, "wall_s": seconds, "eval_s": time.time() - t0, "steps": len(steps),
        "generations": {"online": online, "offline": offline, "total": online + offline,
                        "rollouts_per_prompt_per_step": n},
        "heldout": {"gold": scored["gold"], "proxy": statistics.mean(proxy),
                    "gold_win_rate_vs_sft": scored["gold_win_rate_vs_sft"], "mean_chars": scored["mean_chars"]},
        "scalars": scalars,
        "examples": [[w, ys[0]] for w, ys in zip(sft_eval["words"][:8], responses[:8])],
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(out / "ckpt" / "checkpoints", ignore_errors=True)
    log(f"{arm} seed {seed}: done in {seconds:.0f} s, {len(steps)} steps, held-out gold "
        f"{result['heldout']['gold']:.3f}, win rate vs SFT {result['heldout']['gold_win_rate_vs_sft']:.3f}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="one arm, one seed, one short episode: the pipeline only")
    ap.add_argument("--out", type=Path, default=None,
                    help="work directory (default .cache/evidence/full or .cache/evidence/smoke)")
    ap.add_argument("--results", type=Path, default=None,
                    help="where results.json and evidence.png go (default benchmarks/evidence for the full run, "
                         "the work directory for --smoke)")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--analyze-only", action="store_true", help="only the analysis of the runs finished so far")
    args = ap.parse_args()
    config = args.config.resolve()
    cfg = testbed.load_config(config)
    s = analyze.settings(cfg, args.smoke)
    work = (args.out or harness.REPO / ".cache" / "evidence" / ("smoke" if args.smoke else "full")).resolve()
    results_dir = (args.results or (work if args.smoke else HERE)).resolve()
    if args.analyze_only:
        print(analyze.table(analyze.analyze(work, results_dir, cfg, s)))
        return
    t0 = time.time()
    log(f"work {work}; arms {s['arms']}; seeds {s['seeds']}; episodes {s['num_episodes']}")
    data = experiment.prepare(cfg, s["n_train"], s["n_heldout"], work)
    package, commit = harness.snapshot_package(work)
    log(f"plugin code frozen at commit {commit} ({package})")
    env = harness.run_env(package, EVIDENCE_CONFIG=str(config))
    needs_store = any("--reward_fn" in cfg["arms"][a]["reward_flags"] for a in s["arms"])
    store_info = baseline_store(cfg, work, env) if needs_store else {"generations": 0}
    sft_eval = experiment.sft_samples(cfg, work, data["heldout"], "sft_heldout")
    experiment.sft_samples(cfg, work, data["train"], "sft_train")
    failed = []
    for seed in s["seeds"]:
        for arm in s["arms"]:
            if one_run(cfg, s, arm, seed, work, sft_eval, store_info, env) is None:
                failed.append((arm, seed))
            analyze.analyze(work, results_dir, cfg, s)
    log(f"finished in {time.time() - t0:.0f} s; failed runs: {failed or 'none'}; results in {results_dir}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
