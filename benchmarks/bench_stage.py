"""Stage overhead and rerun cost: the offline stage end to end against a bare loop over the same engine.

Same prompts, k and engine, in one run, for both backends:
- vllm: one OpenRLHF RolloutRayActor (create_vllm_engines, vLLM CPU) on a tiny model, reward from a
  reward-function file inside the rollout actor. The bare loop sends each prompt's k samples as one request
  (`generate_responses(num_samples=k)`, as SamplesGenerator does in training) and waits for all of them.
- hf: transformers generate + OpenRLHF's reward model (get_llm_for_sequence_regression) on the CPU. The bare
  loop calls the backend's generate and reward model over the same chunks, nothing else.
The stage adds prompt keys, per-request seeds, Experience conversion, length penalties, store writes with
fsync and the progress bar. Ratio = stage prompts/s / bare prompts/s (target >= 0.95). Then the stage runs
again on the complete store: generations (target 0) and wall time; and `ContrastiveReward.setup` on a
trainer holding the same engine and dataset (the in-job rerun path).

    PYTHONPATH=tests/support .venv/bin/python benchmarks/bench_stage.py [--smoke]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from results import record  # noqa: E402

REWARD_FILE = "import torch\ndef reward_func(queries, prompts, labels):\n    return {'rewards': torch.tensor([len(q) / 100.0 for q in queries])}\n"


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


def bench_vllm(tmp, policy, opts):
    import ray
    from vllm import SamplingParams

    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines
    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
    from openrlhf_contrastive.plugin import ContrastiveReward
    from openrlhf_contrastive.stage import build_prompts, parse_args, run_stage

    (tmp / "reward.py").write_text(REWARD_FILE)
    args = parse_args(stage_flags(tmp, policy, ["--reward.remote_url", str(tmp / "reward.py")], tmp / "store_vllm", opts))
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    try:
        engines = create_vllm_engines(1, 1, str(policy), 42, False, False, True, 128, None, 0.05, False, None,
                                      remote_rm_url=[str(tmp / "reward.py")])
        tokenizer = get_tokenizer(str(policy), None, "left", None)
        strategy = DriverStrategy(args)
        prompts, labels = build_prompts(args, tokenizer, strategy)
        params = SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=opts.max_new_tokens, min_tokens=1,
                                skip_special_tokens=False)

        def bare():
            refs = [engines[0].generate_responses.remote(prompt=p, label=l, sampling_params=params, max_length=128,
                                                         hf_tokenizer=tokenizer, num_samples=opts.k)
                    for p, l in zip(prompts, labels)]
            return [r for out in ray.get(refs) for r in out]

        bare()  # warm-up (first requests compile and allocate)
        start, cpu = time.perf_counter(), time.process_time()
        outputs = bare()
        bare_s, bare_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert all(r["reward"] is not None for r in outputs)
        cpu = time.process_time()
        summary = run_stage(args, OpenRLHFBackend(args, engines, tokenizer), prompts, labels)
        summary["driver_cpu_s"], summary["bare_driver_cpu_s"] = time.process_time() - cpu, bare_cpu
        rerun = run_stage(args, OpenRLHFBackend(args, engines, tokenizer), prompts, labels)

        from openrlhf.datasets.prompts_dataset import PromptDataset
        from openrlhf.datasets.utils import blending_datasets
        from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

        data = blending_datasets(args.data.prompt_dataset, None, strategy, 42, max_count=args.data.max_samples)
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
    return len(prompts), bare_s, summary, rerun, setup_s


def bench_hf(tmp, policy, opts):
    import torch

    from openrlhf_contrastive.backends.hf import HFBackend
    from openrlhf_contrastive.stage import build_prompts, parse_args, run_stage
    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.store import prompt_keys
    from openrlhf_contrastive.demo.tiny import build_reward_model

    rm = build_reward_model(tmp / "rm")
    args = parse_args(stage_flags(tmp, policy, ["--reward.model_name_or_path", str(rm)], tmp / "store_hf", opts)
                      + ["--contrastive.backend", "hf"])
    backend = HFBackend(args)
    prompts, labels = build_prompts(args, backend.tokenizer, DriverStrategy(args))
    keys = prompt_keys(prompts).tolist()
    size = args.contrastive.chunk_size

    def bare():
        for c, s in enumerate(range(0, len(prompts), size)):
            experiences = backend.sample(prompts[s:s + size], labels[s:s + size], keys[s:s + size], opts.k, c)
            backend.score(experiences)

    torch.manual_seed(0)
    bare()  # warm-up
    start = time.perf_counter()
    bare()
    bare_s = time.perf_counter() - start
    summary = run_stage(args, backend, prompts, labels)
    return len(prompts), bare_s, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, nothing recorded (CI)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    opts = parser.parse_args()
    if opts.smoke:
        opts.prompts, opts.max_new_tokens = 12, 8
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from openrlhf_contrastive.demo.tiny import build_policy

    tmp = Path(tempfile.mkdtemp())
    policy = build_policy(tmp / "policy")
    write_prompts(tmp / "prompts.jsonl", opts.prompts)

    n, bare_s, stage, rerun, setup_s = bench_vllm(tmp, policy, opts)
    ratio_vllm = stage["prompts_per_s"] / (n / bare_s)
    hn, hbare_s, hstage = bench_hf(tmp, policy, opts)
    ratio_hf = hstage["prompts_per_s"] / (hn / hbare_s)

    print(f"{n} prompts x k={opts.k}, {opts.max_new_tokens} new tokens, tiny Llama, CPU")
    print(f"  vllm bare loop: {n / bare_s:7.2f} prompts/s")
    print(f"  vllm stage:     {stage['prompts_per_s']:7.2f} prompts/s, {stage['tokens_per_s']:.0f} tokens/s"
          f"   ratio {ratio_vllm:.3f} (target >= 0.95)")
    print(f"  hf bare loop:   {hn / hbare_s:7.2f} prompts/s")
    print(f"  hf stage:       {hstage['prompts_per_s']:7.2f} prompts/s, {hstage['tokens_per_s']:.0f} tokens/s"
          f"   ratio {ratio_hf:.3f} (target >= 0.95)")
    print(f"  rerun on the complete store: {rerun['generations']} generations, {rerun['seconds']:.2f} s; "
          f"in-job ContrastiveReward.setup: {setup_s:.2f} s")
    record({"stage_ratio_vllm": round(ratio_vllm, 3), "stage_ratio_hf": round(ratio_hf, 3),
            "stage_vllm_prompts_per_s": round(stage["prompts_per_s"], 2),
            "stage_vllm_bare_prompts_per_s": round(n / bare_s, 2),
            "stage_vllm_tokens_per_s": round(stage["tokens_per_s"]),
            "stage_vllm_driver_cpu_s": round(stage["driver_cpu_s"], 2),
            "stage_vllm_bare_driver_cpu_s": round(stage["bare_driver_cpu_s"], 2),
            "stage_hf_prompts_per_s": round(hstage["prompts_per_s"], 2),
            "stage_hf_bare_prompts_per_s": round(hn / hbare_s, 2),
            "rerun_generations": rerun["generations"], "rerun_s": round(rerun["seconds"], 2),
            "rerun_setup_s": round(setup_s, 2)}, opts.smoke)


if __name__ == "__main__":
    main()
