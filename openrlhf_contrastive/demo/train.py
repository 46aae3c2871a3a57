"""The demo's training part (`openrlhf-contrastive demo --repo CLONE`, what `make demo` runs): PPO with and without
the contrastive reward, then both trained policies against the SFT start.

The policy here is not the stage's SmolLM2: two SmolLM2 PPO runs (actor, critic, reference model, vLLM engine) need
about 11 GiB each and minutes per step on a 2-core CPU. Training uses the evidence testbed's tiny policy instead
(CLONE/benchmarks/evidence/testbed.py, as set up by evidence v2): a 2-layer Llama trained here in code to reverse
words of 2-10 letters, partly competent, with a known gold reward. The reward PPO sees is v1's noisy proxy of gold
(CLONE/benchmarks/evidence/reward_proxy.py: gold + a per-prompt offset + per-prompt noise + a length bias, a
deterministic function of the text, as a reward model is), the kind of error a per-prompt baseline removes.

Top to bottom:

    1. testbed   the SFT policy (trained once, cached), the training prompts, the reward file and its config
    2. launch    two real `python -m openrlhf.cli.train_ppo_ray` runs at once, through the clone's TEST-AND-DEMO-ONLY
                 CPU device choice cpu_training/launch.py, with the flash_attn stand-in of tests/support on the path
                 (OpenRLHF's model code imports flash_attn):
                   contrastive  + --reward_fn contrastive --contrastive.baseline_path <training/baselines>: the
                                  plugin's in-job stage samples and scores the k baselines per prompt through the
                                  trainer's own vLLM engine and reward path (no store yet), then PPO trains on r - b
                   raw          nothing more: the same seed, so the same prompts at every step
    3. follow    their logs as they run: one line per PPO step (reward r, r - b, gold, KL, seconds) and a progress
                 bar per run, from the status OpenRLHF logs after every step ("Global step N: {...}")
    4. evaluate  `openrlhf-contrastive evaluate` of each trained policy against the store (hf backend), both at
                 once: win rate P(r > r_j) against the SFT baselines with its 95% interval over prompts

The raw run logs no baseline (it has no --reward_fn). Its r - b subtracts, step by step, the baseline the
contrastive run logged for the same step: both runs draw the same prompts at every step (the same seed; cpu_training
also seeds the trainer's prompt shuffle), which `check_runs` checks on the prompt of the rollout OpenRLHF logs per step.
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

# What OpenRLHF's PPOTrainer logs after every step (trainer/ppo_trainer.py): `✨ Global step N: {status}`, the
# step's metrics (means over its rollouts), the reward file's extra logs among them.
STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})\s*$")
SEED = 42
EVAL_N = 2  # responses per prompt of each trained policy in `evaluate`
# The testbed (CLONE/benchmarks/evidence): v2's task and SFT policy (a weak start, so PPO has room), v1's noisy proxy.
TESTBED = Path("benchmarks") / "evidence"
TASK_CONFIG = Path("benchmarks") / "evidence_v2" / "config.json"
PROXY_CONFIG = TESTBED / "config.json"
# Peak memory of one tiny training run, all its processes together (launcher, Ray, vLLM engine with its 1 GiB KV
# cache, PPO trainer, actor, critic, reference model): measured 3.3 GiB; two at once need twice this.
RUN_MEMORY_GIB = 4
PROMPT_TAG_TOLERANCE = 1e-5
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
    parsed_bytes: int = 0

    @property
    def log(self) -> Path:
        return self.out / "train.log"

    @property
    def policy(self) -> Path:
        return self.out / "policy"


@dataclass
class Testbed:
    """What the training runs share: the SFT policy, the prompt file, the reward file and its config, the PPO settings."""

    policy: Path
    prompts: Path
    reward: Path
    config: Path
    ppo: dict  # evidence v2's PPO settings (config.json "ppo"), used as they are: nothing is tuned for the demo

    def common_flags(self) -> list[str]:
        """The policy, reward, prompts and sampling flags of every command on the testbed (train, evaluate)."""
        return [
            "--actor.model_name_or_path", str(self.policy), "--reward.remote_url", str(self.reward),
            "--data.prompt_dataset", str(self.prompts), "--data.input_key", "input", "--data.apply_chat_template",
            "--data.max_len", str(self.ppo["data_max_len"]), "--rollout.max_new_tokens", str(self.ppo["max_new_tokens"]),
            "--rollout.temperature", str(self.ppo["temperature"]), "--vllm.num_engines", "1", "--vllm.enforce_eager",
        ]


def load_testbed_module(repo: Path):
    """The clone's benchmarks/evidence/testbed.py (not part of the installed package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("openrlhf_contrastive_demo_testbed", repo / TESTBED / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_testbed(repo: Path, cache: Path, out: Path, prompts: int) -> Testbed:
    """1. The SFT policy (trained once per configuration, cached), `prompts` training words, the proxy's config."""
    import hashlib

    testbed = load_testbed_module(repo)
    cfg = testbed.load_config(repo / TASK_CONFIG)
    cfg["proxy"] = testbed.load_config(repo / PROXY_CONFIG)["proxy"]
    out.mkdir(parents=True, exist_ok=True)
    config = out / "testbed_config.json"
    config.write_text(json.dumps(cfg, indent=1))
    tag = hashlib.sha256(json.dumps([cfg["task"], cfg["sft"]], sort_keys=True).encode()).hexdigest()[:12]
    policy = cache / f"testbed-sft-{tag}"
    if not (policy / "sft_done.json").exists():
        print(f"demo: training the testbed's SFT policy ({cfg['sft']['steps']} steps, once; cached in {policy}) ...",
              flush=True)
    start = time.time()
    testbed.build_sft_policy(policy, cfg, log=lambda msg: print(f"  {msg}", flush=True))
    words = testbed.split_prompts(cfg)[0][:prompts]
    prompt_file = out / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"input": w}) + "\n" for w in words))
    print(f"demo: testbed policy ready in {time.time() - start:.0f} s: {policy}", flush=True)
    return Testbed(policy.resolve(), prompt_file, (repo / TESTBED / "reward_proxy.py").resolve(), config, cfg["ppo"])


