"""Evidence v2: does the contrastive reward help PPO with a *learned* reward model? (README.md, issue 17)

    python benchmarks/evidence_v2/run.py            # the full experiment (config.json), resumable run by run
    python benchmarks/evidence_v2/run.py --smoke    # a short RM, one arm, one seed, a few steps: the pipeline only
    python benchmarks/evidence_v2/run.py --arms oracle --seeds 1 --config pilot.json --out DIR   # a pilot

Order of work (everything cached in --out, so an interrupted run resumes where it stopped):
  1. the SFT policy and the prompt files (v1's testbed, v2's settings: ../evidence/testbed.py);
  2. the reward models: pairs of SFT responses to training prompts, labelled by gold with a per-prompt flip rate
     (reward_models.py), trained by OpenRLHF's train_rm on CPU (cpu_training/), a noisy one and a clean one; their
     pairwise accuracy against clean gold labels on fresh pairs;
  3. k SFT samples per held-out prompt (the reference of the gold win rate) and per evaluated training prompt;
  4. each run (seed-major: partial results compare arms on the same seeds): train_ppo_ray with the arm's reward
     (gold through v1's reward file for the oracle, `--reward.model_name_or_path` for every RM arm; the contrastive
     arms' baseline store is written by the in-job stage of the first contrastive run of each RM, through the
     trainer's own vLLM engine and RewardModelActor group), HF checkpoints along the run, each checkpoint and the
     end evaluated on held-out and training prompts (gold; the RM's score); result.json is written last and marks
     the run done (reruns skip it; an interrupted run starts over). The full run also copies every result.json
     into runs/ARM/seedN.json here (--archive), which is committed: a later session or machine resumes from the
     committed runs and rebuilds only the SFT policy and the reward models (each result records their digests);
  5. analysis (analyze.py) after every finished run: results.json, results_table.md, evidence_v2.png.

Needs: the project venv (make venv) and PYTHONPATH containing tests/support (openrlhf imports flash_attn).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
V1 = REPO / "benchmarks" / "evidence"
sys.path.insert(0, str(V1))
sys.path.insert(0, str(HERE))
import analyze  # noqa: E402
import reward_models  # noqa: E402
import testbed  # noqa: E402


def _load_v1(name: str):
    """v1's run.py / analyze.py as modules named evidence_v1_<name> (v2 has files of the same names)."""
    spec = importlib.util.spec_from_file_location(f"evidence_v1_{name}", V1 / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


v1 = _load_v1("run")
log = v1.log
CONFIG_PATH = HERE / "config.json"
ATTEMPTS = 2


def settings(cfg: dict, smoke: bool, arms: list[str] | None = None, seeds: list[int] | None = None) -> dict:
    """The effective settings: the (arm, seed) runs in the order they run, and the sizes (smoke overrides)."""
    s = {"seeds": list(cfg["seeds"]), "num_episodes": cfg["ppo"]["num_episodes"],
         "n_train": cfg["task"]["n_train_prompts"], "n_heldout": cfg["task"]["n_heldout_prompts"],
         "n_train_eval": cfg["eval"]["n_train_prompts"], "rm_epochs": cfg["rm"]["max_epochs"]}
    if smoke:
        sm = cfg["smoke"]
        s.update(seeds=sm["seeds"], num_episodes=sm["num_episodes"], n_train=sm["n_train_prompts"],
                 n_heldout=sm["n_heldout_prompts"], n_train_eval=sm["n_train_eval_prompts"],
                 rm_epochs=sm["rm_max_epochs"])
    s["arms"] = arms or (cfg["smoke"]["arms"] if smoke else list(cfg["arms"]))
    if seeds:
        s["seeds"] = seeds
    s["runs"] = [(arm, seed) for seed in s["seeds"] for arm in s["arms"]
                 if seed in cfg["arms"][arm].get("seeds", s["seeds"])]
    s["reward_models"] = sorted({cfg["arms"][a]["reward"] for a in s["arms"]} - {"gold"})
    return s


# --------------------------------------------------------------------------------------------------- one run
def reward_flags(cfg: dict, arm: str, work: Path) -> list[str]:
    """The oracle trains on gold (v1's reward file with every proxy error 0); every RM arm serves its RM the way
    users do, through OpenRLHF's RewardModelActor group."""
    rm = cfg["arms"][arm]["reward"]
    if rm == "gold":
        return ["--reward.remote_url", str(v1.REWARD_FILE)]
    return ["--reward.model_name_or_path", str(work / rm), "--reward.num_nodes", "1",
            "--reward.num_gpus_per_node", "1"]


def checkpoint_steps(cfg: dict, s: dict) -> tuple[int, list[int]]:
    """(save every, the steps evaluated): ckpt_points evenly spaced checkpoints plus the end."""
    p = cfg["ppo"]
    total = s["n_train"] * s["num_episodes"] // p["prompts_per_step"]
    every = max(1, total // (p["ckpt_points"] + 1))
    return every, sorted({*range(every, total, every), total})


def run_flags(cfg: dict, s: dict, arm: str, seed: int, work: Path, out: Path) -> list[str]:
    rm = cfg["arms"][arm]["reward"]
    every, _ = checkpoint_steps(cfg, s)
    return v1.arm_flags(cfg, s, arm, seed, work, out, reward=reward_flags(cfg, arm, work),
                        baselines=work / f"baselines_{rm}") + [
        "--ckpt.save_steps", str(every), "--ckpt.save_hf", "--ckpt.disable_ds", "--ckpt.max_num", "1000",
    ]


def sample_scored(cfg: dict, model_dir: Path, name: str, ref: dict, seed: int,
                  min_new_tokens: int = 0) -> tuple[list[list[str]], dict]:
    """One policy's samples of one prompt set (`name`: heldout or train; `ref`: its SFT samples, scored), and their
    gold per prompt, mean gold, gold win rate against the SFT samples of the same prompts and mean length."""
    e, p = cfg["eval"], cfg["ppo"]
    responses = testbed.sample_responses(model_dir, ref["words"], e["samples_per_prompt"][name], e["temperature"],
                                         p["max_new_tokens"], seed, min_new_tokens=min_new_tokens)
    gold = [[testbed.gold(w, y) for y in ys] for w, ys in zip(ref["words"], responses)]
    return responses, {"gold_per_prompt": [statistics.mean(g) for g in gold],
                       "gold": statistics.mean(g for gs in gold for g in gs),
                       "gold_win_rate_vs_sft": v1.win_rate(gold, ref["gold"]),
                       "mean_chars": statistics.mean(len(y) for ys in responses for y in ys)}


def evaluate_policy(cfg: dict, model_dir: Path, sets: dict, rm_dirs: dict, seed: int) -> dict:
    """Samples of one policy on the held-out and the evaluated training prompts: gold per sample, win rate against
    the SFT samples of the same prompts, and each reward model's score of the training-prompt samples."""
    result = {}
    for name, ref in sets.items():
        responses, result[name] = sample_scored(cfg, model_dir, name, ref, seed)
        if name == "train":  # per sample (4 decimals): the share beating the stored baseline, the spread of r - b
            result[name]["rm"] = {rm: [[round(x, 4) for x in r] for r in reward_models.score(rm_dir, ref["words"],
                                                                                                responses)]
                                  for rm, rm_dir in rm_dirs.items()}
    return result


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def provenance(cfg: dict, work: Path, arm: str, rm_dirs: dict) -> dict:
    """What a result depends on that a later session rebuilds: the plugin commit, the SFT policy's and the reward
    model's content digests, the machine. Runs archived by different sessions are comparable when these agree."""
    from openrlhf_contrastive.fingerprint import content_digest

    rm = cfg["arms"][arm]["reward"]
    return {"plugin_commit": (work / "pkg_commit.txt").read_text().strip(),
            "sft_digest": content_digest(str(work / "sft"), full=True),
            "rm_digest": content_digest(str(rm_dirs[rm]), full=True) if rm in rm_dirs else None,
            "rm_digests": {name: content_digest(str(path), full=True) for name, path in sorted(rm_dirs.items())},
            "machine": cpu_model()}


def one_run(cfg: dict, s: dict, arm: str, seed: int, work: Path, sets: dict, rm_dirs: dict,
            archive: Path | None = None, keep_checkpoints: bool = False) -> dict | None:
    out = work / "runs" / arm / f"seed{seed}"
    result_path = out / "result.json"
    archived = archive / arm / f"seed{seed}.json" if archive else None
    if archived and archived.exists() and not result_path.exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(archived, result_path)  # finished by an earlier session (see provenance in it)
        (out / analyze.RESTORED).touch()  # never stamped with this session's baselines (analyze.stamp_baselines)
    if result_path.exists():
        return json.loads(result_path.read_text())
    if out.exists():
        shutil.rmtree(out)  # an interrupted run starts over
    out.mkdir(parents=True)
    flags = run_flags(cfg, s, arm, seed, work, out)
    store = work / f"baselines_{cfg['arms'][arm]['reward']}"
    wrote_store = "--reward_fn" in cfg["arms"][arm]["reward_flags"] and not (store / "header.json").exists()
    (out / "command.json").write_text(json.dumps([sys.executable, str(v1.LAUNCH), *flags], indent=1))
    for attempt in range(1, ATTEMPTS + 1):  # a start-up failure of an overloaded machine (Ray's GCS) is retried once
        log(f"{arm} seed {seed}: train_ppo_ray ... (attempt {attempt})")
        rc, seconds = v1.run_logged([sys.executable, str(v1.LAUNCH), *flags], out, out / "train.log", v1.RUN_TIMEOUT_S)
        if rc == 0:
            break
        shutil.copy(out / "train.log", out / f"train.attempt{attempt}.log")
        for partial in ("tb", "ckpt"):
            shutil.rmtree(out / partial, ignore_errors=True)
    if rc != 0:
        log(f"{arm} seed {seed}: train_ppo_ray exited with {rc} after {seconds:.0f} s; see {out / 'train.log'}")
        (out / "failed.txt").write_text(f"rc {rc}\n{v1.tail(out / 'train.log', 80)}")
        return None
    scalars = v1.read_scalars(out / "tb")
    _, points = checkpoint_steps(cfg, s)
    ckpts = {step: out / "ckpt" / "checkpoints" / f"global_step{step}_hf" for step in points[:-1]}
    ckpts[points[-1]] = out / "ckpt"
    t0 = time.time()
    along = {}
    for step, ckpt in ckpts.items():
        along[step] = evaluate_policy(cfg, ckpt, sets, rm_dirs, cfg["eval"]["seed"] + 1000 * seed + step)
    a, p = cfg["arms"][arm], cfg["ppo"]
    n = a.get("n_samples_per_prompt", 1)
    steps = sorted(scalars.get("train/reward", {}))
    online = len(steps) * a.get("prompts_per_step", p["prompts_per_step"] // n) * n
    offline = p["k"] * s["n_train"] if "--reward_fn" in a["reward_flags"] else 0
    final = along[points[-1]]
    result = {
        "arm": arm, "seed": seed, "wall_s": seconds, "attempts": attempt, "eval_s": time.time() - t0, "steps": len(steps),
        "generations": {"online": online, "offline": offline, "total": online + offline,
                        "rollouts_per_prompt_per_step": n},
        "wrote_store": wrote_store,  # its wall time includes the in-job stage
        "heldout": {k: final["heldout"][k] for k in ("gold", "gold_win_rate_vs_sft", "mean_chars")},
        "along": {str(k): v for k, v in along.items()},
        "scalars": scalars,
        "provenance": provenance(cfg, work, arm, rm_dirs),
    }
    result_path.write_text(json.dumps(result))
    if archived:
        archived.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(result_path, archived)
    if not keep_checkpoints:  # 9 checkpoints per run add up; everything measured is kept
        shutil.rmtree(out / "ckpt", ignore_errors=True)
    log(f"{arm} seed {seed}: done in {seconds:.0f} s (+{result['eval_s']:.0f} s evaluation), {len(steps)} steps, "
        f"held-out gold {result['heldout']['gold']:.3f}, win rate vs SFT {result['heldout']['gold_win_rate_vs_sft']:.3f}")
    return result


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a short RM, one arm, one seed, one short episode")
    ap.add_argument("--out", type=Path, default=None,
                    help="work directory (default .cache/evidence_v2/full or .cache/evidence_v2/smoke)")
    ap.add_argument("--results", type=Path, default=None,
                    help="where results.json, results_table.md and evidence_v2.png go (default "
                         "benchmarks/evidence_v2 for the full run, the work directory otherwise)")
    ap.add_argument("--archive", type=Path, default=None,
                    help="where every finished run's result.json is copied and looked for first (default "
                         "benchmarks/evidence_v2/runs for the full run, none otherwise)")
    ap.add_argument("--keep-checkpoints", action="store_true",
                    help="keep every run's HF checkpoints in its ckpt/ (about 2 MB each; eos_check.py reads them)")
    ap.add_argument("--config", type=Path, default=CONFIG_PATH)
    ap.add_argument("--arms", nargs="*", default=None, help="only these arms (pilots)")
    ap.add_argument("--seeds", nargs="*", type=int, default=None, help="only these seeds (pilots)")
    args = ap.parse_args()
    # One thread per process: on a shared 2-core machine, spinning OpenMP threads of train_rm and the evaluation
    # slow everything down (train_rm measured 2.6 s/step with 1 thread against 7-10 s/step with 2).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    v1.CONFIG_FILE = args.config.resolve()  # reaches v1's reward file (the oracle's gold) as EVIDENCE_CONFIG
    cfg = testbed.load_config(v1.CONFIG_FILE)
    s = settings(cfg, args.smoke, args.arms, args.seeds)
    work = (args.out or REPO / ".cache" / "evidence_v2" / ("smoke" if args.smoke else "full")).resolve()
    default_results = HERE if not (args.smoke or args.arms or args.seeds or args.config != CONFIG_PATH) else work
    results_dir = (args.results or default_results).resolve()
    archive = args.archive or (HERE / "runs" if default_results == HERE else None)
    t0 = time.time()
    log(f"work {work}; runs {s['runs']}")
    data = v1.prepare(cfg, s, work)
    log(f"plugin code frozen at commit {v1.snapshot_package(work)} ({work / 'pkg'})")
    rm_dirs = {rm: reward_models.build(cfg, s, work, rm, data["train"], data["heldout"], log=log)
               for rm in s["reward_models"]}
    rng_words = reward_models.train_eval_words(data["train"], s["n_train_eval"], cfg["eval"]["seed"])
    sets = {"heldout": v1.sft_samples(cfg, work, data["heldout"]),
            "train": v1.sft_samples(cfg, work, rng_words, "sft_train_eval")}
    failed = []
    for arm, seed in s["runs"]:
        if one_run(cfg, s, arm, seed, work, sets, rm_dirs, archive and archive.resolve(), args.keep_checkpoints) is None:
            failed.append((arm, seed))
        analyze.analyze(work, results_dir, cfg, s, archive and archive.resolve())
    log(f"finished in {time.time() - t0:.0f} s; failed runs: {failed or 'none'}; results in {results_dir}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
