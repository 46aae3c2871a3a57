"""`openrlhf-contrastive evaluate`: did the trained policy beat its SFT start, and on which prompts?

    openrlhf-contrastive evaluate --actor.model_name_or_path PPO_CHECKPOINT --reward.model_name_or_path RM \
        --data.prompt_dataset prompts.jsonl --data.apply_chat_template --rollout.max_new_tokens 512 \
        --contrastive.baseline_path ./baselines --eval.n 4 \
        [--eval.reward.remote_url gold.py ...] [--eval.judge judge.py] [--eval.output_dir evaluation]

takes `sample`'s flags (copy the stage's command and point --actor.model_name_or_path at the policy under test)
and reads top to bottom:

    1. check    flags, the store, its fingerprint (everything but the policy, which differs by design), second
                rewards, the judge file (imported and tried on two stored pairs): before any model is loaded
    2. prompts  built as `sample` builds them; prompts missing from the store are counted and named
    3. sample   --eval.n responses per prompt from the policy with the store's sampling settings (other seeds
                than the stage's), through the same backends as `sample` (openrlhf or hf)
    4. score    the store's reward with its length penalties, as the stage scores; each second reward on the same
                responses and, when the store keeps them, on the stored baseline responses (raw scores)
    5. judge    policy response i against stored response i mod k; the policy is response a on every other pair
    6. report   per reward: policy mean against the baseline mean and the difference, the win rate P(r > r_j)
                (ties half) with a 95% interval over prompts, the fraction of prompts improved, the most improved
                and degraded prompts; printed, and written to evaluation.json, evaluation.png and samples.jsonl
                (the judge, step 5, runs last, once these are on disk)

and, between 4 and 6, whether the policy learned to answer nothing: for the policy and its SFT start (the store's
policy), the share of empty and of one-token responses sampled as served (no minimum length: OpenRLHF's rollouts,
the baselines and step 3 mask EOS at the first position, so none of them shows it) and the mean P(EOS first), with a
warning when the policy's clearly exceed the SFT's (`answers_nothing`).

Intervals are Student-t intervals of the mean of the per-prompt values (prompts are the independent units).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from openrlhf_contrastive.backends import (
    DriverStrategy,
    backend_name,
    check_rewards,
    response_texts,
    reward_source,
    start_backend,
)
from openrlhf_contrastive.checks import InputError, check_chat_template_date
from openrlhf_contrastive.fingerprint import baseline_temperature, training_fingerprint
from openrlhf_contrastive.flags import add_eval_args
from openrlhf_contrastive.rescore import check_reward_sources, kept_response_rewards, require_responses
from openrlhf_contrastive.stage import build_parser as stage_parser
from openrlhf_contrastive.stage import build_prompts, penalised_rewards, sampled_chunks, unique_prompts
from openrlhf_contrastive.stage import parse_args as parse_stage_args
from openrlhf_contrastive.store import BaselineStore, StoreError, compare_fingerprints, read_responses

logger = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_003  # the policy's samples use other seeds than the stage's baselines
JUDGE_BATCH = 256  # pairs per judge call
DEGENERATION_MARGIN = 0.05  # the policy's P(EOS first) or empty share above the SFT's by more than this: a warning


# -- statistics over prompts ---------------------------------------------------------------------------------

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (table to 30, Cornish-Fisher beyond)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: np.ndarray, lo: float = -math.inf, hi: float = math.inf) -> list[float]:
    """95% interval of the mean of per-prompt `values` (t interval; NaN with fewer than 2 prompts), clipped."""
    if len(values) < 2:
        return [float("nan"), float("nan")]
    half = t975(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return [float(max(lo, values.mean() - half)), float(min(hi, values.mean() + half))]


def win_rates(policy: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per prompt, P(r > r_j) over all pairs of the policy's n rewards (P, n) and the k baselines (P, k), ties half."""
    diff = policy[:, :, None] - baseline[:, None, :]
    return ((diff > 0) + 0.5 * (diff == 0)).mean(axis=(1, 2))


