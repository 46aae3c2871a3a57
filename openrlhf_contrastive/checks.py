"""User input, checked before any model is loaded, any GPU is used or anything is written.

`train_ppo_ray --reward_fn contrastive` (through the plugin's `check_args`) and the `sample` command share
`check_contrastive_args`; `sample` adds `check_sample_inputs` for the files it reads. Every refusal is an
`InputError` (a ValueError) saying what is wrong, why it matters and how to fix it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
from pathlib import Path

from openrlhf_contrastive.fingerprint import baseline_temperature
from openrlhf_contrastive.shapes import cancelling_estimator_reason, parse_shape
from openrlhf_contrastive.store import HEADER


class InputError(ValueError):
    """A flag, file or combination that would make the stage or training fail or train on wrong values."""


def check_contrastive_args(args, estimator: str | None = None) -> None:
    """The --contrastive.* settings (and their store directory) of `args`, for training and for `sample`.

    `estimator` is --algo.advantage.estimator in training (None for `sample`, which has none).
    """
    settings = args.contrastive
    if not settings.baseline_path:
        raise InputError(
            "--contrastive.baseline_path is not set: it is the directory of the baseline store (written by "
            "`openrlhf-contrastive sample`, or by the in-job stage when it does not exist yet). Set it."
        )
    check_store_directory(settings.baseline_path)
    try:
        shape = parse_shape(settings.shape)
    except ValueError as e:
        raise InputError(str(e)) from None
    if estimator is not None:
        reason = cancelling_estimator_reason(shape, estimator)
        if reason:
            raise InputError(
                f"{reason}. Use --algo.advantage.estimator gae (the paper's PPO), reinforce or flash_reinforce, or a "
                "non-linear shape (--contrastive.shape sigmoid, winrate or logsigmoid), or drop --reward_fn contrastive."
            )
    if settings.k < 1:
        raise InputError(
            f"--contrastive.k is {settings.k}: the stage samples k baseline responses per prompt, so k must be at "
            "least 1 (the default is 4)."
        )
    if settings.k < shape.min_k:
        raise InputError(
            f"--contrastive.shape {shape} compares with the spread of the baselines, which needs --contrastive.k >= "
            f"{shape.min_k}, got {settings.k}. Raise --contrastive.k or choose another shape."
        )
    if settings.chunk_size < 1:
        raise InputError(f"--contrastive.chunk_size is {settings.chunk_size}; it must be at least 1 (default 64).")
    for flag in ("refresh_every", "refresh_prompts"):
        value = getattr(settings, flag, 0)
        if value < 0:
            raise InputError(
                f"--contrastive.{flag} is {value}: it counts "
                + ("PPO steps between refreshes of the baselines" if flag == "refresh_every" else "prompts per refresh")
                + ", so it must be 0 (the default: " + ("never refresh" if flag == "refresh_every" else "all prompts")
                + ") or more. Set it to 0 or a positive number."
            )
    if not math.isfinite(settings.coef):
        raise InputError(f"--contrastive.coef is {settings.coef}; it must be a finite number (1 is the paper).")
    temperature = baseline_temperature(args)
    if not temperature > 0:
        source = "--contrastive.temperature" if settings.temperature is not None else "--rollout.temperature"
        raise InputError(
            f"The baselines would be sampled at temperature {temperature} ({source}). Baselines are samples of the "
            "SFT policy: a temperature of 0 gives k identical greedy responses and a negative one is undefined. Set "
            "--contrastive.temperature to the rollout temperature you train with (e.g. 1.0)."
        )


def check_refresh_args(args) -> None:
    """--contrastive.refresh_every / refresh_prompts against the rest of train_ppo_ray's flags (before Ray starts)."""
    settings = args.contrastive
    if settings.refresh_prompts and not settings.refresh_every:
        raise InputError(
            f"--contrastive.refresh_prompts {settings.refresh_prompts} without --contrastive.refresh_every: it says how "
            "many prompts each refresh samples, and no refresh happens. Add --contrastive.refresh_every N (PPO steps "
            "between refreshes) or drop --contrastive.refresh_prompts."
        )
    if not settings.refresh_every:
        return
    if getattr(args.train, "async_enable", False):
        raise InputError(
            f"--contrastive.refresh_every {settings.refresh_every} with --train.async_enable: a refresh samples the "
            "current policy on the trainer's vLLM engines between a batch's generation and its update, and the async "
            "trainer's engines never pause (they generate the next batches while the actor trains, in another actor "
            "than the one shaping rewards). Drop --train.async_enable, or train without --contrastive.refresh_every."
        )
    if not getattr(args.vllm, "num_engines", None):
        raise InputError(
            f"--contrastive.refresh_every {settings.refresh_every} needs the trainer's vLLM engines (they hold the "
            "current policy, synced after every PPO step), and --vllm.num_engines is not set. Set --vllm.num_engines, "
            "or train without --contrastive.refresh_every."
        )


