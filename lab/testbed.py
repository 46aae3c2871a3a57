"""The evidence testbed: a synthetic task, its gold reward, a noisy proxy of it, and a tiny SFT policy built here.

Task: the prompt is a word of 2-7 letters from "abcdefgh"; the correct answer is the word reversed, then </s>.
Per-prompt difficulty differs by construction: longer words are harder for the tiny policy.

    gold(x, y)  = (letters of y in the right place) / L  -  0.5 * |len(y) - L| / L        (in [-1, 1])
    proxy(x, y) = gold + offset_scale * z(x)                     per-prompt miscalibration, z ~ N(0, 1)
                       + noise_max * u(x) * eps(x, y)            per-prompt noise level, u ~ U(0, 1), eps ~ N(0, 1)
                       + length_bias * len(y)                    a spurious feature gold ignores (longer = better)

z, u and eps come from hashes of the prompt word (and response): the proxy is a deterministic function of the
text, as a reward model is. PPO sees only the proxy; gold is logged beside it (OpenRLHF's extra_logs) and used
for the held-out evaluation.

Nothing is downloaded: the tokenizer (one token per character, byte-level BPE without merges) and the Llama
policy (head_dim 64, which vLLM CPU accepts) are built and trained here in a minute or two.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
USER, ASSISTANT, EOS, PAD = "<|user|>", "<|assistant|>", "</s>", "<pad>"


def load_config(path: Path | str) -> dict:
    """An experiment's config.json (task, sft, proxy, ...: benchmarks/evidence*/config.json)."""
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------------------------- task and rewards
def make_words(n: int, cfg_task: dict, seed: int, exclude: set | None = None) -> list[str]:
    rng = random.Random(seed)
    exclude = set(exclude or ())
    words: list[str] = []
    seen = set(exclude)
    while len(words) < n:
        length = rng.randint(cfg_task["min_len"], cfg_task["max_len"])
        w = "".join(rng.choice(cfg_task["alphabet"]) for _ in range(length))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def split_prompts(cfg: dict, n_train: int | None = None, n_heldout: int | None = None) -> tuple[list[str], list[str]]:
    t = cfg["task"]
    train = make_words(n_train or t["n_train_prompts"], t, t["data_seed"])
    heldout = make_words(n_heldout or t["n_heldout_prompts"], t, t["data_seed"] + 1, exclude=set(train))
    return train, heldout


def prompt_text(word: str) -> str:
    """The exact string OpenRLHF builds with --data.apply_chat_template (and our chat template)."""
    return f"{USER}{word}{EOS}{ASSISTANT}"


def word_of(prompt: str) -> str:
    start = prompt.rfind(USER)
    body = prompt[start + len(USER):] if start >= 0 else prompt
    return body.split(EOS, 1)[0].strip()


def response_of(query: str, prompt: str) -> str:
    if query.startswith(prompt):
        resp = query[len(prompt):]
    else:
        at = query.rfind(ASSISTANT)
        resp = query[at + len(ASSISTANT):] if at >= 0 else query
    resp = resp.split(EOS, 1)[0]
    return resp.replace(PAD, "")


def gold(word: str, response: str) -> float:
    target = word[::-1]
    n = len(target)
    match = sum(1 for a, b in zip(response, target) if a == b) / n
    return max(-1.0, min(1.0, match - 0.5 * abs(len(response) - n) / n))


def _unit(*parts: str) -> float:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") + 0.5) / 2**64


_NORMAL = statistics.NormalDist()


def prompt_tag(word: str) -> float:
    """A number in [0, 1) fixed per prompt word, independent of the proxy's settings (logged, never trained on)."""
    return _unit("prompt_tag", word)


def prompt_offset(word: str, p: dict) -> float:
    return p["offset_scale"] * _NORMAL.inv_cdf(_unit(str(p["seed"]), "offset", word))


def prompt_noise_scale(word: str, p: dict) -> float:
    return p["noise_max"] * _unit(str(p["seed"]), "scale", word)