def compare(policy: np.ndarray, baseline: np.ndarray | None, prompts: list[str], top: int) -> dict:
    """The figures of one reward: policy rewards (P, n) against baseline rewards (P, k), or alone without them."""
    policy_mean = policy.mean(axis=1)
    figures = {"policy_mean": float(policy_mean.mean()), "policy_mean_interval": interval(policy_mean)}
    if baseline is None:
        figures["baseline_mean"] = None
        figures["per_prompt"] = [{"prompt": p, "policy_mean": float(m)} for p, m in zip(prompts, policy_mean)]
        return figures
    baseline_mean = baseline.mean(axis=1)
    difference = policy_mean - baseline_mean
    wins = win_rates(policy, baseline)
    order = np.argsort(difference, kind="stable")

    def listed(idx):
        return [{"prompt": prompts[i], "difference": float(difference[i]), "win_rate": float(wins[i])} for i in idx]

    figures.update(
        baseline_mean=float(baseline_mean.mean()),
        difference=float(difference.mean()),
        difference_interval=interval(difference),
        win_rate=float(wins.mean()),
        win_rate_interval=interval(wins, 0.0, 1.0),
        improved=float((difference > 0).mean()),
        degraded=float((difference < 0).mean()),
        most_improved=listed([i for i in order[::-1][:top] if difference[i] > 0]),
        most_degraded=listed([i for i in order[:top] if difference[i] < 0]),
        per_prompt=[
            {"prompt": p, "policy_mean": float(m), "baseline_mean": float(b), "difference": float(d), "win_rate": float(w)}
            for p, m, b, d, w in zip(prompts, policy_mean, baseline_mean, difference, wins)
        ],
    )
    return figures


# -- the judge -----------------------------------------------------------------------------------------------

def load_judge(path: str):
    """The `judge` function of the file at --eval.judge (imported now, before any model loads)."""
    file = Path(path).expanduser()
    usage = ("The file must define judge(prompts, responses_a, responses_b) returning, for each pair, the probability "
             "that response a is the better one (a list or array of floats in [0, 1]).")
    if not file.is_file():
        raise InputError(f"--eval.judge {path} does not exist (or is not a file). {usage}")
    spec = importlib.util.spec_from_file_location("openrlhf_contrastive_eval_judge", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise InputError(f"--eval.judge {path} raised {type(e).__name__}: {e} while it was imported. Fix the file. {usage}") from e
    judge = getattr(module, "judge", None)
    if not callable(judge):
        raise InputError(f"--eval.judge {path} defines no function `judge`. {usage}")
    return judge


def call_judge(judge, path: str, prompts: list[str], a: list[str], b: list[str]) -> np.ndarray:
    """judge(prompts, a, b) checked: one finite probability in [0, 1] per pair, else InputError (what, why, fix)."""
    try:
        out = judge(list(prompts), list(a), list(b))
    except Exception as e:
        raise InputError(
            f"--eval.judge {path} raised {type(e).__name__}: {e} on a batch of {len(prompts)} pairs. A judge that fails "
            "gives no win rate; fix it (try it on a few stored responses by hand) and rerun."
        ) from e
    try:
        values = np.asarray(out.tolist() if hasattr(out, "tolist") else list(out), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(
            f"--eval.judge {path} returned {type(out).__name__} ({str(out)[:100]}), not a sequence of numbers ({e}). "
            "Return one probability per pair, e.g. a list of floats."
        ) from None
    if len(values) != len(prompts):
        raise InputError(
            f"--eval.judge {path} returned {len(values)} values for {len(prompts)} pairs. It must return exactly one "
            "probability per pair (response a against response b, in the order given): check its batching."
        )
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0) | (values > 1))
    if len(bad):
        raise InputError(
            f"--eval.judge {path} returned {float(values[bad[0]])!r} for pair {int(bad[0])} ({len(bad)} of {len(values)} values "
            "are not finite probabilities in [0, 1]). The judge returns P(a is better): map scores or logits to [0, 1] "
            "(e.g. a sigmoid, or 1.0 / 0.0 / 0.5 for a / b / tie)."
        )
    return values


