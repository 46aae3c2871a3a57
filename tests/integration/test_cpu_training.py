"""lab/cpu_training/ (the test-only device choice) keeps vLLM's CPU weights updatable on every x86 CPU.

vLLM's CPU backend picks its GEMM kernel by instruction set. On AMX or AVX-512 BF16 CPUs its fast kernels drop
each linear layer's `weight` Parameter, and OpenRLHF's weight sync then fails ("'Parameter' object has no
attribute 'weight_loader'"); AVX2 CPUs take the torch path and pass. So that no test depends on which CPU runs
it, these tests make vLLM believe every fast kernel is available (AMX sgl kernel, oneDNN) and check, through
vLLM's own UnquantizedLinearMethod, that the layer keeps its weight loader and computes with updated weights.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

REPO = Path(__file__).parents[2]

LAYER_SCRIPT = r"""
import json
import torch

import vllm._custom_ops as ops
from vllm.model_executor.layers import utils
from vllm.model_executor.layers.linear import UnquantizedLinearMethod
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.utils import set_weight_attrs

# As on a CPU with every fast kernel vLLM knows (AMX sgl weight packing, oneDNN bf16 matmul).
ops._supports_onednn = True
utils.check_cpu_sgl_kernel = lambda n, k, dtype: True

torch.manual_seed(0)
method = UnquantizedLinearMethod()
layer = torch.nn.Module()
layer.register_parameter("weight", torch.nn.Parameter(torch.empty(32, 64, dtype=torch.bfloat16), requires_grad=False))
set_weight_attrs(layer.weight, {"weight_loader": default_weight_loader})  # as create_weights, without a TP group
layer.weight.weight_loader(layer.weight, torch.randn(32, 64, dtype=torch.bfloat16))
method.process_weights_after_loading(layer)  # where vLLM dispatches the CPU GEMM after loading a model

result = {"keeps_weight_loader": hasattr(layer.weight, "weight_loader"), "shape": list(layer.weight.shape)}
if result["keeps_weight_loader"]:
    new = torch.randn(32, 64, dtype=torch.bfloat16)  # what OpenRLHF's update_weight does with a synced tensor
    layer.weight.weight_loader(layer.weight, new)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    out = method.apply(layer, x)
    result["uses_updated_weight"] = bool(torch.allclose(out.float(), (x @ new.t()).float(), atol=0.1, rtol=0.02))
print("RESULT " + json.dumps(result))
"""


def run_layer_script(with_device_choice: bool) -> tuple[int, dict | None, str]:
    paths = [str(REPO / "lab" / "cpu_training")] if with_device_choice else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", LAYER_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    return proc.returncode, json.loads(line[len("RESULT "):]) if line else None, proc.stderr[-3000:]


def test_linear_layers_keep_updatable_weights_whatever_kernels_the_cpu_offers():
    rc, result, err = run_layer_script(with_device_choice=True)
    assert rc == 0, err
    assert result == {"keeps_weight_loader": True, "shape": [32, 64], "uses_updated_weight": True}


def test_without_the_device_choice_the_fast_kernels_break_the_weight_sync():
    """The check above can fail: vLLM's own dispatch, offered the same kernels, drops the weight (or crashes)."""
    rc, result, _ = run_layer_script(with_device_choice=False)
    assert rc != 0 or not result["keeps_weight_loader"] or not result.get("uses_updated_weight")
