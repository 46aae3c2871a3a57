"""The openrlhf backend with OpenRLHF's real RewardModelActor group (DeepSpeed on CUDA): GPU machines only."""

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm, pytest.mark.gpu]


def test_sample_with_reward_model_actor_group(tmp_path):
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.store import BaselineStore
    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    policy, rm = build_policy(tmp_path / "policy"), build_reward_model(tmp_path / "rm")
    with open(tmp_path / "p.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"input": f"Question {i}: what is {i} plus two?"}) + "\n")
    flags = [
        "--actor.model_name_or_path", str(policy), "--reward.model_name_or_path", str(rm),
        "--reward.num_gpus_per_node", "1", "--vllm.num_engines", "1", "--vllm.gpu_memory_utilization", "0.3",
        "--ds.attn_implementation", "sdpa", "--data.prompt_dataset", str(tmp_path / "p.jsonl"),
        "--data.max_len", "96", "--rollout.max_new_tokens", "12", "--contrastive.k", "2",
        "--contrastive.backend", "openrlhf", "--contrastive.baseline_path", str(tmp_path / "s"),
    ]
    assert stage.main(flags)["generations"] == 32
    assert len(BaselineStore.load(tmp_path / "s")) == 16
    assert stage.main(flags)["generations"] == 0


def test_gpu_engines_are_seeded_so_chunking_and_order_do_not_change_baselines(tmp_path):
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.store import BaselineStore
    from openrlhf_contrastive.demo.tiny import build_policy

    policy = build_policy(tmp_path / "policy")
    (tmp_path / "reward.py").write_text(
        "import torch\ndef reward_func(queries, prompts, labels):\n"
        "    return {'rewards': torch.tensor([len(q) / 100.0 for q in queries])}\n"
    )
    rows = [json.dumps({"input": f"Question {i}: name a colour {'and a shape ' * (i % 5)}."}) for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(rows[::-1]) + "\n")

    def flags(data, store, chunk):
        return [
            "--actor.model_name_or_path", str(policy), "--reward.remote_url", str(tmp_path / "reward.py"),
            "--vllm.num_engines", "1", "--vllm.gpu_memory_utilization", "0.3", "--data.prompt_dataset", str(data),
            "--data.max_len", "96", "--rollout.max_new_tokens", "12", "--contrastive.k", "3",
            "--contrastive.chunk_size", str(chunk), "--contrastive.backend", "openrlhf",
            "--contrastive.baseline_path", str(store),
        ]

    stage.main(flags(tmp_path / "a.jsonl", tmp_path / "s1", 64))
    stage.main(flags(tmp_path / "b.jsonl", tmp_path / "s2", 7))
    one, two = BaselineStore.load(tmp_path / "s1"), BaselineStore.load(tmp_path / "s2")
    assert (one.keys == two.keys).all() and (one.rewards == two.rewards).all()
