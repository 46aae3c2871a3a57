"""Stage overhead, the time a reward model adds, and rerun cost: the offline stage against a bare loop.

Same prompts, k and engine on both sides of each comparison, for both backends:
- vllm: one OpenRLHF RolloutRayActor (create_vllm_engines, vLLM CPU) on a tiny model, reward from a
  reward-function file inside the rollout actor. The bare loop sends each prompt's k samples as one request
  (`generate_responses(num_samples=k)`, as SamplesGenerator does in training) and waits for all of them.
- hf: transformers generate + OpenRLHF's reward model (get_llm_for_sequence_regression) on the CPU. The bare
  loop calls the backend's generate and reward model over the same chunks, nothing else.
The stage adds prompt keys, per-request seeds, Experience conversion, length penalties, store writes with
fsync and the progress bar. Ratio = stage prompts/s / bare prompts/s (target >= 0.95).

Each side runs --repeats times (at least 5), the sides alternating (bare, stage, bare, stage, ...), every run on
enough prompts to take at least --min_run_s seconds (the prompt count is calibrated on a warm-up run). Each
(bare, stage) pair gives a ratio; the figure is their median, with the smallest and largest beside it.

Reward model beside reward function (vllm): OpenRLHF's RewardModelActor group (a tiny reward model built from a
config) scores the stage's baselines instead of the reward-function file, on the same engine and prompts, the
two stages alternating. The group needs the TEST/EXPERIMENT-ONLY CPU device choice of lab/cpu_training/ (in its Ray
workers, the engine's included), so both sides of this comparison run in a second Ray session that has it.

Then the stage runs again on a complete store: generations (target 0) and wall time; and
`ContrastiveReward.setup` on a trainer holding the same engine and dataset (the in-job rerun path).

    PYTHONPATH=tests/support .venv/bin/python -m benchmarks.bench_stage [--smoke]
"""

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.results import record
from lab.harness import CPU_TRAINING

REPO = Path(__file__).resolve().parents[1]
REWARD_FILE = "import torch\ndef reward_func(queries, prompts, labels):\n    return {'rewards': torch.tensor([len(q) / 100.0 for q in queries])}\n"
MAX_PROMPTS = 8192


def write_prompts(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"input": f"Question {i}: write a short answer about the number {i}."}) + "\n")


def stage_flags(tmp, policy, reward_flags, store, opts):
    return [
        "--actor.model_name_or_path", str(policy), *reward_flags,
        "--data.prompt_dataset", str(tmp / "prompts.jsonl"), "--data.apply_chat_template", "--data.max_len", "128",
        "--rollout.max_new_tokens", str(opts.max_new_tokens), "--contrastive.k", str(opts.k),
        "--contrastive.baseline_path", str(store), "--vllm.enforce_eager", "--ds.attn_implementation", "sdpa",
    ]


def prompt_count(run_on, opts) -> int:
    """Prompts per run: enough for --min_run_s seconds at the rate of a run on --prompts prompts after a warm-up run
    (which compiles and allocates), with a quarter to spare; --prompts in --smoke."""
    if opts.smoke:
        return opts.prompts
    run_on(16)
    start = time.perf_counter()
    run_on(opts.prompts)
    rate = opts.prompts / (time.perf_counter() - start)
    return min(MAX_PROMPTS, max(opts.prompts, math.ceil(rate * opts.min_run_s * 1.25)))


def alternate(sides: dict, repeats: int) -> dict:
    """Seconds of each side's run, the sides taking turns, `repeats` rounds: {side: [seconds, ...]}."""
    seconds = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def ratios(numerator: list, denominator: list) -> dict:
    """Per round a/b, then their median, smallest and largest."""
    values = [a / b for a, b in zip(numerator, denominator)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


class StageRuns:
    """Stage runs that each write a fresh store (a store that is already complete would make the next run free)."""

    def __init__(self, tmp, name, args, backend_for, prompts, labels):
        self.tmp, self.name, self.args, self.backend_for = tmp, name, args, backend_for
        self.prompts, self.labels = prompts, labels
        self.summaries = []

    def __call__(self):
        from openrlhf_contrastive.stage import run_stage

        self.args.contrastive.baseline_path = str(self.tmp / f"{self.name}_{len(self.summaries)}")
        self.summaries.append(run_stage(self.args, self.backend_for(), self.prompts, self.labels, log=lambda _: None))


def vllm_session(runtime_env: dict, gpus: int):
    import ray

    env_vars = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", **runtime_env}
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, runtime_env={"env_vars": env_vars})


