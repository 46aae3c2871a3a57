"""Transform overhead: OpenRLHF's real compute_advantages_and_returns with and without --reward_fn contrastive.

A rollout batch of 1024 samples x 512 response tokens (real `Experience` objects, `gae`, micro-batches of
8), one store of the batch's prompts with k = 4. Both variants run interleaved on the same inputs. On a
shared 2-core machine the difference of two ~5 s medians is noisier than the plugin's cost, so the
recorded figure is the direct one: the median time of the plugin's transform call alone (the only work the
patch adds) as a fraction of the median compute_advantages_and_returns time without the plugin. The
side-by-side difference is printed too.

    PYTHONPATH=tests/support .venv/bin/python -m benchmarks.bench_transform [--smoke]
"""

import argparse
import copy
import statistics
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.results import record
from lab.cpu_training.openrlhf_cli import parse_train_args

from openrlhf_contrastive.fingerprint import training_fingerprint  # noqa: E402
from openrlhf_contrastive.store import StoreWriter, prompt_keys  # noqa: E402


def rollout_batch(samples, tokens, n, micro_batch):
    from openrlhf.trainer.ppo_utils.experience import Experience

    g = torch.Generator().manual_seed(0)
    prompts = [f"<|user|>Prompt number {i}: explain something in a few words.</s><|assistant|>" for i in range(samples // n)]
    sample_prompts = [p for p in prompts for _ in range(n)]
    lengths = torch.randint(tokens // 4, tokens + 1, (samples,), generator=g)
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    rewards, kl = torch.randn(samples, generator=g), 0.01 * torch.randn(samples, tokens, generator=g) * mask
    values = torch.randn(samples, tokens, generator=g) * mask
    batch = []
    for s in range(0, samples, micro_batch):
        sl = slice(s, s + micro_batch)
        batch.append(Experience(
            action_mask=mask[sl], kl=kl[sl], values=values[sl], rewards=rewards[sl].clone(),
            index=list(range(s, s + micro_batch)), prompts=sample_prompts[sl], labels=[""] * micro_batch,
            info={"reward": rewards[sl].clone()},
        ))
    return prompts, batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, nothing recorded (CI)")
    parser.add_argument("--repeats", type=int, default=15)
    opts = parser.parse_args()
    samples, tokens, repeats = (64, 32, 3) if opts.smoke else (1024, 512, opts.repeats)
    n, k = 4, 4

    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    store_dir = tempfile.mkdtemp()
    flags = ["--rollout.n_samples_per_prompt", str(n), "--rollout.micro_batch_size", "8"]
    args_plain = parse_train_args(flags)
    args_cr = parse_train_args(flags + ["--reward_fn", "contrastive", "--contrastive.baseline_path", store_dir])
    prompts, batch = rollout_batch(samples, tokens, n, 8)
    with StoreWriter(store_dir, k, training_fingerprint(args_cr, k, args_cr.rollout.temperature)) as w:
        w.append(prompt_keys(prompts), prompts, np.random.default_rng(0).normal(size=(len(prompts), k)))

    makers = {
        name: RemoteExperienceMaker(None, None, None, None, FixedKLController(0.01), SimpleNamespace(args=a), None)
        for name, a in (("plain", args_plain), ("contrastive", args_cr))
    }
    makers["contrastive"].compute_advantages_and_returns(copy.deepcopy(batch))  # loads the store once (setup)
    plugin = makers["contrastive"].reward_fn
    times = {"plain": [], "contrastive": [], "transform": []}
    for _ in range(repeats):
        for name, maker in makers.items():
            experiences = copy.deepcopy(batch)
            start = time.perf_counter()
            maker.compute_advantages_and_returns(experiences)
            times[name].append(time.perf_counter() - start)
        experiences = copy.deepcopy(batch)
        start = time.perf_counter()
        plugin.transform(experiences, args_cr)
        times["transform"].append(time.perf_counter() - start)
    plain, cr, transform = (statistics.median(times[key]) for key in ("plain", "contrastive", "transform"))
    print(f"compute_advantages_and_returns, {samples} samples x {tokens} tokens, gae, {repeats} repeats (median):")
    print(f"  without --reward_fn:         {plain * 1e3:9.2f} ms")
    print(f"  with --reward_fn contrastive: {cr * 1e3:9.2f} ms   (side by side: {cr / plain - 1:+.2%}, noisy)")
    print(f"  the transform call alone:    {transform * 1e3:9.2f} ms")
    print(f"  overhead = transform / without: {transform / plain:.2%} (target <= 2%)")
    record({"transform_overhead": round(transform / plain, 4), "transform_plain_ms": round(plain * 1e3, 1),
            "transform_contrastive_ms": round(cr * 1e3, 1), "transform_call_ms": round(transform * 1e3, 2)},
           opts.smoke)


if __name__ == "__main__":
    main()