def judge_win_rates(judge, path: str, prompts, policy_texts, baseline_texts, bar=None) -> np.ndarray:
    """Per prompt, the judge's mean probability that the policy's response beats the stored SFT response.

    Pair i of a prompt is policy response i against stored response i mod k; the policy is response a on even
    pairs (counted over all prompts) and response b on odd ones, so a judge biased towards one position cancels.
    """
    n = len(policy_texts[0]) if policy_texts else 0
    pairs = [(p, i, (p * n + i) % 2 == 0) for p in range(len(prompts)) for i in range(n)]
    wins = np.zeros((len(prompts), n))
    for start in range(0, len(pairs), JUDGE_BATCH):
        batch = pairs[start : start + JUDGE_BATCH]
        ours = [policy_texts[p][i] for p, i, _ in batch]
        theirs = [baseline_texts[p][i % len(baseline_texts[p])] for p, i, _ in batch]
        first = [f for _, _, f in batch]
        probs = call_judge(
            judge, path, [prompts[p] for p, _, _ in batch],
            [o if f else t for o, t, f in zip(ours, theirs, first)], [t if f else o for o, t, f in zip(ours, theirs, first)],
        )
        for (p, i, f), prob in zip(batch, probs):
            wins[p, i] = prob if f else 1.0 - prob
        if bar is not None:
            bar.update(len(batch))
    return wins.mean(axis=1)


# -- flags and checks (nothing loaded yet) ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:

    parser = stage_parser()
    parser.prog = "openrlhf-contrastive evaluate"
    parser.description = (
        "Evaluate a policy (--actor.model_name_or_path, e.g. a PPO checkpoint) against the SFT baselines of the store "
        "at --contrastive.baseline_path: --eval.n responses per prompt with the store's sampling settings, scored with "
        "the store's reward (and any second reward or pairwise judge); win rates, per-prompt differences, a JSON file "
        "and a PNG. Takes `sample`'s flags; --contrastive.k is the store's."
    )
    add_eval_args(parser)
    return parser


def parse_args(argv: list[str]):

    args = parse_stage_args(argv, build_parser())
    if args.eval.n < 1:
        raise InputError(
            f"--eval.n is {args.eval.n}: evaluate samples n responses per prompt from the policy to compare with the "
            "stored baselines, so n must be at least 1 (default 4; more narrows the per-prompt figures)."
        )
    if args.eval.top < 0:
        raise InputError(f"--eval.top is {args.eval.top}; it must be 0 or more (prompts listed as most improved/degraded).")
    return args


def open_store(args) -> tuple[BaselineStore, list[str]]:
    """The store, checked against this run's settings except the policy (and k: the policy samples --eval.n)."""

    store = BaselineStore.load(args.contrastive.baseline_path)
    if not len(store):
        raise StoreError(f"The baseline store {store.path} holds no prompts yet. Run `openrlhf-contrastive sample` to the end first.")
    args.contrastive.k = store.k
    expected = training_fingerprint(args, store.k, baseline_temperature(args))
    stored = {name: value for name, value in store.fingerprint.items() if name != "policy"}
    try:
        diffs = compare_fingerprints(stored, {n: v for n, v in expected.items() if n != "policy"}, store.path,
                                     args.contrastive.accept_fingerprint_mismatch)
    except StoreError as e:
        raise StoreError(
            f"{e}\nevaluate scores the policy's responses as the baselines were scored and samples them as the "
            "baselines were sampled, so reward, prompt and sampling flags must be the stage's (copy its command); only "
            "the policy differs by design."
        ) from None
    return store, diffs


