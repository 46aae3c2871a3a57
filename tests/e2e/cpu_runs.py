"""Running the real train_ppo_ray (or another command) through cpu_training/launch.py, for the e2e tests.

Shared by test_train_ppo_ray_cpu.py (reward-function file, agent) and test_reward_model_cpu.py (reward model):
the flags of one small PPO run, the launch in its own session (every process of the run is killed with it),
tensorboard scalars and store snapshots.
"""

import os
import sys
import time
from pathlib import Path

from launch import run_in_own_session  # cpu_training/

REPO = Path(__file__).parents[2]
LAUNCH = REPO / "cpu_training" / "launch.py"
RUN_TIMEOUT_S = int(os.environ.get("E2E_RUN_TIMEOUT_S", "900"))

QUESTIONS = [
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
    "List three prime numbers.",
    "What is two plus two?",
]
K = 4
STEP1 = 1
STEPS = range(1, len(QUESTIONS) + 1)
ATOL = 1e-5


def train_flags(work: Path, out: Path, reward: list[str], critic: Path | None = None) -> list[str]:
    """OpenRLHF flags of one small PPO run: 4 prompts, one rollout per PPO step -> 4 PPO steps.

    `reward` gives the reward (--reward.remote_url FILE, --reward.model_name_or_path RM, or nothing with an agent).
    One rollout per step keeps vLLM's sampling reproducible across runs: OpenRLHF sends the rollouts of a batch
    as concurrent requests without per-request seeds, so with several of them the engine's shared generator
    serves them in an order that depends on timing; a lone first request draws the same tokens in every run.
    """
    return [
        "--actor.model_name_or_path", str(work / "policy"),
        "--critic.model_name_or_path", str(critic or work / "critic"), *reward,
        "--data.prompt_dataset", str(work / "prompts.jsonl"), "--data.input_key", "input",
        "--data.apply_chat_template",
        "--vllm.num_engines", "1", "--vllm.tensor_parallel_size", "1", "--vllm.enforce_eager",
        "--vllm.sync_backend", "gloo",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
        "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
        "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
        "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--algo.advantage.estimator", "gae",
        "--rollout.batch_size", "1", "--rollout.n_samples_per_prompt", "1", "--rollout.micro_batch_size", "1",
        "--train.batch_size", "1", "--train.micro_batch_size", "1", "--train.max_epochs", "1",
        "--train.num_episodes", "1", "--train.seed", "42",
        "--data.max_len", "64", "--rollout.max_new_tokens", "16",
        "--logger.tensorboard_dir", str(out / "tb"),
        "--ckpt.output_dir", str(out / "ckpt"), "--ckpt.path", str(out / "ckpt" / "checkpoints"),
    ]


def contrastive_flags(store: Path) -> list[str]:
    return ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(store), "--contrastive.k", str(K)]


def run_launcher(args: list[str], out: Path, name: str) -> tuple[int, Path]:
    """`python cpu_training/launch.py ARGS` in `out` (created), output in out/<name>.log; (exit code, log)."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))  # DeepSpeed's JIT comm op
    env.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_CPU_KVCACHE_SPACE="1")
    log = out / f"{name}.log"
    start = time.time()
    rc = run_in_own_session([sys.executable, str(LAUNCH), *args], log, RUN_TIMEOUT_S, cwd=out, env=env)
    print(f"{name}: {' '.join(args[:3]) if args[:1] == ['-m'] else 'train_ppo_ray'} took {time.time() - start:.0f} s (log {log})")
    return rc, log


def log_tail(log: Path, lines: int = 60) -> str:
    return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])


def launch(work: Path, name: str, reward: list[str], extra: list[str], critic: Path | None = None) -> dict:
    """Run train_ppo_ray through the CPU launcher; return its tensorboard scalars {tag: {step: value}}."""
    out = work / name
    rc, log = run_launcher([*train_flags(work, out, reward, critic), *extra], out, "train")
    assert rc == 0, f"{name}: train_ppo_ray exited with {rc}; last lines of {log}:\n{log_tail(log)}"
    return read_scalars(out / "tb")


def read_scalars(tb: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in tb.iterdir() if p.is_dir()]  # <tensorboard_dir>/<run_name>
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def store_files(store: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(store.iterdir())}


def run_evidence_smoke(runner: Path, work: Path, *extra: str) -> tuple[dict, dict, str]:
    """`runner --smoke --out work *extra` (an evidence experiment's whole pipeline, scaled down, resumable in `work`).

    Returns the experiment's config.json, the run's results.json and what the runner printed.

    The runner's processes find the flash_attn stand-in through the PYTHONPATH that tests/conftest.py extends.
    """
    import json
    import subprocess

    proc = subprocess.run([sys.executable, str(runner), "--smoke", "--out", str(work), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    cfg = json.loads((runner.parent / "config.json").read_text())
    return cfg, json.loads((work / "results.json").read_text()), proc.stdout
