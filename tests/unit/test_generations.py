"""The refresh generations of a store (--contrastive.refresh_every), without openrlhf: where they live, how they are
fingerprinted, when a refresh is due and which flag combinations are refused. Refresher's resume and lookup:
tests/integration/test_refresh.py; a real run: tests/e2e/test_refresh_cpu.py."""

from types import SimpleNamespace

import numpy as np
import pytest

from openrlhf_contrastive.checks import InputError, check_contrastive_args, check_refresh_args
from openrlhf_contrastive.fingerprint import generation_fingerprint, run_identity
from openrlhf_contrastive.refresh import due
from openrlhf_contrastive.store import (
    BaselineStore,
    StoreError,
    StoreWriter,
    generation_path,
    list_generations,
    prompt_keys,
)

PROMPTS = ["a", "b", "c"]


def args_with(**contrastive):
    settings = dict(baseline_path="store", shape="mean", coef=1.0, k=2, temperature=None, chunk_size=64,
                    refresh_every=2, refresh_prompts=0)
    settings.update(contrastive)
    return SimpleNamespace(
        contrastive=SimpleNamespace(**settings), rollout=SimpleNamespace(temperature=1.0),
        train=SimpleNamespace(async_enable=False, seed=42), vllm=SimpleNamespace(num_engines=1),
        actor=SimpleNamespace(adam=SimpleNamespace(lr=1e-6)), logger=SimpleNamespace(tensorboard_dir="tb"),
        ckpt=SimpleNamespace(path="ckpt", load_enable=False), local_rank=-1,
    )


def test_generations_are_listed_by_policy_step_and_other_entries_ignored(tmp_path):
    for step in (10, 2, 4):
        generation_path(tmp_path, step).mkdir(parents=True)
    (tmp_path / "generations" / "refresh.json").write_text("{}")
    (tmp_path / "generations" / "step-x").mkdir()
    assert generation_path(tmp_path, 4) == tmp_path / "generations" / "step-000004"
    assert list_generations(tmp_path) == [(s, generation_path(tmp_path, s)) for s in (2, 4, 10)]
    assert list_generations(tmp_path / "nothing") == []


def test_a_generation_is_a_store_of_its_own_that_records_its_step_and_run(tmp_path):
    base = {"policy": "sha256:abc", "k": 2}
    fingerprint = generation_fingerprint(base, 4, "run1")
    assert fingerprint == {"policy": "sha256:abc", "k": 2, "policy_step": 4, "run": "run1"} and base == {"policy": "sha256:abc", "k": 2}
    path = generation_path(tmp_path, 4)
    with StoreWriter(path, 2, fingerprint) as writer:
        writer.append(prompt_keys(PROMPTS), PROMPTS, np.arange(6.0).reshape(3, 2))
    store = BaselineStore.load(path)
    assert store.fingerprint["policy_step"] == 4 and len(store) == 3
    store.check_fingerprint(fingerprint)
    with pytest.raises(StoreError, match="policy_step: store has 4, now 6"):
        store.check_fingerprint(generation_fingerprint(base, 6, "run1"))
    with pytest.raises(StoreError, match="run: store has 'run1', now 'run2'"):  # another run cannot resume it
        StoreWriter(path, 2, generation_fingerprint(base, 4, "run2"))


def test_the_run_identity_ignores_logging_and_resuming_but_not_training_flags():
    a = args_with()
    resumed = args_with()
    resumed.ckpt.load_enable, resumed.logger.tensorboard_dir = True, "tb_resumed"
    assert run_identity(a) == run_identity(resumed)
    for change in (lambda x: setattr(x.actor.adam, "lr", 1e-5), lambda x: setattr(x.ckpt, "path", "other"),
                   lambda x: setattr(x.train, "seed", 1), lambda x: setattr(x.contrastive, "refresh_every", 3)):
        other = args_with()
        change(other)
        assert run_identity(other) != run_identity(a)


@pytest.mark.parametrize("every, steps", [(0, []), (1, [1, 2, 3, 4, 5, 6]), (2, [2, 4, 6]), (4, [4])])
def test_a_refresh_is_due_at_positive_multiples_of_refresh_every(every, steps):
    assert [s for s in range(7) if due(s, every)] == steps


@pytest.mark.parametrize("change, message", [
    (lambda a: setattr(a.train, "async_enable", True), r"--train.async_enable: .*engines never pause.*Drop"),
    (lambda a: setattr(a.vllm, "num_engines", None), r"needs the trainer's vLLM engines.*Set --vllm.num_engines"),
    (lambda a: (setattr(a.contrastive, "refresh_every", 0), setattr(a.contrastive, "refresh_prompts", 5)),
     r"refresh_prompts 5 without --contrastive.refresh_every"),
])
def test_refresh_combinations_are_refused_with_what_why_and_fix(change, message):
    args = args_with()
    check_refresh_args(args)
    change(args)
    with pytest.raises(InputError, match=message):
        check_refresh_args(args)


def test_refresh_without_it_changes_no_check():
    args = args_with(refresh_every=0)
    args.train.async_enable, args.vllm.num_engines = True, None
    check_refresh_args(args)  # async and no engines are other checks' business without refresh


@pytest.mark.parametrize("flag", ["refresh_every", "refresh_prompts"])
def test_negative_refresh_settings_are_refused(tmp_path, flag):
    args = args_with(baseline_path=str(tmp_path / "store"), **{flag: -2})
    with pytest.raises(InputError, match=f"--contrastive.{flag} is -2: .*0 or a positive number"):
        check_contrastive_args(args)