def second_rewards(args) -> list[tuple[str, object]]:
    """(name, args scoring with it) of each --eval.reward.* source: raw scores, no normalisation or penalties."""

    check_reward_sources(args.eval.reward.remote_url, "--eval.reward.remote_url")
    check_reward_sources(args.eval.reward.model_name_or_path, "--eval.reward.model_name_or_path")
    out = []
    for flag, sources in (("remote_url", args.eval.reward.remote_url), ("model_name_or_path", args.eval.reward.model_name_or_path)):
        for source in sources or []:
            scoring = copy.deepcopy(args)
            scoring.reward.remote_url = [source] if flag == "remote_url" else None
            scoring.reward.model_name_or_path = source if flag == "model_name_or_path" else None
            scoring.reward.normalize_enable = False
            scoring.train.agent_func_path = None
            out.append((source, scoring))
    return out


# -- the run ------------------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """What step 1 checked: the store, accepted fingerprint differences, second rewards, the judge, kept texts."""

    store: BaselineStore
    fingerprint_diffs: list[str]
    seconds: list[tuple[str, object]]  # (name, args scoring with it)
    judge: object | None
    kept: dict | None  # key -> the k stored response texts, when the judge or a second reward needs them


@dataclass
class Prompts:
    """What step 2 selected: the prompts with baselines (unique, dataset order), their labels, keys and baselines."""

    given: int
    unique: int
    keys: list[int]
    prompts: list[str]
    labels: list[str]
    baselines: np.ndarray  # (P, k)
    missing: list[str]


@dataclass
class Sampled:
    """What steps 3-4 produced: the policy's responses and their rewards under the store's and each second reward."""

    backend: str
    texts: list[list[str]]  # (P) lists of n texts
    rewards: np.ndarray  # (P, n), the store's reward with its length penalties
    second: dict  # name -> (P, n) raw scores
    scorers: list  # (name, HFBackend scorer) of each second reward, open until its baselines are scored


def evaluate(args, log=print) -> dict:
    """Steps 1-6 of the module docstring; returns what evaluation.json holds."""
    inputs = check_inputs(args)  # 1. before any model loads
    prompts = select_prompts(args, inputs)  # 2.
    sampled = sample_and_score(args, inputs, prompts)  # 3-4.
    rewards = reward_figures(args, inputs, prompts, sampled)  # 4. second rewards on the stored baselines, 6. figures
    degeneration = answers_nothing(args, inputs.store, prompts.prompts)  # as served: empty responses, P(EOS first)
    out = Path(args.eval.output_dir)
    report = assemble(args, inputs, prompts, sampled, rewards, degeneration, out)
    write_samples(out, prompts, sampled)
    write(report, out)
    if inputs.judge:  # 5. last, after the reward figures are on disk (a judge failing here loses none of them)
        report["judge"] = judge_figures(args, inputs, prompts, sampled, report)
        write(report, out)
    log(describe(report))  # 6.
    return report


def check_inputs(args) -> Inputs:
    """1. Flags, the store and its fingerprint, second rewards, the judge file: everything before a model loads."""
    store, fingerprint_diffs = open_store(args)
    seconds = second_rewards(args)
    judge = load_judge(args.eval.judge) if args.eval.judge else None
    if judge:
        kept = require_responses(store, "--eval.judge")
    else:
        kept = read_responses(store.path) if seconds and store.has_responses else None
    return Inputs(store, fingerprint_diffs, seconds, judge, kept)


