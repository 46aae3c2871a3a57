"""One recipe for running OpenRLHF's trainers on CPU: flags, environment, a process session per run, scalars.

Every CPU `train_ppo_ray` run of this repository (the e2e tests, the demo's training part, the evidence
experiments) is built here, each caller passing only what differs:

    flags = testbed_flags(policy, prompts, reward, sampling) + CPU_PLACEMENT + ppo_flags(ppo) + output_flags(out)
    rc = run_in_own_session(launch_command(flags), out / "train.log", timeout_s, cwd=out, env=run_env())
    scalars = read_scalars(out / "tb")

The command goes through cpu_training/launch.py (the TEST-AND-EXPERIMENT-ONLY device choice); the environment puts
the repository root (this lab), the flash_attn stand-in of tests/support and, when given, a frozen copy of the
package first on every process's PYTHONPATH, and pins vLLM's CPU KV cache (never a share of the NUMA node).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_TRAINING = REPO / "lab" / "cpu_training"
LAUNCH = CPU_TRAINING / "launch.py"
TRAIN_RM = CPU_TRAINING / "train_rm.py"
FLASH_ATTN_STAND_IN = REPO / "tests" / "support"  # openrlhf's model code imports flash_attn at module level

# One logical GPU per OpenRLHF actor (vLLM engine, actor, reference, critic, reward model), all on this machine.
CPU_PLACEMENT = [
    "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1", "--vllm.enforce_eager", "--vllm.sync_backend", "gloo",
    "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
    "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
    "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
    "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
]


@dataclass(frozen=True)
class Sampling:
    """How prompts are built and responses sampled (the same in training, in the stage and in evaluation)."""

    max_len: int
    max_new_tokens: int
    temperature: float
    input_key: str = "input"
    chat_template: bool = True


@dataclass(frozen=True)
class PPO:
    """The PPO settings of one run. `prompts_per_step` x `n_samples` rollouts make one step's batch. A setting left
    None is OpenRLHF's default (its flag is not passed)."""

    estimator: str
    prompts_per_step: int
    episodes: int
    seed: int
    actor_lr: float | None = None
    critic_lr: float | None = None
    kl_init_coef: float | None = None
    warmup_ratio: float | None = 0.0
    n_samples: int = 1
    max_epochs: int = 1
    micro_batch: int | None = None  # default: the whole step in one micro batch


def testbed_flags(policy: Path, prompts: Path, reward: list[str], sampling: Sampling) -> list[str]:
    """The policy, reward, prompts and sampling flags a training run shares with `sample` and `evaluate`."""
    return [
        "--actor.model_name_or_path", str(policy), *reward,
        "--data.prompt_dataset", str(prompts), "--data.input_key", sampling.input_key,
        *(["--data.apply_chat_template"] if sampling.chat_template else []),
        "--data.max_len", str(sampling.max_len), "--rollout.max_new_tokens", str(sampling.max_new_tokens),
        "--rollout.temperature", str(sampling.temperature), "--rollout.top_p", "1.0",
    ]


def ppo_flags(ppo: PPO, critic: Path) -> list[str]:
    """One run's PPO flags; `critic` initialises the critic (OpenRLHF ignores it for critic-free estimators)."""
    samples = ppo.prompts_per_step * ppo.n_samples
    micro = ppo.micro_batch or samples
    optional = {"--actor.adam.lr": ppo.actor_lr, "--critic.adam.lr": ppo.critic_lr,
                "--actor.lr_warmup_ratio": ppo.warmup_ratio, "--critic.lr_warmup_ratio": ppo.warmup_ratio,
                "--algo.kl.init_coef": ppo.kl_init_coef}
    return [
        "--critic.model_name_or_path", str(critic), "--algo.advantage.estimator", ppo.estimator,
        "--rollout.batch_size", str(ppo.prompts_per_step), "--rollout.n_samples_per_prompt", str(ppo.n_samples),
        "--rollout.micro_batch_size", str(micro), "--train.batch_size", str(samples),
        "--train.micro_batch_size", str(micro), "--train.max_epochs", str(ppo.max_epochs),
        "--train.num_episodes", str(ppo.episodes), "--train.seed", str(ppo.seed),
    ] + [str(x) for flag, value in optional.items() if value is not None for x in (flag, value)]


