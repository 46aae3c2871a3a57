"""The demo's training part (`openrlhf-contrastive demo --repo CLONE`, what `make demo` runs): PPO on the store the
demo just wrote, with and without the contrastive reward, then both trained policies against the SFT start.

Top to bottom:

    1. launch    two real `python -m openrlhf.cli.train_ppo_ray` runs at once (each start-up, Ray + vLLM engine +
                 DeepSpeed, takes minutes of mostly single-threaded work), through the clone's TEST-AND-DEMO-ONLY
                 CPU device choice cpu_training/launch.py, with the flash_attn stand-in of tests/support on the path
                 (OpenRLHF's model code imports flash_attn); the stage's policy, reward, prompts and sampling flags:
                   contrastive  + --reward_fn contrastive --contrastive.baseline_path <the demo's store>
                   raw          nothing more: the same seed, so the same prompts at every step
    2. follow    their logs as they run: one line per PPO step (reward r, r - b, KL, seconds) and a progress bar
                 per run, from the status OpenRLHF logs after every step ("Global step N: {...}")
    3. evaluate  `openrlhf-contrastive evaluate` of each trained policy against the store (hf backend: no more Ray
                 clusters or vLLM engines to start), both at once: win rate P(r > r_j) against the SFT baselines
                 with its 95% interval over prompts

The raw run logs no baseline (it has no --reward_fn). Its r - b subtracts, step by step, the baseline the
contrastive run logged for the same step: both runs draw the same prompts at every step (the same seed; cpu_training
also seeds the trainer's prompt shuffle), which `follow` checks on the prompt of the rollout OpenRLHF logs per step.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# What OpenRLHF's PPOTrainer logs at every step (trainer/ppo_trainer.py): the first rollout of the step,
# `Sample: [text, reward]`, then `✨ Global step N: {status}` with the step's metrics.
SAMPLE_LINE = re.compile(r"Sample: (\[.*\])\s*$")
STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})\s*$")
SEED = 42
EVAL_N = 2  # responses per prompt of each trained policy in `evaluate`
# Peak memory of one training run with SmolLM2-135M (measured 10.7 GiB), all its processes together (launcher, Ray, vLLM engine with its
# 1 GiB KV cache, PPO trainer, actor and critic with their Adam states, reference model): two at once need twice this.
RUN_MEMORY_GIB = 11
RUN_TIMEOUT_S = int(os.environ.get("OPENRLHF_CONTRASTIVE_DEMO_TIMEOUT_S", "1800"))


def check_clone(repo: Path) -> Path:
    """The clone's cpu_training/launch.py; what / why / fix when `repo` is not a clone of this repository."""
    launch = repo / "cpu_training" / "launch.py"
    stand_in = repo / "tests" / "support" / "flash_attn"
    if not launch.is_file() or not stand_in.is_dir():
        raise SystemExit(
            f"openrlhf-contrastive demo: --repo {repo} is not a clone of openrlhf-contrastive (no {launch} or no "
            f"{stand_in}). Why: the training part runs OpenRLHF's trainer on CPU through the repository's test-and-"
            "demo-only cpu_training/ and the flash_attn stand-in of tests/support, neither of which is installed with "
            "the package. Fix: pass the root of a clone (`make demo` passes `--repo .`), or leave --repo out for the "
            "stage-only demo (`make demo-quick`)."
        )
    return launch.resolve()


@dataclass
class Run:
    """One train_ppo_ray run: its process, and what it logged per PPO step."""

    name: str
    out: Path
    flags: list[str]
    process: subprocess.Popen | None = None
    steps: list[dict] = field(default_factory=list)  # OpenRLHF's status dict of every step, in order
    samples: list[str] = field(default_factory=list)  # the text of the rollout logged at every step
    parsed_bytes: int = 0

    @property
    def log(self) -> Path:
        return self.out / "train.log"

    @property
    def policy(self) -> Path:
        return self.out / "policy"


