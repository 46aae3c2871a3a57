"""The baseline store: per prompt, the k rewards of the SFT policy's baseline responses.

A store is a directory:

    header.json   format, k, key scheme and the provenance fingerprint (written once, atomically)
    rewards.bin   fixed-size records, append-only: key u64 | k rewards f64 | mean f64 | std f64 | checksum u64
    prompts.bin   the prompt text of each key, append-only frames: key u64 | length u32 | utf-8 bytes

The key of a prompt is a 64-bit BLAKE2b digest of the exact string OpenRLHF builds for it (plus its label when
`--data.label_key` is set), so that training looks rewards up by `Experience.prompts` without keeping a
million prompt strings in memory. Fixed-size records load with one `numpy.fromfile` and are validated in a
few vectorised passes (a million prompts in well under a second). A stage killed mid-write leaves at most
a torn last record, which the writer and the loader drop; a bad checksum anywhere else is corruption.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "openrlhf-contrastive-store/1"
KEY_SCHEME = "blake2b-64(utf8(prompt) [+ b'\\x00' + utf8(label) when --data.label_key is set])"
HEADER, REWARDS, PROMPTS = "header.json", "rewards.bin", "prompts.bin"

# Odd 64-bit multipliers for the record checksum (vectorised; detects torn and flipped records).
_MIX = np.array([0x9E3779B97F4A7C15 + 2 * i for i in range(64)], dtype=np.uint64)
_FRAME = np.dtype([("key", "<u8"), ("length", "<u4")])


class StoreError(ValueError):
    """A baseline store that cannot be used: missing, corrupt, or made under other settings."""


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


def record_dtype(k: int) -> np.dtype:
    return np.dtype([("key", "<u8"), ("rewards", "<f8", (k,)), ("mean", "<f8"), ("std", "<f8"), ("checksum", "<u8")])


def _checksums(records: np.ndarray) -> np.ndarray:
    words = records.view(np.uint64).reshape(len(records), records.dtype.itemsize // 8)[:, :-1]  # also for 0 records
    mixed = (words * _MIX[: words.shape[1]]).sum(axis=1, dtype=np.uint64)
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
            f"{header_file} has format {header.get('format')!r}, this plugin reads {FORMAT!r}. Rerun the stage "
            "with this version of openrlhf-contrastive into a new --contrastive.baseline_path."
        )
    return header


def _read_records(path: Path, k: int, repair: bool) -> np.ndarray:
    """All intact records; a torn last record is dropped (and cut from the file when `repair`)."""
    file = path / REWARDS
    dtype = record_dtype(k)
    if not file.exists():
        return np.zeros(0, dtype=dtype)
    size = file.stat().st_size
    n = size // dtype.itemsize
    records = np.fromfile(file, dtype=dtype, count=n)
    bad = np.flatnonzero(_checksums(records) != records["checksum"])
    if len(bad) and (len(bad) > 1 or bad[0] != n - 1):
        raise StoreError(
            f"The baseline store {path} is corrupt: record {int(bad[0])} of {n} in {file} fails its checksum. "
            f"The file was changed after the stage wrote it. Delete {path} and rerun the stage."
        )
    keep = n - len(bad)  # a last record that fails its checksum was torn by a crash, like trailing bytes
    if keep * dtype.itemsize != size:
        logger.warning("baseline store %s: dropping a half-written last record (the stage was interrupted)", path)
        if repair:
            with open(file, "r+b") as f:
                f.truncate(keep * dtype.itemsize)
    return records[:keep]


def read_prompt_texts(path: str | os.PathLike) -> dict[int, str]:
    """key -> prompt text (prompt and label joined by NUL when labels are keyed); for reports and diagnostics."""
    return dict(_iter_frames(Path(path) / PROMPTS)[0])


def _iter_frames(file: Path) -> tuple[Iterator[tuple[int, str]], int]:
    """(key, text) of each complete frame, and the byte length of the complete frames."""
    data = file.read_bytes() if file.exists() else b""
    out, pos = [], 0
    while pos + _FRAME.itemsize <= len(data):
        key, length = np.frombuffer(data, dtype=_FRAME, count=1, offset=pos)[0]
        end = pos + _FRAME.itemsize + int(length)
        if end > len(data):
            break
        out.append((int(key), data[pos + _FRAME.itemsize : end].decode("utf-8")))
        pos = end
    return iter(out), pos


@dataclass
class BaselineStore:
    """A loaded, validated store: the k baseline rewards of every prompt key, sorted by key for lookup."""

    path: str
    header: dict
    keys: np.ndarray  # (N,) uint64, sorted
    rewards: np.ndarray  # (N, k) float64, rows in the order of `keys`
    mean: np.ndarray  # (N,)
    std: np.ndarray  # (N,), with Bessel's correction; 0 when k == 1

    @property
    def k(self) -> int:
        return int(self.header["k"])

    @property
    def fingerprint(self) -> dict:
        return self.header["fingerprint"]

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BaselineStore":
        """Load and validate a whole store: header, checksums, finite rewards, unique keys."""
        path = Path(path)
        header = read_header(path)
        records = _read_records(path, int(header["k"]), repair=False)
        keys = np.ascontiguousarray(records["key"])
        order = np.argsort(keys)
        keys, rewards = keys[order], records["rewards"][order]
        if not np.isfinite(rewards).all():
            bad = int(np.flatnonzero(~np.isfinite(records["rewards"]).all(axis=1))[0])
            raise StoreError(
                f"The baseline store {path} holds NaN or infinite rewards (first at record {bad}). The reward model "
                f"or reward function returned them during the stage. Fix the reward source, delete {path} and rerun."
            )
        if len(keys) > 1 and (keys[1:] == keys[:-1]).any():
            raise StoreError(f"The baseline store {path} holds a prompt key twice; it was not written by this plugin's stage. Delete it and rerun.")
        return cls(str(path), header, keys, rewards, records["mean"][order], records["std"][order])

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


def compare_fingerprints(stored: dict, expected: dict, path, accept_mismatch: bool = False) -> list[str]:
    """Raise StoreError listing each differing field unless `accept_mismatch`; return the differences.

    Fields under "info" (versions, timestamps) are never compared.
    """
    diffs = [
        f"{name}: store has {stored.get(name)!r}, now {value!r}"
        for name, value in expected.items()
        if name != "info" and stored.get(name) != value
    ]
    if diffs and not accept_mismatch:
        raise StoreError(
            f"The baseline store {path} was made under other settings than this run:\n  "
            + "\n  ".join(diffs)
            + "\nBaselines are only comparable with training rewards when policy, reward, prompts and sampling "
            "match. Write a new store (another --contrastive.baseline_path), or pass "
            "--contrastive.accept_fingerprint_mismatch if you are sure the difference does not change rewards."
        )
    for diff in diffs:
        logger.warning("baseline store fingerprint differs (accepted): %s", diff)
    return diffs


class StoreWriter:
    """Appends records to a store; reopening an existing store resumes it.

    Reopening checks the header (same fingerprint and k, else StoreError), cuts a torn last record or
    prompt frame, and exposes the keys already written in `done`, so a rerun redoes no finished prompt.
    Each `append` writes the prompt texts, then the records, then flushes to disk.
    """

    def __init__(self, path: str | os.PathLike, k: int, fingerprint: dict):
        self.path = Path(path)
        self.k = k
        header = {"format": FORMAT, "k": k, "key_scheme": KEY_SCHEME, "fingerprint": fingerprint}
        if (self.path / HEADER).exists():
            existing = read_header(self.path)
            if existing["k"] != k or existing["key_scheme"] != KEY_SCHEME:
                raise StoreError(
                    f"{self.path} holds a store with k={existing['k']}, this stage samples k={k}. "
                    "Use another --contrastive.baseline_path or delete the old store."
                )
            compare_fingerprints(existing["fingerprint"], fingerprint, self.path)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / (HEADER + ".tmp")
            tmp.write_text(json.dumps(header, indent=2, sort_keys=True))
            os.replace(tmp, self.path / HEADER)
        records = _read_records(self.path, k, repair=True)
        self.done: set[int] = set(records["key"].tolist())
        _, complete = _iter_frames(self.path / PROMPTS)
        if (self.path / PROMPTS).exists() and (self.path / PROMPTS).stat().st_size != complete:
            with open(self.path / PROMPTS, "r+b") as f:
                f.truncate(complete)
        self._rewards = open(self.path / REWARDS, "ab")
        self._prompts = open(self.path / PROMPTS, "ab")

    def append(self, keys: Iterable[int], texts: Sequence[str], rewards: np.ndarray) -> None:
        """Write the baselines of new prompts: keys (n,), their texts, rewards (n, k). Keys already done are skipped."""
        keys = np.asarray(list(keys), dtype=np.uint64)
        rewards = np.asarray(rewards, dtype=np.float64).reshape(len(keys), self.k)
        if not np.isfinite(rewards).all():
            raise StoreError(
                "The reward source returned NaN or infinite rewards for a baseline response; a store of such "
                "baselines would poison every contrastive reward of those prompts. Fix the reward model or reward "
                "function (check its outputs on these prompts) and rerun the stage: finished prompts are kept."
            )
        new = np.array([int(key) not in self.done for key in keys], dtype=bool)
        if not new.any():
            return
        for key, text in zip(keys[new], (t for t, n in zip(texts, new) if n)):
            data = text.encode("utf-8")
            self._prompts.write(np.array([(key, len(data))], dtype=_FRAME).tobytes() + data)
        self._prompts.flush()
        self._rewards.write(make_records(keys[new], rewards[new]).tobytes())
        self._rewards.flush()
        os.fsync(self._rewards.fileno())
        self.done.update(int(key) for key in keys[new])

    def close(self) -> None:
        self._rewards.close()
        self._prompts.close()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
