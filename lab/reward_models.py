"""The learned reward models of evidence v2: noisy preference pairs, OpenRLHF's train_rm, accuracy, scoring.

Pairs: `pairs_per_prompt` disjoint pairs of SFT samples per training prompt (pairs whose two responses have the
same gold are dropped: gold has no preference). Each pair is labelled by gold, then flipped with the prompt's own
flip rate f(x) = flip_rate_max * u(x), u(x) ~ U(0, 1) from a hash of the prompt (f ~ U(0, 0.5): 25% of labels
flipped on average, as in Coste et al. 2024); the flip of each pair is a hash too, so the data is reproducible.
The `rm_clean` model is trained on the same pairs without flips.

Training: `python -m openrlhf.cli.train_rm` on CPU through lab/cpu_training/ (lab.harness.train_reward_model) (initialised from the SFT policy, as users
do; chat template applied, so a pair reads exactly like the rollouts PPO will score: `<|user|>w</s><|assistant|>y</s>`).

Accuracy: on fresh pairs (other SFT samples) of the training prompts, against clean gold labels, overall and by
flip-rate bucket, and on fresh pairs of the held-out prompts (overall).
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from pathlib import Path

from lab import harness, testbed

FLIP_BUCKETS = 4


def flip_rate(word: str, cfg: dict) -> float:
    """The prompt's label flip rate, U(0, flip_rate_max) from a hash of the word."""
    r = cfg["rm"]
    return r["flip_rate_max"] * testbed._unit(str(r["flip_seed"]), "flip_rate", word)


def flip_bucket(rate: float, cfg: dict) -> int:
    return min(FLIP_BUCKETS - 1, int(rate / cfg["rm"]["flip_rate_max"] * FLIP_BUCKETS))


def train_eval_words(train: list[str], n: int, seed: int) -> list[str]:
    """The training prompts evaluated along each run (uncertainty and difficulty claims; a fixed subset)."""
    return random.Random(seed).sample(train, min(n, len(train)))


def labelled_pairs(cfg: dict, words: list[str], responses: list[list[str]], noisy: bool) -> list[dict]:
    """Pairs of each prompt's responses (every two of them), chosen by gold, flipped with the prompt's rate when
    noisy (each pair's flip drawn independently)."""
    r = cfg["rm"]
    pairs = []
    for w, ys in zip(words, responses):
        for a, b in itertools.combinations(ys, 2):
            ga, gb = testbed.gold(w, a), testbed.gold(w, b)
            if ga == gb:
                continue
            chosen, rejected = (a, b) if ga > gb else (b, a)
            flipped = noisy and testbed._unit(str(r["flip_seed"]), "flip", w, a, b) < flip_rate(w, cfg)
            if flipped:
                chosen, rejected = rejected, chosen
            pairs.append({"prompt": [{"role": "user", "content": w}],
                          "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}],
                          "word": w, "flipped": flipped})
    return pairs


def sft_pairs_source(cfg: dict, work: Path, words: list[str], name: str, seed: int) -> list[list[str]]:
    """SFT samples for pairs (cached): samples_per_prompt responses per prompt."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    n = cfg["rm"]["samples_per_prompt"]
    responses = testbed.sample_responses(work / "sft", words, n, cfg["ppo"]["temperature"],
                                         cfg["ppo"]["max_new_tokens"], seed)
    path.write_text(json.dumps(responses))
    return responses


def score(rm_dir: Path, words: list[str], responses: list[list[str]], batch: int = 256) -> list[list[float]]:
    """The reward model's score of each response, as OpenRLHF's RewardModelActor computes it (the value head at the
    last token of `<|user|>w</s><|assistant|>y</s>`), with OpenRLHF's own loader, fp32 on CPU."""
    import torch
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import AutoTokenizer

    model = _RM_CACHE.get(str(rm_dir))
    if model is None:
        model = get_llm_for_sequence_regression(str(rm_dir), "reward", param_dtype="bf16",
                                                attn_implementation="sdpa").float().eval()
        _RM_CACHE.clear()
        _RM_CACHE[str(rm_dir)] = model
    tok = AutoTokenizer.from_pretrained(str(rm_dir))
    tok.padding_side = "left"
    texts = [testbed.prompt_text(w) + y + testbed.EOS for w, ys in zip(words, responses) for y in ys]
    torch.set_num_threads(1)
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            scores += model(enc["input_ids"], attention_mask=enc["attention_mask"]).float().tolist()
    out, at = [], 0
    for ys in responses:
        out.append(scores[at:at + len(ys)])
        at += len(ys)
    return out


