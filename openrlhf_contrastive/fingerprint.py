"""Provenance of a baseline store, computed from OpenRLHF's (hierarchized) train_ppo_ray flags.

Baselines are only comparable with training rewards when they come from the same policy, the same reward
(model, normalisation, length penalties), the same prompt strings and the same sampling settings. The
fingerprint records exactly these; the stage writes it into the store's header and training compares it
with its own flags (`BaselineStore.check_fingerprint`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

from openrlhf_contrastive.store import KEY_SCHEME


FULL_DIGEST_ENV = "OPENRLHF_CONTRASTIVE_FULL_DIGEST"
"""Set to 1 (for the stage and for training alike) to hash every byte of every weight file instead of a sample."""

_DESCRIPTION_FILES = (
    "config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_WINDOWS, _WINDOW = 16, 64 * 1024  # sampled digest: 16 windows of 64 KiB per weight file, first and last included


def full_digest_requested() -> bool:
    return os.environ.get(FULL_DIGEST_ENV, "0").strip().lower() in ("1", "true", "yes")


def _hash_weights(digest, file: Path, full: bool) -> None:
    """Name, size, the safetensors header (every tensor's name, dtype, shape, offsets) and the bytes: all of them
    when `full` or the file is small, else 16 windows of 64 KiB spread evenly over the file."""
    size = file.stat().st_size
    digest.update(f"{file.name}:{size}".encode())
    with open(file, "rb") as f:
        if full or size <= _WINDOWS * _WINDOW:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
            return
        if file.suffix == ".safetensors":
            header_len = int.from_bytes(f.read(8), "little")
            if 0 < header_len < min(size, 1 << 28):
                digest.update(f.read(header_len))
        for i in range(_WINDOWS):
            f.seek((size - _WINDOW) * i // (_WINDOWS - 1))
            digest.update(f.read(_WINDOW))


def content_digest(name_or_path: str | None, full: bool | None = None) -> str | None:
    """sha256 (16 hex digits) of a local model directory or file; None for hub ids and URLs.

    A model directory is identified by its description files (config, weight index, tokenizer, chat template) and
    its weight files: name, size, safetensors header and a fixed sample of 16 windows of bytes per file (about
    1 MiB per shard, so a 70B checkpoint hashes in about a second), or every byte with `full` (default: the
    environment variable OPENRLHF_CONTRASTIVE_FULL_DIGEST). Fine-tunes, retrained reward models and other seeds
    change every window; only a change confined to a few unsampled bytes needs the full hash.
    """
    if not name_or_path:
        return None
    full = full_digest_requested() if full is None else full
    path = Path(name_or_path)
    digest = hashlib.sha256()
    if path.is_file():  # a reward-function or agent file: its bytes, whatever its name
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if not path.is_dir():
        return None
    for name in _DESCRIPTION_FILES:
        if (path / name).is_file():
            digest.update(name.encode() + (path / name).read_bytes())
    for weights in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()):
        _hash_weights(digest, weights, full)
    return digest.hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def baseline_temperature(args) -> float:
    """The sampling temperature of the baselines: --contrastive.temperature, else --rollout.temperature."""
    t = args.contrastive.temperature
    return args.rollout.temperature if t is None else t


def model_identity(name_or_path: str | None) -> str | None:
    """A local model or file by its content digest (so a copied checkpoint still matches), anything else by name.

    "sha256-full:..." marks a model directory hashed in full (OPENRLHF_CONTRASTIVE_FULL_DIGEST=1), so that a
    comparison with a sampled digest says why it differs.
    """
    full = full_digest_requested() and name_or_path is not None and Path(name_or_path).is_dir()
    digest = content_digest(name_or_path)
    return f"sha256{'-full' if full else ''}:{digest}" if digest else name_or_path


def reward_sources(args) -> list[str]:
    """The agent file, or the remote URL(s) / reward-function file(s), or the reward model path(s), as train_ppo_ray
    uses them (an agent gives the reward itself; otherwise a remote reward replaces the reward model)."""
    agent = getattr(args.train, "agent_func_path", None)
    if agent:
        return [agent]
    remote = args.reward.remote_url
    if remote:
        return list(remote) if isinstance(remote, (list, tuple)) else str(remote).split(",")
    return str(args.reward.model_name_or_path or "").split(",")


def training_fingerprint(args, k: int, temperature: float) -> dict:
    """The fingerprint a store must carry to serve a run with these flags (k and temperature of the stage).

    Models and files are compared by content digest; their paths are kept under "info" (never compared).
    """
    return {
        "policy": model_identity(args.actor.model_name_or_path),
        "reward": [model_identity(source) for source in reward_sources(args)],
        "normalize_reward": bool(args.reward.normalize_enable),
        "length_penalty": {
            "overlong_buffer_len": args.reward.overlong_buffer_len,
            "overlong_penalty_factor": args.reward.overlong_penalty_factor if args.reward.overlong_buffer_len else None,
            "stop_properly_penalty_coef": args.reward.stop_properly_penalty_coef,
        },
        "k": k,
        "temperature": temperature,
        "top_p": args.rollout.top_p,
        "max_new_tokens": args.rollout.max_new_tokens,
        "prompt": {
            "input_key": args.data.input_key,
            "label_key": args.data.label_key,
            "input_template": args.data.input_template,
            "apply_chat_template": bool(args.data.apply_chat_template),
        },
        "key_scheme": KEY_SCHEME,
        "info": {
            "policy_path": args.actor.model_name_or_path,
            "reward_sources": reward_sources(args),
            "openrlhf": _version("openrlhf"),
            "openrlhf_contrastive": _version("openrlhf-contrastive"),
        },
    }


# Flag groups that say where a run logs, evaluates and checkpoints, not which policy it trains (ckpt.path is kept:
# a run is its checkpoints), and flags set per launch.
_NOT_THE_RUN = ("ckpt.", "logger.", "eval.", "local_rank")


def run_identity(args) -> str:
    """A digest of the flags that decide a training run's sequence of policies (16 hex digits): every flag of the
    (hierarchized) train_ppo_ray args that holds plain values, except logging, evaluation and checkpointing (but the
    checkpoint path, which resuming shares). A resumed run (--ckpt.load_enable, same flags) has the same identity."""
    import argparse
    import json
    import types

    flat = {}

    def walk(prefix: str, node) -> None:
        for name, value in sorted(vars(node).items()):
            if isinstance(value, (types.SimpleNamespace, argparse.Namespace)):
                walk(f"{prefix}{name}.", value)
            elif isinstance(value, (str, int, float, bool, type(None), list, tuple)):
                flat[f"{prefix}{name}"] = value

    walk("", args)
    kept = {k: v for k, v in flat.items() if not k.startswith(_NOT_THE_RUN) or k == "ckpt.path"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def generation_fingerprint(fingerprint: dict, policy_step: int, run: str) -> dict:
    """The fingerprint of a refresh generation: the run's store fingerprint (reward, prompts, sampling: the scale of
    the baselines), the policy step s whose weights sampled it and the run (`run_identity`) that policy belongs to."""
    return {**fingerprint, "policy_step": policy_step, "run": run}