def output_flags(out: Path, tensorboard: bool = True) -> list[str]:
    """Where a run writes: the final HF policy in out/ckpt (or `out` itself), checkpoints, tensorboard scalars."""
    return (["--logger.tensorboard_dir", str(out / "tb")] if tensorboard else []) + [
        "--ckpt.output_dir", str(out / "ckpt"), "--ckpt.path", str(out / "ckpt" / "checkpoints")]


def contrastive_flags(store: Path, k: int, extra: list[str] = ()) -> list[str]:
    """`--reward_fn contrastive` on the store at `store` (the in-job stage writes it when it is missing)."""
    return ["--reward_fn", "contrastive", *extra, "--contrastive.baseline_path", str(store), "--contrastive.k", str(k)]


def launch_command(args: list[str]) -> list[str]:
    """`python cpu_training/launch.py ARGS`: train_ppo_ray with these flags, or `-m MODULE ...`, on CPU."""
    return [sys.executable, str(LAUNCH), *map(str, args)]


def run_env(package: Path | None = None, **variables: str) -> dict:
    """The environment of every process of a CPU run. `package`: a frozen copy of openrlhf_contrastive to run
    instead of the working tree's (see snapshot_package); `variables` are set as given."""
    env = dict(os.environ)
    path = [str(package or ""), str(REPO), str(FLASH_ATTN_STAND_IN), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in path if p))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))  # DeepSpeed's JIT ops, once
    env.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: never a share of the NUMA node's memory
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **variables)
    return env


def start_in_own_session(command: list[str], log: Path, **popen) -> subprocess.Popen:
    """Start `command` with its output in the file `log`, in a process session of its own."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)


def kill_session(process: subprocess.Popen) -> None:
    """Kill what is left of the process's session (Ray, its workers, vLLM engine cores, dataset workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_in_own_session(command: list[str], log: Path, timeout_s: float, **popen) -> int:
    """Run `command` in its own session and kill that whole session when it ends; its exit code, 124 on timeout."""
    return run_measured(command, log, timeout_s, **popen)[0]


def run_measured(command: list[str], log: Path, timeout_s: float, **popen) -> tuple[int, dict]:
    """run_in_own_session, also sampling the memory of every process of the run (SessionMemory) once a second:
    (exit code, SessionMemory.peaks())."""
    process = start_in_own_session(command, log, **popen)
    memory = SessionMemory(process.pid)
    memory.start()
    try:
        return process.wait(timeout=timeout_s), memory.peaks()
    except subprocess.TimeoutExpired:
        return 124, memory.peaks()
    finally:
        memory.stop()
        kill_session(process)


class SessionMemory(threading.Thread):
    """The peak memory of a whole run: every process in the session `sid`, or its process group, or descended from
    its leader (Ray's GCS, raylet and workers, the vLLM engine core, the DeepSpeed actors), summed over processes at
    each sample. Two sums: PSS (proportional set size: a shared page counts once across the processes sharing it,
    the memory the run holds) and RSS (each process's resident set whole: shared libraries counted in every
    process). Linux /proc only; elsewhere both stay 0."""

    def __init__(self, sid: int, every_s: float = 1.0):
        super().__init__(daemon=True)
        self.sid, self.every_s = sid, every_s
        self.peak_pss = self.peak_rss = self.samples = 0
        self.peak_processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._done.set()

    def peaks(self) -> dict:
        return {"peak_pss_bytes": self.peak_pss, "peak_rss_bytes": self.peak_rss, "samples": self.samples,
                "peak_processes": self.peak_processes, "every_s": self.every_s}

    def members(self) -> list[int]:
        parents, inside = {}, set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended between the listing and the read
                continue
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])  # after the name: state, ppid, pgrp, session
            if self.sid in (int(fields[2]), int(fields[3])) or pid == self.sid:
                inside.add(pid)
        grew = True
        while grew:  # and every descendant of a member, wherever its session
            more = {pid for pid, parent in parents.items() if parent in inside} - inside
            inside |= more
            grew = bool(more)
        return sorted(inside)

    def sample(self) -> None:
        pss = rss = 0
        members = self.members()
        for pid in members:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith(("Pss:", "Rss:")):
                        kib = int(line.split()[1]) * 1024
                        pss, rss = (pss + kib, rss) if line.startswith("Pss:") else (pss, rss + kib)
            except (OSError, ValueError, IndexError):
                continue
        self.samples += 1
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, len(members))


