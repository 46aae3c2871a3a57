"""`make demo`: the package's demo (`openrlhf-contrastive demo`: the offline stage on SmolLM2, r and r - b), then
PPO with and without the contrastive reward on the evidence testbed, both trained policies against the SFT start.

    python -m lab.demo --cache .cache/demo --out .cache/demo/output [the demo's flags] [--train-prompts N ...]

The policy here is not the stage's SmolLM2: two SmolLM2 PPO runs (actor, critic, reference model, vLLM engine) need
about 11 GiB each and minutes per step on a 2-core CPU. Training uses the evidence testbed's tiny policy instead
(lab/testbed.py with evidence v2's task and SFT settings): a 2-layer Llama trained here in code to reverse words of
2-10 letters, partly competent, with a known gold reward. The reward PPO sees is v1's noisy proxy of gold
(lab/testbed_reward.py with v1's proxy settings: gold + a per-prompt offset + per-prompt noise + a length bias, a
deterministic function of the text, as a reward model is), the kind of error a per-prompt baseline removes. The
trainer runs on CPU only through the lab's TEST-AND-DEMO-ONLY device choice (lab/cpu_training/), which is why this
part lives in the clone and not in the installed package.

Top to bottom:

    1. testbed   the SFT policy (trained once, cached), the training prompts, the reward file and its config
    2. launch    two real `python -m openrlhf.cli.train_ppo_ray` runs at once (lab/harness.py):
                   contrastive  + --reward_fn contrastive --contrastive.baseline_path <training/baselines>: the
                                  plugin's in-job stage samples and scores the k baselines per prompt through the
                                  trainer's own vLLM engine and reward path (no store yet), then PPO trains on r - b
                   raw          nothing more: the same seed, so the same prompts at every step
    3. follow    their logs as they run: one line per PPO step (reward r, r - b, gold, KL, seconds) and a progress
                 bar per run, from the status OpenRLHF logs after every step ("Global step N: {...}")
    4. evaluate  `openrlhf-contrastive evaluate` of each trained policy against the store (hf backend), both at
                 once: win rate P(r > r_j) against the SFT baselines with its 95% interval over prompts

The raw run logs no baseline (it has no --reward_fn). Its r - b subtracts, step by step, the baseline the
contrastive run logged for the same step: both runs draw the same prompts at every step (the same seed; the device
choice also seeds the trainer's prompt shuffle), which `check_runs` checks on the prompt of the rollout OpenRLHF
logs per step.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import harness, testbed
from openrlhf_contrastive.demo import run as stage_demo

# What OpenRLHF's PPOTrainer logs after every step (trainer/ppo_trainer.py): `✨ Global step N: {status}`, the
# step's metrics (means over its rollouts), the reward file's extra logs among them.
STEP_LINE = re.compile(r"Global step (\d+): (\{.*\})\s*$")
SEED = 42
EVAL_N = 2  # responses per prompt of each trained policy in `evaluate`
# The testbed: evidence v2's task and SFT policy (a weak start, so PPO has room), v1's noisy proxy (their configs).
TASK_CONFIG = harness.REPO / "benchmarks" / "evidence_v2" / "config.json"
PROXY_CONFIG = harness.REPO / "benchmarks" / "evidence" / "config.json"
REWARD_FILE = harness.REPO / "lab" / "testbed_reward.py"
# The training part's prompts: words of the evidence testbed's training set (1024 words).
TRAIN_PROMPTS, TRAIN_PROMPTS_MAX = 128, 1024
# Peak memory of one tiny training run, all its processes together (launcher, Ray, vLLM engine with its 1 GiB KV
# cache, PPO trainer, actor, critic, reference model): measured 3.3 GiB; two at once need twice this.
RUN_MEMORY_GIB = 4
# The package demo's stage part beside them (Ray, SmolLM2's vLLM CPU engine with its 1 GiB KV cache): about 3.5 GiB.
STAGE_MEMORY_GIB = 4
PROMPT_TAG_TOLERANCE = 1e-5
START_ATTEMPTS = 2
RUN_TIMEOUT_S = int(os.environ.get("OPENRLHF_CONTRASTIVE_DEMO_TIMEOUT_S", "1800"))


@dataclass
class Run:
    """One train_ppo_ray run: its process, and what it logged per PPO step."""

    name: str
    out: Path
    flags: list[str]
    process: subprocess.Popen | None = None
    steps: list[dict] = field(default_factory=list)  # OpenRLHF's status dict of every step, in order
    parsed_bytes: int = 0
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.out / "train.log"

    @property
    def policy(self) -> Path:
        return self.out / "ckpt"  # harness.output_flags: the final HF policy


@dataclass
class Testbed:
    """What the training runs share: the SFT policy, the prompt file, the reward file and its config, the PPO settings."""

    policy: Path
    prompts: Path
    reward: Path
    config: Path
    ppo: dict  # evidence v2's PPO settings (config.json "ppo"), used as they are: nothing is tuned for the demo

    def common_flags(self, policy: Path | None = None) -> list[str]:
        """The policy, reward, prompts and sampling flags of every command on the testbed (train, evaluate)."""
        sampling = harness.Sampling(self.ppo["data_max_len"], self.ppo["max_new_tokens"], self.ppo["temperature"])
        return harness.testbed_flags(policy or self.policy, self.prompts, ["--reward.remote_url", str(self.reward)],
                                     sampling)


def prepare_testbed(cache: Path, out: Path, prompts: int) -> Testbed:
    """1. The SFT policy (trained once per configuration, cached), `prompts` training words, the proxy's config."""
    cfg = testbed.load_config(TASK_CONFIG)
    cfg["proxy"] = testbed.load_config(PROXY_CONFIG)["proxy"]
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
    return Testbed(policy.resolve(), prompt_file, REWARD_FILE, config, cfg["ppo"])