def select_prompts(args, inputs: Inputs) -> Prompts:
    """2. The prompts as the stage builds them, those with baselines; the judge tried on two stored pairs."""
    from openrlhf.utils.utils import get_tokenizer

    store = inputs.store
    tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", None, use_fast=not args.data.disable_fast_tokenizer)
    check_chat_template_date(args, tokenizer)
    all_prompts, all_labels = build_prompts(args, tokenizer, DriverStrategy(args))
    keys, _, prompts, labels = unique_prompts(all_prompts, all_labels, bool(args.data.label_key))
    baselines, hit = store.lookup(np.asarray(keys, dtype=np.uint64))
    if not hit.any():
        raise InputError(
            f"None of the {len(prompts)} prompts of --data.prompt_dataset {args.data.prompt_dataset} is in the baseline "
            f"store {store.path} ({len(store)} prompts), so there is nothing to compare with. The store is keyed by the "
            "exact prompt string: use the dataset and --data.* flags of the stage (input key, template, chat template, "
            "label key), or a store written for these prompts (`openrlhf-contrastive inspect STORE --prompts ...` shows "
            "the coverage)."
        )
    selected = Prompts(
        given=len(all_prompts), unique=len(hit), keys=[k for k, h in zip(keys, hit) if h],
        prompts=[p for p, h in zip(prompts, hit) if h], labels=[l for l, h in zip(labels, hit) if h],
        baselines=baselines[hit], missing=[p for p, h in zip(prompts, hit) if not h],
    )
    if inputs.judge:  # a broken judge costs no generation
        first = inputs.kept[int(selected.keys[0])]
        call_judge(inputs.judge, args.eval.judge, [selected.prompts[0]] * 2, [first[0], first[-1]], [first[-1], first[0]])
    return selected


def sample_and_score(args, inputs: Inputs, prompts: Prompts) -> Sampled:
    """3-4. --eval.n responses per prompt from the policy (other seeds than the stage's), scored with the store's
    reward and its length penalties, then with each second reward (raw)."""
    from tqdm import tqdm

    from openrlhf_contrastive.backends.hf import HFBackend  # the scorer of second rewards

    n = args.eval.n
    sampling = copy.deepcopy(args)
    sampling.train.seed = args.train.seed + EVAL_SEED_OFFSET
    backend = start_backend(sampling)
    size = args.contrastive.chunk_size
    chunks = list(enumerate(range(s, min(s + size, len(prompts.keys))) for s in range(0, len(prompts.keys), size)))
    rewards, texts = [], []
    second = {name: [] for name, _ in inputs.seconds}
    bar = tqdm(total=len(prompts.keys), unit="prompt", desc="evaluate", dynamic_ncols=True)
    try:
        scorers = [(name, HFBackend(scoring, generate=False)) for name, scoring in inputs.seconds]
        with backend.awake():
            for idx, experiences in sampled_chunks(backend, chunks, prompts.prompts, prompts.labels, prompts.keys, n):
                backend.score(experiences)
                check_rewards(experiences, args, "a response of the policy under evaluation")
                rewards.append(penalised_rewards(experiences, args, n))
                texts.extend(response_texts(experiences, backend.tokenizer, n))
                for name, scorer in scorers:
                    scorer.score(experiences)
                    check_rewards(experiences, scorer.args, "a response of the policy under evaluation")
                    second[name].append(np.array([float(e.rewards.flatten()[0]) for e in experiences]).reshape(-1, n))
                bar.update(len(idx))
    finally:
        bar.close()
        backend.close()
    return Sampled(backend_name(args), texts, np.concatenate(rewards),
                   {name: np.concatenate(parts) for name, parts in second.items()}, scorers)


def reward_figures(args, inputs: Inputs, prompts: Prompts, sampled: Sampled) -> dict:
    """4 and 6. Per reward, `compare`'s figures: the store's reward against the stored baselines; each second reward
    against the stored baseline responses scored with it (when the store keeps them), else alone."""
    from tqdm import tqdm

    figures = {reward_source(args): compare(sampled.rewards, prompts.baselines, prompts.prompts, args.eval.top)}
    for name, scorer in sampled.scorers:
        base = None
        if inputs.kept is not None:
            bar = tqdm(total=len(prompts.keys), unit="prompt", desc=f"baselines under {Path(name).name}", dynamic_ncols=True)
            base = kept_response_rewards(scorer, scorer.args, prompts.prompts, prompts.labels,
                                         [inputs.kept[int(k)] for k in prompts.keys], inputs.store.k,
                                         penalise=False, bar=bar, chunk=args.contrastive.chunk_size)
            bar.close()
        scorer.close()
        figures[name] = compare(sampled.second[name], base, prompts.prompts, args.eval.top)
    return figures


