"""Stage pieces that need no openrlhf: per-request seeds, flags, empty-store resume."""

import numpy as np
import pytest

from openrlhf_contrastive.backends import stage_seed
from openrlhf_contrastive.stage import build_parser


def test_seed_depends_on_prompt_sample_and_train_seed():
    args = type("A", (), {"train": type("T", (), {"seed": 42})()})()
    seeds = {stage_seed(args, key, j) for key in (1, 2, 2**63 + 5) for j in range(4)}
    assert len(seeds) == 12 and all(0 <= s < 2**31 for s in seeds)
    assert stage_seed(args, 7, 1) == stage_seed(args, 7, 1)


def test_sample_flags_have_train_ppo_ray_names_and_defaults():
    flags = build_parser().parse_args([])
    assert vars(flags)["rollout.temperature"] == 1.0 and vars(flags)["data.max_len"] == 2048
    assert vars(flags)["contrastive.chunk_size"] == 64 and vars(flags)["contrastive.backend"] is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--contrastive.backend", "tpu"])


def test_writer_resumes_a_store_killed_before_its_first_record(tmp_path):
    from openrlhf_contrastive.store import REWARDS, BaselineStore, StoreWriter

    StoreWriter(tmp_path, 2, {"k": 2}).close()  # header and an empty rewards.bin, as a kill right after opening
    assert (tmp_path / REWARDS).stat().st_size == 0
    with StoreWriter(tmp_path, 2, {"k": 2}) as writer:
        assert writer.done == set()
        writer.append([5], ["p"], np.array([[1.0, 2.0]]))
    assert BaselineStore.load(tmp_path).rewards.tolist() == [[1.0, 2.0]]