def train_flags(bed: Testbed, out: Path, prompts_per_step: int, episodes: int) -> list[str]:
    """train_ppo_ray flags of one run: the testbed's flags and evidence v2's gae PPO (actor, critic, reference model)."""
    p = bed.ppo
    ppo = harness.PPO(estimator="gae",  # the paper's PPO, where a per-prompt baseline changes training
                      prompts_per_step=prompts_per_step, episodes=episodes, seed=SEED, actor_lr=p["actor_lr"],
                      critic_lr=p["critic_lr"], kl_init_coef=p["kl_init_coef"], max_epochs=p["max_epochs"])
    # the critic starts from the SFT policy with a new value head
    return (bed.common_flags() + harness.CPU_PLACEMENT + harness.ppo_flags(ppo, bed.policy)
            + harness.output_flags(out, tensorboard=False))


def launch(run: Run, env: dict) -> None:
    """Start train_ppo_ray on CPU in its own session (Ray and its workers die with it)."""
    command = harness.launch_command(run.flags)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "command.json").write_text(json.dumps(command, indent=1))
    run.process = harness.start_in_own_session(command, run.log, cwd=run.out, env=env)
    run.starts += 1
    run.parsed_bytes = 0


def restart_failed_start(run: Run, env: dict) -> bool:
    """Start a run again, once, when it failed before its first PPO step. On a loaded machine a start-up can fail for
    reasons that are neither the run's nor the demo's (seen: two of OpenRLHF's distributed actors of concurrent runs
    given the same free port, EADDRINUSE; Ray's raylet missing its 30 s registration window)."""
    if run.process.returncode == 0 or run.starts >= START_ATTEMPTS or "Global step " in run.log.read_text(errors="replace"):
        return False
    failed = run.out / f"train.attempt{run.starts}.log"
    run.log.rename(failed)
    print(f"demo: train_ppo_ray ({run.name}) failed while starting up (exit {run.process.returncode}; {failed}); "
          "starting it again", flush=True)
    harness.kill_session(run.process)
    launch(run, env)
    return True


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


def train(runs: dict[str, Run], total_steps: int, at_once: bool, env: dict, meanwhile=None) -> None:
    """Run both trainings (at once, or the contrastive one first), printing their steps under a progress bar each.
    `meanwhile(start)` (the package demo's stage part) runs first, in the foreground, and calls `start()` once its own
    engine is up: that launches the first runs, whose start-up then overlaps the stage's sampling."""
    from tqdm import tqdm

    bars: dict = {}
    groups = [list(runs)] if at_once else [[name] for name in runs]
    # The runs have sessions of their own (Ctrl-C in a terminal does not reach them): a demo that is interrupted or
    # terminated stops them on its way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if meanwhile is not None:
            meanwhile(lambda: [launch(runs[name], env) for name in groups[0]])
        for names in groups:
            for name in names:
                if runs[name].process is None:
                    launch(runs[name], env)
            bars = bars or {name: tqdm(total=total_steps, desc=f"PPO {name:<11}", unit="step", position=i,
                                       dynamic_ncols=True) for i, name in enumerate(runs)}
            follow(runs, names, bars, total_steps, env)
    finally:
        for bar in bars.values():
            bar.close()
        for run in runs.values():
            if run.process is not None:
                harness.kill_session(run.process)
    check_runs(runs, total_steps)


