"""Provenance of a baseline store, computed from OpenRLHF's (hierarchized) train_ppo_ray flags.

Baselines are only comparable with training rewards when they come from the same policy, the same reward
(model, normalisation, length penalties), the same prompt strings and the same sampling settings. The
fingerprint records exactly these; the stage writes it into the store's header and training compares it
with its own flags (`BaselineStore.check_fingerprint`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from openrlhf_contrastive.store import KEY_SCHEME


def content_digest(name_or_path: str | None) -> str | None:
    """sha256 (16 hex digits) of a local model's config.json, or of a local file; None for hub ids and URLs.

    A model directory is identified by its config.json (architecture, sizes, vocab) and, when present, the
    index or size of its weight files, so that two fine-tunes of one architecture differ.
    """
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / name).is_file():
            digest.update(name.encode() + (path / name).read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
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


def identity(name_or_path: str | None) -> str | None:
    """A local model or file by its content digest (so a copied store still matches), anything else by name."""
    digest = content_digest(name_or_path)
    return f"sha256:{digest}" if digest else name_or_path


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
        "policy": identity(args.actor.model_name_or_path),
        "reward": [identity(source) for source in reward_sources(args)],
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
