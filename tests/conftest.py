"""Shared test setup: the flash_attn stand-in and the vLLM engine guard for subprocesses and Ray workers, the machine
inputs the suite pins (tests/README.md lists what it assumes of a machine), GPU skips.

openrlhf's wheel installs a top-level `tests` package, so this folder is never imported as `tests`
(pytest runs with --import-mode=importlib and there is no tests/__init__.py). pytest's own `pythonpath`
setting (pyproject.toml) puts tests/support (the flash_attn stand-in, the vLLM plugin vllm_cpu_engine_guard) and
lab/cpu_training/ (for openrlhf_cli.py, the real train_ppo_ray argument handling) on this process's path.

Everything set here is set at import, before any test starts Ray, vLLM or a subprocess, so all of them inherit it.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
# tests/support for the processes the tests start (subprocesses, Ray workers, vLLM engine cores).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The datasets library's cache (every prompt file the tests load) stays in the work tree, not the home directory.
os.environ.setdefault("HF_HOME", str(Path(__file__).parents[1] / ".cache" / "huggingface"))
# Every vLLM CPU engine gets a KV cache of 1 GiB, never a share of the NUMA node's memory (which fails where the
# node is small or busy); tests/support/vllm_cpu_engine_guard.py fails a test whose engine has no explicit size.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Tests start their own local Ray: never a cluster that RAY_ADDRESS names.
os.environ.pop("RAY_ADDRESS", None)
# Ray's and vLLM's AF_UNIX sockets (paths of at most 107 bytes) live in a short directory of this session: under
# TMPDIR (the work tree's .cache/tmp with make) a checkout path of about 30 characters already stops ray.init.
SOCKETS = None
if "RAY_TMPDIR" not in os.environ:
    SOCKETS = tempfile.mkdtemp(prefix="oc-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = SOCKETS
os.environ.setdefault("VLLM_RPC_BASE_PATH", os.environ["RAY_TMPDIR"])


def pytest_report_header(config):
    """The machine in the terms of tests/README.md, at the top of every run's log."""
    import psutil

    gib = 1 << 30
    nodes = []
    for meminfo in sorted(Path("/sys/devices/system/node").glob("node*/meminfo")):
        fields = {line.split()[2].rstrip(":"): int(line.split()[3]) * 1024 for line in meminfo.read_text().splitlines()}
        nodes.append(f"{meminfo.parent.name} {fields['MemFree'] / gib:.1f} of {fields['MemTotal'] / gib:.1f} GiB free")
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((line.split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), []) if cpuinfo.exists() else []
    memory = psutil.virtual_memory()
    return [
        f"machine: {len(os.sched_getaffinity(0))} cores ({' '.join(f for f in ('avx2', 'avx512_bf16', 'amx_bf16') if f in flags)}), "
        f"{memory.available / gib:.1f} of {memory.total / gib:.1f} GiB available, NUMA: {'; '.join(nodes) or 'not exposed'}, "
        f"{shutil.disk_usage(tempfile.gettempdir()).free / gib:.0f} GiB free in {tempfile.gettempdir()}",
        f"pinned: VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB, RAY_TMPDIR={os.environ['RAY_TMPDIR']}",
    ]


def pytest_sessionfinish(session, exitstatus):
    if SOCKETS:
        shutil.rmtree(SOCKETS, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (OpenRLHF's RewardModelActor / training actors); CPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
