"""The baseline store: round trip, resume, torn and corrupt records, validation, fingerprints."""

import json

import numpy as np
import pytest

from openrlhf_contrastive.store import (
    REWARDS,
    BaselineStore,
    StoreError,
    StoreWriter,
    make_records,
    prompt_key,
    prompt_keys,
    read_prompt_texts,
    record_dtype,
)

FP = {"policy": "sha256:abc", "k": 3, "temperature": 1.0, "info": {"openrlhf": "0.11.2"}}
PROMPTS = ["What is 2+2?", "Write a haiku.\nAbout snow.", "Ünïcödé prompt ✓"]
REW = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.5], [-1.0, 1.0, 0.0]])


def write(path, prompts=PROMPTS, rewards=REW, fp=FP):
    with StoreWriter(path, 3, fp) as w:
        w.append(prompt_keys(prompts), prompts, rewards)


def test_round_trip_and_lookup(tmp_path):
    write(tmp_path)
    store = BaselineStore.load(tmp_path)
    assert len(store) == 3 and store.k == 3
    base, hit = store.lookup(prompt_keys(["Write a haiku.\nAbout snow.", "absent", "What is 2+2?"]))
    assert hit.tolist() == [True, False, True]
    assert base.tolist() == [[0.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    row = int(np.flatnonzero(store.keys == prompt_key("What is 2+2?"))[0])
    assert store.mean[row] == 2.0 and store.std[row] == 1.0
    assert sorted(read_prompt_texts(tmp_path).values()) == sorted(PROMPTS)


def test_label_is_part_of_the_key_only_when_given():
    assert prompt_key("p") != prompt_key("p", "")
    assert prompt_key("p", "a") != prompt_key("p", "b")
    assert prompt_key("p") == prompt_key("p")


def test_resume_skips_done_keys_and_keeps_first_values(tmp_path):
    write(tmp_path, PROMPTS[:2], REW[:2])
    with StoreWriter(tmp_path, 3, FP) as w:
        assert w.done == set(prompt_keys(PROMPTS[:2]).tolist())
        w.append(prompt_keys(PROMPTS), PROMPTS, REW + 100)  # the first two are already done
    store = BaselineStore.load(tmp_path)
    base, hit = store.lookup(prompt_keys(PROMPTS))
    assert hit.all()
    assert base.tolist() == [REW[0].tolist(), REW[1].tolist(), (REW[2] + 100).tolist()]


def test_a_half_written_last_record_is_dropped(tmp_path, caplog):
    write(tmp_path)
    size = (tmp_path / REWARDS).stat().st_size
    with open(tmp_path / REWARDS, "r+b") as f:
        f.truncate(size - 5)
    assert len(BaselineStore.load(tmp_path)) == 2
    assert "half-written" in caplog.text
    with StoreWriter(tmp_path, 3, FP) as w:  # resuming cuts the torn bytes and redoes that prompt
        assert len(w.done) == 2
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    assert (tmp_path / REWARDS).stat().st_size == size
    assert len(BaselineStore.load(tmp_path)) == 3


def test_a_corrupt_record_is_refused_with_the_fix(tmp_path):
    write(tmp_path)
    data = bytearray((tmp_path / REWARDS).read_bytes())
    data[10] ^= 0xFF  # inside record 0's rewards
    (tmp_path / REWARDS).write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"(?s)corrupt: record 0 of 3 .* Delete .* rerun the stage"):
        BaselineStore.load(tmp_path)


def test_missing_and_unreadable_stores(tmp_path):
    with pytest.raises(StoreError, match="No baseline store at .*openrlhf-contrastive sample"):
        BaselineStore.load(tmp_path / "nowhere")
    (tmp_path / "header.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot be read"):
        BaselineStore.load(tmp_path)
    (tmp_path / "header.json").write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(StoreError, match="has format 'something-else/9'"):
        BaselineStore.load(tmp_path)


def test_non_finite_rewards_are_refused_when_written_and_when_loaded(tmp_path):
    bad = REW.copy()
    bad[1, 2] = np.nan
    with pytest.raises(StoreError, match="NaN or infinite rewards for a baseline response"):
        write(tmp_path / "a", rewards=bad)
    # A store written by something else, with valid checksums but an inf reward, is refused at load.
    write(tmp_path / "b")
    records = make_records(prompt_keys(PROMPTS), np.where(np.isnan(bad), np.inf, bad))
    records.tofile(tmp_path / "b" / REWARDS)
    with pytest.raises(StoreError, match="holds NaN or infinite rewards"):
        BaselineStore.load(tmp_path / "b")


def test_duplicate_keys_are_refused(tmp_path):
    write(tmp_path)
    records = make_records(prompt_keys(PROMPTS[:1] * 2), REW[:2])
    records.tofile(tmp_path / REWARDS)
    with pytest.raises(StoreError, match="holds a prompt key twice"):
        BaselineStore.load(tmp_path)


def test_fingerprint_mismatch_is_refused_unless_accepted(tmp_path):
    write(tmp_path)
    store = BaselineStore.load(tmp_path)
    assert store.check_fingerprint(dict(FP, info={"openrlhf": "other"})) == []  # info never compared
    other = dict(FP, temperature=0.7)
    with pytest.raises(StoreError, match=r"(?s)temperature: store has 1.0, now 0.7.*accept_fingerprint_mismatch"):
        store.check_fingerprint(other)
    assert store.check_fingerprint(other, accept_mismatch=True) == ["temperature: store has 1.0, now 0.7"]
    with pytest.raises(StoreError, match="temperature"):
        StoreWriter(tmp_path, 3, other)
    with pytest.raises(StoreError, match="k=3, this stage samples k=5"):
        StoreWriter(tmp_path, 5, FP)


def test_a_million_prompt_store_loads_fast_in_memory(tmp_path):
    """Not a timing test (see benchmarks/): checks the vectorised path handles 10^6 rows correctly."""
    n, k = 1_000_000, 4
    keys = np.random.default_rng(0).permutation(np.arange(1, n + 1, dtype=np.uint64) * np.uint64(2654435761))
    rewards = np.random.default_rng(1).normal(size=(n, k))
    write(tmp_path, PROMPTS[:0], np.zeros((0, 3)))  # header
    header = json.loads((tmp_path / "header.json").read_text())
    header["k"] = k
    (tmp_path / "header.json").write_text(json.dumps(header))
    make_records(keys, rewards).tofile(tmp_path / REWARDS)
    store = BaselineStore.load(tmp_path)
    assert len(store) == n and store.rewards.dtype == record_dtype(k)["rewards"].base
    base, hit = store.lookup(keys[:1000])
    assert hit.all() and np.array_equal(base, rewards[:1000])
