"""lab/reward_models.py's per-model settings and the optional RM backbone: without an `rm.backbone` section a reward
model starts from the SFT policy exactly as in evidence v2; with one, from its own backbone, the testbed's SFT recipe
with the section's settings over the `sft` section's, built once in work/rm_backbone; a model may take the first n of
the shared SFT samples of each prompt and start from the policy instead."""

import json

import pytest

from lab import reward_models, testbed

SFT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 64,
       "steps": 120, "batch_size": 64, "lr": 0.003, "seed": 0}
TASK = {"alphabet": "abcd", "min_len": 2, "max_len": 4, "n_train_prompts": 8, "n_heldout_prompts": 4, "data_seed": 1}


def config(**rm) -> dict:
    return {"task": TASK, "sft": SFT, "rm": {"flip_rate_max": 0.5, "flip_seed": 11, "samples_per_prompt": 4, "lr": 3e-4,
                                             "models": {"rm_noisy": {"noisy": True}}, **rm}}


def test_without_a_backbone_section_the_reward_model_starts_from_the_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(testbed, "build_sft_policy", lambda *a, **k: pytest.fail("no backbone is built"))
    r = reward_models.model_settings(config(), "rm_noisy")
    assert r["samples_per_prompt"] == 4 and r["noisy"] and "backbone" not in r
    assert reward_models.backbone(config(), r, tmp_path) == tmp_path / "sft"


def test_a_backbone_section_overrides_the_sft_recipe_and_is_built_once(tmp_path, monkeypatch):
    built = []

    def build(out, cfg, steps=None, log=print):
        built.append((out, cfg["sft"], steps))
        out.mkdir(parents=True)
        (out / "sft_done.json").write_text(json.dumps({}))
        return out

    monkeypatch.setattr(testbed, "build_sft_policy", build)
    cfg = config(backbone={"hidden_size": 256, "num_hidden_layers": 4, "steps": 500})
    r = reward_models.model_settings(cfg, "rm_noisy")
    assert reward_models.backbone(cfg, r, tmp_path, steps=20, log=lambda m: None) == tmp_path / "rm_backbone"
    assert reward_models.backbone(cfg, r, tmp_path, log=lambda m: None) == tmp_path / "rm_backbone"
    ((out, sft, steps),) = built  # the second call reuses it
    assert out == tmp_path / "rm_backbone" and steps == 20
    assert sft == {**SFT, "hidden_size": 256, "num_hidden_layers": 4, "steps": 500}  # the tokenizer is the testbed's
    assert cfg["sft"] == SFT  # the policy's recipe is untouched


def test_a_model_may_use_fewer_samples_and_start_from_the_policy(tmp_path):
    cfg = config(backbone={"hidden_size": 256}, samples_per_prompt=8,
                 models={"rm_noisy": {"noisy": True}, "rm_weak": {"noisy": True, "samples_per_prompt": 4,
                                                                  "backbone": None}})
    strong, weak = (reward_models.model_settings(cfg, m) for m in ("rm_noisy", "rm_weak"))
    assert (strong["samples_per_prompt"], weak["samples_per_prompt"]) == (8, 4)
    assert strong["backbone"] == {"hidden_size": 256}
    assert reward_models.backbone(cfg, weak, tmp_path) == tmp_path / "sft"
    # the weak model's pairs are every pair of the first 4 of the same samples: a subset of the strong model's
    words = ["ab", "abc"]
    responses = [["ba", "b", "bb", "a", "ab", "aa", "baa", ""], ["cba", "cb", "c", "cab", "abc", "ccc", "cbaa", "ca"]]
    pairs = {m: reward_models.labelled_pairs(cfg, words, [ys[:r["samples_per_prompt"]] for ys in responses], True)
             for m, r in (("strong", strong), ("weak", weak))}
    key = lambda p: (p["word"], p["chosen"][0]["content"], p["rejected"][0]["content"])  # noqa: E731
    assert 0 < len(pairs["weak"]) < len(pairs["strong"])
    assert {key(p) for p in pairs["weak"]} <= {key(p) for p in pairs["strong"]}  # the same labels and flips
