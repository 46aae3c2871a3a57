"""Run the evidence experiment: contrastive vs raw-reward PPO under a noisy proxy reward, through the real
`python -m openrlhf.cli.train_ppo_ray` (on CPU via the TEST/EXPERIMENT-ONLY cpu_training/launch.py).

    python benchmarks/evidence/run.py            # the full experiment (config.json), resumable
    python benchmarks/evidence/run.py --smoke    # one arm, one seed, a few steps: checks the pipeline only

Order of work (everything cached in --out, so an interrupted run resumes where it stopped):
  1. the SFT policy (tiny Llama trained here on the task), the train/held-out prompt files;
  2. the baseline store, written once by `openrlhf-contrastive sample --contrastive.backend hf` (k SFT samples
     per training prompt, scored by the proxy) and shared by every contrastive arm;
  3. k SFT samples per held-out prompt (the reference of the gold win rate);
  4. each seed x arm (seed-major, so partial results compare arms on the same seeds): train_ppo_ray, its
     tensorboard scalars, then held-out samples of the trained policy scored by gold and proxy; the run's
     result.json is written last and marks it done (reruns skip it);
  5. analysis (analyze.py) after every finished run: results.json and evidence.png from whatever is done.

Needs: the project venv (make venv) and PYTHONPATH containing tests/support (openrlhf imports flash_attn).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LAUNCH = REPO / "cpu_training" / "launch.py"
REWARD_FILE = HERE / "reward_proxy.py"
sys.path.insert(0, str(HERE))
import testbed  # noqa: E402

RUN_TIMEOUT_S = int(os.environ.get("EVIDENCE_RUN_TIMEOUT_S", "1500"))


def log(msg: str) -> None:
    print(f"[evidence {time.strftime('%H:%M:%S')}] {msg}", flush=True)


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


PKG_SNAPSHOT: Path | None = None  # set by snapshot_package()
CONFIG_FILE: Path = testbed.CONFIG_PATH  # reaches reward_proxy.py in the Ray workers as EVIDENCE_CONFIG


def snapshot_package(work: Path) -> str:
    """Freeze the plugin at the commit the experiment started from: `git archive HEAD openrlhf_contrastive` into
    work/pkg, first on every subprocess's PYTHONPATH (ahead of the editable install, whose finder comes last).
    Other work in the same tree then cannot change the code under a running experiment; resumes reuse it."""
    global PKG_SNAPSHOT
    pkg = work / "pkg"
    stamp = work / "pkg_commit.txt"
    if not stamp.exists():
        shutil.rmtree(pkg, ignore_errors=True)
        pkg.mkdir(parents=True)
        commit = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", "HEAD"], text=True).strip()
        archive = subprocess.check_output(["git", "-C", str(REPO), "archive", commit, "openrlhf_contrastive"])
        subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive, check=True)
        stamp.write_text(commit + "\n")
    PKG_SNAPSHOT = pkg
    return stamp.read_text().strip()


def env() -> dict:
    e = dict(os.environ)
    support = str(REPO / "tests" / "support")  # the flash_attn stand-in openrlhf needs to import on CPU
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PKG_SNAPSHOT or ""), support, e.get("PYTHONPATH")]))
    e.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    e.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    e["EVIDENCE_CONFIG"] = str(CONFIG_FILE)
    e.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_CPU_KVCACHE_SPACE="1")
    return e


def run_logged(cmd: list[str], cwd: Path, logfile: Path, timeout: int) -> tuple[int, float]:
    """Run cmd in its own session (all of Ray, its workers and the vLLM engine die with it afterwards)."""
    start = time.time()
    with open(logfile, "w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = 124
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return rc, time.time() - start


def tail(path: Path, n: int = 40) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])


# ---------------------------------------------------------------------------------------------------- flags
def common_flags(cfg: dict, work: Path, out: Path, reward: list[str] | None = None) -> list[str]:
    """The flags every run shares; `reward` picks the reward (default: this experiment's proxy reward file)."""
    p = cfg["ppo"]
    return [
        "--actor.model_name_or_path", str(work / "sft"),
        *(reward or ["--reward.remote_url", str(REWARD_FILE)]),
        "--data.prompt_dataset", str(work / "train_prompts.jsonl"), "--data.input_key", "input",
        "--data.apply_chat_template",
        "--data.max_len", str(p["data_max_len"]), "--rollout.max_new_tokens", str(p["max_new_tokens"]),
        "--rollout.temperature", str(p["temperature"]), "--rollout.top_p", "1.0",
        "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1", "--vllm.enforce_eager",
        "--vllm.sync_backend", "gloo",
        "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
    ] + ([
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
        "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
        "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
        "--logger.tensorboard_dir", str(out / "tb"),
        "--ckpt.output_dir", str(out / "ckpt"), "--ckpt.path", str(out / "ckpt" / "checkpoints"),
    ] if out is not None else [])


def arm_flags(cfg: dict, s: dict, arm: str, seed: int, work: Path, out: Path, reward: list[str] | None = None,
              baselines: Path | None = None) -> list[str]:
    """One arm's train_ppo_ray flags; `reward` as in common_flags, `baselines` the store (default work/baselines)."""
    p, a = cfg["ppo"], cfg["arms"][arm]
    n = a.get("n_samples_per_prompt", 1)
    # Default: the same samples (and gradient batch) per PPO step in every arm (prompts_per_step / n prompts x n).
    # An arm may set its own prompts per step (rloo_k_same_steps: the same prompts and steps, n samples each).
    samples = a.get("prompts_per_step", p["prompts_per_step"] // n) * n
    flags = common_flags(cfg, work, out, reward) + [
        "--critic.model_name_or_path", str(work / "sft"),  # ignored by OpenRLHF for non-gae estimators
        "--algo.advantage.estimator", a["estimator"],
        "--rollout.batch_size", str(samples // n), "--rollout.n_samples_per_prompt", str(n),
        "--rollout.micro_batch_size", str(samples),
        "--train.batch_size", str(samples), "--train.micro_batch_size", str(samples),
        "--train.max_epochs", str(p.get("max_epochs", 1)),
        "--train.num_episodes", str(s["num_episodes"]), "--train.seed", str(seed),
        "--actor.adam.lr", str(p["actor_lr"]), "--critic.adam.lr", str(p["critic_lr"]),
        "--actor.lr_warmup_ratio", "0.0", "--critic.lr_warmup_ratio", "0.0",
        "--algo.kl.init_coef", str(p["kl_init_coef"]),
    ]
    flags += list(a["reward_flags"])
    if "--reward_fn" in a["reward_flags"]:
        flags += ["--contrastive.baseline_path", str(baselines or work / "baselines"), "--contrastive.k", str(p["k"])]
    return flags


# --------------------------------------------------------------------------------------------------- stages
def prepare(cfg: dict, s: dict, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    train, heldout = testbed.split_prompts(cfg, s["n_train"], s["n_heldout"])
    (work / "train_prompts.jsonl").write_text("".join(json.dumps({"input": w}) + "\n" for w in train))
    (work / "heldout_prompts.jsonl").write_text("".join(json.dumps({"input": w}) + "\n" for w in heldout))
    start = time.time()
    testbed.build_sft_policy(work / "sft", cfg, log=log)
    log(f"SFT policy ready ({time.time() - start:.0f} s): {work / 'sft'}")
    return {"train": train, "heldout": heldout}


def baseline_store(cfg: dict, s: dict, work: Path) -> dict:
    done = work / "baselines_done.json"
    if done.exists():
        return json.loads(done.read_text())
    p = cfg["ppo"]
    flags = common_flags(cfg, work, None) + [
        "--contrastive.baseline_path", str(work / "baselines"), "--contrastive.k", str(p["k"]),
        "--contrastive.backend", "hf", "--train.seed", "0",
    ]
    cli = Path(sys.executable).parent / "openrlhf-contrastive"
    log("baseline store: openrlhf-contrastive sample --contrastive.backend hf")
    rc, seconds = run_logged([str(cli), "sample", *flags], work, work / "sample.log", RUN_TIMEOUT_S)
    if rc != 0:
        raise SystemExit(f"openrlhf-contrastive sample exited with {rc}:\n{tail(work / 'sample.log')}")
    sys.path.insert(0, str(PKG_SNAPSHOT))
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(work / "baselines")
    info = {"prompts": len(store), "k": store.k, "generations": len(store) * store.k, "seconds": seconds,
            "mean_baseline": float(store.mean.mean())}
    done.write_text(json.dumps(info, indent=1))
    log(f"baseline store: {info}")
    return info


def score(words: list[str], responses: list[list[str]], proxy_cfg: dict) -> dict:
    gold = [[testbed.gold(w, y) for y in ys] for w, ys in zip(words, responses)]
    prox = [[testbed.proxy(w, y, proxy_cfg) for y in ys] for w, ys in zip(words, responses)]
    return {"words": words, "responses": responses, "gold": gold, "proxy": prox}


def sft_samples(cfg: dict, work: Path, words: list[str], name: str = "sft_heldout") -> dict:
    """The SFT policy's samples of `words`, scored (held-out: the win-rate reference; train: plot reference)."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    e, p = cfg["eval"], cfg["ppo"]
    responses = testbed.sample_responses(work / "sft", words, e["sft_samples_per_prompt"], e["temperature"],
                                         p["max_new_tokens"], e["seed"] + 1000)
    result = score(words, responses, cfg["proxy"])
    path.write_text(json.dumps(result))
    return result


def win_rate(policy_gold: list[list[float]], sft_gold: list[list[float]]) -> float:
    """P(gold(policy sample) > gold(SFT sample)) over same-prompt pairs, ties counting half."""
    wins = total = 0.0
    for ps, ss in zip(policy_gold, sft_gold):
        for a in ps:
            for b in ss:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                total += 1
    return wins / total


def read_scalars(tb: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in tb.iterdir() if p.is_dir()] if tb.exists() else []
    scalars: dict = {}
    for run in runs:
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({int(e.step): float(e.value) for e in events.Scalars(tag)})
    return scalars


def one_run(cfg: dict, s: dict, arm: str, seed: int, work: Path, sft_eval: dict, store_info: dict) -> dict | None:
    out = work / "runs" / arm / f"seed{seed}"
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    if out.exists():
        shutil.rmtree(out)  # an interrupted run starts over
    out.mkdir(parents=True)
    flags = arm_flags(cfg, s, arm, seed, work, out)
    (out / "command.json").write_text(json.dumps([sys.executable, str(LAUNCH), *flags], indent=1))
    log(f"{arm} seed {seed}: train_ppo_ray ...")
    rc, seconds = run_logged([sys.executable, str(LAUNCH), *flags], out, out / "train.log", RUN_TIMEOUT_S)
    if rc != 0:
        log(f"{arm} seed {seed}: train_ppo_ray exited with {rc} after {seconds:.0f} s; see {out / 'train.log'}")
        (out / "failed.txt").write_text(f"rc {rc}\n{tail(out / 'train.log', 80)}")
        return None
    scalars = read_scalars(out / "tb")
    ckpt = out / "ckpt"
    e, p = cfg["eval"], cfg["ppo"]
    t0 = time.time()
    responses = testbed.sample_responses(ckpt, sft_eval["words"], e["samples_per_prompt"], e["temperature"],
                                         p["max_new_tokens"], e["seed"] + seed)
    ev = score(sft_eval["words"], responses, cfg["proxy"])
    steps = sorted(scalars.get("train/reward", {}))
    a = cfg["arms"][arm]
    n = a.get("n_samples_per_prompt", 1)
    online = len(steps) * a.get("prompts_per_step", p["prompts_per_step"] // n) * n
    offline = store_info["generations"] if "--reward_fn" in a["reward_flags"] else 0
    import statistics

    result = {
        "arm": arm, "seed": seed, "wall_s": seconds, "eval_s": time.time() - t0, "steps": len(steps),
        "generations": {"online": online, "offline": offline, "total": online + offline,
                        "rollouts_per_prompt_per_step": n},
        "heldout": {
            "gold": statistics.mean(g for gs in ev["gold"] for g in gs),
            "proxy": statistics.mean(g for gs in ev["proxy"] for g in gs),
            "gold_win_rate_vs_sft": win_rate(ev["gold"], sft_eval["gold"]),
            "mean_chars": statistics.mean(len(y) for ys in responses for y in ys),
        },
        "scalars": scalars,
        "examples": [[w, ys[0]] for w, ys in zip(ev["words"][:8], responses[:8])],
    }
    result_path.write_text(json.dumps(result, indent=1))
    shutil.rmtree(ckpt / "checkpoints", ignore_errors=True)
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
    ap.add_argument("--config", type=Path, default=testbed.CONFIG_PATH)
    args = ap.parse_args()
    global CONFIG_FILE
    CONFIG_FILE = args.config.resolve()
    cfg = testbed.load_config(CONFIG_FILE)
    s = settings(cfg, args.smoke)
    work = (args.out or REPO / ".cache" / "evidence" / ("smoke" if args.smoke else "full")).resolve()
    results_dir = (args.results or (work if args.smoke else HERE)).resolve()
    t0 = time.time()
    log(f"work {work}; arms {s['arms']}; seeds {s['seeds']}; episodes {s['num_episodes']}")
    data = prepare(cfg, s, work)
    log(f"plugin code frozen at commit {snapshot_package(work)} ({work / 'pkg'})")
    needs_store = any("--reward_fn" in cfg["arms"][a]["reward_flags"] for a in s["arms"])
    store_info = baseline_store(cfg, s, work) if needs_store else {"generations": 0}
    sft_eval = sft_samples(cfg, work, data["heldout"])
    sft_samples(cfg, work, data["train"], "sft_train")
    import analyze

    failed = []
    for seed in s["seeds"]:
        for arm in s["arms"]:
            if one_run(cfg, s, arm, seed, work, sft_eval, store_info) is None:
                failed.append((arm, seed))
            analyze.analyze(work, results_dir, cfg, s)
    log(f"finished in {time.time() - t0:.0f} s; failed runs: {failed or 'none'}; results in {results_dir}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
