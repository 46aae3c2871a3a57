"""The baseline store: round trip, resume, torn and corrupt records, validation, fingerprints."""

import json

import numpy as np
import pytest

from openrlhf_contrastive.store import (
    PROMPTS as PROMPTS_FILE,
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


def test_a_corrupt_record_is_refused_and_a_resume_resamples_only_that_prompt(tmp_path, caplog):
    write(tmp_path)
    data = bytearray((tmp_path / REWARDS).read_bytes())
    data[10] ^= 0xFF  # inside record 0's rewards
    (tmp_path / REWARDS).write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"(?s)corrupt: 1 of 3 records .*record 0\).*Rerun `openrlhf-contrastive sample`"):
        BaselineStore.load(tmp_path)
    with StoreWriter(tmp_path, 3, FP) as w:  # what the stage does on a rerun
        assert w.done == set(prompt_keys(PROMPTS[1:]).tolist())
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    assert "1 of 3 prompts dropped" in caplog.text
    assert len(BaselineStore.load(tmp_path)) == 3 and sorted(read_prompt_texts(tmp_path).values()) == sorted(PROMPTS)


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
    with pytest.raises(StoreError, match="(?s)temperature.*one setting only") as refused:
        StoreWriter(tmp_path, 3, other)
    assert "accept_fingerprint_mismatch" not in str(refused.value)  # a writer never mixes settings in one store
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


# -- issue 9: concurrent writers, prompt-frame integrity, kills between files; kept responses ------------------

LOCKER = """
import sys, time
from openrlhf_contrastive.store import StoreWriter
w = StoreWriter(sys.argv[1], 3, {"k": 3})
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_writer_leaves_no_lock(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=rf"being written by another process \(pid {holder.pid} on .*Wait for"):
            StoreWriter(tmp_path, 3, {"k": 3})
    finally:
        holder.kill()  # SIGKILL: no cleanup runs
        holder.wait()
    with StoreWriter(tmp_path, 3, {"k": 3}) as w:  # the OS released the dead writer's lock
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    assert len(BaselineStore.load(tmp_path)) == 3


def test_an_empty_store_takes_the_settings_of_the_next_run(tmp_path):
    """A run that failed before its first record (e.g. a reward function fixed afterwards) does not block the rerun."""
    StoreWriter(tmp_path, 3, FP).close()
    with StoreWriter(tmp_path, 3, dict(FP, reward=["sha256:fixed"])) as w:
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    assert BaselineStore.load(tmp_path).fingerprint["reward"] == ["sha256:fixed"]


@pytest.mark.parametrize("offset", [4, 8, 12, 20, 25])  # magic, key, length, checksum, text of frame 0
def test_a_flipped_byte_in_a_prompt_frame_costs_that_prompt_only(tmp_path, offset, caplog):
    write(tmp_path)
    data = bytearray((tmp_path / PROMPTS_FILE).read_bytes())
    data[offset] ^= 0x41
    (tmp_path / PROMPTS_FILE).write_bytes(bytes(data))
    assert sorted(read_prompt_texts(tmp_path).values()) == sorted(PROMPTS[1:])
    assert "damaged prompt frame" in caplog.text
    with StoreWriter(tmp_path, 3, FP) as w:
        assert w.done == set(prompt_keys(PROMPTS[1:]).tolist())  # never a silent truncation of the others
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    assert sorted(read_prompt_texts(tmp_path).values()) == sorted(PROMPTS)
    assert len(BaselineStore.load(tmp_path)) == 3


def test_a_kill_between_prompt_frames_and_records_leaves_no_duplicate_frames(tmp_path):
    write(tmp_path, PROMPTS[:2], REW[:2])
    records = (tmp_path / REWARDS).read_bytes()
    with StoreWriter(tmp_path, 3, FP) as w:  # a chunk whose frames reached the disk but whose records did not
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    (tmp_path / REWARDS).write_bytes(records)
    with StoreWriter(tmp_path, 3, FP) as w:
        assert w.done == set(prompt_keys(PROMPTS[:2]).tolist())
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)
    with StoreWriter(tmp_path, 3, FP) as w:
        assert w.done == set(prompt_keys(PROMPTS).tolist())
    data = (tmp_path / PROMPTS_FILE).read_bytes()
    assert data.count(b"OCP1") == 3 and sorted(read_prompt_texts(tmp_path).values()) == sorted(PROMPTS)


RESPONSES = [["4", "four", "2+2=4"], ["Snow falls", "white", "cold"], ["ok", "", "✓ sure"]]


def test_responses_round_trip_resume_and_a_torn_last_line(tmp_path):
    from openrlhf_contrastive.store import RESPONSES as RESPONSES_FILE, read_responses

    with StoreWriter(tmp_path, 3, FP, keep_responses=True) as w:
        w.append(prompt_keys(PROMPTS[:2]), PROMPTS[:2], REW[:2], responses=RESPONSES[:2])
    store = BaselineStore.load(tmp_path)
    assert store.has_responses
    assert read_responses(tmp_path) == dict(zip(prompt_keys(PROMPTS[:2]).tolist(), RESPONSES[:2]))
    with open(tmp_path / RESPONSES_FILE, "a") as f:  # a killed writer: half a line, no record
        f.write('{"key": "00ff", "respo')
    with pytest.raises(StoreError, match="damaged line"):
        read_responses(tmp_path)
    with StoreWriter(tmp_path, 3, FP, keep_responses=True) as w:
        assert len(w.done) == 2
        w.append(prompt_keys(PROMPTS), PROMPTS, REW, responses=RESPONSES)
    assert read_responses(tmp_path) == dict(zip(prompt_keys(PROMPTS).tolist(), RESPONSES))
    lines = (tmp_path / RESPONSES_FILE).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["check"] for line in lines)


def test_responses_must_match_the_store(tmp_path):
    from openrlhf_contrastive.store import read_responses

    write(tmp_path)
    assert not BaselineStore.load(tmp_path).has_responses
    with pytest.raises(StoreError, match="keeps no responses"):
        read_responses(tmp_path)
    with pytest.raises(StoreError, match="does not keep the baseline responses"):
        StoreWriter(tmp_path, 3, FP, keep_responses=True)
    with StoreWriter(tmp_path / "kept", 3, FP, keep_responses=True) as w, pytest.raises(ValueError, match="required"):
        w.append(prompt_keys(PROMPTS), PROMPTS, REW)


def test_a_zero_filled_tail_is_not_a_record(tmp_path):
    """A file end zero-filled by a crash (some file systems do) must not load as a prompt with key 0."""
    write(tmp_path)
    with open(tmp_path / REWARDS, "ab") as f:
        f.write(bytes(record_dtype(3).itemsize))
    store = BaselineStore.load(tmp_path)
    assert len(store) == 3 and 0 not in store.keys.tolist()
