"""The arm x seed runner of the evidence experiments: an experiment is a config.json, an analysis and a thin entry.

    python -m benchmarks.evidence_v2.run [--smoke] [--arms A B] [--seeds 1 2] [--out DIR] [--analyze-only]

Order of work (everything cached in the work directory, so an interrupted experiment resumes where it stopped):
  1. prepare     the prompt files and the SFT policy (lab/testbed.py, the config's task and sft sections);
  2. rewards     the reward models the arms use (lab/reward_models.py: noisy pairs, OpenRLHF's train_rm on CPU);
  3. references  k SFT samples per held-out prompt (the reference of the gold win rate) and per evaluated training
                 prompt, scored by gold;
  4. runs        each (arm, seed), seed-major so that partial results compare arms on the same seeds: the real
                 train_ppo_ray on CPU (lab/harness.py) with the arm's reward (an arm whose reward is "gold" trains
                 on lab/testbed_reward.py with the config's proxy section, every error 0; any other names a reward
                 model, served with --reward.model_name_or_path through OpenRLHF's RewardModelActor group); the
                 contrastive arms' store is written by the in-job stage of the first such run per reward model;
                 HF checkpoints along the run, each evaluated on gold (sample_scored) and by every reward model;
                 result.json is written last and marks the run done. With an archive, every result.json is copied
                 there too (committed: a later session resumes from it, rebuilding only the models, whose content
                 digests each result records);
  5. analysis    the experiment's own `analyze(work, results_dir, cfg, settings, archive)` after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from lab import harness, reward_models, stats, testbed

ATTEMPTS = 2  # a start-up failure of an overloaded machine (Ray's GCS) is retried once
RUN_TIMEOUT_S = int(os.environ.get("EVIDENCE_RUN_TIMEOUT_S", "1500"))
RESTORED = "restored_from_archive"  # marks a run directory whose result.json came from the archive
log = harness.log("evidence")


def settings(cfg: dict, smoke: bool, arms: list[str] | None = None, seeds: list[int] | None = None) -> dict:
    """The effective settings: the (arm, seed) runs in the order they run, and the sizes (smoke overrides)."""
    s = {"seeds": list(cfg["seeds"]), "num_episodes": cfg["ppo"]["num_episodes"],
         "n_train": cfg["task"]["n_train_prompts"], "n_heldout": cfg["task"]["n_heldout_prompts"],
         "n_train_eval": cfg["eval"]["n_train_prompts"], "rm_epochs": cfg["rm"]["max_epochs"],
         "rm_backbone_steps": None}
    if smoke:
        sm = cfg["smoke"]
        s.update(seeds=sm["seeds"], num_episodes=sm["num_episodes"], n_train=sm["n_train_prompts"],
                 n_heldout=sm["n_heldout_prompts"], n_train_eval=sm["n_train_eval_prompts"],
                 rm_epochs=sm["rm_max_epochs"], rm_backbone_steps=sm.get("rm_backbone_steps"))
    s["arms"] = arms or (cfg["smoke"]["arms"] if smoke else list(cfg["arms"]))
    if seeds:
        s["seeds"] = seeds
    s["runs"] = [(arm, seed) for seed in s["seeds"] for arm in s["arms"]
                 if seed in cfg["arms"][arm].get("seeds", s["seeds"])]
    s["reward_models"] = sorted({cfg["arms"][a]["reward"] for a in s["arms"]} - {"gold"})
    return s


# ------------------------------------------------------------------------------------------ 1-3. the testbed
def prepare(cfg: dict, n_train: int, n_heldout: int, work: Path) -> dict:
    """The training and held-out prompt files (words) and the SFT policy in work/sft."""
    work.mkdir(parents=True, exist_ok=True)
    train, heldout = testbed.split_prompts(cfg, n_train, n_heldout)
    (work / "train_prompts.jsonl").write_text("".join(json.dumps({"input": w}) + "\n" for w in train))
    (work / "heldout_prompts.jsonl").write_text("".join(json.dumps({"input": w}) + "\n" for w in heldout))
    start = time.time()
    testbed.build_sft_policy(work / "sft", cfg, log=log)
    log(f"SFT policy ready ({time.time() - start:.0f} s): {work / 'sft'}")
    return {"train": train, "heldout": heldout}


def score(words: list[str], responses: list[list[str]], proxy_cfg: dict) -> dict:
    """Gold and the config's proxy of every response."""
    gold = [[testbed.gold(w, y) for y in ys] for w, ys in zip(words, responses)]
    prox = [[testbed.proxy(w, y, proxy_cfg) for y in ys] for w, ys in zip(words, responses)]
    return {"words": words, "responses": responses, "gold": gold, "proxy": prox}