def engine(policy, reward_file):
    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines

    return create_vllm_engines(1, 1, str(policy), 42, False, False, True, 128, None, 0.05, False, None,
                               remote_rm_url=[str(reward_file)])


def bench_vllm(tmp, policy, opts):
    """Stage against the bare loop on one engine, alternating; then the rerun and the in-job setup."""
    import ray
    from vllm import SamplingParams

    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
    from openrlhf_contrastive.plugin import ContrastiveReward
    from openrlhf_contrastive.stage import build_prompts, parse_args, run_stage

    args = parse_args(stage_flags(tmp, policy, ["--reward.remote_url", str(tmp / "reward.py")], tmp / "store_vllm", opts))
    vllm_session({"PYTHONPATH": os.environ.get("PYTHONPATH", "")}, gpus=1)
    try:
        engines = engine(policy, tmp / "reward.py")
        tokenizer = get_tokenizer(str(policy), None, "left", None)
        strategy = DriverStrategy(args)
        params = SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=opts.max_new_tokens, min_tokens=1,
                                skip_special_tokens=False)

        def bare_on(prompts, labels):
            refs = [engines[0].generate_responses.remote(prompt=p, label=l, sampling_params=params, max_length=128,
                                                         hf_tokenizer=tokenizer, num_samples=opts.k)
                    for p, l in zip(prompts, labels)]
            outputs = [r for out in ray.get(refs) for r in out]
            assert all(r["reward"] is not None for r in outputs)

        all_prompts, all_labels = build_prompts(args, tokenizer, strategy)
        n = prompt_count(lambda m: bare_on(all_prompts[:m], all_labels[:m]), opts)
        prompts, labels = all_prompts[:n], all_labels[:n]
        stage = StageRuns(tmp, "store_vllm", args, lambda: OpenRLHFBackend(args, engines, tokenizer), prompts, labels)
        cpu = {"bare": 0.0, "stage": 0.0}

        def timed_cpu(name, run):
            def run_and_count():
                start = time.process_time()
                run()
                cpu[name] += time.process_time() - start
            return run_and_count

        seconds = alternate({"bare": timed_cpu("bare", lambda: bare_on(prompts, labels)),
                             "stage": timed_cpu("stage", stage)}, opts.repeats)
        rerun = run_stage(args, OpenRLHFBackend(args, engines, tokenizer), prompts, labels)  # the last store: complete

        from openrlhf.datasets.prompts_dataset import PromptDataset
        from openrlhf.datasets.utils import blending_datasets
        from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

        args.data.max_samples = n
        data = blending_datasets(args.data.prompt_dataset, None, strategy, 42, max_count=n)
        trainer = SimpleNamespace(
            args=args, vllm_engines=engines, reward_model_group=None, tokenizer=tokenizer,
            samples_generator=SamplesGenerator(strategy, None, None, tokenizer, engines),
            prompts_dataloader=SimpleNamespace(dataset=PromptDataset(data, tokenizer, strategy)),
        )
        args.contrastive.shape, args.contrastive.on_missing = "mean", "error"
        plugin = ContrastiveReward()
        start = time.perf_counter()
        plugin.setup(trainer)
        setup_s = time.perf_counter() - start
    finally:
        ray.shutdown()
    return dict(n=n, seconds=seconds, cpu={name: cpu[name] / opts.repeats for name in cpu},
                tokens=sum(s["generated_tokens"] for s in stage.summaries), rerun=rerun, setup_s=setup_s)


