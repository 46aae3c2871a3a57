"""TEST-ONLY device choice for OpenRLHF's Ray trainer: "cuda" means the CPU, "nccl" means gloo.

OpenRLHF 0.11.2's training actors address the accelerator as CUDA (``torch.cuda.set_device``,
``.to(torch.cuda.current_device())``, ``device="cuda"``, ``init_device_mesh("cuda")``, the NCCL weight-sync
group). On a CPU machine this module redirects those places, and nothing else:

1. ``torch.cuda``: one logical device 0 (``current_device``), ``set_device``/``synchronize`` do nothing,
   ``current_stream`` is None (it is only passed as ``stream=`` to the weight broadcast).
2. A ``TorchFunctionMode`` that rewrites a CUDA device argument (``"cuda"``, ``"cuda:N"``, an int, a cuda
   ``torch.device``) into ``"cpu"`` for every torch call (factories, ``Tensor.to``/``.cuda``). It is pushed on
   the main thread, where Ray runs the methods of OpenRLHF's synchronous training actors, and entered around
   the vLLM worker's ``update_weight`` (it runs in vLLM's engine-core process).
3. ``init_device_mesh("cuda", ...)`` builds a "cpu" mesh; ``stateless_init_process_group`` (vLLM's PyNccl
   communicator between DeepSpeed rank 0 and the vLLM workers) is a stateless gloo group with the same
   ``broadcast(tensor, src, stream)`` call (OpenRLHF uses it whenever it is off its CUDA-IPC path).
4. vLLM's CPU linear layers always multiply with their live ``weight`` Parameter (``torch.nn.functional.linear``),
   on every x86 CPU. vLLM picks CPU GEMM kernels by instruction set: with AMX it packs weights for its sgl
   kernel, with oneDNN bf16 support (AVX-512 BF16) it builds a oneDNN handle, and on AMD with zentorch it uses
   zentorch; each of these drops the layer's ``weight`` Parameter (or computes from a packed copy), so
   OpenRLHF's weight sync finds no ``weight_loader`` ("'Parameter' object has no attribute 'weight_loader'"),
   or would update a weight the engine no longer reads. Only AVX2 CPUs got the torch path by themselves.
5. torch's global RNG is seeded at import (for reproducible prompt order across runs; see _patch_torch).
6. DeepSpeed's shared-memory all-reduce op (``deepspeed_shm_comm``) is not built: DeepSpeed JIT-compiles it at the
   first ``init_distributed`` of a machine (55-95 s on 2 cores) and uses it only for an inference all-reduce across
   several ranks of a node, while every training actor here is a single rank that never calls it.

Tensors, models, losses, advantages and KL are computed by OpenRLHF's own code, unchanged, on the CPU.
``install()`` runs at the start of every Python process of the run (``sitecustomize.py`` next to this file,
on the launcher's PYTHONPATH): the launcher, Ray's workers and the vLLM engine-core processes they spawn.
Each patch is applied right after its module is first imported, so processes that never import torch
(Ray's agents) pay nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_CPU = "cpu"


def _to_cpu(device):
    import torch

    if isinstance(device, int) and not isinstance(device, bool):  # a bare index means cuda:<index> in torch
        return _CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


def _mode_class():
    import torch
    from torch.overrides import TorchFunctionMode

    moving = {torch.Tensor.to, torch.Tensor.cuda}

    class CudaToCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if "device" in kwargs:
                kwargs["device"] = _to_cpu(kwargs["device"])
            if func is torch.Tensor.cuda:
                return args[0].to(_CPU, **{k: v for k, v in kwargs.items() if k == "non_blocking"})
            if func in moving and len(args) > 1 and not isinstance(args[1], (torch.dtype, torch.Tensor)):
                args = (args[0], _to_cpu(args[1]), *args[2:])
            return func(*args, **kwargs)

    return CudaToCpu


class _GlooBroadcaster:
    """The part of vLLM's PyNcclCommunicator that OpenRLHF's weight sync uses, over a stateless gloo group."""

    def __init__(self, group):
        self.group = group

    def broadcast(self, tensor, src, stream=None):
        self.group.broadcast(tensor, src).wait()


def stateless_gloo_group(master_address, master_port, rank, world_size, device=None):
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return _GlooBroadcaster(
        stateless_init_torch_distributed_process_group(master_address, master_port, rank, world_size, backend="gloo")
    )


def _patch_torch(torch):
    torch.cuda.current_device = lambda: 0
    torch.cuda.set_device = lambda device: None
    torch.cuda.synchronize = lambda device=None: None
    torch.cuda.current_stream = lambda device=None: None
    _mode_class()().__enter__()  # the importing thread (the main thread: Ray's actor-task thread); never exited
    # Not a device matter, but needed to compare two runs: the PPOTrainer actor shuffles the prompts with torch's
    # global RNG, which nothing seeds in that process (--train.seed only reaches the DeepSpeed actors and vLLM).
    torch.manual_seed(0)


def _patch_device_mesh(module):
    real = module.init_device_mesh

    def init_device_mesh(device_type, *args, **kwargs):
        return real(_to_cpu(device_type), *args, **kwargs)

    module.init_device_mesh = init_device_mesh


def _patch_distributed_util(module):
    module.stateless_init_process_group = stateless_gloo_group


def _patch_vllm_cpu_gemm(module):
    """vllm.model_executor.layers.utils: the same GEMM path on every CPU, reading the live weight (item 4)."""
    import torch

    instruction_set_dispatch = module.dispatch_cpu_unquantized_gemm

    def dispatch_live_weight_gemm(layer, remove_weight):
        if layer.weight.is_meta or layer.weight.ndim != 2:  # not a dense linear layer: vLLM's own handling
            return instruction_set_dispatch(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear  # called as cpu_linear(x, layer.weight, bias)

    module.dispatch_cpu_unquantized_gemm = dispatch_live_weight_gemm


def _patch_worker_wrap(module):
    update_weight = module.WorkerWrap.update_weight

    def update_weight_on_cpu(self, *args, **kwargs):
        with _mode_class()():
            return update_weight(self, *args, **kwargs)

    module.WorkerWrap.update_weight = update_weight_on_cpu


def _patch_deepspeed_comm(module):
    """deepspeed.comm.torch: no shared-memory all-reduce op to build (item 6)."""
    module.build_shm_op = lambda: None


_AFTER_IMPORT = {
    "torch": _patch_torch,
    "torch.distributed.device_mesh": _patch_device_mesh,
    "openrlhf.utils.distributed_util": _patch_distributed_util,
    "vllm.model_executor.layers.utils": _patch_vllm_cpu_gemm,
    "openrlhf.trainer.ray.vllm_worker_wrap": _patch_worker_wrap,
    "deepspeed.comm.torch": _patch_deepspeed_comm,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Runs _AFTER_IMPORT[name](module) right after `name` is first executed (before anyone imports from it)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _AFTER_IMPORT:
            return None
        patch = _AFTER_IMPORT.pop(name)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    if any(isinstance(finder, _PatchAfterImport) for finder in sys.meta_path):
        return
    for name, patch in list(_AFTER_IMPORT.items()):
        if name in sys.modules:
            _AFTER_IMPORT.pop(name)
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchAfterImport())
