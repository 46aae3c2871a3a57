"""The real `python -m openrlhf.cli.train_ppo_ray ... --reward_fn contrastive` end to end on a CPU machine.

Three runs of OpenRLHF's own PPO (Ray with logical GPUs, a vLLM CPU engine, DeepSpeed on gloo, the `gae`
estimator with a critic, a reference model, a reward-function file, four PPO steps, weight sync to vLLM) on tiny
models built here, through the TEST-ONLY device choice of the top-level cpu_training/ (cuda -> cpu, nccl -> gloo;
see cpu_training/cpu_device.py):

    raw            no --reward_fn
    first          --reward_fn contrastive, no store yet: the in-job stage writes it, then PPO trains
    second         --reward_fn contrastive on that store: no baselines are generated
    agent          --reward_fn contrastive with --train.agent_func_path (a small agent of ours gives the reward):
                   the in-job stage scores the baselines through the same agent executor as the rollouts

Checked: the contrastive metrics reach tensorboard; `second` and `raw` start from the same seeds, so their first
PPO step scores the same rollouts: same raw reward, and returns lower by exactly the logged baseline (r - b);
the second run leaves the store untouched.

Slow: about 10.5 min on 2 busy cores (3 runs of 3-4 min, nearly all process start-up); on a fresh machine the first
DeepSpeed init also JIT-builds a comm op (55-95 s, cached in TORCH_EXTENSIONS_DIR, default .cache/torch_extensions).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

HERE = Path(__file__).parent
LAUNCH = HERE.parent.parent / "cpu_training" / "launch.py"
REWARD_FILE = HERE / "reward_func_text.py"
AGENT_FILE = HERE / "agent_text.py"
REPO = HERE.parent.parent
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


def train_flags(work: Path, out: Path) -> list[str]:
    """OpenRLHF flags of one small PPO run: 4 prompts, one rollout per PPO step -> 4 PPO steps.

    One rollout per step keeps vLLM's sampling reproducible across runs: OpenRLHF sends the rollouts of a batch
    as concurrent requests without per-request seeds, so with several of them the engine's shared generator
    serves them in an order that depends on timing; a lone first request draws the same tokens in every run.
    """
    return [
        "--actor.model_name_or_path", str(work / "policy"), "--critic.model_name_or_path", str(work / "critic"),
        "--reward.remote_url", str(REWARD_FILE),
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


def launch(work: Path, name: str, extra: list[str]) -> dict:
    """Run train_ppo_ray through the CPU launcher; return its tensorboard scalars {tag: {step: value}}.

    With --train.agent_func_path in `extra`, the agent replaces the reward-function file (as in OpenRLHF's agent
    examples, which pass no --reward.remote_url).
    """
    out = work / name
    out.mkdir()
    flags = train_flags(work, out)
    if "--train.agent_func_path" in extra:
        at = flags.index("--reward.remote_url")
        del flags[at : at + 2]
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))  # DeepSpeed's JIT comm op
    env.setdefault("VLLM_CACHE_ROOT", str(REPO / ".cache" / "vllm"))
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", VLLM_CPU_KVCACHE_SPACE="1")
    log = out / "train.log"
    start = time.time()
    with open(log, "w") as f:
        # Own session: every process of the run (Ray, workers, vLLM engine cores) is killed with it afterwards.
        proc = subprocess.Popen(
            [sys.executable, str(LAUNCH), *flags, *extra],
            cwd=out, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    seconds = time.time() - start
    print(f"{name}: train_ppo_ray took {seconds:.0f} s (log {log})")
    assert rc == 0, f"{name}: train_ppo_ray exited with {rc}; last lines of {log}:\n" + "".join(
        log.read_text(errors="replace").splitlines(keepends=True)[-60:]
    )
    return read_scalars(out / "tb")


def read_scalars(tb: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in tb.iterdir() if p.is_dir()]  # <tensorboard_dir>/<run_name>
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def store_files(store: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(store.iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    work = tmp_path_factory.mktemp("train_ppo_ray_cpu")
    build_policy(work / "policy")
    build_reward_model(work / "critic", seed=2)  # the critic starts from a (random) reward model, as usual
    (work / "prompts.jsonl").write_text("".join(json.dumps({"input": q}) + "\n" for q in QUESTIONS))
    store = work / "baselines"

    raw = launch(work, "raw", [])
    first = launch(work, "first", contrastive_flags(store))
    stored = store_files(store)
    second = launch(work, "second", contrastive_flags(store))
    agent = launch(work, "agent", contrastive_flags(work / "agent_baselines") + ["--train.agent_func_path", str(AGENT_FILE)])
    return {"raw": raw, "first": first, "second": second, "store": store, "stored": stored, "agent": agent,
            "agent_store": work / "agent_baselines"}


def test_contrastive_metrics_reach_tensorboard(runs):
    for name in ("first", "second"):
        scalars = runs[name]
        for key in ("baseline", "raw_reward", "reward", "beat_baseline", "hit"):
            assert set(scalars[f"train/contrastive/{key}"]) == set(STEPS), (name, key)
        for step in STEPS:
            assert scalars["train/contrastive/hit"][step] == 1.0
            # OpenRLHF's own raw reward is untouched; the plugin's value is r - mean(baselines) (shape mean)
            assert scalars["train/contrastive/raw_reward"][step] == pytest.approx(scalars["train/reward"][step], abs=ATOL)
            assert scalars["train/contrastive/reward"][step] == pytest.approx(
                scalars["train/reward"][step] - scalars["train/contrastive/baseline"][step], abs=ATOL
            )
    assert not any(tag.startswith("train/contrastive/") for tag in runs["raw"])


def test_in_job_stage_wrote_the_store(runs):
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(runs["store"])
    assert store.k == K and len(store) == len(QUESTIONS)
    # Each PPO step trains on one prompt and the episode visits every prompt once: the logged baselines of the
    # steps are the stored per-prompt means, in the dataloader's order.
    means = sorted(float(m) for m in store.mean)
    for name in ("first", "second"):
        logged = sorted(runs[name]["train/contrastive/baseline"][step] for step in STEPS)
        assert logged == pytest.approx(means, abs=ATOL), name


def test_second_run_generates_no_baselines(runs):
    assert store_files(runs["store"]) == runs["stored"]


def test_returns_move_by_the_baseline_against_an_identical_raw_run(runs):
    raw, con = runs["raw"], runs["second"]
    # Same seeds, same initial weights: the first PPO step scores the same rollouts in both runs.
    assert con["train/reward"][STEP1] == pytest.approx(raw["train/reward"][STEP1], abs=ATOL)
    assert con["train/response_length"][STEP1] == raw["train/response_length"][STEP1]
    assert con["train/kl"][STEP1] == pytest.approx(raw["train/kl"][STEP1], abs=ATOL)
    # return = sum of per-token rewards (r - kl terms): with the plugin, r - b
    baseline = con["train/contrastive/baseline"][STEP1]
    assert baseline != pytest.approx(0.0, abs=1e-3)
    assert con["train/return"][STEP1] == pytest.approx(raw["train/return"][STEP1] - baseline, abs=ATOL)


def test_agent_rewards_feed_the_in_job_stage_and_the_contrastive_value(runs):
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(runs["agent_store"])
    assert store.k == K and len(store) == len(QUESTIONS)
    assert store.fingerprint["info"]["reward_sources"] == [str(AGENT_FILE)]
    # The agent pays at most 1 per turn and at most two turns: baselines and rollouts are the agent's rewards.
    assert ((store.rewards >= 0) & (store.rewards <= 2)).all() and store.rewards.std() > 0
    scalars = runs["agent"]
    for step in STEPS:
        assert 0 <= scalars["train/contrastive/raw_reward"][step] <= 2
        assert scalars["train/contrastive/reward"][step] == pytest.approx(
            scalars["train/contrastive/raw_reward"][step] - scalars["train/contrastive/baseline"][step], abs=ATOL
        )