def follow(runs: dict[str, Run], active: list[str], bars: dict, total_steps: int, env: dict) -> None:
    """Print the steps of the `active` runs as they come, until they end (a start-up failure is started again once).
    A raw step waits for the contrastive run's baseline of the same step (its r - b needs it) while the contrastive
    run is still going."""
    pending: dict[str, list[dict]] = {name: [] for name in active}
    deadline = time.time() + RUN_TIMEOUT_S
    while True:
        running = [name for name in active
                   if runs[name].process.poll() is None or restart_failed_start(runs[name], env)]
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


def available_gib() -> float:
    """/proc/meminfo's MemAvailable, GiB."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20


def evaluate(runs: dict[str, Run], bed: Testbed, store: Path, out: Path, env: dict) -> dict[str, dict]:
    """4. `openrlhf-contrastive evaluate` of every trained policy against the store, all at once; {run: figures}."""
    processes = {}
    for name, run in runs.items():
        command = [sys.executable, "-m", "openrlhf_contrastive.cli", "evaluate", *bed.common_flags(run.policy),
                   "--contrastive.backend", "hf", "--contrastive.baseline_path", str(store), "--contrastive.k",
                   str(bed.ppo["k"]), "--eval.n", str(EVAL_N), "--eval.output_dir", str(out / name), "--eval.top", "3"]
        (out / name).mkdir(parents=True, exist_ok=True)
        processes[name] = harness.start_in_own_session(command, out / name / "evaluate.log", env=env)
    figures = {}
    for name, process in processes.items():
        log = out / name / "evaluate.log"
        if process.wait(timeout=RUN_TIMEOUT_S) != 0:
            raise SystemExit(f"demo: evaluate of the {name} policy exited with {process.returncode}; the last lines "
                             f"of {log}:\n{harness.tail(log, 30)}")
        report = json.loads((out / name / "evaluation.json").read_text())
        figures[name] = report["rewards"][report["store_reward"]]
    return figures


NAMES = {"contrastive": "PPO, --reward_fn contrastive", "raw": "PPO, raw reward (no --reward_fn)"}


def announce(runs: dict[str, Run], store: Path, k: int, total_steps: int, prompts_per_step: int, at_once: bool,
             beside_stage: bool, available: float, out: Path) -> None:
    when = ("at once" if at_once else f"one after the other ({available:.0f} GiB of memory available; two at once "
            f"need about {2 * RUN_MEMORY_GIB})")
    when += (", started in the background once the offline stage below has its engine: their start-up (Ray, vLLM "
             "engine, DeepSpeed; a minute or more) runs beside its sampling, and their steps are printed after it"
             if beside_stage else "")
    stage = ("on its store" if (store / "header.json").exists()
             else f"whose in-job stage first writes k = {k} baselines per prompt to")
    print(f"demo: two real train_ppo_ray runs on CPU (lab/cpu_training/, test-and-demo-only), {when}: {total_steps} PPO "
          f"steps of {prompts_per_step} prompts each (gae: critic, reference model), the same seed; with "
          f"--reward_fn contrastive, {stage} {store}, and without (raw reward r). Commands and logs in "
          f"{out}/{{contrastive,raw}}/", flush=True)


def print_win_rates(figures: dict[str, dict], total_steps: int, seconds: float, out: Path) -> None:
    print(f"\ndemo: win rate against the SFT start by the proxy reward, P(r > r_j) with ties half, 95% interval over "
          f"prompts (evaluated in {seconds:.0f} s; 0.5 is the SFT policy itself):")
    for name, fig in figures.items():
        lo, hi = fig["win_rate_interval"]
        print(f"  {NAMES[name]:<34} win rate {fig['win_rate']:.3f} [{lo:.3f}, {hi:.3f}]   mean reward "
              f"{fig['policy_mean']:+.3f} (SFT {fig['baseline_mean']:+.3f})   evaluation: {out / 'evaluation' / name}/")
    print(f"demo: {total_steps} PPO steps of one seed are not evidence that either reward trains better; see the README's "
          "\"Does it help?\" for the controlled experiments.")


def curves(runs: dict[str, Run], figures: dict[str, dict]) -> list:
    """The report's training panels: r and r - b per step, and the win rate, of each run."""
    from openrlhf_contrastive.report import TrainingRun

    baselines = step_baselines(runs)
    return [TrainingRun(NAMES[name], [s["step"] for s in run.steps], [s["reward"] for s in run.steps],
                        [reward_minus_baseline(s, baselines) for s in run.steps], figures[name]["win_rate"],
                        figures[name]["win_rate_interval"])
            for name, run in runs.items()]


