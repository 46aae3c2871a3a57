"""The baseline store: per prompt, the k rewards of the SFT policy's baseline responses.

A store is a directory:

    header.json      format, k, key scheme, whether responses are kept, the provenance fingerprint (atomic)
    rewards.bin      fixed-size records, append-only: key u64 | k rewards f64 | mean f64 | std f64 | checksum u64
    prompts.bin      the prompt text of each key, append-only frames:
                     magic "OCP1" | key u64 | length u32 | checksum u64 | utf-8 bytes
    responses.jsonl  only with --contrastive.keep_responses: one line per prompt,
                     {"key": 16 hex digits, "responses": [k texts], "check": 16 hex digits}
    lock             who writes the store now (an advisory flock, released by the OS when the writer dies)
    summary.json     the last stage's summary: counts, throughput and the store's diagnosis (openrlhf_contrastive.
                     diagnose); written for people and tools, never read back by the store
    generations/     only with --contrastive.refresh_every (openrlhf_contrastive.refresh): step-SSSSSS/ holds the
                     baselines sampled from the policy after PPO step S, a store of its own in this same format (its
                     fingerprint adds policy_step and run); refresh.json sums the refreshes up. The files above stay
                     the SFT policy's baselines, which `evaluate` and `rescore` compare against.

The key of a prompt is a 64-bit BLAKE2b digest of the exact string OpenRLHF builds for it (plus its label when
`--data.label_key` is set), so that training looks rewards up by `Experience.prompts` without keeping a
million prompt strings in memory. Fixed-size records load with one `numpy.fromfile` and are validated in a
few vectorised passes (a million prompts in well under a second); the loader reads nothing else.

Durability. A chunk is written as prompt frames, then response lines, then reward records (fsynced): a prompt
is done exactly when its record is intact. Every frame, line and record carries a checksum. Reopening a store
to write (`StoreWriter`) keeps only prompts whose record, frame (and response line) are all intact, rewrites any
file that held something else (torn tails of a killed writer, duplicates, flipped bytes) and says what it
dropped; the stage then samples just those prompts again. The loader refuses a corrupt record and says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "openrlhf-contrastive-store/2"
KEY_SCHEME = "blake2b-64(utf8(prompt) [+ b'\\x00' + utf8(label) when --data.label_key is set])"
HEADER, REWARDS, PROMPTS, RESPONSES, LOCK = "header.json", "rewards.bin", "prompts.bin", "responses.jsonl", "lock"
SUMMARY = "summary.json"
GENERATIONS, REFRESH_SUMMARY = "generations", "refresh.json"

# Odd 64-bit multipliers for the record checksum (vectorised; detects torn and flipped records).
_MIX = np.array([0x9E3779B97F4A7C15 + 2 * i for i in range(64)], dtype=np.uint64)
_SALT = np.uint64(0x5C0FFEE0DDBA11)
_MAGIC = b"OCP1"
_FRAME = struct.Struct("<QIQ")  # key, length, checksum of (key, length, text)
_FRAME_HEAD = len(_MAGIC) + _FRAME.size

RERUN_FIX = (
    "Rerun `openrlhf-contrastive sample` with the same flags: it keeps every intact prompt, drops the damaged ones and "
    "samples only those again."
)


class StoreError(ValueError):
    """A baseline store that cannot be used: missing, corrupt, busy, or made under other settings."""


def prompt_key(prompt: str, label: str | None = None) -> int:
    """The store key of a prompt: BLAKE2b-64 of the exact prompt string (and label, when labels are keyed)."""
    data = prompt.encode("utf-8")
    if label is not None:
        data += b"\x00" + str(label).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def prompt_keys(prompts: Sequence[str], labels: Sequence[str] | None = None) -> np.ndarray:
    """`prompt_key` of each prompt (labels None: prompts only), as a uint64 array."""
    if labels is None:
        return np.fromiter((prompt_key(p) for p in prompts), dtype=np.uint64, count=len(prompts))
    return np.fromiter((prompt_key(p, l) for p, l in zip(prompts, labels)), dtype=np.uint64, count=len(prompts))


def _digest64(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "little")


# -- reward records ----------------------------------------------------------------------------------------


def record_dtype(k: int) -> np.dtype:
    return np.dtype([("key", "<u8"), ("rewards", "<f8", (k,)), ("mean", "<f8"), ("std", "<f8"), ("checksum", "<u8")])


def _checksums(records: np.ndarray) -> np.ndarray:
    words = records.view(np.uint64).reshape(len(records), records.dtype.itemsize // 8)[:, :-1]  # also for 0 records
    mixed = (words * _MIX[: words.shape[1]]).sum(axis=1, dtype=np.uint64) + _SALT  # salt: a zeroed record fails
    return mixed ^ (mixed >> np.uint64(29))


def make_records(keys: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Records for `keys` (n,) and their baseline `rewards` (n, k), with summary statistics and checksums."""
    rewards = np.asarray(rewards, dtype=np.float64)
    n, k = rewards.shape
    records = np.zeros(n, dtype=record_dtype(k))
    records["key"] = keys
    records["rewards"] = rewards
    records["mean"] = rewards.mean(axis=1)
    records["std"] = rewards.std(axis=1, ddof=1) if k > 1 else 0.0
    records["checksum"] = _checksums(records)
    return records


