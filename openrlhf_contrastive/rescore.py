"""`openrlhf-contrastive rescore`: a store's kept baseline responses scored with another reward, into a new store.

    openrlhf-contrastive rescore --contrastive.baseline_path ./baselines --rescore.output_path ./baselines-rm2 \
        --reward.model_name_or_path RM2        # or --reward.remote_url URL_OR_FILE.py; length penalties as training

No generation: a user who retrains the reward model keeps the SFT responses their store holds (written with
`--contrastive.keep_responses`) and gets their rewards under the new one. The new store has the same keys,
prompts and responses; its fingerprint is the old one with the reward, reward normalisation and length penalties
of these flags, so training with the new reward accepts it. Scoring runs in this process on one device (as the
`hf` backend scores): a reward model through OpenRLHF's `get_llm_for_sequence_regression`, a remote reward or
reward-function file through OpenRLHF's executor. Resumable like the stage (rerun the same command).

`kept_response_rewards` is also how `evaluate` scores the stored baseline responses with a second reward.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from openrlhf_contrastive.backends import check_rewards, experiences_from_texts
from openrlhf_contrastive.checks import InputError
from openrlhf_contrastive.fingerprint import baseline_temperature, training_fingerprint
from openrlhf_contrastive.flags import add_rescore_args
from openrlhf_contrastive.stage import build_parser as stage_parser
from openrlhf_contrastive.stage import penalised_rewards
from openrlhf_contrastive.store import BaselineStore, StoreError, StoreWriter, read_prompt_texts, read_responses

logger = logging.getLogger(__name__)


def build_parser():

    parser = stage_parser()
    parser.prog = "openrlhf-contrastive rescore"
    parser.description = (
        "Score the kept baseline responses of --contrastive.baseline_path with the reward of the --reward.* flags and "
        "write them to a new store at --rescore.output_path (same keys, new fingerprint); nothing is generated. The "
        "tokenizer is --actor.model_name_or_path's (default: the store's policy)."
    )
    add_rescore_args(parser)
    return parser


def parse_args(argv: list[str]):
    flat, ignored = build_parser().parse_known_args(argv)
    from openrlhf.utils.config import hierarchize

    if [a for a in ignored if a.startswith("--")]:
        logger.warning("openrlhf-contrastive rescore ignores these flags: %s", " ".join(a for a in ignored if a.startswith("--")))
    args = hierarchize(flat)
    if args.reward.remote_url:
        args.reward.remote_url = args.reward.remote_url.split(",")
    missing = [flag for flag, value in (("--contrastive.baseline_path", args.contrastive.baseline_path),
                                        ("--rescore.output_path", args.rescore.output_path)) if not value]
    if not (args.reward.model_name_or_path or args.reward.remote_url):
        missing.append("--reward.model_name_or_path or --reward.remote_url (the new reward)")
    if missing:
        raise InputError(f"openrlhf-contrastive rescore needs {', '.join(missing)}.")
    if Path(args.rescore.output_path).resolve() == Path(args.contrastive.baseline_path).resolve():
        raise InputError(
            f"--rescore.output_path {args.rescore.output_path} is the source store itself. Rescoring writes a new store "
            "(the old rewards stay valid for the old reward): give another directory."
        )
    return args


def stored_prompts(store: BaselineStore) -> tuple[list[str], list[str]]:
    """The prompt and label of every key of `store` (in its key order), as the stage scored them."""
    texts = read_prompt_texts(store.path)
    keyed = bool(store.fingerprint.get("prompt", {}).get("label_key"))
    prompts, labels = [], []
    for key in store.keys.tolist():
        prompt, _, label = texts[key].partition("\x00") if keyed else (texts[key], "", "")
        prompts.append(prompt)
        labels.append(label)  # PromptDataset's label without --data.label_key is ""
    return prompts, labels


def require_responses(store: BaselineStore, why: str) -> dict[int, list[str]]:
    """The kept responses of `store` (key -> k texts), or a refusal saying how to get them."""
    if not store.has_responses:
        raise InputError(
            f"The baseline store {store.path} keeps no responses, only their rewards; {why} needs the response texts. "
            "Write a store that keeps them: rerun `openrlhf-contrastive sample` with the same flags plus "
            "--contrastive.keep_responses into a new --contrastive.baseline_path."
        )
    return read_responses(store.path)


def check_reward_sources(sources, flag: str) -> None:
    """Reward files and local reward-model paths exist (HTTP URLs and hub ids are taken as given)."""
    for source in sources or []:
        if source.startswith(("http://", "https://")):
            continue
        if (source.endswith(".py") or source.startswith(("/", "./", "../", "~"))) and not Path(source).expanduser().exists():
            raise InputError(f"{flag} {source} does not exist. Give an existing reward-function .py file, reward "
                             "model directory or an http(s) URL of a reward server.")


def kept_response_rewards(scorer, args, prompts, labels, responses, k: int, penalise: bool, bar=None, chunk: int = 64):
    """Rewards (prompts, k) of kept response texts under `scorer`'s reward (an HFBackend, generate=False), with
    OpenRLHF's length penalties of `args` when `penalise` (as the stage applies them); `bar` counts prompts."""
    import torch


    out = []
    for start in range(0, len(prompts), chunk):
        end = start + chunk
        experiences = experiences_from_texts(scorer.tokenizer, prompts[start:end], labels[start:end], responses[start:end], args.data.max_len)
        scorer.score(experiences)
        check_rewards(experiences, scorer.args)
        if penalise:
            out.append(penalised_rewards(experiences, args, k))
        else:
            out.append(torch.cat([e.rewards.flatten() for e in experiences]).double().numpy().reshape(-1, k))
        if bar is not None:
            bar.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, k))


