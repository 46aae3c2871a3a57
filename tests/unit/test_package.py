"""Importing the package and loading the plugin are cheap and side-effect free; the plugin pickles."""

import json
import pickle
import subprocess
import sys

import numpy as np
import torch

from openrlhf_contrastive.plugin import ContrastiveReward
from openrlhf_contrastive.store import BaselineStore, StoreWriter, prompt_keys

HEAVY = ["ray", "vllm", "deepspeed", "openrlhf", "torch", "transformers"]


def test_import_openrlhf_contrastive_imports_nothing_heavy():
    """Also the shapes (parsed with the flags) and the reward-function file: torch comes only when values are computed."""
    code = (
        "import sys, json; import openrlhf_contrastive, openrlhf_contrastive.plugin, openrlhf_contrastive.cli, "
        "openrlhf_contrastive.shapes, openrlhf_contrastive.reward_func; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_the_entry_point_is_declared_and_loads_the_plugin_class():
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="openrlhf.reward_fns") if ep.name == "contrastive"]
    assert ep.value == "openrlhf_contrastive.plugin:ContrastiveReward"
    assert ep.load() is ContrastiveReward


def test_the_plugin_pickles_with_and_without_a_loaded_store(tmp_path):
    plugin = ContrastiveReward()
    assert pickle.loads(pickle.dumps(plugin)).store is None
    with StoreWriter(tmp_path, 2, {"k": 2}) as w:
        w.append(prompt_keys(["a", "b"]), ["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    plugin.store = BaselineStore.load(tmp_path)
    copy = pickle.loads(pickle.dumps(plugin))
    base, hit = copy.store.lookup(prompt_keys(["b"]))
    assert hit.all() and torch.equal(torch.from_numpy(base), torch.tensor([[3.0, 4.0]], dtype=torch.float64))