def train_flags(stage_flags: list[str], out: Path, prompts_per_step: int, episodes: int) -> list[str]:
    """train_ppo_ray flags of one run: the stage's policy, reward, prompts and sampling flags, and a small PPO."""
    stage_only = ("--contrastive.chunk_size", "--contrastive.baseline_path", "--contrastive.k")  # each with a value
    dropped = {i + j for i, flag in enumerate(stage_flags) if flag in stage_only for j in (0, 1)}
    flags = [flag for i, flag in enumerate(stage_flags) if i not in dropped]
    policy = flags[flags.index("--actor.model_name_or_path") + 1]
    return flags + [
        "--critic.model_name_or_path", policy,  # the critic starts from the SFT policy with a new value head
        "--vllm.tensor_parallel_size", "1", "--vllm.sync_backend", "gloo",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
        "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
        "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
        "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--algo.advantage.estimator", "gae",  # the paper's PPO, where a per-prompt baseline changes training
        "--rollout.batch_size", str(prompts_per_step), "--rollout.n_samples_per_prompt", "1",
        "--rollout.micro_batch_size", str(prompts_per_step),
        "--train.batch_size", str(prompts_per_step), "--train.micro_batch_size", str(prompts_per_step),
        "--train.max_epochs", "1", "--train.num_episodes", str(episodes), "--train.seed", str(SEED),
        "--actor.lr_warmup_ratio", "0", "--critic.lr_warmup_ratio", "0",
        "--ckpt.output_dir", str(out / "policy"), "--ckpt.path", str(out / "checkpoints"),
    ]


def contrastive_flags(store: Path, k: int) -> list[str]:
    return ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(store), "--contrastive.k", str(k)]


def launch(launch_py: Path, run: Run) -> None:
    """Start train_ppo_ray through cpu_training/launch.py in its own session (Ray and its workers die with it)."""
    repo = launch_py.parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo / "tests" / "support"), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions"))  # DeepSpeed's JIT ops, once
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, str(launch_py), *run.flags]
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "command.json").write_text(json.dumps(command, indent=1))
    with open(run.log, "w") as log:
        run.process = subprocess.Popen(command, cwd=run.out, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)


def parse_log(run: Run) -> list[dict]:
    """The steps `run` logged since the last call (complete lines only)."""
    with open(run.log, "rb") as f:
        f.seek(run.parsed_bytes)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    run.parsed_bytes += len(complete)
    new = []
    for line in complete.decode(errors="replace").splitlines():
        if (sample := SAMPLE_LINE.search(line)) is not None:
            run.samples.append(ast.literal_eval(sample.group(1))[0])
        elif (step := STEP_LINE.search(line)) is not None:
            new.append({**ast.literal_eval(step.group(2)), "step": int(step.group(1))})
    run.steps += new
    return new