def train_flags(bed: Testbed, out: Path, prompts_per_step: int, episodes: int) -> list[str]:
    """train_ppo_ray flags of one run: the testbed's flags and evidence v2's gae PPO (actor, critic, reference model)."""
    p = bed.ppo
    return bed.common_flags() + [
        "--critic.model_name_or_path", str(bed.policy),  # the critic starts from the SFT policy with a new value head
        "--vllm.tensor_parallel_size", "1", "--vllm.sync_backend", "gloo",
        "--actor.num_nodes", "1", "--actor.num_gpus_per_node", "1",
        "--ref.num_nodes", "1", "--ref.num_gpus_per_node", "1",
        "--critic.num_nodes", "1", "--critic.num_gpus_per_node", "1",
        "--ds.zero_stage", "0", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "sdpa",
        "--algo.advantage.estimator", "gae",  # the paper's PPO, where a per-prompt baseline changes training
        "--rollout.batch_size", str(prompts_per_step), "--rollout.n_samples_per_prompt", "1",
        "--rollout.micro_batch_size", str(prompts_per_step),
        "--train.batch_size", str(prompts_per_step), "--train.micro_batch_size", str(prompts_per_step),
        "--train.max_epochs", str(p["max_epochs"]), "--train.num_episodes", str(episodes), "--train.seed", str(SEED),
        "--actor.adam.lr", str(p["actor_lr"]), "--critic.adam.lr", str(p["critic_lr"]),
        "--algo.kl.init_coef", str(p["kl_init_coef"]),
        "--actor.lr_warmup_ratio", "0", "--critic.lr_warmup_ratio", "0",
        "--ckpt.output_dir", str(out / "policy"), "--ckpt.path", str(out / "checkpoints"),
    ]