def check_shape_fits_store(shape, store, shape_setting: str = "--contrastive.shape", spread: bool = True) -> None:
    """The loaded `store` can feed `shape` (set by `shape_setting`): k baselines per prompt, and (unless not
    `spread`, for a store that the in-job stage may still extend) a spread for zscore.

    Checked where a store is loaded for training (the plugin's check_args and setup, the unpatched reward function),
    so that a store accepted under --contrastive.accept_fingerprint_mismatch fails before the first rollout.
    """
    if store.k < shape.min_k:
        raise InputError(
            f"{shape_setting}={shape} compares with the spread of each prompt's baselines, which needs at least "
            f"{shape.min_k} baseline rewards per prompt, and the store {store.path} has k = {store.k}: every PPO step "
            f"would fail. Write a store with --contrastive.k >= {shape.min_k} (another --contrastive.baseline_path), or "
            "choose a shape that one baseline defines (mean, median, quantile:Q, min, max, sigmoid, winrate, ...)."
        )
    if spread and shape.name == "zscore" and not store.pooled_std > 0:
        found = (f"on every one of its {len(store)} prompts the {store.k} baselines are equal" if len(store)
                 else "it holds no baselines")
        raise InputError(
            f"{shape_setting}=zscore divides by the spread of a prompt's baselines, floored relative to the store's "
            f"typical spread (pooled within-prompt std / sqrt(k)), and the store {store.path} has none: {found}. "
            f"Choose {shape_setting}=mean or winrate, or sample baselines that differ (a higher --contrastive.k or "
            "temperature) into a new store."
        )


def check_store_directory(path) -> None:
    """The store path is a directory (or can become one) that this process may write."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(
            f"--contrastive.baseline_path {path}: {existing} is a file, not a directory, and a baseline store is a "
            "directory. Point the flag at a directory (a new one is created)."
        )
    if not os.access(existing, os.W_OK | os.X_OK) and not (path / HEADER).exists():
        raise InputError(
            f"--contrastive.baseline_path {path} cannot be written: {existing} is not writable by this user. Choose a "
            "writable directory or fix the permissions."
        )


def check_sample_inputs(args) -> None:
    """The files `sample` reads: the policy path and a local prompt file (JSON lines with the input key)."""
    policy = args.actor.model_name_or_path
    if _looks_local(policy) and not Path(policy).expanduser().exists():
        raise InputError(
            f"--actor.model_name_or_path {policy} does not exist. Give the SFT checkpoint directory training starts "
            "from (the same value as in the training command)."
        )
    dataset = args.data.prompt_dataset
    for name in str(dataset).split(","):
        path = Path(name.strip()).expanduser()
        if path.suffix in (".jsonl", ".json") or (_looks_local(name) and not path.exists()):
            check_prompt_file(path, args.data.input_key, args.data.label_key)


def _looks_local(name: str) -> bool:
    """A path rather than a hub id: absolute, relative with ./ or ../, a home path, or an existing file."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists()