def read_scalars(tb: Path) -> dict:
    """Every tensorboard scalar a run logged, {tag: {step: value}} (the runs under `tb` merged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict = {}
    for run in sorted(p for p in tb.iterdir() if p.is_dir()) if tb.exists() else []:
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({int(e.step): float(e.value) for e in events.Scalars(tag)})
    return scalars


def tail(path: Path, lines: int = 40) -> str:
    return "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-lines:])


def snapshot_package(work: Path, commit: str | None = None) -> tuple[Path, str]:
    """Freeze the plugin at the commit an experiment started from: `git archive HEAD openrlhf_contrastive` into
    work/pkg (run_env(package=...) puts it first on PYTHONPATH, ahead of the editable install). Other work in the
    same tree then cannot change the code under a running experiment; resumes reuse it. (path, commit).
    `commit`: an arm that needs a later plugin (a later addition to a config) names its commit, frozen beside the
    first in work/pkg-<12 hex digits> the same way."""
    pkg = work / ("pkg" if commit is None else f"pkg-{commit[:12]}")
    stamp = pkg.with_name(pkg.name + "_commit.txt")
    if not stamp.exists():
        shutil.rmtree(pkg, ignore_errors=True)
        pkg.mkdir(parents=True)
        commit = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", commit or "HEAD"], text=True).strip()
        archive = subprocess.check_output(["git", "-C", str(REPO), "archive", commit, "openrlhf_contrastive"])
        subprocess.run(["tar", "-x", "-C", str(pkg)], input=archive, check=True)
        stamp.write_text(commit + "\n")
    return pkg, stamp.read_text().strip()


def train_reward_model(base: Path, pairs: Path, output_dir: Path, flags: list[str] = (), log: Path | None = None,
                       timeout_s: float = 1800, env: dict | None = None) -> Path:
    """Train a reward model from `base` on the JSON-lines `pairs` with OpenRLHF's train_rm on CPU; `output_dir`.

    `pairs` needs `prompt`, `chosen` and `rejected` keys (other names: pass the --data.*_key flags). It is also the
    evaluation set that gives the checkpoint its `mean` / `std` (train_rm computes them on its evaluation set, which
    is empty for fewer than 100 pairs by default). `flags` are more train_rm flags and override these defaults. The
    run's output goes to `log` (default `<output_dir>.log`); a failure raises with its last lines.
    """
    output_dir = Path(output_dir)
    log = Path(log) if log else output_dir.with_name(output_dir.name + ".log")
    command = [sys.executable, str(TRAIN_RM), "--model.model_name_or_path", str(base), "--data.dataset", str(pairs),
               "--eval.dataset", str(pairs), "--data.prompt_key", "prompt", "--ckpt.output_dir", str(output_dir),
               "--ckpt.disable_ds", *map(str, flags)]
    rc = run_in_own_session(command, log, timeout_s, env=env or run_env())
    if rc != 0 or not (output_dir / "config.json").is_file():
        raise RuntimeError(f"train_rm on CPU exited with {rc} (log {log}); last lines:\n{tail(log)}")
    return output_dir


def log(tag: str):
    """A printer of `[tag HH:MM:SS] message` lines, flushed (experiments run for hours behind `tee`)."""
    return lambda message: print(f"[{tag} {time.strftime('%H:%M:%S')}] {message}", flush=True)