def sft_samples(cfg: dict, work: Path, words: list[str], name: str) -> dict:
    """The SFT policy's samples of `words`, scored, cached in work/<name>.json (the references of the win rates)."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    e, p = cfg["eval"], cfg["ppo"]
    responses = testbed.sample_responses(work / "sft", words, e["sft_samples_per_prompt"], e["temperature"],
                                         p["max_new_tokens"], e["seed"] + 1000)
    result = score(words, responses, cfg["proxy"])
    path.write_text(json.dumps(result))
    return result


def sample_scored(cfg: dict, model_dir: Path, ref: dict, n: int, seed: int,
                  min_new_tokens: int = 0) -> tuple[list[list[str]], dict]:
    """The one sampling-and-scoring path: `n` samples of a policy per prompt of `ref` (its SFT samples, scored),
    their gold per prompt, mean gold, gold win rate against the SFT samples of the same prompts and mean length.
    min_new_tokens 0 samples as a served policy is sampled; 1 as OpenRLHF's rollouts are (no EOS first)."""
    e, p = cfg["eval"], cfg["ppo"]
    responses = testbed.sample_responses(model_dir, ref["words"], n, e["temperature"], p["max_new_tokens"], seed,
                                         min_new_tokens=min_new_tokens)
    gold = [[testbed.gold(w, y) for y in ys] for w, ys in zip(ref["words"], responses)]
    return responses, {"gold_per_prompt": [statistics.mean(g) for g in gold],
                       "gold": statistics.mean(g for gs in gold for g in gs),
                       "gold_win_rate_vs_sft": stats.win_rate(gold, ref["gold"]),
                       "mean_chars": statistics.mean(len(y) for ys in responses for y in ys)}


# ---------------------------------------------------------------------------------------------- 4. one run
def reward_flags(cfg: dict, arm: str, work: Path) -> list[str]:
    """Gold (the testbed's reward file, every proxy error 0 in the config) or a reward model, served as users do."""
    rm = cfg["arms"][arm]["reward"]
    if rm == "gold":
        return ["--reward.remote_url", str(harness.REPO / "lab" / "testbed_reward.py")]
    return ["--reward.model_name_or_path", str(work / rm), "--reward.num_nodes", "1", "--reward.num_gpus_per_node", "1"]


