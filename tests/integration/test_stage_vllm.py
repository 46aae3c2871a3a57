"""The offline stage's openrlhf backend on real vLLM CPU engines made by OpenRLHF's own create_vllm_engines.

One Ray cluster (a logical GPU) and one engine serve the whole module; the reward comes from a reward-function
file through OpenRLHF's rollout actor, or from a reward model behind OpenRLHF's RayActorGroup interface.
"""

import json
import os
from types import SimpleNamespace

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

REWARD_FILE = '''
import torch

def reward_func(queries, prompts, labels):
    """A deterministic reward of the decoded query (prompt + response)."""
    return {"rewards": torch.tensor([(sum(map(ord, q)) % 101) / 100.0 for q in queries])}
'''


def write_prompts(path, n, repeats=0):
    with open(path, "w") as f:
        for i in list(range(n)) + list(range(repeats)):
            f.write(json.dumps({"input": f"Question {i}: what is {i} plus two?", "answer": str(i + 2)}) + "\n")
    return str(path)


def stage_args(tmp, policy, reward_file, prompts, store, *extra):
    from openrlhf_contrastive.stage import parse_args

    return parse_args([
        "--actor.model_name_or_path", str(policy), "--reward.remote_url", str(reward_file),
        "--data.prompt_dataset", prompts, "--data.max_len", "96", "--rollout.max_new_tokens", "12",
        "--contrastive.k", "2", "--contrastive.chunk_size", "8", "--contrastive.baseline_path", str(store),
        "--vllm.enforce_eager", *extra,
    ])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines
    from openrlhf.utils.utils import get_tokenizer

    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    tmp = tmp_path_factory.mktemp("vllm")
    policy, rm = build_policy(tmp / "policy"), build_reward_model(tmp / "rm")
    reward_file = tmp / "reward.py"
    reward_file.write_text(REWARD_FILE)
    from ray_start import init_ray  # cpu_training/

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    init_ray(num_cpus=2, num_gpus=1, include_dashboard=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        engines = create_vllm_engines(
            1, 1, str(policy), 42, False, False, True, 96, None, 0.05, False, None, remote_rm_url=[str(reward_file)]
        )
        tokenizer = get_tokenizer(str(policy), None, "left", None)
        yield SimpleNamespace(tmp=tmp, policy=policy, rm=rm, reward_file=reward_file, engines=engines, tokenizer=tokenizer)
    finally:
        ray.shutdown()


def backend_for(cluster, args, **kw):
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend

    return OpenRLHFBackend(args, cluster.engines, cluster.tokenizer, **kw)


def prompts_of(args, tokenizer):
    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.stage import build_prompts

    return build_prompts(args, tokenizer, DriverStrategy(args))


def test_stage_writes_store_and_rerun_generates_nothing(cluster, tmp_path):
    from openrlhf_contrastive.stage import run_stage
    from openrlhf_contrastive.store import BaselineStore

    args = stage_args(tmp_path, cluster.policy, cluster.reward_file, write_prompts(tmp_path / "p.jsonl", 20, repeats=4), tmp_path / "s")
    prompts, labels = prompts_of(args, cluster.tokenizer)
    first = run_stage(args, backend_for(cluster, args), prompts, labels)
    assert (first["prompts"], first["duplicates_dropped"], first["generations"]) == (20, 4, 40)
    store = BaselineStore.load(tmp_path / "s")
    assert len(store) == 20 and store.k == 2
    assert ((store.rewards >= 0) & (store.rewards <= 1)).all()

    rerun = run_stage(args, backend_for(cluster, args), prompts, labels)
    assert rerun["generations"] == 0 and rerun["already_stored"] == 20

    # Other chunking (other batches, other order) covers the same keys. On GPU engines the per-request seeds
    # also make the rewards identical (test_stage_gpu.py); vLLM CPU engines are not seeded (see the backend).
    other = stage_args(tmp_path, cluster.policy, cluster.reward_file, args.data.prompt_dataset, tmp_path / "s2")
    other.contrastive.chunk_size = 3
    backend = backend_for(cluster, other)
    assert not backend.seeded
    run_stage(other, backend, prompts[::-1], labels[::-1])
    again = BaselineStore.load(tmp_path / "s2")
    assert (again.keys == store.keys).all()


def test_length_penalties_applied_as_openrlhf_does(cluster, tmp_path):
    """--reward.stop_properly_penalty_coef -0.5: every truncated baseline gets -0.5, via apply_length_penalties."""
    from openrlhf_contrastive.stage import run_stage
    from openrlhf_contrastive.store import BaselineStore

    args = stage_args(tmp_path, cluster.policy, cluster.reward_file, write_prompts(tmp_path / "p.jsonl", 6), tmp_path / "s",
                      "--reward.stop_properly_penalty_coef", "-0.5", "--rollout.max_new_tokens", "2")
    run_stage(args, backend_for(cluster, args), *prompts_of(args, cluster.tokenizer))
    store = BaselineStore.load(tmp_path / "s")
    assert (store.rewards == -0.5).mean() > 0.5  # a random tiny policy rarely stops within 2 tokens
    assert store.fingerprint["length_penalty"]["stop_properly_penalty_coef"] == -0.5


@pytest.mark.parametrize("template_flags", [
    ["--data.input_template", "User: {}\nAssistant:"],
    ["--data.apply_chat_template"],
], ids=["input_template", "chat_template"])
def test_store_keys_equal_training_experience_prompts(cluster, tmp_path, template_flags):
    """The keys the stage writes are the keys of the Experience.prompts that OpenRLHF's SamplesGenerator yields."""
    from torch.utils.data import DataLoader

    from openrlhf.datasets.prompts_dataset import PromptDataset
    from openrlhf.datasets.utils import blending_datasets
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.stage import run_stage
    from openrlhf_contrastive.store import BaselineStore, prompt_keys

    args = stage_args(tmp_path, cluster.policy, cluster.reward_file, write_prompts(tmp_path / "p.jsonl", 6), tmp_path / "s",
                      "--data.label_key", "answer", *template_flags)
    args.rollout.n_samples_per_prompt, args.rollout.batch_size = 1, 6
    args.rollout.vllm_generate_batch_size, args.algo = 6, SimpleNamespace(
        dynamic_filtering_enable=False, advantage=SimpleNamespace(is_correction_level="off"))
    args.vllm.enable_sleep = False

    # Training's side: prepare_datasets' PromptDataset behind a dataloader, and OpenRLHF's SamplesGenerator.
    strategy = DriverStrategy(args)
    data = blending_datasets(args.data.prompt_dataset, None, strategy, 42, max_count=args.data.max_samples)
    dataset = PromptDataset(data, cluster.tokenizer, strategy, input_template=args.data.input_template)
    loader = DataLoader(dataset, batch_size=1, collate_fn=dataset.collate_fn)
    generator = SamplesGenerator(strategy, loader, None, cluster.tokenizer, cluster.engines)
    experiences, *_ = generator.generate_samples(max_len=96, max_new_tokens=4, temperature=1.0, top_p=1.0)
    training_prompts = [e.prompts[0] for e in experiences]
    training_labels = [e.labels[0] for e in experiences]
    marker = "User: " if "--data.input_template" in template_flags else "<|user|>"
    assert all(p.startswith(marker) for p in training_prompts)

    run_stage(args, backend_for(cluster, args), *prompts_of(args, cluster.tokenizer))
    store = BaselineStore.load(tmp_path / "s")
    assert sorted(store.keys.tolist()) == sorted(prompt_keys(training_prompts, training_labels).tolist())


def test_reward_model_group_interface_on_cpu(cluster, tmp_path):
    """Scoring through OpenRLHF's RayActorGroup.async_run_method_batch -> BaseModelActor.execute_batch -> forward,
    with the real reward model on CPU (RewardModelActor itself needs CUDA: see the gpu test)."""
    import ray

    from openrlhf.models import get_llm_for_sequence_regression
    from openrlhf.trainer.ray.launcher import BaseModelActor, RayActorGroup

    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.stage import run_stage
    from openrlhf_contrastive.store import BaselineStore

    class CPURewardModelActor(BaseModelActor):  # RewardModelActor's init and forward, on CPU without DeepSpeed
        def init_model_from_pretrained(self, args, pretrain):
            self.strategy = DriverStrategy(args)
            self.model = get_llm_for_sequence_regression(
                pretrain, "reward", normalize_reward=args.reward.normalize_enable, attn_implementation="sdpa",
                value_head_prefix=args.ds.value_head_prefix).float().eval()

        def forward(self, sequences, attention_mask=None, packed_seq_lens=None, pad_sequence=False):
            with torch.no_grad():
                return self.model(sequences, attention_mask, pad_sequence=True)

    args = stage_args(tmp_path, cluster.policy, cluster.reward_file, write_prompts(tmp_path / "p.jsonl", 5), tmp_path / "s")
    args.reward.remote_url, args.reward.model_name_or_path = None, str(cluster.rm)
    group = RayActorGroup(1, 1, ray.remote(CPURewardModelActor), num_gpus_per_actor=0)
    ray.get(group.async_init_model_from_pretrained(args, str(cluster.rm)))
    backend = backend_for(cluster, args, reward_model_group=group)
    scored = []
    score = backend.score
    backend.score = lambda experiences: (score(experiences), scored.extend(experiences))
    run_stage(args, backend, *prompts_of(args, cluster.tokenizer))
    ray.kill(group._actor_handlers[0])

    store = BaselineStore.load(tmp_path / "s")
    assert store.fingerprint["reward"][0].startswith("sha256:")
    model = get_llm_for_sequence_regression(str(cluster.rm), "reward", attn_implementation="sdpa").float().eval()
    with torch.no_grad():
        direct = [model(e.sequences, e.attention_mask, pad_sequence=True).item() for e in scored]
    assert sorted(store.rewards.ravel().tolist()) == pytest.approx(sorted(direct), abs=1e-5)


def test_plugin_setup_runs_stage_in_job_once(cluster, tmp_path, monkeypatch):
    """setup(trainer) on the trainer's own engines writes the store; a second setup generates nothing."""
    from openrlhf.datasets.prompts_dataset import PromptDataset
    from openrlhf.datasets.utils import blending_datasets
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from openrlhf_contrastive import stage
    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.plugin import ContrastiveReward
    from openrlhf_contrastive.store import BaselineStore

    args = stage_args(tmp_path, cluster.policy, cluster.reward_file, write_prompts(tmp_path / "p.jsonl", 7), tmp_path / "s")
    args.contrastive.shape, args.contrastive.on_missing = "mean", "error"
    strategy = DriverStrategy(args)
    data = blending_datasets(args.data.prompt_dataset, None, strategy, 42, max_count=args.data.max_samples)
    dataset = PromptDataset(data, cluster.tokenizer, strategy, input_template=None)
    trainer = SimpleNamespace(
        args=args, vllm_engines=cluster.engines, reward_model_group=None, tokenizer=cluster.tokenizer,
        samples_generator=SamplesGenerator(strategy, None, None, cluster.tokenizer, cluster.engines),
        prompts_dataloader=SimpleNamespace(dataset=dataset),
    )
    runs = []
    monkeypatch.setattr(stage, "run_in_job", lambda t, fingerprint=None, run=stage.run_in_job:
                        runs.append(run(t, fingerprint)) or runs[-1])

    ContrastiveReward().setup(trainer)
    assert len(runs) == 1 and runs[0]["generations"] == 7 * 2
    assert len(BaselineStore.load(tmp_path / "s")) == 7
    plugin = ContrastiveReward()
    plugin.setup(trainer)
    assert len(runs) == 1 and len(plugin.store) == 7  # complete store: the stage does not run, zero generations
