"""Shared test setup: the flash_attn stand-in for subprocesses and Ray workers, offline hubs, GPU skips.

openrlhf's wheel installs a top-level `tests` package, so this folder is never imported as `tests`
(pytest runs with --import-mode=importlib and there is no tests/__init__.py). pytest's own `pythonpath`
setting (pyproject.toml) puts tests/support (the flash_attn stand-in) and cpu_training/ (for openrlhf_cli.py, the
real train_ppo_ray argument handling) on this process's path.
"""

import os
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
# The flash_attn stand-in (tests/support/README.md) for the processes the tests start: subprocesses, Ray workers.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (OpenRLHF's RewardModelActor / training actors); CPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
