"""TEST-ONLY: the real `python -m openrlhf.cli.train_rm` on CPU, as one process (world size 1, gloo).

    python cpu_training/train_rm.py <train_rm flags>                  # the command line
    train_reward_model(base, pairs, output_dir, flags=[...])          # from Python (tests, benchmarks/evidence)

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
import signal
import socket
import subprocess
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
    sys.path.insert(0, str(HERE))
    import cpu_device

    cpu_device.install()
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(name, value)
    sys.argv = ["openrlhf.cli.train_rm", *CPU_FLAGS, *sys.argv[1:]]
    runpy.run_module("openrlhf.cli.train_rm", run_name="__main__", alter_sys=True)


def train_reward_model(
    base: str | Path,
    pairs: str | Path,
    output_dir: str | Path,
    flags: list[str] = (),
    log: str | Path | None = None,
    timeout_s: float = 1800,
) -> Path:
    """Train a reward model from `base` on the JSON-lines `pairs` with train_rm on CPU; return `output_dir`.

    `pairs` needs `prompt`, `chosen` and `rejected` keys (other key names: pass the --data.*_key flags). It is also
    the evaluation set that gives the checkpoint its `mean` / `std`. `flags` are more train_rm flags (steps,
    learning rate, batch sizes, ...); they override the defaults here. The run's output goes to `log` (default
    `<output_dir>.log`); a failure raises with its last lines.
    """
    output_dir = Path(output_dir)
    log = Path(log) if log else output_dir.with_name(output_dir.name + ".log")
    command = [
        sys.executable, str(HERE / "train_rm.py"),
        "--model.model_name_or_path", str(base), "--data.dataset", str(pairs), "--eval.dataset", str(pairs),
        "--data.prompt_key", "prompt", "--ckpt.output_dir", str(output_dir), "--ckpt.disable_ds",
        *map(str, flags),
    ]
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    with open(log, "w") as out:
        # Own session, so that whatever train_rm starts (dataset map workers) ends with it.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if rc != 0 or not (output_dir / "config.json").is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"train_rm on CPU exited with {rc} (log {log}); last lines:\n{tail}")
    return output_dir


if __name__ == "__main__":
    main()
