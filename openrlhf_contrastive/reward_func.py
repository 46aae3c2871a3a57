"""Contrastive rewards on UNPATCHED OpenRLHF: a reward-function file for `--reward.remote_url <this file>`.

Stock OpenRLHF 0.11.2 loads `reward_func(queries, prompts, labels)` from a .py file given to --reward.remote_url
and calls it in its vLLM rollout actors, once per rollout. This file wraps a *base* reward (the reward you would
train on) and returns the contrastive value r - coef * g(baselines) of the store, so no patch is needed:

    export CONTRASTIVE_BASE_REWARD=http://rm-host:5000/get_reward     # or /path/to/your_reward_func.py
    export CONTRASTIVE_BASELINE_PATH=/data/baselines                   # written by `openrlhf-contrastive sample`
    python -m openrlhf.cli.train_ppo_ray ... --reward.remote_url "$(python -c \
        'import importlib.util; print(importlib.util.find_spec("openrlhf_contrastive.reward_func").origin)')"

Environment variables (they must reach the Ray workers: pass them in the job's runtime_env on a cluster):

    CONTRASTIVE_BASE_REWARD        required: an http(s) URL (OpenRLHF's remote RM protocol: POST {"query",
                                   "prompts", "labels"} -> {"rewards": [...]}) or a reward-function .py file
    CONTRASTIVE_BASELINE_PATH      required: the baseline store, scored by the same base reward
    CONTRASTIVE_SHAPE              --contrastive.shape (default mean)
    CONTRASTIVE_COEF               --contrastive.coef (default 1)
    CONTRASTIVE_ON_MISSING         error (default) or raw, as --contrastive.on_missing
    CONTRASTIVE_LABEL_KEYED        1 when the store was written with --data.label_key (keys include the label)
    CONTRASTIVE_ACCEPT_FINGERPRINT_MISMATCH   1 to use a store whose reward source differs from the base reward

Importing the file reads this configuration and loads the whole store, so a mistake stops the vLLM engines from
starting (OpenRLHF would otherwise log a failing reward call at INFO and train on missing rewards). The returned
`extra_logs` carry the plugin's metrics (contrastive/baseline, raw_reward, reward, beat_baseline, hit), which
OpenRLHF logs as train/contrastive/*; `scores` stay the base reward (dynamic filtering and the logged score see r).

What this path cannot do, unlike `--reward_fn contrastive` on patched OpenRLHF: the value is computed before
OpenRLHF's length penalties (use none, or accept that baselines carry them and rollouts get them after), and
the training flags are not compared with the store's fingerprint (only the reward source is).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

from openrlhf_contrastive.checks import check_shape_fits_store
from openrlhf_contrastive.fingerprint import model_identity
from openrlhf_contrastive.flags import ON_MISSING
from openrlhf_contrastive.plugin import missing_baselines_message
from openrlhf_contrastive.shapes import contrastive_batch, parse_shape
from openrlhf_contrastive.store import BaselineStore, StoreError, compare_fingerprints, prompt_keys

ENV_BASE = "CONTRASTIVE_BASE_REWARD"
ENV_STORE = "CONTRASTIVE_BASELINE_PATH"
ENV_SHAPE = "CONTRASTIVE_SHAPE"
ENV_COEF = "CONTRASTIVE_COEF"
ENV_ON_MISSING = "CONTRASTIVE_ON_MISSING"
ENV_LABEL_KEYED = "CONTRASTIVE_LABEL_KEYED"
ENV_ACCEPT = "CONTRASTIVE_ACCEPT_FINGERPRINT_MISMATCH"


def _flag(environ, name: str) -> bool:
    value = environ.get(name, "0").strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(f"{name}={value!r} is not a boolean. Set it to 1 or 0.")
    return value in ("1", "true", "yes")


def _load_file_reward(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("contrastive_base_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "reward_func", None)):
        raise ValueError(
            f"{ENV_BASE}={path} has no function reward_func(queries, prompts, labels). Point it at an OpenRLHF "
            "reward-function file or at an HTTP reward-model server URL."
        )
    return module.reward_func


def _http_reward(url: str, tries: int = 5, timeout: float = 180.0):
    def reward(queries, prompts, labels):
        body = json.dumps({"query": list(queries), "prompts": list(prompts), "labels": list(labels)}).encode()
        for attempt in range(tries):
            try:
                request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())
            except OSError:
                if attempt == tries - 1:
                    raise
                time.sleep(1)

    return reward


class UnpatchedContrastiveReward:
    """reward_func around a base reward and a baseline store, configured from the environment (the plugin's
    `ContrastiveReward` does the same inside patched OpenRLHF)."""

    def __init__(self, environ=os.environ):
        base, path = environ.get(ENV_BASE), environ.get(ENV_STORE)
        missing = [name for name, value in ((ENV_BASE, base), (ENV_STORE, path)) if not value]
        if missing:
            raise ValueError(
                f"openrlhf_contrastive/reward_func.py needs the environment variable(s) {', '.join(missing)}: "
                f"{ENV_BASE} is the reward to make contrastive (HTTP URL or reward-function .py file), {ENV_STORE} "
                "the baseline store written by `openrlhf-contrastive sample` with that reward. Export them where "
                "the vLLM engines run (Ray runtime_env env_vars on a cluster)."
            )
        self.shape = parse_shape(environ.get(ENV_SHAPE, "mean"))
        try:
            self.coef = float(environ.get(ENV_COEF, "1"))
        except ValueError:
            raise ValueError(f"{ENV_COEF}={environ[ENV_COEF]!r} is not a number. Set it like --contrastive.coef, e.g. 1.") from None
        self.on_missing = environ.get(ENV_ON_MISSING, "error")
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"{ENV_ON_MISSING}={self.on_missing!r}: choose error or raw (as --contrastive.on_missing).")
        self.label_keyed = _flag(environ, ENV_LABEL_KEYED)
        self.store = BaselineStore.load(path)
        check_shape_fits_store(self.shape, self.store, ENV_SHAPE)
        is_url = base.startswith(("http://", "https://"))
        # The store must have been scored by this base reward (the stage records it as its reward source).
        try:
            compare_fingerprints(
                {"reward": self.store.fingerprint.get("reward")}, {"reward": [base if is_url else model_identity(base)]},
                path, _flag(environ, ENV_ACCEPT),
            )
        except StoreError as e:
            raise StoreError(
                f"{e}\n(reward_func.py: the store's reward source must be {ENV_BASE}; set {ENV_ACCEPT}=1 to accept "
                "the difference.)"
            ) from None
        self.base = _http_reward(base) if is_url else _load_file_reward(base)

    def __call__(self, queries, prompts, labels):
        import torch

        out = self.base(queries, prompts, labels)
        raw = torch.as_tensor(out["rewards"] if isinstance(out, dict) else out, dtype=torch.float32).flatten()
        scores = out.get("scores", raw) if isinstance(out, dict) else raw
        extra = dict(out.get("extra_logs") or {}) if isinstance(out, dict) else {}
        prompts = list(prompts)
        baselines, hit = self.store.lookup(prompt_keys(prompts, [str(l) for l in labels] if self.label_keyed else None))
        if not hit.all() and self.on_missing == "error":
            raise ValueError(
                missing_baselines_message(self.store.path, prompts, hit, "rollouts", f"{ENV_ON_MISSING}=raw")
                + f" (reward_func.py: {ENV_LABEL_KEYED}=1 keys the store by prompt and label.)"
            )
        value, metrics = contrastive_batch(
            raw, torch.from_numpy(baselines), torch.from_numpy(hit), self.shape, self.coef, self.store.pooled_std
        )
        extra.update(metrics)
        return {"rewards": value, "scores": scores, "extra_logs": extra}


# OpenRLHF imports this file in every rollout actor: configure and load the store now, so errors stop the start.
if os.environ.get(ENV_STORE) or os.environ.get(ENV_BASE) or __name__ == "reward_func":
    reward_func = UnpatchedContrastiveReward()