_RM_CACHE: dict = {}


def accuracy(cfg: dict, rm_dir: Path, words: list[str], responses: list[list[str]]) -> dict:
    """Pairwise accuracy against clean gold labels, overall and by the prompts' flip-rate bucket."""
    pairs = labelled_pairs(cfg, words, responses, noisy=False)
    if not pairs:
        return {"pairs": 0}
    chosen = score(rm_dir, [p["word"] for p in pairs], [[p["chosen"][0]["content"]] for p in pairs])
    rejected = score(rm_dir, [p["word"] for p in pairs], [[p["rejected"][0]["content"]] for p in pairs])
    right = [1.0 if c[0] > r[0] else 0.5 if c[0] == r[0] else 0.0 for c, r in zip(chosen, rejected)]
    buckets: dict = {}
    for p, ok in zip(pairs, right):
        buckets.setdefault(flip_bucket(flip_rate(p["word"], cfg), cfg), []).append(ok)
    width = cfg["rm"]["flip_rate_max"] / FLIP_BUCKETS
    return {"pairs": len(pairs), "accuracy": statistics.mean(right),
            "by_flip_rate": {f"[{b * width:.3f}, {(b + 1) * width:.3f})": {"pairs": len(v), "accuracy": statistics.mean(v)}
                             for b, v in sorted(buckets.items())}}


def build(cfg: dict, s: dict, work: Path, rm: str, train: list[str], heldout: list[str], env: dict | None = None,
          log=print) -> Path:
    """Train reward model `rm` (rm_noisy / rm_clean) once and measure its accuracy; returns its directory."""
    out = work / rm
    done = work / f"{rm}_done.json"
    if done.exists():
        return out
    noisy = cfg["rm"]["models"][rm]["noisy"]
    responses = sft_pairs_source(cfg, work, train, "rm_pairs_responses", cfg["rm"]["data_seed"])
    pairs = labelled_pairs(cfg, train, responses, noisy)
    data = work / f"{rm}_pairs.jsonl"
    data.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for p in pairs))
    log(f"{rm}: {len(pairs)} pairs, {sum(p['flipped'] for p in pairs)} flipped; train_rm on CPU ...")
    seconds = train_with_openrlhf(cfg, s, data, work / "sft", out, env)
    fresh_train = sft_pairs_source(cfg, work, train, "rm_eval_train_responses", cfg["rm"]["data_seed"] + 1)
    fresh_heldout = sft_pairs_source(cfg, work, heldout, "rm_eval_heldout_responses", cfg["rm"]["data_seed"] + 2)
    info = {"rm": rm, "noisy": noisy, "pairs": len(pairs), "flipped": sum(p["flipped"] for p in pairs),
            "train_seconds": seconds,
            "accuracy_train_prompts_fresh_pairs": accuracy(cfg, out, train, fresh_train),
            "accuracy_heldout_prompts": accuracy(cfg, out, heldout, fresh_heldout)}
    done.write_text(json.dumps(info, indent=1))
    log(f"{rm}: trained in {seconds:.0f} s; accuracy vs clean gold labels on fresh pairs of training prompts "
        f"{info['accuracy_train_prompts_fresh_pairs']['accuracy']:.3f}, held-out prompts "
        f"{info['accuracy_heldout_prompts']['accuracy']:.3f}")
    return out


def train_with_openrlhf(cfg: dict, s: dict, data: Path, sft: Path, out: Path, env: dict | None = None) -> float:
    """OpenRLHF's train_rm on CPU (lab/cpu_training/train_rm.py) from the SFT policy; returns its wall seconds."""
    r = cfg["rm"]
    start = time.time()
    # train_rm's evaluation only gives the checkpoint its mean/std (unused: no --reward.normalize_enable); a few
    # pairs keep it short (train_reward_model's default evaluates every training pair once more)
    few = out.with_name(out.name + "_eval_pairs.jsonl")
    few.write_text("".join(data.read_text().splitlines(keepends=True)[:r["eval_pairs"]]))
    harness.train_reward_model(sft, data, out, env=env, flags=[
        "--eval.dataset", str(few), "--data.apply_chat_template", "--data.max_len", str(cfg["ppo"]["data_max_len"] + cfg["ppo"]["max_new_tokens"]),
        "--train.max_epochs", str(s["rm_epochs"]), "--adam.lr", str(r["lr"]),
        "--train.batch_size", str(r["batch_size"]), "--train.micro_batch_size", str(r["batch_size"]),
        "--train.seed", str(r["seed"]),
    ])
    return time.time() - start