def proxy(word: str, response: str, p: dict) -> float:
    eps = _NORMAL.inv_cdf(_unit(str(p["seed"]), "eps", word, response))
    return (gold(word, response) + prompt_offset(word, p) + prompt_noise_scale(word, p) * eps
            + p["length_bias"] * len(response))


# ------------------------------------------------------------------------------------------- tokenizer and policy
def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, "<s>", EOS, USER, ASSISTANT, "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + len(specials), special_tokens=specials,
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(["abcdefghijkl"], trainer=trainer)  # no merges: one token per character
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token="<s>", eos_token=EOS,
                                   padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def build_sft_policy(out_dir: Path, cfg: dict, steps: int | None = None, log=print) -> Path:
    """Train the tiny Llama on (word -> reversed word) with a cross-entropy on the answer tokens only.

    Short training on purpose: the policy starts partly competent (short words mostly right, long words often
    wrong), so PPO has room to improve and prompts differ in difficulty.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "sft_done.json").exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    s = cfg["sft"]
    steps = steps or s["steps"]
    tok = build_tokenizer(out_dir)
    torch.set_num_threads(1)  # reproducible (and far faster than 2 threads when other work shares the cores)
    torch.manual_seed(s["seed"])
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_hidden_layers"], num_attention_heads=s["num_attention_heads"],
        num_key_value_heads=s["num_attention_heads"], head_dim=s["head_dim"], max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 50) * max(0.05, 1 - i / steps))
    rng = random.Random(s["seed"])
    t = cfg["task"]
    train_words, heldout = split_prompts(cfg)
    banned = set(heldout)  # SFT sees random words, never the held-out prompts
    start = time.time()
    model.train()
    for step in range(steps):
        batch = []
        while len(batch) < s["batch_size"]:
            length = rng.randint(t["min_len"], t["max_len"])
            w = "".join(rng.choice(t["alphabet"]) for _ in range(length))
            if w not in banned:
                batch.append(w)
        ids, labels = [], []
        for w in batch:
            p = tok(prompt_text(w), add_special_tokens=False)["input_ids"]
            a = tok(w[::-1] + EOS, add_special_tokens=False)["input_ids"]
            ids.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, ids))
        x = torch.full((len(ids), width), tok.pad_token_id)
        y = torch.full((len(ids), width), -100)
        m = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (a, b) in enumerate(zip(ids, labels)):
            x[i, : len(a)] = torch.tensor(a)
            y[i, : len(b)] = torch.tensor(b)
            m[i, : len(a)] = 1
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"sft step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out_dir))
    (out_dir / "sft_done.json").write_text(json.dumps({"steps": steps, "final_loss": loss.item(),
                                                       "seconds": time.time() - start}))
    return out_dir


def sample_responses(model_dir: Path, words: list[str], n: int, temperature: float, max_new_tokens: int,
                     seed: int, min_new_tokens: int = 0) -> list[list[str]]:
    """n sampled responses per word with transformers on CPU (evaluation only; training samples with vLLM).

    min_new_tokens 0 samples the policy as it is (an empty response, EOS first, allowed); 1 samples it the way
    OpenRLHF's rollouts do (vLLM ``min_tokens=1``: EOS masked at the first position)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    model.eval()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    prompts = [prompt_text(w) for w in words]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=max_new_tokens, num_return_sequences=n,
                             min_new_tokens=min_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
    resp = [response_of(t, "") for t in texts]
    return [resp[i * n:(i + 1) * n] for i in range(len(words))]


def p_eos_first(model_dir: Path, words: list[str]) -> float:
    """The policy's mean probability (over `words`) of ending its response at the first token: of answering nothing
    when sampled as served. OpenRLHF's rollouts mask EOS there (vLLM ``min_tokens=1``), so training never sees it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    enc = tok([prompt_text(w) for w in words], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        probs = model(**enc).logits[:, -1].softmax(-1)[:, tok.eos_token_id]
    return float(probs.mean())
