"""The demo's prompt set and its transparent keyword reward (openrlhf_contrastive/demo/reward.py), by hand."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from openrlhf_contrastive.demo import reward as demo_reward
from openrlhf_contrastive.demo.run import PROMPTS

ROOT = Path(__file__).parents[2]


def test_prompt_set_is_ours_large_enough_and_shipped_as_package_data():
    rows = [json.loads(line) for line in PROMPTS.read_text().splitlines()]
    assert len(rows) >= 50
    assert all([m["role"] for m in r["input"]] == ["system", "user"] for r in rows)  # chat messages
    assert len({r["input"][-1]["content"] for r in rows}) == len(rows)
    assert all(r["keywords"].strip() for r in rows)
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "demo/data/*.jsonl" in package_data["openrlhf_contrastive"]


@pytest.mark.parametrize(
    "response, keywords, expected",
    [
        ("Paris.", "paris", 1.0 + 0.25),  # covered, short, no repetition
        ("I am not sure.", "paris", 0.25),  # short, not covered
        ("Red, green and blue.", "red|green|blue", 1.25),
        ("Red and blue.", "red|green|blue", 2 / 3 + 0.25),
        ("Seven days.", "seven/7", 1.25),
        ("It has 7.", "seven/7", 1.25),  # any accepted spelling
        ("a b c a b c a b c", "x", 0.25 - 4 / 7),  # 7 trigrams, 3 distinct
        (" ".join(f"w{i}" for i in range(80)), "w3", 1.0 + 0.25 * 0.5),  # 80 words: brevity (120 - 80) / 80
        (" ".join(f"w{i}" for i in range(130)), "w3", 1.0),  # over 120 words: no brevity bonus
    ],
)
def test_score_by_hand(response, keywords, expected):
    assert demo_reward.score(response, keywords) == pytest.approx(expected)


def test_reward_func_strips_the_prompt_and_special_tokens():
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    query = prompt + "The capital is Paris.<|im_end|>"
    out = demo_reward.reward_func([query], [prompt], ["paris"])
    assert demo_reward.response_text(query, prompt) == "The capital is Paris."
    assert torch.allclose(out["rewards"], torch.tensor([1.25]))
    # The prompt itself mentions no keyword that is counted: only the response is scored.
    prompt2 = "<|im_start|>user\nIs Paris the capital?<|im_end|>\n<|im_start|>assistant\n"
    assert demo_reward.reward_func([prompt2 + "No idea."], [prompt2], ["paris"])["rewards"].item() == pytest.approx(0.25)