def contrastive_flags(store: Path, k: int) -> list[str]:
    return ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(store), "--contrastive.k", str(k)]


def run_env(repo: Path, bed: Testbed) -> dict:
    """The environment of the demo's subprocesses: the flash_attn stand-in, the proxy's config, a pinned KV cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo / "tests" / "support"), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(repo / ".cache" / "torch_extensions"))  # DeepSpeed's JIT ops, once
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", EVIDENCE_CONFIG=str(bed.config))
    return env


def launch(launch_py: Path, run: Run, env: dict) -> None:
    """Start train_ppo_ray through cpu_training/launch.py in its own session (Ray and its workers die with it)."""
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
        if (step := STEP_LINE.search(line)) is not None:
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
    gold = f"  gold {status['gold']:+.3f}" if "gold" in status else ""  # the reward file's extra log: never trained on
    return (f"  {name:<11} step {status['step']:>2}/{total}  reward r {status['reward']:+.3f}  "
            f"r - b {reward_minus_baseline(status, baselines):+.3f}{gold}  KL {status.get('kl', 0.0):.5f}  "
            f"{status['timing/step_total']:5.1f} s")


def train(launch_py: Path, runs: dict[str, Run], total_steps: int, at_once: bool, env: dict) -> None:
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
                launch(launch_py, runs[name], env)
            follow(runs, names, bars, total_steps)
    finally:
        for bar in bars.values():
            bar.close()
        for run in runs.values():
            stop(run)
    check_runs(runs, total_steps)


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


def check_runs(runs: dict[str, Run], total_steps: int) -> None:
    """Both runs trained every step, on the same prompts step by step; steps.json keeps what each logged."""
    for run in runs.values():
        (run.out / "steps.json").write_text(json.dumps(run.steps, indent=1))
        if run.process.returncode != 0 or len(run.steps) != total_steps:
            tail = "".join(run.log.read_text(errors="replace").splitlines(keepends=True)[-40:])
            raise SystemExit(f"openrlhf-contrastive demo: train_ppo_ray ({run.name}) exited with "
                             f"{run.process.returncode} after {len(run.steps)} of {total_steps} PPO steps; the last "
                             f"lines of {run.log}:\n{tail}")
    # The reward file logs a number fixed per prompt (prompt_tag); its step mean identifies the step's prompts (two
    # different sets of 16 differ by about 0.07; the same set only by float32 rounding in another order).
    contrastive, raw = ([s["prompt_tag"] for s in run.steps] for run in runs.values())
    differ = [step for step, (a, b) in enumerate(zip(contrastive, raw), 1) if abs(a - b) > PROMPT_TAG_TOLERANCE]
    if differ:
        raise SystemExit(f"openrlhf-contrastive demo: the two training runs drew different prompts at steps {differ}, so "
                         "the raw run's r - b (the contrastive run's baseline of the same step subtracted) would be "
                         f"wrong. Both use --train.seed {SEED}; compare `prompt_tag` in the `Global step` lines of "
                         + " and ".join(str(run.log) for run in runs.values()))


def both_fit() -> tuple[bool, float]:
    """(whether two runs fit in the memory available now, GiB available): /proc/meminfo's MemAvailable."""
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20
    return available >= 2 * RUN_MEMORY_GIB, available


def evaluate(runs: dict[str, Run], bed: Testbed, store: Path, out: Path, env: dict) -> dict[str, dict]:
    """4. `openrlhf-contrastive evaluate` of every trained policy against the store, all at once; {run: figures}."""
    processes = {}
    for name, run in runs.items():
        flags = bed.common_flags()
        flags[flags.index("--actor.model_name_or_path") + 1] = str(run.policy)
        command = [sys.executable, "-m", "openrlhf_contrastive.cli", "evaluate", *flags, "--contrastive.backend", "hf",
                   "--contrastive.baseline_path", str(store), "--contrastive.k", str(bed.ppo["k"]), "--eval.n", str(EVAL_N),
                   "--eval.output_dir", str(out / name), "--eval.top", "3"]
        (out / name).mkdir(parents=True, exist_ok=True)
        with open(out / name / "evaluate.log", "w") as log:
            processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
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