def answers_nothing(args, store: BaselineStore, prompts: list[str]) -> dict:
    """The policy's and its SFT start's (the store's policy) empty and one-token responses sampled as served and
    mean P(EOS first) (`backends.hf.first_tokens`), and a warning when the policy's clearly exceed the SFT's:
    by more than DEGENERATION_MARGIN on average, with a 95% interval over prompts above 0."""
    from openrlhf_contrastive.backends.hf import first_tokens

    n, seed = args.eval.n, args.train.seed + EVAL_SEED_OFFSET
    policy = first_tokens(args, args.actor.model_name_or_path, prompts, n, seed, args.contrastive.chunk_size)
    sft_path = store.fingerprint.get("info", {}).get("policy_path")
    sft, note = None, None
    try:
        sft = first_tokens(args, sft_path, prompts, n, seed, args.contrastive.chunk_size) if sft_path else None
    except OSError as e:  # moved, deleted, or a hub id this machine cannot reach
        note = f"the store's SFT policy {sft_path} could not be loaded here ({e}); the policy is shown alone"
    means = lambda figures: {name: float(values.mean()) for name, values in figures.items()}
    result = {"samples_per_prompt": n, "policy": means(policy), "sft_path": sft_path,
              "sft": means(sft) if sft else None, "note": note, "warning": None}
    if sft:
        clearly = {name: interval(policy[name] - sft[name])[0] > 0 and policy[name].mean() - sft[name].mean() > DEGENERATION_MARGIN
                   for name in ("p_eos_first", "empty")}
        if any(clearly.values()):
            result["warning"] = degeneration_warning(result)
    return result


def degeneration_warning(figures: dict) -> str:
    """What / why / fix of a policy that answers with nothing more often than its SFT start."""
    p, s = figures["policy"], figures["sft"]
    return (
        f"the policy ends its response at the first token far more often than its SFT start: P(EOS first) "
        f"{p['p_eos_first']:.3f} against {s['p_eos_first']:.3f}; empty responses {p['empty']:.1%} against "
        f"{s['empty']:.1%} when sampled as served (no minimum length). OpenRLHF 0.11.2 samples rollouts with vLLM "
        "min_tokens=1, so an empty response is never sampled, scored or penalised in training and probability moves "
        "onto it unseen; the reward figures above were sampled the same way and do not show it. Served without that "
        "mask, this policy answers with nothing that often. Fix: evaluate an earlier checkpoint, serve with "
        "min_tokens=1, or train with a critic (--algo.advantage.estimator gae) or a larger KL coefficient "
        "(critic-free runs moved up to 95% of the first token's probability onto EOS in the evidence runs)."
    )


def assemble(args, inputs: Inputs, prompts: Prompts, sampled: Sampled, rewards: dict, degeneration: dict, out: Path) -> dict:
    """What evaluation.json holds (the judge's figures are added by step 5)."""
    store_reward = reward_source(args)
    return {
        "policy": args.actor.model_name_or_path,
        "store": str(inputs.store.path),
        "k": inputs.store.k,
        "n": args.eval.n,
        "backend": sampled.backend,
        "prompts": {"given": prompts.given, "unique": prompts.unique, "evaluated": len(prompts.keys),
                    "missing": len(prompts.missing), "missing_prompts": prompts.missing},
        "fingerprint_differences": inputs.fingerprint_diffs,
        "store_reward": store_reward,
        "rewards": rewards,
        "second_rewards": [name for name, _ in inputs.seconds],
        "degeneration": degeneration,
        "judge": None,
        "output": {"json": str(out / "evaluation.json"), "png": str(out / "evaluation.png"), "samples": str(out / "samples.jsonl")},
    }


