"""--contrastive.refresh_every: refusals in the real train_ppo_ray argument handling, the generations of a store
(resume, other runs, complete generations never sampled again, which prompts a partial refresh samples) and, with
refresh_every 0, a transform and store exactly as before. Sampling from a trained policy: tests/e2e/test_refresh_cpu.py."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from openrlhf_cli import parse_train_args
from openrlhf_contrastive.fingerprint import generation_fingerprint, run_identity, training_fingerprint
from openrlhf_contrastive.flags import (
    METRIC_GENERATION,
    METRIC_GENERATION_AGE,
    METRIC_REFRESH_GENERATIONS,
    METRIC_REFRESH_SHIFT,
)
from openrlhf_contrastive.store import BaselineStore, StoreError, StoreWriter, generation_path, list_generations, prompt_keys

pytestmark = pytest.mark.integration

K = 4
PROMPTS = [f"<|user|>question {i}: {'why ' * i}?</s><|assistant|>" for i in range(5)]
REFRESH_METRICS = (METRIC_GENERATION, METRIC_GENERATION_AGE, METRIC_REFRESH_GENERATIONS, METRIC_REFRESH_SHIFT)


def train_args(store, *extra):
    return parse_train_args(["--reward_fn", "contrastive", "--contrastive.baseline_path", str(store),
                             "--vllm.num_engines", "1", *extra])


def write(path, fingerprint, prompts, rewards):
    with StoreWriter(path, K, fingerprint) as writer:
        writer.append(prompt_keys(prompts), prompts, rewards)


def never_sample(*_):
    pytest.fail("a complete generation was sampled again")


@pytest.fixture
def run(tmp_path):
    """A run with refresh every 2 steps on an SFT store of PROMPTS and generations 2 and 4 of this run."""
    from openrlhf_contrastive.refresh import Refresher

    store = tmp_path / "store"
    args = train_args(store, "--contrastive.refresh_every", "2")
    fingerprint = training_fingerprint(args, K, args.rollout.temperature)
    rng = np.random.default_rng(0)
    rewards = {0: rng.normal(size=(5, K)), 2: rng.normal(1, 1, size=(5, K)), 4: rng.normal(2, 1, size=(5, K))}
    write(store, fingerprint, PROMPTS, rewards[0])
    for s in (2, 4):
        write(generation_path(store, s), generation_fingerprint(fingerprint, s, run_identity(args)), PROMPTS, rewards[s])

    def refresher(start_step, sample=never_sample, log=print):
        return Refresher(args, BaselineStore.load(store), fingerprint, start_step, PROMPTS, [""] * 5, sample, log=log)

    return SimpleNamespace(store=store, args=args, fingerprint=fingerprint, rewards=rewards, refresher=refresher)


def test_refresh_flags_are_refused_before_any_gpu_work(tmp_path):
    store = tmp_path / "store"
    for extra, message in [
        (["--train.async_enable"], r"with --train.async_enable: .*engines never pause.*Drop --train.async_enable"),
        (["--vllm.num_engines", "0"], r"needs the trainer's vLLM engines.*Set --vllm.num_engines"),
    ]:
        with pytest.raises(SystemExit, match=message):
            train_args(store, "--contrastive.refresh_every", "2", *extra)
    with pytest.raises(SystemExit, match=r"refresh_prompts 3 without --contrastive.refresh_every.*Add --contrastive.refresh_every"):
        train_args(store, "--contrastive.refresh_prompts", "3")
    with pytest.raises(SystemExit, match=r"refresh_every is -1: .*must be 0 .* or more"):
        train_args(store, "--contrastive.refresh_every", "-1")


def test_refresh_is_refused_on_a_store_accepted_under_a_fingerprint_mismatch(tmp_path):
    store = tmp_path / "store"
    args = train_args(store)
    write(store, training_fingerprint(args, K, args.rollout.temperature), PROMPTS, np.zeros((5, K)))
    other = ["--rollout.temperature", "0.5", "--contrastive.accept_fingerprint_mismatch"]
    train_args(store, *other)  # accepted without refresh, as before
    with pytest.raises(SystemExit, match=r"(?s)refresh_every with the baseline store .*temperature: store has 1.0, now 0.5"
                                         r".*not be on one scale.*Write a store under this run's settings"):
        train_args(store, *other, "--contrastive.refresh_every", "2")


def test_without_refresh_the_store_and_the_transform_are_as_before(tmp_path):
    """refresh_every 0 (the default): setup makes no generation, the header has no new field, transform logs no
    refresh metric."""
    import torch
    from openrlhf.trainer.ppo_utils import experience_maker
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    from openrlhf_contrastive.plugin import ContrastiveReward
    from openrlhf_contrastive.store import FORMAT

    store = tmp_path / "store"
    args = train_args(store)
    assert args.contrastive.refresh_every == 0 and args.contrastive.refresh_prompts == 0
    write(store, training_fingerprint(args, K, args.rollout.temperature), PROMPTS, np.ones((5, K)))
    before = sorted(p.name for p in store.iterdir())
    plugin = ContrastiveReward()
    dataset = SimpleNamespace(prompts=PROMPTS, labels=[""] * 5)  # what setup reads of OpenRLHF's PPOTrainer
    plugin.setup(SimpleNamespace(args=args, tokenizer=None, prompts_dataloader=SimpleNamespace(dataset=dataset)))
    assert plugin.refresher is None and sorted(p.name for p in store.iterdir()) == before
    header = json.loads((store / "header.json").read_text())
    assert header["format"] == FORMAT == "openrlhf-contrastive-store/2"
    assert set(header) == {"format", "k", "key_scheme", "keep_responses", "fingerprint"}
    assert not {"policy_step", "run"} & set(header["fingerprint"])
    rewards = torch.arange(5, dtype=torch.float32)
    experiences = [Experience(action_mask=torch.ones(5, 3, dtype=torch.bool), kl=torch.zeros(5, 3),
                              values=torch.zeros(5, 3), rewards=rewards.clone(), index=list(range(5)), prompts=PROMPTS,
                              labels=[""] * 5, info={"reward": rewards.clone()})]
    maker = experience_maker.RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0),
                                                   SimpleNamespace(args=args), None)
    (shaped,) = maker.compute_advantages_and_returns(experiences)
    assert shaped.info["contrastive/baseline"].tolist() == [1.0] * 5  # the plugin ran
    assert not {key for key in shaped.info if key.startswith("contrastive/")} & set(REFRESH_METRICS)


def test_a_resumed_run_uses_its_generations_up_to_its_step_and_removes_later_ones(run):
    lines = []
    refresher = run.refresher(3, log=lines.append)  # checkpoint of step 3: generation 4 came from a lost policy
    assert [s for s, _ in list_generations(run.store)] == [2]
    assert any("removed refresh generation" in line and "step-000004" in line for line in lines)
    baselines, hit, generation = refresher.lookup(prompt_keys(PROMPTS[::-1]))
    assert hit.all() and (generation == 2).all()
    np.testing.assert_array_equal(baselines, run.rewards[2][::-1])
    assert refresher.before_batch() is None  # policy step 3: no refresh due
    metrics = refresher.metrics(generation, None)
    assert metrics[METRIC_GENERATION].tolist() == [2.0] * 5
    assert metrics[METRIC_GENERATION_AGE].tolist() == [1.0] * 5
    assert metrics[METRIC_REFRESH_GENERATIONS].tolist() == [5.0 * K] * 5
    assert METRIC_REFRESH_SHIFT not in metrics


def test_a_complete_generation_at_the_resumed_step_is_used_as_it_is(run):
    files = {p: p.read_bytes() for p in generation_path(run.store, 4).iterdir()}
    refresher = run.refresher(4)  # checkpoint of step 4: the batch of policy step 4 refreshes first
    shift = refresher.before_batch()  # would call never_sample if anything were missing
    assert shift == pytest.approx((run.rewards[4].mean(1) - run.rewards[2].mean(1)).mean())
    assert {p: p.read_bytes() for p in generation_path(run.store, 4).iterdir()} == files
    _, _, generation = refresher.lookup(prompt_keys(PROMPTS))
    assert (generation == 4).all()
    assert refresher.metrics(generation, shift)[METRIC_REFRESH_SHIFT].tolist() == pytest.approx([shift] * 5)
    summary = json.loads((run.store / "generations" / "refresh.json").read_text())
    assert [e["policy_step"] for e in summary["refreshes"]] == [4] and summary["refresh_generations"] == 2 * 5 * K


def test_generations_of_another_run_are_refused_and_kept(run):
    import copy

    args = copy.deepcopy(run.args)
    args.actor.adam.lr = 0.5  # another trajectory of policies
    assert run_identity(args) != run_identity(run.args)
    write(generation_path(run.store, 6), generation_fingerprint(run.fingerprint, 6, run_identity(args)), PROMPTS,
          np.zeros((5, K)))
    refusal = r"(?s)run: store has .*belong to the run whose policy sampled them.*move or delete"
    with pytest.raises(SystemExit, match=refusal):  # at parse time, before any GPU work
        train_args(run.store, "--contrastive.refresh_every", "2")
    with pytest.raises(StoreError, match=refusal):  # and in setup, for a generation that appeared since
        run.refresher(4)
    assert [s for s, _ in list_generations(run.store)] == [2, 4, 6]


class Sampled(Exception):
    """Raised by the sampler below where a refresh would sample (which needs the trainer's engines)."""


def test_a_partial_refresh_samples_the_prompts_with_the_oldest_baselines(run):
    import shutil

    from openrlhf_contrastive.refresh import Refresher

    for _, path in list_generations(run.store):  # generations of another run (refresh_prompts 0)
        shutil.rmtree(path)
    args = train_args(run.store, "--contrastive.refresh_every", "2", "--contrastive.refresh_prompts", "2")
    fingerprint = training_fingerprint(args, K, args.rollout.temperature)
    write(generation_path(run.store, 2), generation_fingerprint(fingerprint, 2, run_identity(args)), PROMPTS[1:3],
          np.zeros((2, K)))
    def sample(prompts, labels, fingerprint, path):
        assert fingerprint["policy_step"] == 4 and path == generation_path(run.store, 4)
        raise Sampled(prompts)

    refresher = Refresher(args, BaselineStore.load(run.store), fingerprint, 4, PROMPTS, [""] * 5, sample)
    np.testing.assert_array_equal(refresher.targets(), [0, 3])  # still on the SFT baselines, dataset order
    with pytest.raises(Sampled) as sampled:
        refresher.before_batch()
    assert sampled.value.args == ([PROMPTS[0], PROMPTS[3]],)
