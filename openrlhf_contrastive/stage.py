"""The offline stage: k baseline responses per prompt from the initial policy, scored as training scores them.

    openrlhf-contrastive sample --actor.model_name_or_path SFT --reward.model_name_or_path RM \
        --data.prompt_dataset prompts.jsonl --data.input_key input --data.apply_chat_template \
        --rollout.max_new_tokens 512 --contrastive.k 4 --contrastive.baseline_path ./baselines

takes the model, reward, data, rollout and vLLM flags of `train_ppo_ray` (copy the training command: its other
flags are ignored) and reads top to bottom:

    1. prompts   OpenRLHF's blending_datasets + PromptDataset on the --data.* flags; duplicate keys dropped
    2. resume    the store (StoreWriter) says which prompts are done; fixed chunks with nothing missing are skipped
    3. sample    backend.submit: k responses per prompt (seeded per prompt key, or per chunk for hf)
    4. score     backend.score: the reward training uses (reward model, reward group, remote URL, reward file)
    5. penalise  OpenRLHF's own apply_length_penalties on those Experiences (as compute_advantages_and_returns)
    6. append    StoreWriter.append per chunk; tqdm shows prompts/s and tokens/s
    7. summary   counts, throughput and whether the baseline can help this reward (`openrlhf_contrastive.diagnose`),
                 printed and written to the store's summary.json

In a training job `ContrastiveReward.setup` calls `run_in_job(trainer)`: the same stage on the trainer's own
engines and reward group, before the first PPO step; its summary goes through OpenRLHF's own log handler
(`in_job_log`), so train_ppo_ray's output shows it.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import time
from pathlib import Path

from openrlhf_contrastive.backends import DriverStrategy, backend_name, check_rewards, response_texts, start_backend
from openrlhf_contrastive.checks import (
    InputError,
    check_chat_template_date,
    check_contrastive_args,
    check_sample_inputs,
)
from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
from openrlhf_contrastive.diagnose import diagnose
from openrlhf_contrastive.fingerprint import baseline_temperature, training_fingerprint
from openrlhf_contrastive.flags import BACKENDS, add_contrastive_args, add_train_ppo_ray_args
from openrlhf_contrastive.store import (
    SUMMARY,
    WRITER_FIX,
    BaselineStore,
    StoreWriter,
    compare_fingerprints,
    holds_baselines,
    prompt_key,
    read_header,
)

logger = logging.getLogger(__name__)

IN_JOB_LOGGER = "openrlhf_contrastive.in_job"


def in_job_log(line: str) -> None:
    """Log a line of the in-job stage or of the plugin's setup where train_ppo_ray shows it: through OpenRLHF's own
    log handler (stdout, INFO), as OpenRLHF's trainer logs its steps. (This package's other loggers propagate to the
    root logger, which shows only warnings unless the application configures logging.)"""
    from openrlhf.utils.logging_utils import init_logger

    log = logging.getLogger(IN_JOB_LOGGER)
    if not log.handlers:
        init_logger(IN_JOB_LOGGER)
    log.info(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openrlhf-contrastive sample",
        description="Offline stage of contrastive rewards: sample --contrastive.k baseline responses per prompt from "
        "the initial policy, score them with the training reward, write the store at --contrastive.baseline_path. "
        "Takes train_ppo_ray's flags; those that do not change the baselines are ignored.",
    )
    add_train_ppo_ray_args(parser)
    add_contrastive_args(parser)
    parser.add_argument(
        "--contrastive.backend", type=str, default=None, choices=BACKENDS,
        help="openrlhf: vLLM engines over Ray (default where vLLM is installed); hf: transformers on one device.",
    )
    return parser


def parse_args(argv: list[str], parser: argparse.ArgumentParser | None = None):
    """train_ppo_ray-style nested args (openrlhf.utils.config.hierarchize), normalised as train_ppo_ray does.

    `parser` is `build_parser()` or one extending it (`evaluate`, `rescore`); messages name its command.
    """
    parser = parser or build_parser()
    flat, ignored = parser.parse_known_args(argv)  # --help answers here, before openrlhf is imported
    from openrlhf.utils.config import hierarchize

    flags = [a for a in ignored if a.startswith("--")]
    if flags:
        logger.warning("%s ignores these flags (they do not change baselines): %s", parser.prog, " ".join(flags))
    args = hierarchize(flat)
    if args.reward.remote_url:
        args.reward.remote_url = args.reward.remote_url.split(",")
    if args.data.input_template and "{}" not in args.data.input_template:
        args.data.input_template = None  # train_ppo_ray does the same (with a warning)
    missing = [f for f, v in [("--actor.model_name_or_path", args.actor.model_name_or_path),
                              ("--data.prompt_dataset", args.data.prompt_dataset),
                              ("--contrastive.baseline_path", args.contrastive.baseline_path)] if not v]
    if not (args.reward.model_name_or_path or args.reward.remote_url or args.train.agent_func_path):
        missing.append("--reward.model_name_or_path, --reward.remote_url or --train.agent_func_path")
    if missing:
        raise InputError(f"{parser.prog} needs {', '.join(missing)} (the same values as for training).")
    if args.train.agent_func_path and backend_name(args) == "hf":
        raise InputError(
            f"--train.agent_func_path {args.train.agent_func_path}: the agent runs inside OpenRLHF's vLLM rollout actors, "
            "which the hf backend does not use. Use --contrastive.backend openrlhf (vLLM installed) for agent rewards."
        )
    check_contrastive_args(args)
    check_sample_inputs(args)
    return args


def build_prompts(args, tokenizer, strategy) -> tuple[list[str], list[str]]:
    """The prompts and labels exactly as train_ppo_ray's prepare_datasets builds its PromptDataset."""
    from openrlhf.datasets.prompts_dataset import PromptDataset
    from openrlhf.datasets.utils import blending_datasets

    try:
        data = blending_datasets(
            args.data.prompt_dataset, args.data.prompt_probs, strategy, args.train.seed,
            max_count=args.data.max_samples, dataset_split=args.data.prompt_split,
        )
    except Exception as e:  # the datasets library's many loader errors (format, cache disk, hub), named with their cause
        cause = f"{type(e).__name__}: {e}" + (f" (caused by {type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else "")
        raise InputError(
            f"--data.prompt_dataset {args.data.prompt_dataset} could not be loaded by OpenRLHF's blending_datasets: "
            f"{cause}. Check the file or dataset name, its format, and that the datasets cache "
            "(HF_DATASETS_CACHE, default ~/.cache/huggingface/datasets) has free space."
        ) from e
    data = data.select(range(min(args.data.max_samples, len(data))))
    dataset = PromptDataset(data, tokenizer, strategy, input_template=args.data.input_template)
    if not dataset.prompts:
        raise InputError(
            f"--data.prompt_dataset {args.data.prompt_dataset} gave no prompts (split {args.data.prompt_split!r}, "
            f"--data.max_samples {args.data.max_samples}). Check the dataset and these flags."
        )
    return dataset.prompts, dataset.labels


def unique_prompts(prompts, labels, label_keyed: bool):
    """(keys, texts, prompts, labels) with one entry per store key, first occurrence first (dataset order).

    `texts` are what the store keeps for each key: the prompt, plus NUL and the label when labels are keyed.
    """
    seen, out = set(), ([], [], [], [])
    for prompt, label in zip(prompts, labels):
        key = prompt_key(prompt, label if label_keyed else None)
        if key not in seen:
            seen.add(key)
            for column, value in zip(out, (key, prompt + ("\x00" + str(label) if label_keyed else ""), prompt, label)):
                column.append(value)
    return out


def sampled_chunks(backend, todo, prompts, labels, keys, k: int):
    """Yield (indices, Experiences) of each chunk in `todo`, keeping two chunks in flight (engines never drain)."""
    in_flight = collections.deque()
    for chunk_index, idx in todo:
        collect = backend.submit([prompts[i] for i in idx], [labels[i] for i in idx], [keys[i] for i in idx], k, chunk_index)
        in_flight.append((idx, collect))
        if len(in_flight) == 2:
            idx, collect = in_flight.popleft()
            yield idx, collect()
    while in_flight:
        idx, collect = in_flight.popleft()
        yield idx, collect()


def penalised_rewards(experiences, args, k: int):
    """The rewards of a chunk's Experiences after OpenRLHF's own length penalties, as (prompts, k) float64.

    As RemoteExperienceMaker.compute_advantages_and_returns: rewards promoted to fp32, then apply_length_penalties.
    """
    import torch

    from openrlhf.trainer.ppo_utils.length_penalty import apply_length_penalties

    for e in experiences:
        e.rewards = e.rewards.to(torch.promote_types(e.rewards.dtype, torch.float32))
    apply_length_penalties(experiences, args)
    return torch.cat([e.rewards.flatten() for e in experiences]).double().numpy().reshape(-1, k)


def run_stage(args, backend, prompts, labels, log=print, fingerprint: dict | None = None, path=None) -> dict:
    """Sample, score, penalise and store the baselines of every prompt the store does not hold yet; return the
    summary (`summarize`). `fingerprint`: the store's provenance for these flags, when the caller already has it
    (computed here otherwise: `training_fingerprint` hashes the models). `path`: the store written (default
    --contrastive.baseline_path; a refresh writes a generation of it)."""
    from tqdm import tqdm

    start = time.time()
    k = args.contrastive.k

    # 1. prompts: one per store key (duplicates dropped, dataset order kept)
    keys, texts, prompts_u, labels_u = unique_prompts(prompts, labels, bool(args.data.label_key))

    # 2. resume: fixed chunks of that list; a chunk with a missing key is redone whole (same seeds)
    keep = bool(getattr(args.contrastive, "keep_responses", False))
    path = path or args.contrastive.baseline_path
    writer = StoreWriter(
        path, k, fingerprint or training_fingerprint(args, k, baseline_temperature(args)),
        keep_responses=keep,
    )
    size = args.contrastive.chunk_size
    chunks = [range(s, min(s + size, len(keys))) for s in range(0, len(keys), size)]
    todo = [(c, idx) for c, idx in enumerate(chunks) if any(keys[i] not in writer.done for i in idx)]
    already = sum(1 for key in keys if key in writer.done)
    generations0, tokens0 = backend.num_generations, backend.num_tokens

    bar = tqdm(total=len(keys) - already, unit="prompt", desc="baselines", dynamic_ncols=True)
    try:
        with backend.awake():
            # 3. sample k responses per prompt from the initial policy
            for idx, experiences in sampled_chunks(backend, todo, prompts_u, labels_u, keys, k):
                # 4. score them with the training reward
                backend.score(experiences)
                check_rewards(experiences, args)  # one finite reward per response, before anything is written
                # 5. penalise: OpenRLHF's length penalties, as in training
                rewards = penalised_rewards(experiences, args, k)
                # 6. append to the store (keys already stored are skipped by the writer)
                before = len(writer.done)
                responses = response_texts(experiences, backend.tokenizer, k) if keep else None
                writer.append([keys[i] for i in idx], [texts[i] for i in idx], rewards, responses=responses)
                bar.update(len(writer.done) - before)
                bar.set_postfix(tokens_per_s=f"{(backend.num_tokens - tokens0) / max(bar.format_dict['elapsed'], 1e-9):.0f}")
    finally:
        bar.close()
        writer.close()

    return summarize(
        args, log, prompts=len(keys), duplicates=len(prompts) - len(keys), already=already,
        generations=backend.num_generations - generations0, tokens=backend.num_tokens - tokens0,
        seconds=time.time() - start, path=path,
    )


def summarize(args, log, prompts: int, duplicates: int, already: int, generations: int, tokens: int, seconds: float,
              path=None) -> dict:
    """The stage's summary (returned, logged line by line, and written to the store's summary.json): counts, the
    store's reward distribution, throughput, and the store's diagnosis (will the baseline help this reward?)."""
    import numpy as np

    path = path or args.contrastive.baseline_path
    store = BaselineStore.load(path)
    k, new = args.contrastive.k, prompts - already
    summary = {
        "store": str(path),
        "prompts": prompts,
        "duplicates_dropped": duplicates,
        "already_stored": already,
        "sampled_prompts": new,
        "k": k,
        "generations": generations,
        "generated_tokens": tokens,
        "baseline_mean": float(np.mean(store.mean)) if len(store) else float("nan"),
        "baseline_std": float(np.std(store.rewards)) if len(store) else float("nan"),
        "seconds": seconds,
        "prompts_per_s": new / seconds,
        "tokens_per_s": tokens / seconds,
    }
    diagnosis = diagnose(store.rewards)
    summary["diagnosis"] = diagnosis.to_dict()
    log(
        f"baseline store {summary['store']}: {prompts} prompts x k={k} ({new} sampled now, {already} already stored, "
        f"{duplicates} duplicates dropped); baseline reward mean {summary['baseline_mean']:.4f}, std "
        f"{summary['baseline_std']:.4f}; {generations} generations, {tokens} tokens in {seconds:.1f} s "
        f"({summary['prompts_per_s']:.2f} prompts/s, {summary['tokens_per_s']:.1f} tokens/s)"
    )
    for line in diagnosis.lines():
        log(line)
    file = Path(path, SUMMARY)
    file.with_name(SUMMARY + ".tmp").write_text(json.dumps(summary, indent=2))
    os.replace(file.with_name(SUMMARY + ".tmp"), file)
    return summary


def run_in_job(trainer, fingerprint: dict | None = None) -> dict:
    """The stage inside train_ppo_ray, on the trainer's own vLLM engines and reward group (start of fit); its
    summary is logged where train_ppo_ray's output shows it (`in_job_log`)."""
    args = trainer.args
    dataset = trainer.prompts_dataloader.dataset
    return run_stage(args, OpenRLHFBackend.from_trainer(trainer), dataset.prompts, dataset.labels, log=in_job_log,
                     fingerprint=fingerprint)


def check_store_matches(args) -> None:
    """A store at --contrastive.baseline_path that holds baselines was made under this command's settings (checked
    before models load; a store without any baseline yet takes this command's settings)."""
    if holds_baselines(args.contrastive.baseline_path):
        header = read_header(args.contrastive.baseline_path)
        expected = training_fingerprint(args, args.contrastive.k, baseline_temperature(args))
        compare_fingerprints(header["fingerprint"], expected, args.contrastive.baseline_path, fix=WRITER_FIX)


def main(argv: list[str] | None = None) -> dict:
    """`openrlhf-contrastive sample`: parse, build prompts, start the backend, run the stage, shut down."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from openrlhf.utils.utils import get_tokenizer  # after parsing: --help and flag errors answer at once

    # Everything that can be wrong with the prompts is found before an engine or a GPU is started.
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", None, use_fast=not args.data.disable_fast_tokenizer)
    check_chat_template_date(args, tokenizer)
    check_store_matches(args)
    prompts, labels = build_prompts(args, tokenizer, DriverStrategy(args))
    backend = start_backend(args)
    try:
        return run_stage(args, backend, prompts, labels)
    finally:
        backend.close()