def train_and_evaluate(launch_py: Path, cache: Path, out: Path, prompts: int, prompts_per_step: int,
                       episodes: int) -> list:
    """Steps 1-4 of the module docstring; prints the win rates side by side and returns the runs for the PNG."""
    from openrlhf_contrastive.report import TrainingRun

    repo = launch_py.parent.parent
    print("\ndemo: training. Two SmolLM2 PPO runs need about 11 GiB each and minutes per step on CPU, so training "
          "uses the evidence testbed's tiny policy (benchmarks/evidence: a 2-layer Llama that reverses words, with a "
          "known gold reward) and a noisy proxy of gold as the reward (per-prompt offsets and noise, as a reward "
          "model's).", flush=True)
    bed = prepare_testbed(repo, cache, out, prompts)
    env = run_env(repo, bed)
    store = out / "baselines"  # written by the contrastive run's in-job stage; a rerun of the demo reuses it
    total_steps = prompts // prompts_per_step * episodes
    runs = {name: Run(name, out / name, train_flags(bed, out / name, prompts_per_step, episodes))
            for name in ("contrastive", "raw")}
    runs["contrastive"].flags += contrastive_flags(store, bed.ppo["k"])
    at_once, available = both_fit()
    when = ("at once" if at_once else f"one after the other ({available:.0f} GiB of memory available; two at once "
            f"need about {2 * RUN_MEMORY_GIB})")
    stage = "on its store" if (store / "header.json").exists() else f"whose in-job stage first writes k = {bed.ppo['k']} baselines per prompt to"
    print(f"demo: two real train_ppo_ray runs on CPU (cpu_training/, test-and-demo-only), {when}: {total_steps} PPO "
          f"steps of {prompts_per_step} prompts each (gae: critic, reference model), the same seed; with "
          f"--reward_fn contrastive, {stage} {store}, and without (raw reward r). Each start-up (Ray, vLLM engine, "
          f"DeepSpeed) takes a minute or more; commands and logs in {out}/{{contrastive,raw}}/", flush=True)
    start = time.time()
    train(launch_py, runs, total_steps, at_once, env)
    print(f"demo: trained in {time.time() - start:.0f} s; evaluating both policies against the "
          f"SFT baselines (`openrlhf-contrastive evaluate`, n = {EVAL_N} responses per prompt) ...", flush=True)
    start = time.time()
    figures = evaluate(runs, bed, store, out / "evaluation", env)
    print(f"\ndemo: win rate against the SFT start by the proxy reward, P(r > r_j) with ties half, 95% interval over "
          f"prompts (evaluated in {time.time() - start:.0f} s; 0.5 is the SFT policy itself):")
    names = {"contrastive": "PPO, --reward_fn contrastive", "raw": "PPO, raw reward (no --reward_fn)"}
    for name, fig in figures.items():
        lo, hi = fig["win_rate_interval"]
        print(f"  {names[name]:<34} win rate {fig['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]   mean reward "
              f"{fig['policy_mean']:+.3f} (SFT {fig['baseline_mean']:+.3f})   evaluation: {out / 'evaluation' / name}/")
    print(f"demo: {total_steps} PPO steps of one seed are not evidence that either reward trains better; see the README's "
          "\"Does it help?\" for the controlled experiments.")
    baselines = step_baselines(runs)
    return [
        TrainingRun(names[name], [s["step"] for s in run.steps], [s["reward"] for s in run.steps],
                    [reward_minus_baseline(s, baselines) for s in run.steps], figures[name]["win_rate"],
                    figures[name]["win_rate_interval"])
        for name, run in runs.items()
    ]