def stop(run: Run) -> None:
    """Kill what is left of the run's session (Ray, its workers, the vLLM engine core)."""
    if run.process is None:
        return
    try:
        os.killpg(run.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def step_baselines(runs: dict[str, Run]) -> dict[int, float]:
    """The baseline the contrastive run logged at each step so far (the mean b of the step's prompts)."""
    return {s["step"]: s["contrastive/baseline"] for s in runs["contrastive"].steps}


def reward_minus_baseline(status: dict, baselines: dict[int, float]) -> float:
    """r - b of a step: the plugin's logged value in the contrastive run, r minus the same step's b in the raw run."""
    if "contrastive/reward" in status:
        return status["contrastive/reward"]
    return status["reward"] - baselines[status["step"]] if status["step"] in baselines else float("nan")


def step_line(name: str, status: dict, total: int, baselines: dict[int, float]) -> str:
    return (f"  {name:<11} step {status['step']:>2}/{total}  reward r {status['reward']:+.3f}  "
            f"r - b {reward_minus_baseline(status, baselines):+.3f}  KL {status.get('kl', 0.0):.5f}  "
            f"{status['timing/step_total']:5.1f} s")


def train(launch_py: Path, runs: dict[str, Run], total_steps: int, questions: list[str], at_once: bool) -> None:
    """Run both trainings (at once, or the contrastive one first), printing their steps under a progress bar each."""
    from tqdm import tqdm

    bars = {name: tqdm(total=total_steps, desc=f"PPO {name:<11}", unit="step", position=i, dynamic_ncols=True)
            for i, name in enumerate(runs)}
    # The runs have sessions of their own (Ctrl-C in a terminal does not reach them): a demo that is interrupted or
    # terminated stops them on its way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        for names in [list(runs)] if at_once else [[name] for name in runs]:
            for name in names:
                launch(launch_py, runs[name])
            follow(runs, names, bars, total_steps)
    finally:
        for bar in bars.values():
            bar.close()
        for run in runs.values():
            stop(run)
    check_runs(runs, total_steps, questions)


def follow(runs: dict[str, Run], active: list[str], bars: dict, total_steps: int) -> None:
    """Print the steps of the `active` runs as they come, until they end. A raw step waits for the contrastive run's
    baseline of the same step (its r - b needs it) while the contrastive run is still going."""
    pending: dict[str, list[dict]] = {name: [] for name in active}
    deadline = time.time() + RUN_TIMEOUT_S
    while True:
        running = [name for name in active if runs[name].process.poll() is None]
        for name in active:
            pending[name] += parse_log(runs[name])
        baselines = step_baselines(runs)
        for name, steps in pending.items():
            ready = [s for s in steps if s["step"] in baselines or not running]
            for status in ready:
                bars[name].write(step_line(name, status, total_steps, baselines))
                bars[name].update(1)
            pending[name] = [s for s in steps if s not in ready]
        if not running:
            return
        if time.time() > deadline:
            raise SystemExit(f"openrlhf-contrastive demo: training ran longer than {RUN_TIMEOUT_S} s "
                             f"(OPENRLHF_CONTRASTIVE_DEMO_TIMEOUT_S); logs: {', '.join(str(runs[n].log) for n in active)}")
        time.sleep(1)


def check_runs(runs: dict[str, Run], total_steps: int, questions: list[str]) -> None:
    """Both runs trained every step, on the same prompts step by step; steps.json keeps what each logged."""
    for run in runs.values():
        (run.out / "steps.json").write_text(json.dumps(run.steps, indent=1))
        if run.process.returncode != 0 or len(run.steps) != total_steps:
            tail = "".join(run.log.read_text(errors="replace").splitlines(keepends=True)[-40:])
            raise SystemExit(f"openrlhf-contrastive demo: train_ppo_ray ({run.name}) exited with "
                             f"{run.process.returncode} after {len(run.steps)} of {total_steps} PPO steps; the last "
                             f"lines of {run.log}:\n{tail}")
    drawn = [[question_of(sample, questions) for sample in run.samples] for run in runs.values()]
    if drawn[0] != drawn[1]:
        raise SystemExit("openrlhf-contrastive demo: the two training runs drew different prompts at some step, so the "
                         "raw run's r - b (the contrastive run's baseline of the same step subtracted) would be wrong. "
                         f"Both use --train.seed {SEED}; compare the `Sample:` lines of "
                         + " and ".join(str(run.log) for run in runs.values()))


def both_fit() -> tuple[bool, float]:
    """(whether two runs fit in the memory available now, GiB available): /proc/meminfo's MemAvailable."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20
    return available >= 2 * RUN_MEMORY_GIB, available


def question_of(sample: str, questions: list[str]) -> str | None:
    """The demo question in a rollout OpenRLHF logged (prompt and response decoded without special tokens)."""
    return max((q for q in questions if q in sample), key=len, default=None)


def evaluate(runs: dict[str, Run], stage_flags: list[str], out: Path) -> dict[str, dict]:
    """`openrlhf-contrastive evaluate` of every trained policy against the store, all at once; {run: figures}."""
    at = stage_flags.index("--actor.model_name_or_path") + 1
    processes = {}
    for name, run in runs.items():
        flags = [*stage_flags[:at], str(run.policy), *stage_flags[at + 1:]]
        command = [sys.executable, "-m", "openrlhf_contrastive.cli", "evaluate", *flags, "--contrastive.backend", "hf",
                   "--eval.n", str(EVAL_N), "--eval.output_dir", str(out / name), "--eval.top", "3"]
        (out / name).mkdir(parents=True, exist_ok=True)
        with open(out / name / "evaluate.log", "w") as log:
            processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    figures = {}
    for name, process in processes.items():
        log = out / name / "evaluate.log"
        if process.wait(timeout=RUN_TIMEOUT_S) != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise SystemExit(f"openrlhf-contrastive demo: evaluate of the {name} policy exited with "
                             f"{process.returncode}; the last lines of {log}:\n{tail}")
        report = json.loads((out / name / "evaluation.json").read_text())
        figures[name] = report["rewards"][report["store_reward"]]
    return figures


def train_and_evaluate(launch_py: Path, stage_flags: list[str], store: Path, k: int, out: Path, prompts: int,
                       prompts_per_step: int, episodes: int, questions: list[str]) -> list:
    """Steps 1-3 of the module docstring; prints the win rates side by side and returns the runs for the PNG."""
    from openrlhf_contrastive.report import TrainingRun

    total_steps = prompts // prompts_per_step * episodes
    runs = {
        "contrastive": Run("contrastive", out / "contrastive", []),
        "raw": Run("raw", out / "raw", []),
    }
    for run in runs.values():
        run.flags = train_flags(stage_flags, run.out, prompts_per_step, episodes)
    runs["contrastive"].flags += contrastive_flags(store, k)
    at_once, available = both_fit()
    when = ("at once" if at_once else f"one after the other ({available:.0f} GiB of memory available; two at once "
            f"need about {2 * RUN_MEMORY_GIB})")
    print(f"\ndemo: training: two real train_ppo_ray runs on CPU (cpu_training/, test-and-demo-only), {when}: "
          f"{total_steps} PPO steps of {prompts_per_step} prompts each (gae, critic, reference model), the same seed, "
          f"with --reward_fn contrastive on {store} and without (raw reward r). Each start-up (Ray, vLLM engine, "
          f"DeepSpeed) takes minutes; commands and logs in {out}/{{contrastive,raw}}/", flush=True)
    start = time.time()
    train(launch_py, runs, total_steps, questions, at_once)
    print(f"demo: trained in {time.time() - start:.0f} s; evaluating both policies against the "
          f"SFT baselines (`openrlhf-contrastive evaluate`, n = {EVAL_N} responses per prompt) ...", flush=True)
    start = time.time()
    figures = evaluate(runs, stage_flags, out / "evaluation")
    print(f"\ndemo: win rate against the SFT start, P(r > r_j) with ties half, 95% interval over prompts "
          f"(evaluated in {time.time() - start:.0f} s; 0.5 is the SFT policy itself):")
    names = {"contrastive": "PPO, --reward_fn contrastive", "raw": "PPO, raw reward (no --reward_fn)"}
    for name, fig in figures.items():
        lo, hi = fig["win_rate_interval"]
        print(f"  {names[name]:<34} win rate {fig['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]   mean reward "
              f"{fig['policy_mean']:+.3f} (SFT {fig['baseline_mean']:+.3f})   evaluation: {out / 'evaluation' / name}/")
    print(f"demo: {total_steps} PPO steps of one seed are not evidence that either reward trains better; see the README's "
          "\"Does it help?\" for the controlled experiment.")
    baselines = step_baselines(runs)
    return [
        TrainingRun(names[name], [s["step"] for s in run.steps], [s["reward"] for s in run.steps],
                    [reward_minus_baseline(s, baselines) for s in run.steps], figures[name]["win_rate"],
                    figures[name]["win_rate_interval"])
        for name, run in runs.items()
    ]