def bench_reward_model(tmp, policy, rm, opts):
    """The stage with OpenRLHF's RewardModelActor group against the stage with the reward-function file, on one
    engine, alternating; both under lab/cpu_training/'s device choice (the group needs it)."""
    import ray

    from openrlhf.trainer.ray.launcher import RayActorGroup, RewardModelActor
    from openrlhf.utils import get_strategy
    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
    from openrlhf_contrastive.stage import build_prompts, parse_args

    fn_args = parse_args(stage_flags(tmp, policy, ["--reward.remote_url", str(tmp / "reward.py")], tmp / "s", opts))
    rm_args = parse_args(stage_flags(tmp, policy, ["--reward.model_name_or_path", str(rm), "--reward.num_gpus_per_node",
                                                   "1", "--ds.zero_stage", "0"], tmp / "s", opts))
    pythonpath = os.pathsep.join([str(CPU_TRAINING), os.environ.get("PYTHONPATH", "")])
    vllm_session({"PYTHONPATH": pythonpath}, gpus=2)
    try:
        engines = engine(policy, tmp / "reward.py")
        group = RayActorGroup(1, 1, RewardModelActor)
        ray.get(group.async_init_model_from_pretrained(get_strategy(rm_args), str(rm)))
        tokenizer = get_tokenizer(str(policy), None, "left", None)
        prompts, labels = build_prompts(fn_args, tokenizer, DriverStrategy(fn_args))
        sides = {
            "reward_function": StageRuns(tmp, "store_fn", fn_args, lambda: OpenRLHFBackend(fn_args, engines, tokenizer),
                                         prompts, labels),
            "reward_model": StageRuns(tmp, "store_rm", rm_args,
                                      lambda: OpenRLHFBackend(rm_args, engines, tokenizer, reward_model_group=group),
                                      prompts, labels),
        }
        # Calibrated on the faster side (the reward function), so that both sides' runs last --min_run_s at least.
        warm_up = StageRuns(tmp, "store_warmup", fn_args, sides["reward_function"].backend_for, prompts, labels)

        def warm_up_on(m):
            warm_up.prompts, warm_up.labels = prompts[:m], labels[:m]
            warm_up()

        n = prompt_count(warm_up_on, opts)
        StageRuns(tmp, "store_rm_warmup", rm_args, sides["reward_model"].backend_for, prompts[:16], labels[:16])()
        for side in sides.values():
            side.prompts, side.labels = prompts[:n], labels[:n]
        seconds = alternate(sides, opts.repeats)
    finally:
        ray.shutdown()
    return dict(n=n, seconds=seconds)


