"""The stock-OpenRLHF fallback openrlhf_contrastive/reward_func.py, called as OpenRLHF calls it (no openrlhf here).

The base reward is a reward-function file or an HTTP server speaking OpenRLHF's remote RM protocol.
"""

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch

import openrlhf_contrastive.reward_func as module
from openrlhf_contrastive.fingerprint import model_identity
from openrlhf_contrastive.reward_func import UnpatchedContrastiveReward
from openrlhf_contrastive.store import StoreError, StoreWriter, prompt_keys

BASE = '''
import torch

def reward_func(queries, prompts, labels):
    """r = length of the response in characters / 10."""
    r = torch.tensor([(len(q) - len(p)) / 10 for q, p in zip(queries, prompts)])
    return {"rewards": r, "scores": r, "extra_logs": {"base_called": torch.ones(len(r))}}
'''


@pytest.fixture
def base_file(tmp_path):
    path = tmp_path / "base_reward.py"
    path.write_text(BASE)
    return path


def make_store(path, reward_source, prompts=("p1", "p2"), rewards=((1.0, 2.0, 3.0), (0.0, 0.0, 3.0)), labels=None):
    with StoreWriter(path, len(rewards[0]), {"reward": [reward_source], "prompt": {"label_key": "y" if labels else None}}) as w:
        w.append(prompt_keys(list(prompts), labels), list(prompts), np.array(rewards))
    return path


def env(base, store, **extra):
    return {"CONTRASTIVE_BASE_REWARD": str(base), "CONTRASTIVE_BASELINE_PATH": str(store), **extra}


def test_file_base_reward_minus_baseline_mean_with_metrics(tmp_path, base_file):
    store = make_store(tmp_path / "s", model_identity(str(base_file)))
    func = UnpatchedContrastiveReward(env(base_file, store))
    out = func(["p1" + "x" * 30, "p2" + "x" * 5], ["p1", "p2"], [None, None])
    assert torch.allclose(out["rewards"], torch.tensor([3.0 - 2.0, 0.5 - 1.0]))
    assert torch.allclose(out["scores"], torch.tensor([3.0, 0.5]))  # scores stay the base reward
    logs = out["extra_logs"]
    assert torch.allclose(logs["contrastive/baseline"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(logs["contrastive/raw_reward"], torch.tensor([3.0, 0.5]))
    assert logs["contrastive/beat_baseline"].tolist() == [1.0, 0.0]
    assert logs["contrastive/hit"].tolist() == [1.0, 1.0]
    assert "base_called" in logs


def test_shape_coef_and_label_keys_come_from_the_environment(tmp_path, base_file):
    store = make_store(tmp_path / "s", model_identity(str(base_file)), labels=["a", "b"])
    func = UnpatchedContrastiveReward(env(base_file, store, CONTRASTIVE_SHAPE="max", CONTRASTIVE_COEF="0.5", CONTRASTIVE_LABEL_KEYED="1"))
    out = func(["p1" + "x" * 10], ["p1"], ["a"])
    assert out["rewards"].tolist() == [pytest.approx(1.0 - 0.5 * 3.0)]


def test_missing_prompts_error_or_keep_r(tmp_path, base_file):
    store = make_store(tmp_path / "s", model_identity(str(base_file)))
    with pytest.raises(ValueError, match=r"(?s)1 of 1 rollouts have no baselines.*'other'.*CONTRASTIVE_ON_MISSING=raw"):
        UnpatchedContrastiveReward(env(base_file, store))(["otherxx"], ["other"], [None])
    out = UnpatchedContrastiveReward(env(base_file, store, CONTRASTIVE_ON_MISSING="raw"))(["otherxx"], ["other"], [None])
    assert out["rewards"].tolist() == [pytest.approx(0.2)] and out["extra_logs"]["contrastive/hit"].tolist() == [0.0]


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({}, ValueError, "needs the environment variable"),
        ({"CONTRASTIVE_SHAPE": "avg"}, ValueError, "not a known shape"),
        ({"CONTRASTIVE_COEF": "one"}, ValueError, "is not a number"),
        ({"CONTRASTIVE_ON_MISSING": "skip"}, ValueError, "choose error or raw"),
        ({"CONTRASTIVE_LABEL_KEYED": "maybe"}, ValueError, "Set it to 1 or 0"),
    ],
)
def test_configuration_errors_name_the_variable_and_the_fix(tmp_path, base_file, settings, error, message):
    store = make_store(tmp_path / "s", model_identity(str(base_file)))
    environ = env(base_file, store, **settings) if settings else {}
    with pytest.raises(error, match=message):
        UnpatchedContrastiveReward(environ)


@pytest.mark.parametrize(
    "rewards, message",
    [
        (((1.0,), (2.0,)), "needs at least 2 baseline rewards per prompt, and the store .* has k = 1"),
        (((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), "on every one of its 2 prompts the 3 baselines are equal"),
    ],
    ids=["k=1", "no spread"],
)
def test_a_store_that_cannot_feed_zscore_is_refused_when_the_file_loads(tmp_path, base_file, rewards, message):
    """Before OpenRLHF's rollout actors start (they import the file), not at the first reward call."""
    store = make_store(tmp_path / "s", model_identity(str(base_file)), rewards=rewards)
    with pytest.raises(ValueError, match=message) as refused:
        UnpatchedContrastiveReward(env(base_file, store, CONTRASTIVE_SHAPE="zscore"))
    assert str(refused.value).startswith("CONTRASTIVE_SHAPE=zscore")


def test_a_store_scored_by_another_reward_is_refused_unless_accepted(tmp_path, base_file):
    store = make_store(tmp_path / "s", "sha256:0000000000000000")
    with pytest.raises(StoreError, match="reward: store has"):
        UnpatchedContrastiveReward(env(base_file, store))
    UnpatchedContrastiveReward(env(base_file, store, CONTRASTIVE_ACCEPT_FINGERPRINT_MISMATCH="1"))


def test_http_base_reward_speaks_openrlhfs_remote_rm_protocol(tmp_path):
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            data = json.dumps({"rewards": [float(len(q)) for q in body["query"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/get_reward"
        store = make_store(tmp_path / "s", url)
        out = UnpatchedContrastiveReward(env(url, store))(["p1abcd"], ["p1"], [None])
    finally:
        server.shutdown()
    assert seen == [{"query": ["p1abcd"], "prompts": ["p1"], "labels": [None]}]
    assert out["rewards"].tolist() == [pytest.approx(6.0 - 2.0)]


def test_loaded_as_openrlhf_loads_it_the_file_builds_reward_func_at_import(tmp_path, base_file, monkeypatch):
    """OpenRLHF: spec_from_file_location("reward_func", path) then exec_module; errors surface at import."""
    store = make_store(tmp_path / "s", model_identity(str(base_file)))

    def load():
        spec = importlib.util.spec_from_file_location("reward_func", module.__file__)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        return loaded

    monkeypatch.delenv("CONTRASTIVE_BASE_REWARD", raising=False)
    monkeypatch.delenv("CONTRASTIVE_BASELINE_PATH", raising=False)
    with pytest.raises(ValueError, match="needs the environment variable"):
        load()
    for name, value in env(base_file, store).items():
        monkeypatch.setenv(name, value)
    out = load().reward_func(["p1" + "x" * 10], ["p1"], [None])
    assert out["rewards"].tolist() == [pytest.approx(1.0 - 2.0)]
