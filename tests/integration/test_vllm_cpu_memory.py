"""The project's vLLM CPU engines start on a small, busy NUMA node, and would not without an explicit KV-cache size.

How vLLM is made to see that node: its CPU worker sizes and checks the KV cache with
`vllm.utils.cpu_resource_utils.get_memory_node_info` (the NUMA node's total and available memory, clamped to a cgroup
limit). The test plugin tests/support/vllm_cpu_engine_guard.py, a `vllm.general_plugins` entry point that vLLM loads in
every engine process, replaces that query when OPENRLHF_CONTRASTIVE_TEST_MEMORY_NODE is set. Here the Ray workers
inherit "6,1.5" (and pass it to the engine core process each rollout actor starts): a node of 6 GiB with 1.5 GiB
available, 75% in use, whatever the machine. On it the share 0.05 the tests used to pass is 0.3 GiB, less than the
engine process itself holds, so vLLM refuses (as it did on a 14.5 GiB node and does in small containers); the pinned
VLLM_CPU_KVCACHE_SPACE=1 (tests/conftest.py) fits.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

SMALL_BUSY_NODE = "6,1.5"
REWARD = """
import torch

def reward_func(queries, prompts, labels):
    r = torch.tensor([len(q) % 7 / 7 for q in queries])
    return {"rewards": r, "scores": r}
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy

    tmp = tmp_path_factory.mktemp("memory")
    (tmp / "reward.py").write_text(REWARD)
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"input": f"Question {i}?"}) + "\n" for i in range(4)))
    return tmp, build_policy(tmp / "policy")


def sample_args(inputs, store):
    from openrlhf_contrastive.stage import parse_args

    tmp, policy = inputs
    return parse_args([
        "--actor.model_name_or_path", str(policy), "--reward.remote_url", str(tmp / "reward.py"),
        "--data.prompt_dataset", str(tmp / "prompts.jsonl"), "--data.max_len", "64", "--rollout.max_new_tokens", "6",
        "--contrastive.k", "2", "--contrastive.backend", "openrlhf", "--contrastive.baseline_path", str(store),
        "--vllm.enforce_eager", "--vllm.gpu_memory_utilization", "0.05",
    ])


@pytest.fixture
def small_busy_node(monkeypatch):
    """A local Ray cluster (one logical GPU) whose workers, the engines' processes, see SMALL_BUSY_NODE."""
    import ray

    monkeypatch.setenv("OPENRLHF_CONTRASTIVE_TEST_MEMORY_NODE", SMALL_BUSY_NODE)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ["PYTHONPATH"]}
    from ray_start import init_ray  # lab/cpu_training/

    yield lambda: init_ray(num_cpus=2, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": env})
    ray.shutdown()


def engine_logs() -> str:
    """What the Ray workers of this test's cluster wrote (vLLM's engine core logs into its rollout actor's log)."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return "".join(log.read_text(errors="replace") for log in sorted(logs.glob("worker-*")))


def test_samples_engine_starts_on_a_small_busy_numa_node(inputs, small_busy_node, tmp_path):
    """`sample`'s own engine start (OpenRLHFBackend.from_args) with the pinned KV cache, then the stage on it."""
    from openrlhf_contrastive.backends import DriverStrategy
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend
    from openrlhf_contrastive.stage import build_prompts, run_stage
    from openrlhf_contrastive.store import BaselineStore

    small_busy_node()
    args = sample_args(inputs, tmp_path / "store")
    backend = OpenRLHFBackend.from_args(args)
    try:
        run_stage(args, backend, *build_prompts(args, backend.tokenizer, DriverStrategy(args)))
    finally:
        backend.close()
    assert len(BaselineStore.load(tmp_path / "store")) == 4
    # vLLM's CPU worker saw the small node and took the pinned 1 GiB of its 1.5 GiB available
    assert "Explicitly set (1.0/6.0) GiB for KV cache on node 0." in engine_logs()


def test_without_the_pin_vllm_refuses_that_node_and_sample_says_why_and_how_to_fix(inputs, small_busy_node, tmp_path, monkeypatch):
    """The engines' environment lacks VLLM_CPU_KVCACHE_SPACE (as on a Ray cluster whose nodes do not have it, while the
    driver does): vLLM sizes the KV cache by the share and refuses; `sample` turns that into what / why / fix. The
    guard is lifted for this cluster so that vLLM's own refusal shows."""
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    monkeypatch.setenv("OPENRLHF_CONTRASTIVE_TEST_ALLOW_KV_SHARE", "1")
    small_busy_node()
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # the driver's own environment only: Ray's workers are started
    with pytest.raises(ValueError) as refusal:
        OpenRLHFBackend.from_args(sample_args(inputs, tmp_path / "store"))
    message = str(refusal.value)
    assert message.startswith("vLLM refused to start its CPU engine")
    # vLLM's own refusal (its engine core's log), seeing the small node: 0.05 x 6 GiB minus the process's own memory
    assert "Available memory on node 0 (1.5/6.0 GiB) on kv cache allocation is less than requested memory for kv" in message
    assert "--vllm.gpu_memory_utilization (0.05) of the memory of the CPU's NUMA node" in message
    assert "set VLLM_CPU_KVCACHE_SPACE=<GiB>" in message and "--contrastive.backend hf" in message


GUARD_SCRIPT = """
import json, os, sys
from vllm.engine.arg_utils import EngineArgs

outcome = {}
for space in (None, "1"):
    if space:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = space
    try:
        config = EngineArgs(model=sys.argv[1], enforce_eager=True, gpu_memory_utilization=0.05).create_engine_config()
        outcome[str(space)] = config.cache_config.kv_cache_memory_bytes
    except RuntimeError as e:
        outcome[str(space)] = str(e)
print("OUTCOME " + json.dumps(outcome))
"""


def test_the_guard_fails_any_cpu_engine_without_an_explicit_kv_cache_size(inputs):
    """What makes a test fail when a code path starts a CPU engine unpinned: vLLM loads the guard and the engine
    config is refused; with VLLM_CPU_KVCACHE_SPACE it is built with that size."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    proc = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, str(inputs[1])], env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("OUTCOME ")), None)
    assert line, proc.stderr[-3000:]
    outcome = json.loads(line[len("OUTCOME "):])
    assert outcome["None"].startswith("Test guard") and "no explicit KV-cache size" in outcome["None"]
    assert outcome["1"] == 1 << 30