def check_prompt_file(path: Path, input_key: str, label_key: str | None) -> None:
    """A local JSON-lines prompt file: exists, UTF-8, one JSON object per line with the input (and label) key."""
    if not path.is_file():
        raise InputError(f"--data.prompt_dataset {path} does not exist (or is not a file). Check the path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"--data.prompt_dataset {path} is not UTF-8 text (byte {e.start}: {e.reason}). Re-encode it as UTF-8."
        ) from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--data.prompt_dataset {path} is not valid JSON ({e}). Fix the file.") from None
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(
                    f"--data.prompt_dataset {path}, line {number}, is not JSON ({e.msg}): {line[:120]!r}. Each line must "
                    'be one JSON object, e.g. {"input": "..."}.'
                ) from None
    if not numbered:
        raise InputError(f"--data.prompt_dataset {path} holds no prompts. Give a file with one JSON object per line.")
    for key, flag in ((input_key, "--data.input_key"), (label_key, "--data.label_key")):
        if key is None:
            continue
        for number, row in numbered:
            if not isinstance(row, dict) or key not in row:
                found = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
                raise InputError(
                    f"--data.prompt_dataset {path}, record {number}, has no key {key!r} ({flag}); it has {found}. Set "
                    f"{flag} to the field that holds the {'prompt' if flag.endswith('input_key') else 'label'}."
                )


# -- dates in chat templates ------------------------------------------------------------------------------

_PROBE_DAYS = (datetime.datetime(2001, 2, 3, 4, 5, 6), datetime.datetime(2019, 11, 27, 21, 43, 58))
_PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "x"}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
)


@contextlib.contextmanager
def _chat_template_clock(day: datetime.datetime):
    """Make transformers' chat templates see `day` as now (`strftime_now` reads the module's `datetime`)."""
    from transformers.utils import chat_template_utils

    real = chat_template_utils.datetime

    class Frozen(real):
        @classmethod
        def now(cls, tz=None):
            return day

    chat_template_utils.datetime = Frozen
    try:
        yield
    finally:
        chat_template_utils.datetime = real


def dated_chat_template(tokenizer) -> str | None:
    """A snippet of the prompt around the date when the chat template writes the current date or time, else None.

    The template is rendered on two different days, with and without a system message: any difference (whatever
    the date format, and also a date written only when a system message is present) means that prompt strings,
    the store's keys, change with the day.
    """
    from jinja2.exceptions import TemplateError

    for conversation in _PROBE_CONVERSATIONS:
        renders = []
        for day in _PROBE_DAYS:
            with _chat_template_clock(day):
                try:
                    renders.append(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
                except TemplateError:  # a template that refuses this conversation (e.g. no system role) proves nothing
                    renders = None
                    break
        if renders and renders[0] != renders[1]:
            today = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            start = next(i for i, (a, b) in enumerate(zip(*renders)) if a != b)
            return today[max(0, start - 20) : start + 30]
    return None


def dated_prompt_message(snippet: str) -> str:
    return (
        f"The chat template of --actor.model_name_or_path writes today's date into the prompts (here: "
        f"...{snippet!r}...), so the prompt strings (the store's keys) change from day to day: a training run on "
        "another day finds no baselines, and the in-job stage would resample the whole store. Fix: give the tokenizer "
        "a chat template with a fixed date (in tokenizer_config.json / chat_template.jinja replace strftime_now(...) "
        "by a constant string, e.g. set date_string), or use --data.input_template instead of "
        "--data.apply_chat_template. Pass --contrastive.allow_dated_prompts to go on anyway (stage and training on "
        "the same day)."
    )


def check_chat_template_date(args, tokenizer) -> None:
    """Refuse a dated chat template unless --contrastive.allow_dated_prompts."""
    if not args.data.apply_chat_template or args.contrastive.allow_dated_prompts:
        return
    snippet = dated_chat_template(tokenizer)
    if snippet is not None:
        raise InputError(dated_prompt_message(snippet))