def bench_hf(tmp, policy, rm, opts):
    import torch

    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.backends.hf import HFBackend
    from openrlhf_contrastive.stage import build_prompts, parse_args
    from openrlhf_contrastive.store import prompt_keys

    args = parse_args(stage_flags(tmp, policy, ["--reward.model_name_or_path", str(rm)], tmp / "store_hf", opts)
                      + ["--contrastive.backend", "hf"])
    backend = HFBackend(args)
    all_prompts, all_labels = build_prompts(args, backend.tokenizer, DriverStrategy(args))
    size = args.contrastive.chunk_size

    def bare_on(prompts, labels):
        keys = prompt_keys(prompts).tolist()
        for c, s in enumerate(range(0, len(prompts), size)):
            experiences = backend.sample(prompts[s:s + size], labels[s:s + size], keys[s:s + size], opts.k, c)
            backend.score(experiences)

    torch.manual_seed(0)
    n = prompt_count(lambda m: bare_on(all_prompts[:m], all_labels[:m]), opts)
    prompts, labels = all_prompts[:n], all_labels[:n]
    stage = StageRuns(tmp, "store_hf", args, lambda: backend, prompts, labels)
    seconds = alternate({"bare": lambda: bare_on(prompts, labels), "stage": stage}, opts.repeats)
    return dict(n=n, seconds=seconds, tokens=sum(s["generated_tokens"] for s in stage.summaries))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run per side, nothing recorded (CI)")
    parser.add_argument("--prompts", type=int, default=64, help="fewest prompts per run")
    parser.add_argument("--min_run_s", type=float, default=10.0, help="shortest run (the prompt count is calibrated)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per side, alternating (at least 5)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    opts = parser.parse_args()
    if opts.smoke:
        opts.prompts, opts.max_new_tokens, opts.repeats = 12, 8, 1
    elif opts.repeats < 5:
        parser.error("--repeats must be at least 5: single runs on a shared machine cannot be judged")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    tmp = Path(tempfile.mkdtemp())
    policy, rm = build_policy(tmp / "policy"), build_reward_model(tmp / "rm")
    write_prompts(tmp / "prompts.jsonl", opts.prompts if opts.smoke else MAX_PROMPTS)
    (tmp / "reward.py").write_text(REWARD_FILE)

    vllm = bench_vllm(tmp, policy, opts)
    with_rm = bench_reward_model(tmp, policy, rm, opts)
    hf = bench_hf(tmp, policy, rm, opts)

    def rate(result, side):
        return result["n"] / statistics.median(result["seconds"][side])

    # ratio of rates = bare seconds / stage seconds, per round
    vllm_ratio = ratios(vllm["seconds"]["bare"], vllm["seconds"]["stage"])
    hf_ratio = ratios(hf["seconds"]["bare"], hf["seconds"]["stage"])
    rm_ratio = ratios(with_rm["seconds"]["reward_model"], with_rm["seconds"]["reward_function"])
    fn_s, rm_s = (statistics.median(with_rm["seconds"][side]) for side in ("reward_function", "reward_model"))

    def spread(r):
        return f"median {r['median']:.3f} [min {r['min']:.3f}, max {r['max']:.3f}; {r['runs']} runs per side]"

    print(f"tiny Llama, k={opts.k}, {opts.max_new_tokens} new tokens, CPU; sides alternate, {opts.repeats} runs each")
    print(f"  vllm, {vllm['n']} prompts/run: bare {rate(vllm, 'bare'):.2f} prompts/s, stage {rate(vllm, 'stage'):.2f} "
          f"prompts/s; stage/bare {spread(vllm_ratio)} (target >= 0.95)")
    print(f"  hf, {hf['n']} prompts/run: bare {rate(hf, 'bare'):.2f} prompts/s, stage {rate(hf, 'stage'):.2f} "
          f"prompts/s; stage/bare {spread(hf_ratio)} (target >= 0.95)")
    print(f"  vllm stage, {with_rm['n']} prompts/run: reward-function file {fn_s:.2f} s, reward model (RewardModelActor) "
          f"{rm_s:.2f} s: +{(rm_s - fn_s) / with_rm['n'] / opts.k * 1000:.2f} ms per baseline; time ratio "
          f"{spread(rm_ratio)}")
    print(f"  rerun on the complete store: {vllm['rerun']['generations']} generations, {vllm['rerun']['seconds']:.2f} s; "
          f"in-job ContrastiveReward.setup: {vllm['setup_s']:.2f} s")
    record({"stage_ratio_vllm": round(vllm_ratio["median"], 3),
            "stage_ratio_vllm_range": [round(vllm_ratio["min"], 3), round(vllm_ratio["max"], 3)],
            "stage_ratio_hf": round(hf_ratio["median"], 3),
            "stage_ratio_hf_range": [round(hf_ratio["min"], 3), round(hf_ratio["max"], 3)],
            "stage_runs_per_side": opts.repeats,
            "stage_vllm_prompts_per_run": vllm["n"], "stage_hf_prompts_per_run": hf["n"],
            "stage_vllm_prompts_per_s": round(rate(vllm, "stage"), 2),
            "stage_vllm_bare_prompts_per_s": round(rate(vllm, "bare"), 2),
            "stage_vllm_tokens_per_s": round(vllm["tokens"] / sum(vllm["seconds"]["stage"])),
            "stage_vllm_driver_cpu_s": round(vllm["cpu"]["stage"], 2),
            "stage_vllm_bare_driver_cpu_s": round(vllm["cpu"]["bare"], 2),
            "stage_hf_prompts_per_s": round(rate(hf, "stage"), 2),
            "stage_hf_bare_prompts_per_s": round(rate(hf, "bare"), 2),
            "stage_rm_prompts_per_run": with_rm["n"],
            "stage_reward_function_s": round(fn_s, 2), "stage_reward_model_s": round(rm_s, 2),
            "stage_reward_model_time_ratio": round(rm_ratio["median"], 3),
            "stage_reward_model_time_ratio_range": [round(rm_ratio["min"], 3), round(rm_ratio["max"], 3)],
            "stage_reward_model_ms_per_baseline": round((rm_s - fn_s) / with_rm["n"] / opts.k * 1000, 2),
            "rerun_generations": vllm["rerun"]["generations"], "rerun_s": round(vllm["rerun"]["seconds"], 2),
            "rerun_setup_s": round(vllm["setup_s"], 2)}, opts.smoke)


if __name__ == "__main__":
    main()