def train_and_evaluate(cache: Path, out: Path, prompts: int, prompts_per_step: int, episodes: int,
                       meanwhile=None) -> list:
    """Steps 1-4 of the module docstring; prints the win rates side by side and returns the runs for the PNG.
    `meanwhile(start)` runs first; it calls `start()` when the trainings may start beside it, if memory allows both."""
    print("demo: training. Two SmolLM2 PPO runs need about 11 GiB each and minutes per step on CPU, so training "
          "uses the evidence testbed's tiny policy (lab/testbed.py: a 2-layer Llama that reverses words, with a "
          "known gold reward) and a noisy proxy of gold as the reward (per-prompt offsets and noise, as a reward "
          "model's).", flush=True)
    bed = prepare_testbed(cache, out, prompts)
    env = harness.run_env(EVIDENCE_CONFIG=str(bed.config))
    store = out / "baselines"  # written by the contrastive run's in-job stage; a rerun of the demo reuses it
    total_steps = prompts // prompts_per_step * episodes
    runs = {name: Run(name, out / name, train_flags(bed, out / name, prompts_per_step, episodes))
            for name in ("contrastive", "raw")}
    runs["contrastive"].flags += harness.contrastive_flags(store, bed.ppo["k"])
    available = available_gib()
    at_once = available >= 2 * RUN_MEMORY_GIB
    beside_stage = meanwhile is not None and available >= (2 if at_once else 1) * RUN_MEMORY_GIB + STAGE_MEMORY_GIB
    if meanwhile is not None and not beside_stage:
        meanwhile(lambda: None)
    announce(runs, store, bed.ppo["k"], total_steps, prompts_per_step, at_once, beside_stage, available, out)
    start = time.time()
    train(runs, total_steps, at_once, env, meanwhile if beside_stage else None)
    print(f"demo: trained in {time.time() - start:.0f} s; evaluating both policies against the SFT baselines "
          f"(`openrlhf-contrastive evaluate`, n = {EVAL_N} responses per prompt) ...", flush=True)
    start = time.time()
    figures = evaluate(runs, bed, store, out / "evaluation", env)
    print_win_rates(figures, total_steps, time.time() - start, out)
    return curves(runs, figures)


def build_parser() -> argparse.ArgumentParser:
    """The package demo's flags and the training part's."""
    parser = stage_demo.build_parser()
    parser.prog = "python -m lab.demo"
    parser.description = ("`make demo`: the package's demo (offline stage, r and r - b), then PPO with and without the "
                          "contrastive reward on the evidence testbed through the real train_ppo_ray on CPU, and both "
                          "policies evaluated against the SFT start.")
    parser.add_argument("--train-prompts", type=int, default=TRAIN_PROMPTS,
                        help="training prompts (words of the evidence testbed) of the training part")
    parser.add_argument("--train-prompts-per-step", type=int, default=16, help="prompts (one rollout each) per PPO step")
    parser.add_argument("--train-episodes", type=int, default=1, help="passes over the prompts in training")
    return parser


def check_training_options(opts) -> None:
    """Everything the training part needs, checked before the stage spends any time."""
    prompts = opts.train_prompts
    if not 1 <= prompts <= TRAIN_PROMPTS_MAX or not 1 <= opts.train_prompts_per_step <= prompts or opts.train_episodes < 1:
        raise SystemExit(
            f"--train-prompts {prompts}, --train-prompts-per-step {opts.train_prompts_per_step} and --train-episodes "
            f"{opts.train_episodes}: training takes 1 to {TRAIN_PROMPTS_MAX} testbed prompts, a PPO step between 1 "
            "and all of them, and at least one pass over them. Fix: pick values in those ranges."
        )
    from openrlhf_contrastive import patching

    if patching.plan().state != "patched":
        raise SystemExit(
            "demo: the openrlhf of this Python environment is not patched, so train_ppo_ray has no --reward_fn and the "
            "training part would stop at its first run. Fix: `openrlhf-contrastive patch` (`make demo` does it), or "
            "run the stage-only demo (`openrlhf-contrastive demo`, `make demo-quick`)."
        )


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    stage_demo.check_options(opts)
    check_training_options(opts)
    out = Path(opts.out).resolve()
    cache = Path(opts.cache).resolve() if opts.cache else stage_demo.default_cache()
    stage = []  # the package demo's result, once `meanwhile` has run it
    training = train_and_evaluate(cache, out / "training", opts.train_prompts, opts.train_prompts_per_step,
                                  opts.train_episodes,
                                  meanwhile=lambda start: stage.append(stage_demo.run(opts, on_engine_ready=start)))
    stage_demo.write_report(stage[0], training)
    return 0


if __name__ == "__main__":
    sys.exit(main())
