"""Throughput of the offline stage next to a bare loop over the same vLLM engine and prompts, in one run.

    PYTHONPATH=tests/support HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stage_throughput.py --prompts 200 --k 4

Both sides use one OpenRLHF RolloutRayActor (create_vllm_engines) on a tiny model, with the reward computed by
a reward-function file inside the rollout actor. The bare loop dispatches every prompt's k samples at once with
`generate_responses(num_samples=k)`, as SamplesGenerator does in training; the stage adds per-request seeds,
Experience conversion, length penalties and store writes, chunk by chunk (--contrastive.chunk_size).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REWARD_FILE = "import torch\ndef reward_func(queries, prompts, labels):\n    return {'rewards': torch.tensor([len(q) / 100.0 for q in queries])}\n"


def main():
    cli = argparse.ArgumentParser()
    cli.add_argument("--prompts", type=int, default=200)
    cli.add_argument("--k", type=int, default=4)
    cli.add_argument("--max_new_tokens", type=int, default=32)
    cli.add_argument("--chunk_size", type=int, default=64)
    opts = cli.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    import ray
    from vllm import SamplingParams

    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines
    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend, StageStrategy
    from openrlhf_contrastive.stage import build_prompts, parse_args, run_stage
    from openrlhf_contrastive.tiny import build_policy

    tmp = Path(tempfile.mkdtemp())
    policy = build_policy(tmp / "policy")
    (tmp / "reward.py").write_text(REWARD_FILE)
    with open(tmp / "prompts.jsonl", "w") as f:
        for i in range(opts.prompts):
            f.write(json.dumps({"input": f"Question {i}: write a short answer about number {i}."}) + "\n")
    args = parse_args([
        "--actor.model_name_or_path", str(policy), "--reward.remote_url", str(tmp / "reward.py"),
        "--data.prompt_dataset", str(tmp / "prompts.jsonl"), "--data.apply_chat_template", "--data.max_len", "128",
        "--rollout.max_new_tokens", str(opts.max_new_tokens), "--contrastive.k", str(opts.k),
        "--contrastive.chunk_size", str(opts.chunk_size), "--contrastive.baseline_path", str(tmp / "store"),
        "--vllm.enforce_eager",
    ])
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    try:
        engines = create_vllm_engines(1, 1, str(policy), 42, False, False, True, 128, None, 0.05, False, None,
                                      remote_rm_url=[str(tmp / "reward.py")])
        tokenizer = get_tokenizer(str(policy), None, "left", None)
        prompts, labels = build_prompts(args, tokenizer, StageStrategy(args))

        params = SamplingParams(temperature=1.0, top_p=1.0, top_k=-1, max_tokens=opts.max_new_tokens, min_tokens=1,
                                skip_special_tokens=False)
        warm = engines[0].generate_responses.remote(prompt=prompts[0], label="", sampling_params=params, max_length=128,
                                                    hf_tokenizer=tokenizer, num_samples=1)
        ray.get(warm)

        start = time.time()
        refs = [engines[0].generate_responses.remote(prompt=p, label=l, sampling_params=params, max_length=128,
                                                     hf_tokenizer=tokenizer, num_samples=opts.k) for p, l in zip(prompts, labels)]
        outputs = [r for out in ray.get(refs) for r in out]
        bare_s = time.time() - start
        bare_tokens = sum(end - begin for r in outputs for begin, end in r["action_ranges"])

        summary = run_stage(args, OpenRLHFBackend(args, engines, tokenizer), prompts, labels)
    finally:
        ray.shutdown()
    n = len(prompts)
    print(f"bare loop : {n} prompts x k={opts.k} in {bare_s:.1f} s: {n / bare_s:.2f} prompts/s, {bare_tokens / bare_s:.0f} tokens/s")
    print(f"stage     : {n} prompts x k={opts.k} in {summary['seconds']:.1f} s: {summary['prompts_per_s']:.2f} prompts/s, "
          f"{summary['tokens_per_s']:.0f} tokens/s (chunk_size {opts.chunk_size})")


if __name__ == "__main__":
    main()
