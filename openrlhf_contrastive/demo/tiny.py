"""Tiny models built offline, for tests, benchmarks and the demo's fallback (nothing is downloaded).

`build_tokenizer` trains a byte-level BPE on a small built-in corpus with the `tokenizers` library and adds
a chat template; `build_policy` and `build_reward_model` save a randomly initialised Llama causal LM and a
sequence-regression reward model of the same shape with `save_pretrained`. head_dim is 64, which vLLM's CPU
backend accepts.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea and the wind.",
    "Explain why the sky is blue in one sentence.",
    "List three prime numbers and add them together.",
    "A helpful assistant answers questions politely and clearly.",
    "Translate good morning into French: bonjour.",
    "What is two plus two? The answer is four.",
    "Summarize the story of a cat who learns to swim.",
] * 8


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512):
    """A byte-level BPE PreTrainedTokenizerFast saved to `out_dir` (pad, eos, bos and a chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def _config(tokenizer, **overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def build_policy(out_dir: str | Path, seed: int = 0, **config_overrides) -> Path:
    """A random tiny Llama causal LM with its tokenizer in `out_dir` (about 1 MB)."""
    import torch
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tokenizer, **config_overrides))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    return out_dir


def build_reward_model(out_dir: str | Path, seed: int = 1) -> Path:
    """A random tiny reward model loadable by openrlhf's get_llm_for_sequence_regression(..., "reward").

    It is a Llama checkpoint with a `score` head (OpenRLHF's default value_head_prefix) of shape (1, hidden).
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaModel

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = _config(tokenizer, architectures=["LlamaForCausalLM"])
    LlamaModel(config).save_pretrained(str(out_dir))
    weights_file = out_dir / "model.safetensors"
    weights = {f"model.{k}" if not k.startswith("model.") else k: v for k, v in load_file(str(weights_file)).items()}
    weights["score.weight"] = torch.randn(1, config.hidden_size) / config.hidden_size**0.5
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    return out_dir