def write_samples(out: Path, prompts: Prompts, sampled: Sampled) -> None:
    """samples.jsonl: per prompt the policy's responses and their rewards under every reward."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for i, (prompt, label) in enumerate(zip(prompts.prompts, prompts.labels)):
            f.write(json.dumps({"prompt": prompt, "label": label, "responses": sampled.texts[i],
                                "rewards": sampled.rewards[i].tolist(),
                                **{f"rewards[{name}]": sampled.second[name][i].tolist() for name in sampled.second}}) + "\n")


def judge_figures(args, inputs: Inputs, prompts: Prompts, sampled: Sampled, report: dict) -> dict:
    """5. The judge's win rate of the policy's responses against the stored SFT responses."""
    from tqdm import tqdm

    pairs = len(prompts.keys) * args.eval.n
    bar = tqdm(total=pairs, unit="pair", desc="judge", dynamic_ncols=True)
    try:
        wins = judge_win_rates(inputs.judge, args.eval.judge, prompts.prompts, sampled.texts,
                               [inputs.kept[int(k)] for k in prompts.keys], bar)
    except InputError as e:
        raise InputError(f"{e}\nThe reward figures and the policy's responses are already written: "
                         f"{report['output']['json']}, {report['output']['samples']}.") from None
    finally:
        bar.close()
    return {
        "file": args.eval.judge, "pairs": pairs, "win_rate": float(wins.mean()),
        "win_rate_interval": interval(wins, 0.0, 1.0), "positions": "policy is response a on every other pair",
        "per_prompt": [{"prompt": p, "win_rate": float(w)} for p, w in zip(prompts.prompts, wins)],
    }


def write(report: dict, out: Path) -> None:
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    plot(report, out / "evaluation.png")


def short(prompt: str, width: int = 70) -> str:
    text = " ".join(prompt.split())
    return repr(text if len(text) <= width else "..." + text[-width:])


def describe(report: dict) -> str:
    """The text `evaluate` prints."""
    p = report["prompts"]
    lines = [
        f"evaluate: policy {report['policy']} against the SFT baselines of {report['store']} "
        f"(k = {report['k']} per prompt), n = {report['n']} policy responses per prompt",
        f"  prompts: {p['given']} given, {p['unique']} unique, {p['evaluated']} evaluated, {p['missing']} missing from "
        "the store" + (": " + ", ".join(short(m, 40) for m in p["missing_prompts"][:3]) + (" ..." if p["missing"] > 3 else "")
                       if p["missing"] else ""),
    ]
    for diff in report["fingerprint_differences"]:
        lines.append(f"  accepted fingerprint difference: {diff}")
    for name, fig in report["rewards"].items():
        title = "reward (the store's)" if name == report["store_reward"] else "second reward"
        lines.append(f"  {title}: {name}")
        lo, hi = fig["policy_mean_interval"]
        if fig["baseline_mean"] is None:
            lines.append(f"    policy mean {fig['policy_mean']:+.4f} [95%: {lo:+.4f}, {hi:+.4f}]; no baseline figures: the "
                         "store keeps no responses to score (--contrastive.keep_responses)")
            continue
        dlo, dhi = fig["difference_interval"]
        wlo, whi = fig["win_rate_interval"]
        lines += [
            f"    policy mean {fig['policy_mean']:+.4f}   SFT baseline mean {fig['baseline_mean']:+.4f}   difference "
            f"{fig['difference']:+.4f} [95%: {dlo:+.4f}, {dhi:+.4f}]",
            f"    win rate P(r > r_j), ties half: {fig['win_rate']:.3f} [95% over prompts: {wlo:.3f}, {whi:.3f}]",
            f"    prompts improved {fig['improved']:.1%}, degraded {fig['degraded']:.1%}",
        ]
        for label, key in (("most improved", "most_improved"), ("most degraded", "most_degraded")):
            for row in fig[key]:
                lines.append(f"    {label}: {row['difference']:+.4f} (win rate {row['win_rate']:.2f})  {short(row['prompt'])}")
    if report["judge"]:
        j = report["judge"]
        lo, hi = j["win_rate_interval"]
        lines.append(f"  judge {j['file']}: policy preferred to the SFT response {j['win_rate']:.3f} [95% over prompts: "
                     f"{lo:.3f}, {hi:.3f}] over {j['pairs']} pairs ({j['positions']})")
    lines += degeneration_lines(report["degeneration"])
    o = report["output"]
    lines.append(f"  written: {o['json']}, {o['png']}, {o['samples']}")
    return "\n".join(lines)


def degeneration_lines(d: dict) -> list[str]:
    """`describe`'s lines on empty responses (`answers_nothing`)."""
    row = lambda who, f: (f"    {who}: empty {f['empty']:.1%}, one token {f['one_token']:.1%}, mean P(EOS first) "
                          f"{f['p_eos_first']:.3f}")
    lines = [f"  answering with nothing, sampled as served ({d['samples_per_prompt']} per prompt, EOS allowed first):",
             row("policy", d["policy"])]
    lines.append(row(f"SFT start {d['sft_path']}", d["sft"]) if d["sft"] else f"    {d['note'] or 'no SFT start in the store'}")
    if d["warning"]:
        lines.append(f"  WARNING: {d['warning']}")
    return lines


