"""The learned reward models of evidence v2: noisy preference pairs, OpenRLHF's train_rm, accuracy, scoring.

Pairs: `pairs_per_prompt` disjoint pairs of SFT samples per training prompt (pairs whose two responses have the
same gold are dropped: gold has no preference). Each pair is labelled by gold, then flipped with the prompt's own
flip rate f(x) = flip_rate_max * u(x), u(x) ~ U(0, 1) from a hash of the prompt (f ~ U(0, 0.5): 25% of labels
flipped on average, as in Coste et al. 2024); the flip of each pair is a hash too, so the data is reproducible.
The `rm_clean` model is trained on the same pairs without flips.

Training: `python -m openrlhf.cli.train_rm` on CPU through lab/cpu_training/ (lab.harness.train_reward_model),
initialised from the SFT policy, as users do, or, with an `rm.backbone` section, from a backbone of its own: the
testbed's SFT recipe with that section's settings (larger, trained longer; the same tokenizer) built in
work/rm_backbone, as real reward models often start from a stronger model than the policy. Chat template applied, so a
pair reads exactly like the rollouts PPO will score: `<|user|>w</s><|assistant|>y</s>`.

Per model (`rm.models.<name>`): `noisy`, and optionally `samples_per_prompt` (every pair of the first n of the shared
SFT samples of each prompt: a weaker model from less data) and `backbone` (null: start from the policy), which
override the `rm` section's.

Accuracy: on fresh pairs (other SFT samples: `eval_samples_per_prompt` per prompt, default `samples_per_prompt`) of
the training prompts, against clean gold labels, overall and by flip-rate bucket, and on fresh pairs of the held-out
prompts (overall).
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


def model_settings(cfg: dict, rm: str) -> dict:
    """The `rm` section with the model's own `samples_per_prompt` and `backbone`, where it sets them."""
    model = cfg["rm"]["models"][rm]
    return {**cfg["rm"], **{k: model[k] for k in ("samples_per_prompt", "backbone") if k in model},
            "noisy": model["noisy"]}


def backbone(cfg: dict, r: dict, work: Path, steps: int | None = None, log=print) -> Path:
    """Where a reward model starts: the SFT policy, or with a `backbone` section its own backbone, the testbed's SFT
    recipe with that section's settings over the `sft` section's (same tokenizer), built once in work/rm_backbone
    (`steps` overrides its training steps: the smoke run)."""
    if not r.get("backbone"):
        return work / "sft"
    out = work / "rm_backbone"
    if not (out / "sft_done.json").exists():
        start = time.time()
        testbed.build_sft_policy(out, {**cfg, "sft": {**cfg["sft"], **r["backbone"]}}, steps=steps, log=log)
        log(f"RM backbone ready ({time.time() - start:.0f} s): {out}")
    return out


def sft_pairs_source(cfg: dict, work: Path, words: list[str], name: str, seed: int, n: int | None = None
                     ) -> list[list[str]]:
    """SFT samples for pairs (cached): n (default samples_per_prompt) responses per prompt."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    n = n or cfg["rm"]["samples_per_prompt"]
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
    r = model_settings(cfg, rm)
    noisy = r["noisy"]
    responses = sft_pairs_source(cfg, work, train, "rm_pairs_responses", cfg["rm"]["data_seed"])
    pairs = labelled_pairs(cfg, train, [ys[:r["samples_per_prompt"]] for ys in responses], noisy)
    data = work / f"{rm}_pairs.jsonl"
    data.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for p in pairs))
    base = backbone(cfg, r, work, s.get("rm_backbone_steps"), log)
    log(f"{rm}: {len(pairs)} pairs, {sum(p['flipped'] for p in pairs)} flipped; train_rm on CPU from {base.name} ...")
    seconds = train_with_openrlhf(cfg, s, data, base, out, env)
    n_eval = cfg["rm"].get("eval_samples_per_prompt")
    fresh_train = sft_pairs_source(cfg, work, train, "rm_eval_train_responses", cfg["rm"]["data_seed"] + 1, n_eval)
    fresh_heldout = sft_pairs_source(cfg, work, heldout, "rm_eval_heldout_responses", cfg["rm"]["data_seed"] + 2,
                                     n_eval)
    info = {"rm": rm, "noisy": noisy, "pairs": len(pairs), "flipped": sum(p["flipped"] for p in pairs),
            "samples_per_prompt": r["samples_per_prompt"], "backbone": base.name, "epochs": s["rm_epochs"],
            "lr": r["lr"], "train_seconds": seconds,
            "accuracy_train_prompts_fresh_pairs": accuracy(cfg, out, train, fresh_train),
            "accuracy_heldout_prompts": accuracy(cfg, out, heldout, fresh_heldout)}
    done.write_text(json.dumps(info, indent=1))
    log(f"{rm}: trained in {seconds:.0f} s; accuracy vs clean gold labels on fresh pairs of training prompts "
        f"{info['accuracy_train_prompts_fresh_pairs']['accuracy']:.3f}, held-out prompts "
        f"{info['accuracy_heldout_prompts']['accuracy']:.3f}")
    return out


def train_with_openrlhf(cfg: dict, s: dict, data: Path, sft: Path, out: Path, env: dict | None = None) -> float:
    """OpenRLHF's train_rm on CPU (lab/cpu_training/train_rm.py) from `sft` (the policy or the RM's backbone);
    returns its wall seconds."""
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

