"""TEST-ONLY: the real `python -m openrlhf.cli.train_rm` on CPU, as one process (world size 1, gloo).

    python lab/cpu_training/train_rm.py <train_rm flags>     # the command line
    lab.harness.train_reward_model(base, pairs, output_dir, flags=[...])   # from Python (tests, lab.reward_models)

train_rm expects to be started by `deepspeed` (or torchrun), which sets the torch.distributed environment of
each rank; here the one rank's environment is set in-process (RANK 0, WORLD_SIZE 1, LOCAL_RANK 0, a free
MASTER_PORT on 127.0.0.1), the cuda -> cpu device choice of cpu_device.py is installed, and train_rm runs as
__main__ with OpenRLHF's own parser, RewardDataset, DeepSpeed strategy and RewardModelTrainer. DeepSpeed's
CPU accelerator picks gloo.

The pairs file is what train_rm's `--data.dataset` reads: JSON lines with the prompt, chosen and rejected texts
(`--data.prompt_key`, `--data.chosen_key`, `--data.rejected_key`). The checkpoint in `--ckpt.output_dir` is what
`--reward.model_name_or_path` takes, with the normalisation statistics train_rm stores in its config.json
(`mean`, `std`: the rewards of the evaluation pairs, chosen and rejected together). train_rm computes them only
when its evaluation set is not empty, and without `--eval.dataset` that set is the first 1% of the training
pairs: `train_reward_model` passes the training pairs as `--eval.dataset` so that a small pairs file still
gets them.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Settings a CPU run needs (no flash attention, DeepSpeed stage 0); the caller's flags come after and win.
CPU_FLAGS = ["--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    import cpu_device

    cpu_device.install()
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(name, value)
    sys.argv = ["openrlhf.cli.train_rm", *CPU_FLAGS, *sys.argv[1:]]
    runpy.run_module("openrlhf.cli.train_rm", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
