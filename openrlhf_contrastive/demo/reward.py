"""The demo's reward: a transparent heuristic, as an OpenRLHF reward-function file (`--reward.remote_url <this file>`).

Every demo prompt (`openrlhf_contrastive/demo/data/prompts.jsonl`) carries a `keywords` label: concepts a good
answer mentions, separated by `|`, each a `/`-separated list of accepted spellings (`"red|green|blue"`,
`"seven/7"`). The reward of a response is

    r = coverage + 0.25 * brevity - repetition

- coverage   fraction of the label's concepts found in the response (case-insensitive substring), in [0, 1]
- brevity    1 for answers of at most 40 words, falling linearly to 0 at 120 words
- repetition fraction of the response's word trigrams that repeat an earlier trigram, in [0, 1]

so r lies in [-1, 1.25]. It rewards correct, short, non-repetitive answers and knows nothing else; prompts differ
in how easily a small model mentions their keywords, which is what the contrastive reward calibrates for.
"""

import re

import torch

SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>|<pad>")
WORD = re.compile(r"\w+")


def response_text(query: str, prompt: str) -> str:
    """The response part of OpenRLHF's query (prompt + response, decoded with special tokens), without them."""
    response = query[len(prompt):] if query.startswith(prompt) else query.rsplit(prompt.strip()[-40:], 1)[-1]
    return SPECIAL_TOKEN.sub(" ", response).strip()


def coverage(response: str, keywords: str) -> float:
    concepts = [c for c in (keywords or "").split("|") if c.strip()]
    if not concepts:
        return 0.0
    text = response.lower()
    return sum(any(alt.strip().lower() in text for alt in c.split("/")) for c in concepts) / len(concepts)


def brevity(words: list) -> float:
    return min(1.0, max(0.0, (120 - len(words)) / 80))


def repetition(words: list) -> float:
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0


def score(response: str, keywords: str) -> float:
    words = WORD.findall(response.lower())
    return coverage(response, keywords) + 0.25 * brevity(words) - repetition(words)


def reward_func(queries, prompts, labels):
    """OpenRLHF's reward-function interface: rewards (B,) for the rollouts `queries` of `prompts` with `labels`."""
    rewards = torch.tensor(
        [score(response_text(q, p), label) for q, p, label in zip(queries, prompts, labels)], dtype=torch.float32
    )
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}
