"""The reward-model path on a CPU machine, starting from OpenRLHF's own `train_rm`.

A tiny policy (openrlhf_contrastive.demo.tiny) is the base; `python -m openrlhf.cli.train_rm` trains a reward
model from it on pairs made here, through the TEST-ONLY device choice of cpu_training/ (cpu_training/train_rm.py:
one process, gloo). In every pair the chosen response is the rejected one plus a closing "thank you": a feature
the reward model can learn in a few steps, and that a model which has not learned it cannot separate by more
than its random head's noise.

Checked: the checkpoint loads through OpenRLHF's get_llm_for_sequence_regression, separates chosen from rejected
on the training pairs (the base with a fresh head, as train_rm starts, does not), and carries the normalisation
statistics train_rm computes on its evaluation pairs.
"""

import json
import random
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

HERE = Path(__file__).parent
REPO = HERE.parent.parent

QUESTIONS = [
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
    "List three prime numbers.",
    "What is two plus two?",
]
WORDS = "the quick brown fox jumps over lazy dog sea wind sky blue cat swim story answer four".split()
PAIRS = 32
MARGIN = 0.5  # a pair counts as separated when chosen outscores rejected by this much (a fresh head: ~0.01)
TRAIN_RM_FLAGS = [
    "--train.batch_size", "8", "--train.micro_batch_size", "8", "--train.max_epochs", "3",
    "--adam.lr", "1e-3", "--data.max_len", "64", "--train.seed", "42",
]


def write_pairs(path: Path) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(PAIRS):
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        rows.append({"prompt": QUESTIONS[i % len(QUESTIONS)], "chosen": f"{response} thank you", "rejected": response})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy

    from train_rm import train_reward_model  # cpu_training/ (on pytest's pythonpath)

    work = tmp_path_factory.mktemp("reward_model_cpu")
    base = build_policy(work / "policy")
    pairs = write_pairs(work / "pairs.jsonl")
    rm = train_reward_model(base, work / "pairs.jsonl", work / "rm", flags=TRAIN_RM_FLAGS)
    return {"work": work, "base": base, "pairs": pairs, "rm": rm}


def pair_scores(model, tokenizer, pairs) -> tuple[list[float], list[float]]:
    """The model's rewards of the chosen and the rejected text of each pair, tokenized as RewardDataset does."""
    import torch

    def score(prompt, response):
        text = (prompt + response).rstrip("\n")
        if not text.endswith(tokenizer.eos_token):
            text += " " + tokenizer.eos_token
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(ids, torch.ones_like(ids)).float().item()

    chosen = [score(p["prompt"], p["chosen"]) for p in pairs]
    rejected = [score(p["prompt"], p["rejected"]) for p in pairs]
    return chosen, rejected


def separated(chosen, rejected) -> float:
    return sum(c - r > MARGIN for c, r in zip(chosen, rejected)) / len(chosen)


def load(path, **kwargs):
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import AutoTokenizer

    model = get_llm_for_sequence_regression(str(path), "reward", attn_implementation="sdpa", **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def test_train_rm_separates_chosen_from_rejected(reward_model):
    import torch

    model, tokenizer = load(reward_model["rm"])
    chosen, rejected = pair_scores(model, tokenizer, reward_model["pairs"])
    assert separated(chosen, rejected) >= 0.9, list(zip(chosen, rejected))

    # Where train_rm started: the base with a freshly initialised value head (train_rm's init_value_head).
    torch.manual_seed(42)
    untrained, _ = load(reward_model["base"], init_value_head=True)
    assert separated(*pair_scores(untrained, tokenizer, reward_model["pairs"])) < 0.5


def test_train_rm_stores_the_normalisation_statistics_of_its_evaluation_pairs(reward_model):
    import statistics

    config = json.loads((reward_model["rm"] / "config.json").read_text())
    assert config["value_head_prefix"] == "score"
    # train_rm's evaluate: mean and std of the rewards of every evaluation pair's chosen and rejected response
    # (here the training pairs, passed as --eval.dataset by train_reward_model), computed in bf16.
    model, tokenizer = load(reward_model["rm"])
    chosen, rejected = pair_scores(model, tokenizer, reward_model["pairs"])
    assert config["std"] > 0.5
    assert config["mean"] == pytest.approx(statistics.fmean(chosen + rejected), abs=0.05)
    assert config["std"] == pytest.approx(statistics.stdev(chosen + rejected), rel=0.05)

