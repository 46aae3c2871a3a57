"""A store's reward normalisation is part of its fingerprint: train_ppo_ray refuses a store made with the other one.

`--reward.normalize_enable` makes OpenRLHF's reward model return (r - mean) / std with the statistics train_rm
stored in the checkpoint, so baselines scored with it and rollouts scored without it (or the reverse) are on
different scales. The refusal comes from the plugin's check_args, in train_ppo_ray's argument handling, before
Ray, DeepSpeed or any model starts (the real parser here: cpu_training/openrlhf_cli.py).
"""

import json

import pytest

from openrlhf_cli import parse_train_args

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    tmp = tmp_path_factory.mktemp("rm_store")
    (tmp / "prompts.jsonl").write_text(json.dumps({"input": "What is two plus two?"}) + "\n")
    return tmp, build_policy(tmp / "policy"), build_reward_model(tmp / "rm")


def training_flags(tmp, policy, rm, store) -> list[str]:
    return [
        "--actor.model_name_or_path", str(policy), "--reward.model_name_or_path", str(rm),
        "--data.prompt_dataset", str(tmp / "prompts.jsonl"), "--reward_fn", "contrastive",
        "--contrastive.baseline_path", str(store),
    ]


def write_store(store, args) -> None:
    """A store as the stage writes it for a run with these args (its fingerprint; the rewards do not matter here)."""
    import numpy as np

    from openrlhf_contrastive.plugin import ContrastiveReward
    from openrlhf_contrastive.store import StoreWriter, prompt_key

    prompt = "What is two plus two?"
    writer = StoreWriter(store, args.contrastive.k, ContrastiveReward().fingerprint(args))
    writer.append([prompt_key(prompt)], [prompt], np.zeros((1, args.contrastive.k)))
    writer.close()


@pytest.mark.parametrize("stored, training", [(True, False), (False, True)],
                         ids=["normalized_store_plain_run", "plain_store_normalized_run"])
def test_a_store_with_the_other_reward_normalisation_is_refused_at_parse_time(models, tmp_path, stored, training):
    tmp, policy, rm = models
    flags = training_flags(tmp, policy, rm, tmp_path / "store")
    normalize = ["--reward.normalize_enable"]
    write_store(tmp_path / "store", parse_train_args(flags + normalize * stored))
    assert parse_train_args(flags + normalize * stored).reward.normalize_enable is stored  # its own settings: accepted
    with pytest.raises(SystemExit, match=f"normalize_reward: store has {stored}, now {training}"):
        parse_train_args(flags + normalize * training)
