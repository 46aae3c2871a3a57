"""Model digests of the fingerprint see the weights, fast by default and in full on request (issue 9, finding 3)."""

import pytest

from openrlhf_contrastive.fingerprint import FULL_DIGEST_ENV, content_digest, model_identity


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two checkpoints of one architecture with different weights (as two fine-tunes), and a copy of the first."""
    import shutil

    from openrlhf_contrastive.demo.tiny import build_policy

    tmp = tmp_path_factory.mktemp("ckpt")
    a, b = build_policy(tmp / "a", seed=0), build_policy(tmp / "b", seed=1)
    shutil.copytree(a, tmp / "copy")
    return a, b, tmp / "copy"


def test_weights_only_change_changes_the_digest(checkpoints):
    a, b, copy = checkpoints
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    assert content_digest(str(a)) != content_digest(str(b))
    assert content_digest(str(a)) == content_digest(str(copy))  # a copy elsewhere is the same model


def test_a_single_changed_byte_is_seen_by_the_sampled_or_the_full_digest(checkpoints, tmp_path, monkeypatch):
    import shutil

    a, _, _ = checkpoints
    edited = shutil.copytree(a, tmp_path / "edited")
    weights = edited / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 + 12345] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert content_digest(str(edited), full=True) != content_digest(str(a), full=True)
    monkeypatch.setenv(FULL_DIGEST_ENV, "1")
    assert model_identity(str(edited)).startswith("sha256-full:") and model_identity(str(edited)) != model_identity(str(a))
    monkeypatch.setenv(FULL_DIGEST_ENV, "0")
    assert model_identity(str(a)).startswith("sha256:")


def test_files_hash_by_content_and_hub_ids_by_name(tmp_path):
    (tmp_path / "r1.py").write_text("def reward_func(q, p, l): return 1\n")
    (tmp_path / "r2.py").write_text("def reward_func(q, p, l): return 1\n")
    assert model_identity(str(tmp_path / "r1.py")) == model_identity(str(tmp_path / "r2.py"))
    assert model_identity("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert model_identity(None) is None


def test_the_mismatch_refusal_names_the_paths(checkpoints):
    from openrlhf_contrastive.store import StoreError, compare_fingerprints

    a, b, _ = checkpoints
    stored = {"policy": model_identity(str(a)), "info": {"policy_path": str(a)}}
    now = {"policy": model_identity(str(b)), "info": {"policy_path": str(b)}}
    with pytest.raises(StoreError, match=rf"store made from '{a}'; this run uses '{b}'"):
        compare_fingerprints(stored, now, "store")


def test_large_weight_files_are_sampled_header_and_windows(tmp_path):
    """A shard above 1 MiB: its safetensors header and 16 windows are hashed; a byte outside every window is seen
    only by the full digest (the documented price of hashing a 70B checkpoint in about a second)."""
    import json
    import os

    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}).encode()
    body = bytearray(os.urandom(4 << 20))

    def shard(name, data, head=header):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(len(head).to_bytes(8, "little") + head + bytes(data))
        return str(folder)

    base = shard("base", body)
    in_window = bytearray(body)
    in_window[10] ^= 1  # the first window
    outside = bytearray(body)
    outside[(4 << 20) // 30] ^= 1  # between the first and the second window
    other_shape = header.replace(b"[1048576]", b"[1024, 1024]")
    assert content_digest(shard("in_window", in_window)) != content_digest(base)
    assert content_digest(shard("header", body, other_shape)) != content_digest(base)
    assert content_digest(shard("outside", outside)) == content_digest(base)
    assert content_digest(str(tmp_path / "outside"), full=True) != content_digest(base, full=True)


def test_a_full_against_a_sampled_digest_names_the_variable():
    from openrlhf_contrastive.store import StoreError, compare_fingerprints

    with pytest.raises(StoreError, match="one digest is full, the other sampled: set OPENRLHF_CONTRASTIVE_FULL_DIGEST"):
        compare_fingerprints({"policy": "sha256-full:1234"}, {"policy": "sha256:abcd"}, "store")