def rescore(args, log=print) -> dict:
    """Score the source store's kept responses with the reward of `args` and write the new store."""
    import copy

    from tqdm import tqdm

    from openrlhf_contrastive.backends.hf import HFBackend

    source = BaselineStore.load(args.contrastive.baseline_path)
    responses = require_responses(source, "rescore")
    policy = args.actor.model_name_or_path or source.fingerprint.get("info", {}).get("policy_path")
    check_reward_sources(args.reward.remote_url, "--reward.remote_url")
    check_reward_sources([args.reward.model_name_or_path] if args.reward.model_name_or_path else [], "--reward.model_name_or_path")
    if not policy or (policy.startswith(("/", ".", "~")) and not Path(policy).expanduser().exists()):
        raise InputError(
            f"rescore reads the kept responses with the policy's tokenizer, and the store's policy {policy!r} is not "
            "available here. Pass --actor.model_name_or_path with the SFT checkpoint (or any with the same tokenizer)."
        )
    args.actor.model_name_or_path = policy
    now = training_fingerprint(args, source.k, baseline_temperature(args))
    fingerprint = copy.deepcopy(source.fingerprint)
    for field in ("reward", "normalize_reward", "length_penalty"):
        fingerprint[field] = now[field]
    fingerprint["info"] = {**fingerprint.get("info", {}), "reward_sources": now["info"]["reward_sources"],
                           "rescored_from": str(source.path)}

    prompts, labels = stored_prompts(source)
    texts = read_prompt_texts(source.path)
    keys = source.keys.tolist()
    writer = StoreWriter(args.rescore.output_path, source.k, fingerprint, keep_responses=True)
    todo = [i for i, key in enumerate(keys) if key not in writer.done]
    scorer = HFBackend(args, generate=False)
    bar = tqdm(total=len(todo), unit="prompt", desc="rescore", dynamic_ncols=True)
    try:
        size = args.contrastive.chunk_size
        for start in range(0, len(todo), size):  # one chunk at a time: the unit of resume, as in the stage
            idx = todo[start : start + size]
            kept = [responses[keys[i]] for i in idx]
            rewards = kept_response_rewards(
                scorer, args, [prompts[i] for i in idx], [labels[i] for i in idx], kept, source.k, penalise=True,
                bar=bar, chunk=size,
            )
            writer.append([keys[i] for i in idx], [texts[keys[i]] for i in idx], rewards, responses=kept)
    finally:
        bar.close()
        writer.close()
        scorer.close()
    new = BaselineStore.load(args.rescore.output_path)
    summary = {
        "source": str(source.path), "store": str(args.rescore.output_path), "prompts": len(new), "k": new.k,
        "rescored_now": len(todo), "old_mean": float(source.rewards.mean()), "new_mean": float(new.rewards.mean()),
        "correlation": float(np.corrcoef(source.lookup(new.keys)[0].ravel(), new.rewards.ravel())[0, 1])
        if len(new) and new.rewards.std() > 0 and source.rewards.std() > 0 else float("nan"),
    }
    log(
        f"rescored {summary['rescored_now']} prompts x k={new.k} of {source.path} into {summary['store']} "
        f"({summary['prompts']} prompts in all); baseline reward mean {summary['old_mean']:+.4f} -> "
        f"{summary['new_mean']:+.4f}, correlation of old and new rewards {summary['correlation']:.3f}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rescore(parse_args(sys.argv[1:] if argv is None else argv))
    except (StoreError, ValueError) as e:
        print(f"openrlhf-contrastive rescore: {e}", file=sys.stderr)
        return 2
    return 0