def _scan_records(path: Path, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(all whole records, indices of those failing their checksum, bytes of a torn tail)."""
    file = path / REWARDS
    dtype = record_dtype(k)
    if not file.exists():
        return np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64), 0
    size = file.stat().st_size
    records = np.fromfile(file, dtype=dtype, count=size // dtype.itemsize)
    return records, np.flatnonzero(_checksums(records) != records["checksum"]), size % dtype.itemsize


# -- prompt frames and response lines ----------------------------------------------------------------------


def _frame(key: int, text: str) -> bytes:
    data = text.encode("utf-8")
    return _MAGIC + _FRAME.pack(key, len(data), _digest64(struct.pack("<QI", key, len(data)), data)) + data


def _scan_frames(data: bytes) -> tuple[dict[int, str], int]:
    """key -> text of every intact frame (the last one wins) and the number of damaged places skipped.

    A frame whose length or bytes were damaged fails its checksum; scanning resumes at the next magic marker, so a
    flipped byte costs one prompt text, not the rest of the file.
    """
    texts, damaged, pos = {}, 0, 0
    while pos < len(data):
        if data[pos : pos + len(_MAGIC)] == _MAGIC and pos + _FRAME_HEAD <= len(data):
            key, length, checksum = _FRAME.unpack_from(data, pos + len(_MAGIC))
            end = pos + _FRAME_HEAD + length
            body = data[pos + _FRAME_HEAD : end]
            if end <= len(data) and _digest64(struct.pack("<QI", key, length), body) == checksum:
                texts[key] = body.decode("utf-8")
                pos = end
                continue
        damaged += 1
        found = data.find(_MAGIC, pos + 1)
        pos = len(data) if found < 0 else found
    return texts, damaged


def _response_line(key: int, responses: Sequence[str]) -> str:
    body = json.dumps(list(responses), ensure_ascii=False)
    check = f"{_digest64(f'{key:016x}'.encode(), body.encode('utf-8')):016x}"
    return '{"key": "%016x", "responses": %s, "check": "%s"}\n' % (key, body, check)


def _scan_responses(path: Path, k: int) -> tuple[dict[int, list[str]], int]:
    """key -> k response texts of every intact line (the last one wins) and the number of damaged lines."""
    file = path / RESPONSES
    if not file.exists():
        return {}, 0
    kept, damaged = {}, 0
    for line in file.read_bytes().split(b"\n"):
        if not line:
            continue
        try:
            row = json.loads(line)
            key = int(row["key"], 16)
            body = json.dumps(row["responses"], ensure_ascii=False)
            ok = (
                isinstance(row["responses"], list) and len(row["responses"]) == k
                and f"{_digest64(row['key'].encode(), body.encode('utf-8')):016x}" == row["check"]
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if ok:
            kept[key] = row["responses"]
        else:
            damaged += 1
    return kept, damaged


# -- reading -----------------------------------------------------------------------------------------------


def read_header(path: str | os.PathLike) -> dict:
    header_file = Path(path) / HEADER
    if not header_file.is_file():
        raise StoreError(
            f"No baseline store at {path}: {header_file} does not exist. The offline stage writes it: run "
            f"`openrlhf-contrastive sample` with the training flags, or let training run the stage in-job, "
            f"or point --contrastive.baseline_path at an existing store."
        )
    try:
        header = json.loads(header_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"The baseline store header {header_file} cannot be read ({e}). Delete {path} and rerun the stage.") from e
    if header.get("format") != FORMAT:
        raise StoreError(
            f"{header_file} has format {header.get('format')!r}, this plugin reads {FORMAT!r} (earlier versions wrote "
            "prompt frames without checksums). Rerun the stage with this version of openrlhf-contrastive into a new "
            "--contrastive.baseline_path."
        )
    return header


def generation_path(path: str | os.PathLike, policy_step: int) -> Path:
    """The directory of the refresh generation sampled from the policy after PPO step `policy_step`."""
    return Path(path, GENERATIONS, f"step-{policy_step:06d}")


def list_generations(path: str | os.PathLike) -> list[tuple[int, Path]]:
    """(policy step, directory) of every refresh generation of the store at `path`, oldest first (none: [])."""
    folder = Path(path, GENERATIONS)
    found = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        name = child.name
        if child.is_dir() and name.startswith("step-") and name[5:].isdigit():
            found.append((int(name[5:]), child))
    return sorted(found)


def holds_baselines(path: str | os.PathLike) -> bool:
    """Whether a store directory holds a header and at least one whole record (cheap: no file is read)."""
    path = Path(path)
    if not (path / HEADER).exists() or not (path / REWARDS).exists():
        return False
    return (path / REWARDS).stat().st_size >= record_dtype(int(read_header(path)["k"])).itemsize


def read_prompt_texts(path: str | os.PathLike) -> dict[int, str]:
    """key -> prompt text (prompt and label joined by NUL when labels are keyed); for reports and `rescore`.

    Damaged frames are skipped with a warning that says how to get them back.
    """
    file = Path(path) / PROMPTS
    texts, damaged = _scan_frames(file.read_bytes() if file.exists() else b"")
    if damaged:
        logger.warning("baseline store %s: %d damaged prompt frame(s) in %s were skipped. %s", path, damaged, file, RERUN_FIX)
    return texts


def read_responses(path: str | os.PathLike) -> dict[int, list[str]]:
    """key -> the k kept baseline response texts of each prompt, for a store written with keep_responses."""
    header = read_header(path)
    if not header.get("keep_responses"):
        raise StoreError(
            f"The baseline store {path} keeps no responses, only their rewards. Sample a store with "
            "--contrastive.keep_responses (into a new --contrastive.baseline_path) to keep them."
        )
    kept, damaged = _scan_responses(Path(path), int(header["k"]))
    if damaged:
        raise StoreError(f"The baseline store {path} has {damaged} damaged line(s) in {RESPONSES}. {RERUN_FIX}")
    return kept


@dataclass
class BaselineStore:
    """A loaded, validated store: the k baseline rewards of every prompt key, sorted by key for lookup."""

    path: str
    header: dict
    keys: np.ndarray  # (N,) uint64, sorted
    rewards: np.ndarray  # (N, k) float64, rows in the order of `keys`
    mean: np.ndarray  # (N,)
    std: np.ndarray  # (N,), with Bessel's correction; 0 when k == 1
    pooled_std: float  # sqrt(mean of std ** 2): the typical spread of a prompt's baselines (zscore's scale); 0 if none

    @property
    def k(self) -> int:
        return int(self.header["k"])

    @property
    def fingerprint(self) -> dict:
        return self.header["fingerprint"]

    @property
    def has_responses(self) -> bool:
        """Whether the store keeps its baseline response texts (`read_responses`)."""
        return bool(self.header.get("keep_responses"))

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BaselineStore":
        """Load and validate the rewards: header, checksums, finite rewards, unique keys (prompts.bin is not read)."""
        path = Path(path)
        header = read_header(path)
        records, bad, torn = _scan_records(path, int(header["k"]))
        if len(bad) and (len(bad) > 1 or bad[0] != len(records) - 1 or torn):
            raise StoreError(
                f"The baseline store {path} is corrupt: {len(bad)} of {len(records)} records in {path / REWARDS} fail "
                f"their checksum (the first is record {int(bad[0])}); the file was changed after the stage wrote it. "
                f"{RERUN_FIX}"
            )
        if len(bad) or torn:  # a last record that fails its checksum was torn by a crash, like trailing bytes
            logger.warning("baseline store %s: dropping a half-written last record (the stage was interrupted)", path)
            records = records[: len(records) - len(bad)]
        keys = np.ascontiguousarray(records["key"])
        order = np.argsort(keys)
        keys, rewards = keys[order], records["rewards"][order]
        if not np.isfinite(rewards).all():
            bad_row = int(np.flatnonzero(~np.isfinite(records["rewards"]).all(axis=1))[0])
            raise StoreError(
                f"The baseline store {path} holds NaN or infinite rewards (first at record {bad_row}). The reward model "
                f"or reward function returned them during the stage. Fix the reward source, delete {path} and rerun."
            )
        if len(keys) > 1 and (keys[1:] == keys[:-1]).any():
            raise StoreError(
                f"The baseline store {path} holds a prompt key twice; it was not written by this plugin's stage. "
                f"{RERUN_FIX}"
            )
        std = records["std"][order]
        pooled_std = float(np.sqrt(np.mean(np.square(std)))) if len(std) else 0.0
        return cls(str(path), header, keys, rewards, records["mean"][order], std, pooled_std)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(baselines, hit) for uint64 `keys`: baselines (n, k) is a copy, with zero rows where hit is False."""
        keys = np.asarray(keys, dtype=np.uint64)
        if not len(self.keys):
            return np.zeros((len(keys), self.k)), np.zeros(len(keys), dtype=bool)
        rows = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = self.keys[rows] == keys
        return np.where(hit[:, None], self.rewards[rows], 0.0), hit

    def check_fingerprint(self, expected: dict, accept_mismatch: bool = False) -> list[str]:
        """Compare the store's provenance with the training settings; see `compare_fingerprints`."""
        return compare_fingerprints(self.fingerprint, expected, self.path, accept_mismatch)


_PATHS_OF = {"policy": "policy_path", "reward": "reward_sources"}  # fields whose paths are kept under "info"

ACCEPT_FIX = (
    "Write a new store (another --contrastive.baseline_path), or pass --contrastive.accept_fingerprint_mismatch if you "
    "are sure the difference does not change rewards."
)
WRITER_FIX = (
    "A store holds the baselines of one setting only: write a new store (another --contrastive.baseline_path) or "
    "delete this one."
)


def compare_fingerprints(stored: dict, expected: dict, path, accept_mismatch: bool = False, fix: str = ACCEPT_FIX) -> list[str]:
    """Raise StoreError listing each differing field (with the model paths behind digests) unless `accept_mismatch`;
    return the differences. Fields under "info" (paths, versions) are never compared."""
    diffs = []
    for name, value in expected.items():
        if name == "info" or stored.get(name) == value:
            continue
        diff = f"{name}: store has {stored.get(name)!r}, now {value!r}"
        if name in _PATHS_OF:
            was = (stored.get("info") or {}).get(_PATHS_OF[name])
            now = (expected.get("info") or {}).get(_PATHS_OF[name])
            diff += f" (store made from {was!r}; this run uses {now!r})"
            if ("sha256-full:" in repr(stored.get(name))) != ("sha256-full:" in repr(value)):
                diff += "; one digest is full, the other sampled: set OPENRLHF_CONTRASTIVE_FULL_DIGEST alike for both"
        diffs.append(diff)
    if diffs and not accept_mismatch:
        raise StoreError(
            f"The baseline store {path} was made under other settings than this run:\n  "
            + "\n  ".join(diffs)
            + "\nBaselines are only comparable with training rewards when policy, reward, prompts and sampling "
            f"match. {fix}"
        )
    for diff in diffs:
        logger.warning("baseline store fingerprint differs (accepted): %s", diff)
    return diffs


# -- writing -----------------------------------------------------------------------------------------------


class _StoreLock:
    """An exclusive advisory lock on a store directory, naming its holder; the OS releases it when the process dies."""

    def __init__(self, path: Path):
        self.file = open(path / LOCK, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise StoreError(
                f"The baseline store {path} is being written by another process ({holder}). Two writers would "
                "interleave their records and ruin the store, so this one stops before writing anything. Wait for "
                "that process to finish, or stop it and rerun this command: a stopped writer's lock is released by "
                "the operating system and its finished prompts are kept."
            ) from None
        self.file.seek(0)
        self.file.truncate()
        command = " ".join(sys.argv)[:300]
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def _rewrite(file: Path, data: bytes) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, file)


class StoreWriter:
    """Appends records to a store under an exclusive lock; reopening an existing store resumes it.

    Reopening checks the header (same k, same fingerprint, same keep_responses, else StoreError; a store without
    any record yet takes the new settings), then keeps exactly the prompts whose record, prompt frame and, with
    responses, response line are all intact, rewriting the files that held anything else. `done` holds their keys,
    so a rerun redoes no finished prompt and samples the damaged or unfinished ones again.
    """

    def __init__(self, path: str | os.PathLike, k: int, fingerprint: dict, keep_responses: bool = False):
        self.path = Path(path)
        self.k = k
        self.keep_responses = keep_responses
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = _StoreLock(self.path)
        try:
            self._open_header(fingerprint)
            self.done = self._resume()
            self._rewards = open(self.path / REWARDS, "ab")
            self._prompts = open(self.path / PROMPTS, "ab")
            self._responses = open(self.path / RESPONSES, "a", encoding="utf-8") if keep_responses else None
        except BaseException:
            self._lock.release()
            raise

    def _open_header(self, fingerprint: dict) -> None:
        header = {"format": FORMAT, "k": self.k, "key_scheme": KEY_SCHEME, "keep_responses": self.keep_responses,
                  "fingerprint": fingerprint}
        if (self.path / HEADER).exists():
            existing = read_header(self.path)
            records, _, _ = _scan_records(self.path, int(existing["k"]))
            if len(records) == 0:  # nothing sampled yet (e.g. a run stopped at its first chunk): take this run's settings
                if existing != header:
                    logger.info("baseline store %s holds no baselines yet: its header is rewritten for this run", self.path)
            elif existing["k"] != self.k or existing["key_scheme"] != KEY_SCHEME:
                raise StoreError(
                    f"{self.path} holds a store with k={existing['k']}, this stage samples k={self.k}. "
                    "Use another --contrastive.baseline_path or delete the old store."
                )
            else:
                compare_fingerprints(existing["fingerprint"], fingerprint, self.path, fix=WRITER_FIX)
                if bool(existing.get("keep_responses")) != self.keep_responses:
                    kept = "keeps" if existing.get("keep_responses") else "does not keep"
                    raise StoreError(
                        f"The baseline store {self.path} {kept} the baseline responses, and this run was asked "
                        f"{'to keep' if self.keep_responses else 'not to keep'} them (--contrastive.keep_responses). "
                        "Resume it with the setting it was started with, or write a new store."
                    )
                return
        tmp = self.path / (HEADER + ".tmp")
        tmp.write_text(json.dumps(header, indent=2, sort_keys=True))
        os.replace(tmp, self.path / HEADER)

    def _resume(self) -> set[int]:
        records, bad, torn = _scan_records(self.path, self.k)
        intact = np.ones(len(records), dtype=bool)
        intact[bad] = False
        prompts_file = self.path / PROMPTS
        frames, damaged_frames = _scan_frames(prompts_file.read_bytes() if prompts_file.exists() else b"")
        responses, damaged_lines = _scan_responses(self.path, self.k) if self.keep_responses else ({}, 0)
        done: set[int] = set()
        for i, key in enumerate(records["key"].tolist()):
            if key in done or key not in frames or (self.keep_responses and key not in responses):
                intact[i] = False
            elif intact[i]:
                done.add(key)

        dropped = int((~intact).sum())
        if dropped or torn:
            _rewrite(self.path / REWARDS, records[intact].tobytes())
        if dropped or damaged_frames or len(frames) != len(done):
            _rewrite(prompts_file, b"".join(_frame(key, frames[key]) for key in records["key"][intact].tolist()))
        if self.keep_responses and (dropped or damaged_lines or len(responses) != len(done)):
            _rewrite(self.path / RESPONSES, "".join(
                _response_line(key, responses[key]) for key in records["key"][intact].tolist()
            ).encode("utf-8"))
        if torn:
            logger.warning("baseline store %s: dropping a half-written last record (the stage was interrupted)", self.path)
        if dropped or damaged_frames or damaged_lines:
            logger.warning(
                "baseline store %s: %d of %d prompts dropped (%d records failing their checksum, %d damaged prompt "
                "frames, %d damaged response lines, or a duplicate / missing part); they are sampled again, the other "
                "%d are kept", self.path, dropped, len(records), len(bad), damaged_frames, damaged_lines, len(done),
            )
        return done

    def append(self, keys: Iterable[int], texts: Sequence[str], rewards: np.ndarray, responses=None) -> None:
        """Write the baselines of new prompts: keys (n,), their texts, rewards (n, k) and, when the store keeps them,
        responses (n lists of k texts). Keys already done are skipped."""
        keys = np.asarray(list(keys), dtype=np.uint64)
        rewards = np.asarray(rewards, dtype=np.float64).reshape(len(keys), self.k)
        if (responses is None) == self.keep_responses:
            raise ValueError(
                "StoreWriter.append: responses are required exactly when the store keeps them "
                f"(keep_responses={self.keep_responses}, responses {'missing' if responses is None else 'given'})"
            )
        if responses is not None and (len(responses) != len(keys) or any(len(r) != self.k for r in responses)):
            raise ValueError(f"StoreWriter.append: expected {len(keys)} lists of k={self.k} responses")
        if not np.isfinite(rewards).all():
            raise StoreError(
                "The reward source returned NaN or infinite rewards for a baseline response; a store of such "
                "baselines would poison every contrastive reward of those prompts. Fix the reward model or reward "
                "function (check its outputs on these prompts) and rerun the stage: finished prompts are kept."
            )
        new = [i for i, key in enumerate(keys.tolist()) if key not in self.done]
        if not new:
            return
        self._prompts.write(b"".join(_frame(int(keys[i]), texts[i]) for i in new))
        self._prompts.flush()
        if self._responses is not None:
            self._responses.write("".join(_response_line(int(keys[i]), responses[i]) for i in new))
            self._responses.flush()
        self._rewards.write(make_records(keys[new], rewards[new]).tobytes())  # the commit point of these prompts
        self._rewards.flush()
        os.fsync(self._rewards.fileno())
        self.done.update(int(keys[i]) for i in new)

    def close(self) -> None:
        for file in (self._rewards, self._prompts, self._responses):
            if file is not None:
                file.close()
        self._lock.release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