def checkpoint_steps(cfg: dict, s: dict) -> tuple[int, list[int]]:
    """(save every, the steps evaluated): ckpt_points evenly spaced checkpoints plus the end."""
    p = cfg["ppo"]
    total = s["n_train"] * s["num_episodes"] // p["prompts_per_step"]
    every = max(1, total // (p["ckpt_points"] + 1))
    return every, sorted({*range(every, total, every), total})


def ppo_settings(cfg: dict, s: dict, arm: str, seed: int) -> harness.PPO:
    """An arm's PPO: the same samples (and gradient batch) per step in every arm, prompts_per_step / n prompts x n,
    unless the arm sets its own prompts per step."""
    p, a = cfg["ppo"], cfg["arms"][arm]
    n = a.get("n_samples_per_prompt", 1)
    return harness.PPO(estimator=a["estimator"], prompts_per_step=a.get("prompts_per_step", p["prompts_per_step"] // n),
                       n_samples=n, episodes=s["num_episodes"], seed=seed, actor_lr=p["actor_lr"],
                       critic_lr=p["critic_lr"], kl_init_coef=p["kl_init_coef"], max_epochs=p.get("max_epochs", 1))


def refreshes(arm_cfg: dict) -> bool:
    """Whether the arm refreshes its baselines from the current policy (--contrastive.refresh_every)."""
    return "--contrastive.refresh_every" in arm_cfg["reward_flags"]


def store_path(cfg: dict, arm: str, work: Path, out: Path) -> Path:
    """The arm's baseline store: one per reward model, shared by its contrastive arms and written by the first of
    their runs; a refreshing arm's run gets its own copy of it (`out`/baselines), because the refresh generations
    it writes belong to that run."""
    return out / "baselines" if refreshes(cfg["arms"][arm]) else work / f"baselines_{cfg['arms'][arm]['reward']}"


def arm_env(work: Path, arm_cfg: dict, env: dict) -> tuple[dict, str]:
    """The environment of an arm's runs and the plugin commit they run: the experiment's frozen plugin, or, for an
    arm that names `plugin_commit` (a later addition that needs later plugin code), that commit frozen beside it."""
    if "plugin_commit" not in arm_cfg:
        return env, (work / "pkg_commit.txt").read_text().strip()
    package, commit = harness.snapshot_package(work, arm_cfg["plugin_commit"])
    return harness.run_env(package, EVIDENCE_CONFIG=env["EVIDENCE_CONFIG"]), commit


def refresh_summary(store: Path) -> dict | None:
    """The run's refresh summary (openrlhf_contrastive.refresh: generations/refresh.json), if it refreshed."""
    from openrlhf_contrastive.store import GENERATIONS, REFRESH_SUMMARY

    path = store / GENERATIONS / REFRESH_SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def run_flags(cfg: dict, s: dict, arm: str, seed: int, work: Path, out: Path) -> list[str]:
    p, a = cfg["ppo"], cfg["arms"][arm]
    sampling = harness.Sampling(p["data_max_len"], p["max_new_tokens"], p["temperature"])
    flags = (harness.testbed_flags(work / "sft", work / "train_prompts.jsonl", reward_flags(cfg, arm, work), sampling)
             + harness.CPU_PLACEMENT + harness.ppo_flags(ppo_settings(cfg, s, arm, seed), work / "sft")
             + harness.output_flags(out) + list(a["reward_flags"]))
    if "--reward_fn" in a["reward_flags"]:
        flags += ["--contrastive.baseline_path", str(store_path(cfg, arm, work, out)), "--contrastive.k", str(p["k"])]
    every, _ = checkpoint_steps(cfg, s)
    return flags + ["--ckpt.save_steps", str(every), "--ckpt.save_hf", "--ckpt.disable_ds", "--ckpt.max_num", "1000"]


def evaluate_policy(cfg: dict, model_dir: Path, sets: dict, rm_dirs: dict, seed: int) -> dict:
    """Samples of one policy on the held-out and the evaluated training prompts: gold per sample, win rate against
    the SFT samples of the same prompts, and each reward model's score of the training-prompt samples. On the
    held-out prompts also whether it learned to answer nothing: its empty-response share sampled as served, mean
    P(EOS at the first position), and gold sampled as OpenRLHF's rollouts sample (EOS masked first: `rollout_style`;
    what training saw, where the served numbers are what a user gets)."""
    result = {}
    for name, ref in sets.items():
        n = cfg["eval"]["samples_per_prompt"][name]
        responses, result[name] = sample_scored(cfg, model_dir, ref, n, seed)
        if name == "train":  # per sample (4 decimals): the share beating the stored baseline, the spread of r - b
            result[name]["rm"] = {rm: [[round(x, 4) for x in r] for r in reward_models.score(rm_dir, ref["words"],
                                                                                                responses)]
                                  for rm, rm_dir in rm_dirs.items()}
        else:
            _, rollout_style = sample_scored(cfg, model_dir, ref, n, seed, min_new_tokens=1)
            result[name] |= {"empty": statistics.mean(y == "" for ys in responses for y in ys),
                             "p_eos_first": testbed.p_eos_first(model_dir, ref["words"]),
                             "rollout_style": {k: rollout_style[k] for k in ("gold", "gold_win_rate_vs_sft",
                                                                              "mean_chars")}}
    return result


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def provenance(cfg: dict, work: Path, arm: str, rm_dirs: dict, commit: str) -> dict:
    """What a result depends on that a later session rebuilds: the plugin commit, the SFT policy's and the reward
    model's content digests, the machine. Runs archived by different sessions are comparable when these agree."""
    from openrlhf_contrastive.fingerprint import content_digest

    rm = cfg["arms"][arm]["reward"]
    return {"plugin_commit": commit,
            "sft_digest": content_digest(str(work / "sft"), full=True),
            "rm_digest": content_digest(str(rm_dirs[rm]), full=True) if rm in rm_dirs else None,
            "rm_digests": {name: content_digest(str(path), full=True) for name, path in sorted(rm_dirs.items())},
            "machine": cpu_model()}


def restore(out: Path, archived: Path | None) -> dict | None:
    """The run's result if it is finished here or archived by an earlier session (restored into `out`)."""
    result_path = out / "result.json"
    if archived and archived.exists() and not result_path.exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(archived, result_path)
        (out / RESTORED).touch()  # never stamped with this session's baselines
    return json.loads(result_path.read_text()) if result_path.exists() else None


def train(flags: list[str], out: Path, env: dict, name: str) -> tuple[int, float, int, dict]:
    """train_ppo_ray in `out`, retried once after a failed start; (exit code, seconds, attempts, peak memory of the
    whole run: harness.SessionMemory)."""
    for attempt in range(1, ATTEMPTS + 1):
        log(f"{name}: train_ppo_ray ... (attempt {attempt})")
        start = time.time()
        rc, memory = harness.run_measured(harness.launch_command(flags), out / "train.log", RUN_TIMEOUT_S, cwd=out,
                                          env=env)
        seconds = time.time() - start
        if rc == 0:
            break
        shutil.copy(out / "train.log", out / f"train.attempt{attempt}.log")
        for partial in ("tb", "ckpt"):
            shutil.rmtree(out / partial, ignore_errors=True)
    return rc, seconds, attempt, memory


def one_run(cfg: dict, s: dict, arm: str, seed: int, work: Path, sets: dict, rm_dirs: dict, env: dict,
            archive: Path | None = None, keep_checkpoints: bool = False) -> dict | None:
    """Train, evaluate along the run and record one (arm, seed); None if train_ppo_ray failed."""
    out = work / "runs" / arm / f"seed{seed}"
    archived = archive / arm / f"seed{seed}.json" if archive else None
    if (done := restore(out, archived)) is not None:
        return done
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts over
    out.mkdir(parents=True)
    a, p = cfg["arms"][arm], cfg["ppo"]
    flags = run_flags(cfg, s, arm, seed, work, out)
    env, commit = arm_env(work, a, env)
    store = store_path(cfg, arm, work, out)
    shared = work / f"baselines_{a['reward']}"
    if refreshes(a) and (shared / "header.json").exists():  # the SFT baselines, without any run's generations
        from openrlhf_contrastive.store import GENERATIONS

        shutil.copytree(shared, store, ignore=shutil.ignore_patterns(GENERATIONS))
    wrote_store = "--reward_fn" in a["reward_flags"] and not (store / "header.json").exists()
    (out / "command.json").write_text(json.dumps(harness.launch_command(flags), indent=1))
    rc, seconds, attempts, memory = train(flags, out, env, f"{arm} seed {seed}")
    if rc != 0:
        log(f"{arm} seed {seed}: train_ppo_ray exited with {rc} after {seconds:.0f} s; see {out / 'train.log'}")
        (out / "failed.txt").write_text(f"rc {rc}\n{harness.tail(out / 'train.log', 80)}")
        return None
    scalars = harness.read_scalars(out / "tb")
    _, points = checkpoint_steps(cfg, s)
    ckpts = {step: out / "ckpt" / "checkpoints" / f"global_step{step}_hf" for step in points[:-1]}
    ckpts[points[-1]] = out / "ckpt"
    t0 = time.time()
    along = {step: evaluate_policy(cfg, ckpt, sets, rm_dirs, cfg["eval"]["seed"] + 1000 * seed + step)
             for step, ckpt in ckpts.items()}
    n = a.get("n_samples_per_prompt", 1)
    steps = sorted(scalars.get("train/reward", {}))
    online = len(steps) * a.get("prompts_per_step", p["prompts_per_step"] // n) * n
    offline = p["k"] * s["n_train"] if "--reward_fn" in a["reward_flags"] else 0
    refreshed = refresh_summary(store) if refreshes(a) else None
    refresh = refreshed["refresh_generations"] if refreshed else 0
    final = along[points[-1]]
    result = {
        "arm": arm, "seed": seed, "wall_s": seconds, "attempts": attempts, "eval_s": time.time() - t0,
        "memory": memory,  # of the train_ppo_ray run, every process of it; not the evaluation
        "steps": len(steps),
        "generations": {"online": online, "offline": offline, "refresh": refresh, "total": online + offline + refresh,
                        "rollouts_per_prompt_per_step": n},
        "refresh": refreshed,  # each refresh's policy step, prompts, generations, shift of b(x) and seconds
        "wrote_store": wrote_store,  # its wall time includes the in-job stage
        "heldout": {k: final["heldout"][k] for k in ("gold", "gold_win_rate_vs_sft", "mean_chars", "empty",
                                                      "p_eos_first", "rollout_style")},
        "along": {str(k): v for k, v in along.items()},
        "scalars": scalars,
        "provenance": provenance(cfg, work, arm, rm_dirs, commit),
    }
    (out / "result.json").write_text(json.dumps(result))
    if archived:
        archived.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "result.json", archived)
    if not keep_checkpoints:  # 9 checkpoints per run add up; everything measured is kept
        shutil.rmtree(out / "ckpt", ignore_errors=True)
    log(f"{arm} seed {seed}: done in {seconds:.0f} s (+{result['eval_s']:.0f} s evaluation), {len(steps)} steps, "
        f"held-out gold {result['heldout']['gold']:.3f} (sampled as rollouts {result['heldout']['rollout_style']['gold']:.3f}), "
        f"win rate vs SFT {result['heldout']['gold_win_rate_vs_sft']:.3f}, P(EOS first) {result['heldout']['p_eos_first']:.3f}, "
        f"peak memory {memory['peak_pss_bytes'] / 2**30:.2f} GiB (PSS)")
    return result


# ------------------------------------------------------------------------------------------------------ main
def parse_args(name: str, config: Path, results: Path, argv: list[str] | None, doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a short RM, one arm, one seed, one short episode")
    ap.add_argument("--out", type=Path, default=None, help=f"work directory (default .cache/{name}/full or /smoke)")
    ap.add_argument("--results", type=Path, default=None,
                    help=f"where the results go (default {results.relative_to(harness.REPO)} for the full run, the "
                         "work directory otherwise)")
    ap.add_argument("--archive", type=Path, default=None,
                    help="where every finished run's result.json is copied and looked for first (default "
                         f"{(results / 'runs').relative_to(harness.REPO)} for the full run, none otherwise)")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep every run's HF checkpoints in its ckpt/ (about 2 MB each; eos_check reads them)")
    ap.add_argument("--config", type=Path, default=config)
    ap.add_argument("--arms", nargs="*", default=None, help="only these arms (pilots)")
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help="only these seeds (pilots)")
    ap.add_argument("--analyze-only", action="store_true", help="only the analysis of the runs finished so far")
    ap.add_argument("--rm-only", action="store_true",
                    help="only the SFT policy and the arms' reward models: print their accuracies and exit (RM pilots)")
    args = ap.parse_args(argv)
    args.config = args.config.resolve()
    args.out = (args.out or harness.REPO / ".cache" / name / ("smoke" if args.smoke else "full")).resolve()
    full = not (args.smoke or args.arms or args.seeds or args.config != config.resolve())
    args.results = (args.results or (results if full else args.out)).resolve()
    archive = args.archive or (results / "runs" if full else None)
    args.archive = archive and archive.resolve()
    return args


def main(name: str, config: Path, results: Path, analyze, argv: list[str] | None = None, doc: str = __doc__) -> None:
    """The entry of an experiment named `name`: its committed `config`, where its full results go (`results`, the
    experiment's folder, with its archive in results/runs), and its `analyze(work, results_dir, cfg, s, archive)`."""
    args = parse_args(name, config, results, argv, doc)
    # One thread per process: on a shared 2-core machine, spinning OpenMP threads of train_rm and the evaluation
    # slow everything down (train_rm measured 2.6 s/step with 1 thread against 7-10 s/step with 2).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = testbed.load_config(args.config)
    s = settings(cfg, args.smoke, args.arms, args.seeds)
    work = args.out
    if args.analyze_only:
        analyze(work, args.results, cfg, s, args.archive)
        return
    t0 = time.time()
    log(f"work {work}; runs {s['runs']}")
    data = prepare(cfg, s["n_train"], s["n_heldout"], work)
    package, commit = harness.snapshot_package(work)
    log(f"plugin code frozen at commit {commit} ({package})")
    env = harness.run_env(package, EVIDENCE_CONFIG=str(args.config))
    rm_dirs = {rm: reward_models.build(cfg, s, work, rm, data["train"], data["heldout"], env=env, log=log)
               for rm in s["reward_models"]}
    if args.rm_only:
        for rm in s["reward_models"]:
            print(json.dumps(json.loads((work / f"{rm}_done.json").read_text()), indent=1), flush=True)
        log(f"reward models only: {time.time() - t0:.0f} s")
        return
    rng_words = reward_models.train_eval_words(data["train"], s["n_train_eval"], cfg["eval"]["seed"])
    sets = {"heldout": sft_samples(cfg, work, data["heldout"], "sft_heldout"),
            "train": sft_samples(cfg, work, rng_words, "sft_train_eval")}
    failed = []
    for arm, seed in s["runs"]:
        if one_run(cfg, s, arm, seed, work, sets, rm_dirs, env, args.archive, args.keep_checkpoints) is None:
            failed.append((arm, seed))
        analyze(work, args.results, cfg, s, args.archive)
    log(f"finished in {time.time() - t0:.0f} s; failed runs: {failed or 'none'}; results in {args.results}")
    if failed:
        raise SystemExit(1)
