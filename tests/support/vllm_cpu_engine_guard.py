"""TEST-ONLY vLLM plugin: every vLLM CPU engine the tests start must have an explicit KV-cache size.

vLLM loads the plugins of its entry-point group `vllm.general_plugins` in every process that builds or runs an
engine (OpenRLHF's Ray rollout actor, vLLM's engine core and workers). `vllm_cpu_engine_guard-0.dist-info/` next to
this file declares this one, so it is active wherever this folder is on the path: the tests and every process they
start (tests/conftest.py puts it on PYTHONPATH), and `make bench` / `make evidence`. It is never installed or shipped.

On vLLM's CPU platform it does two things:

- Guard. Without an explicit size (VLLM_CPU_KVCACHE_SPACE in GiB, or kv_cache_memory_bytes), vLLM's CPU worker
  sizes the KV cache as `gpu_memory_utilization` of the NUMA node's memory (clamped to a cgroup limit) minus what the
  engine process already holds: negative or too large where the node is small or busy, so a test would pass or fail
  by machine. Building such an engine config raises here, so the test that started it fails on every machine.
  OPENRLHF_CONTRASTIVE_TEST_ALLOW_KV_SHARE=1 lifts the guard (only to show vLLM's own refusal).
- Simulated memory node. With OPENRLHF_CONTRASTIVE_TEST_MEMORY_NODE="TOTAL_GIB,AVAILABLE_GIB", vLLM's memory-node
  query (`vllm.utils.cpu_resource_utils.get_memory_node_info`, from which the CPU worker sizes and checks its KV
  cache) reports a node of that total and available memory, in this process, whatever the machine has.
"""

import os
import sys

ALLOW_KV_SHARE = "OPENRLHF_CONTRASTIVE_TEST_ALLOW_KV_SHARE"
MEMORY_NODE = "OPENRLHF_CONTRASTIVE_TEST_MEMORY_NODE"
GiB = 1 << 30


def install() -> None:
    """vLLM's entry point: runs once per process, before the process builds an engine config or a worker."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    if os.environ.get(MEMORY_NODE):
        simulate_memory_node(os.environ[MEMORY_NODE])
    if os.environ.get(ALLOW_KV_SHARE) != "1":
        require_explicit_kv_cache_size()


def require_explicit_kv_cache_size() -> None:
    from vllm.platforms.cpu import CpuPlatform

    update = CpuPlatform.check_and_update_config.__func__

    def check_and_update_config(cls, vllm_config) -> None:
        update(cls, vllm_config)  # reads VLLM_CPU_KVCACHE_SPACE into cache_config.kv_cache_memory_bytes
        if vllm_config.model_config is not None and vllm_config.cache_config.kv_cache_memory_bytes is None:
            raise RuntimeError(
                f"Test guard ({__file__}): this vLLM CPU engine for {vllm_config.model_config.model} has no explicit "
                "KV-cache size, so vLLM would size it as gpu_memory_utilization "
                f"({vllm_config.cache_config.gpu_memory_utilization}) of the NUMA node's memory minus what this "
                "process holds, which fails on machines with a small or busy node. Keep VLLM_CPU_KVCACHE_SPACE (GiB) "
                "in the environment of every process that starts an engine: tests/conftest.py sets it for the test "
                "process and what it starts, so a code path that builds its own environment must pass it on."
            )

    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)


def simulate_memory_node(spec: str) -> None:
    from vllm.utils import cpu_resource_utils

    total, available = (int(float(gib) * GiB) for gib in spec.split(","))
    real = cpu_resource_utils.get_memory_node_info

    def get_memory_node_info(node_id: int = 0):
        return cpu_resource_utils.MemoryNodeInfo(total_memory=total, available_memory=available)

    # vLLM modules import the function by name (the CPU worker, platform and shared-memory code): replace every copy
    # already bound, and the original, which modules imported later bind.
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("vllm") and getattr(module, "get_memory_node_info", None) is real:
            module.get_memory_node_info = get_memory_node_info
