"""The real `python -m openrlhf.cli.train_ppo_ray ... --reward_fn contrastive` end to end on a CPU machine.

Three runs of OpenRLHF's own PPO (Ray with logical GPUs, a vLLM CPU engine, DeepSpeed on gloo, the `gae`
estimator with a critic, a reference model, a reward-function file, four PPO steps, weight sync to vLLM) on tiny
models built here, through the TEST-ONLY device choice of the top-level lab/cpu_training/ (cuda -> cpu, nccl -> gloo;
see lab/cpu_training/cpu_device.py):

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
from pathlib import Path

import pytest

from cpu_runs import ATOL, K, QUESTIONS, STEP1, STEPS, contrastive_flags, launch, store_files  # tests/e2e

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

HERE = Path(__file__).parent
REWARD_FILE = HERE / "reward_func_text.py"
AGENT_FILE = HERE / "agent_text.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    work = tmp_path_factory.mktemp("train_ppo_ray_cpu")
    build_policy(work / "policy")
    build_reward_model(work / "critic", seed=2)  # the critic starts from a (random) reward model, as usual
    (work / "prompts.jsonl").write_text("".join(json.dumps({"input": q}) + "\n" for q in QUESTIONS))
    store = work / "baselines"

    reward = ["--reward.remote_url", str(REWARD_FILE)]
    raw = launch(work, "raw", reward, [])
    first = launch(work, "first", reward, contrastive_flags(store))
    stored = store_files(store)
    second = launch(work, "second", reward, contrastive_flags(store))
    # As in OpenRLHF's agent examples, an agent replaces the reward flags.
    agent = launch(work, "agent", [], contrastive_flags(work / "agent_baselines") + ["--train.agent_func_path", str(AGENT_FILE)])
    return {"raw": raw, "first": first, "second": second, "store": store, "stored": stored, "agent": agent,
            "agent_store": work / "agent_baselines", "work": work}


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


def test_stage_summary_diagnosis_and_coverage_reach_train_ppo_rays_output(runs):
    """At OpenRLHF's default log level: the in-job stage's summary and the store's diagnosis (first run), the
    diagnosis and the coverage (both runs); the predicted spread ratio logged every step. One rollout per step: r
    does not vary within a batch, so the measured ratio is not logged."""
    from openrlhf_contrastive.diagnose import diagnose
    from openrlhf_contrastive.store import BaselineStore

    diagnosis = diagnose(BaselineStore.load(runs["store"]).rewards)
    for name in ("first", "second"):
        log = (runs["work"] / name / "train.log").read_text(errors="replace")
        assert f"will it help? {diagnosis.verdict}" in log, name
        assert f"covers {len(QUESTIONS)} of {len(QUESTIONS)} training prompts" in log, name
        for step in STEPS:
            assert runs[name]["train/contrastive/spread_ratio_predicted"][step] == pytest.approx(diagnosis.predicted_ratio, abs=ATOL)
        assert "train/contrastive/spread_ratio" not in runs[name]
    first = (runs["work"] / "first" / "train.log").read_text(errors="replace")
    assert f"{len(QUESTIONS)} prompts x k={K} ({len(QUESTIONS)} sampled now, 0 already stored" in first


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


def test_without_refresh_the_store_and_metrics_are_as_before(runs):
    """--contrastive.refresh_every 0 (the default): no generation, no new header field, no refresh metric."""
    from openrlhf_contrastive.store import FORMAT

    assert not (runs["store"] / "generations").exists()
    header = json.loads((runs["store"] / "header.json").read_text())
    assert header["format"] == FORMAT == "openrlhf-contrastive-store/2"
    assert set(header) == {"format", "k", "key_scheme", "keep_responses", "fingerprint"}
    assert not {"policy_step", "run"} & set(header["fingerprint"])
    for name in ("first", "second", "agent"):
        assert not [tag for tag in runs[name] if tag.startswith(("train/contrastive/generation", "train/contrastive/refresh"))]