def plot(report: dict, png: Path) -> None:
    """Per reward with baselines: per-prompt baseline mean against policy mean, and the histogram of per-prompt win
    rates (the judge's too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, fig) for name, fig in report["rewards"].items() if fig["baseline_mean"] is not None]
    fig_, axes = plt.subplots(len(rows), 2, figsize=(12, 4.6 * len(rows)), squeeze=False)
    fig_.suptitle(f"{report['policy']} against the SFT baselines ({report['prompts']['evaluated']} prompts, "
                  f"n = {report['n']}, k = {report['k']})", fontsize=11)
    for row, (name, fig) in enumerate(rows):
        b = np.array([r["baseline_mean"] for r in fig["per_prompt"]])
        m = np.array([r["policy_mean"] for r in fig["per_prompt"]])
        ax = axes[row, 0]
        ax.scatter(b, m, s=16, c=np.where(m > b, "tab:green", "tab:red"), alpha=0.6)
        lo, hi = min(b.min(), m.min()), max(b.max(), m.max())
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="policy = SFT")
        ax.set(xlabel="SFT baseline mean per prompt", ylabel="policy mean per prompt",
               title=f"{Path(name).name}: improved on {fig['improved']:.0%} of prompts")
        ax.legend(fontsize=8, loc="lower right")
        ax = axes[row, 1]
        bins = np.linspace(0, 1, 21)
        ax.hist([r["win_rate"] for r in fig["per_prompt"]], bins=bins, alpha=0.6, color="tab:blue",
                label=f"reward win rate {fig['win_rate']:.3f}")
        if report["judge"] and row == 0:
            ax.hist([r["win_rate"] for r in report["judge"]["per_prompt"]], bins=bins, alpha=0.5, color="tab:orange",
                    label=f"judge win rate {report['judge']['win_rate']:.3f}")
        ax.axvline(0.5, color="black", lw=0.8)
        ax.set(xlabel="per-prompt win rate against the SFT baselines", ylabel="prompts", title="win rates per prompt")
        ax.legend(fontsize=8)
    fig_.tight_layout()
    fig_.savefig(png, dpi=100)
    plt.close(fig_)


def main(argv: list[str] | None = None) -> dict:
    return evaluate(parse_args(sys.argv[1:] if argv is None else argv))
