"""Shared test setup: the flash_attn stand-in on the path, tiny models built offline, markers.

openrlhf's wheel installs a top-level `tests` package, so this folder is never imported as `tests`
(pytest runs with --import-mode=importlib and there is no tests/__init__.py).
"""

import os
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
# The flash_attn stand-in (tests/support/README.md), for this process, subprocesses and Ray workers.
sys.path.insert(0, str(SUPPORT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent / "helpers"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (OpenRLHF's RewardModelActor / training actors); CPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
