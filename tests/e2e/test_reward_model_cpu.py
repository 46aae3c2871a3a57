"""The reward-model path on a CPU machine, from OpenRLHF's own `train_rm` to PPO, `sample`, `evaluate`, `rescore`.

A tiny policy (openrlhf_contrastive.demo.tiny) is the base; `python -m openrlhf.cli.train_rm` trains a reward
model from it on pairs made here, through the TEST-ONLY device choice of lab/cpu_training/ (lab/cpu_training/train_rm.py:
one process, gloo). In every pair the chosen response is the rejected one plus a closing "thank you": a feature
the reward model can learn in a few steps, and that a model which has not learned it cannot separate by more
than its random head's noise.

Checked: the checkpoint loads through OpenRLHF's get_llm_for_sequence_regression, separates chosen from rejected
on the training pairs (the base with a fresh head, as train_rm starts, does not), and carries the normalisation
statistics train_rm computes on its evaluation pairs. Then, with that reward model (`--reward.model_name_or_path`)
and the real train_ppo_ray through lab/cpu_training/launch.py (cpu_runs.py, shared with test_train_ppo_ray_cpu.py):

    raw            no --reward_fn
    first          --reward_fn contrastive, no store: the in-job stage scores the baselines through the trainer's
                   own RewardModelActor group, then PPO trains 4 steps
    second         the same on that store: no baselines generated; its step 1 against raw's: returns lower by
                   exactly the logged baseline
    sample         `openrlhf-contrastive sample --contrastive.backend openrlhf` (its own vLLM engine and
                   RewardModelActor group) into another store: the in-job stage's rewards for the same responses
    evaluate       `openrlhf-contrastive evaluate` of the SFT policy against the store, openrlhf and hf backends
    rescore        the kept responses scored again with the reward model (rescore scores in-process, as hf)

Baselines are sampled at a near-greedy temperature (GREEDY), so that two stages write the same responses and
their rewards can be compared one by one. Without --reward.normalize_enable: with openrlhf 0.11.2's transformers
5.15 the reward model's mean/std buffers come back uninitialised (lab/cpu_training/README.md); the store's refusal of
the other normalisation is tested at parse time (tests/integration/test_reward_model_store.py).
"""

import json
import random
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

HERE = Path(__file__).parent
REPO = HERE.parent.parent

QUESTIONS = [
    "Write a short poem about the sea.",
    "Explain why the sky is blue.",
    "List three prime numbers.",
    "What is two plus two?",
]
WORDS = "the quick brown fox jumps over lazy dog sea wind sky blue cat swim story answer four".split()
PAIRS = 32
MARGIN = 0.5  # a pair counts as separated when chosen outscores rejected by this much (a fresh head: ~0.01)
# Two runs score the same response in batches of different shape (other responses, other padding), and OpenRLHF's
# RewardModelActor computes in bf16 (--ds.param_dtype bf16, cpu_runs.py): the score keeps 8 significant bits, and a
# different reduction order moves it by a unit in its last place (CI saw -1.2344 against -1.2422, one unit at that
# magnitude). Scores of different responses differ by far more.
BF16_SCORE_TOLERANCE = dict(rel=2**-6, abs=2**-10)  # at least two units in the last place of a bf16 score
TRAIN_RM_FLAGS = [
    "--train.batch_size", "8", "--train.micro_batch_size", "8", "--train.max_epochs", "3",
    "--adam.lr", "1e-3", "--data.max_len", "64", "--train.seed", "42",
]


def write_pairs(path: Path) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(PAIRS):
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        rows.append({"prompt": QUESTIONS[i % len(QUESTIONS)], "chosen": f"{response} thank you", "rejected": response})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy

    from lab.harness import train_reward_model

    work = tmp_path_factory.mktemp("reward_model_cpu")
    base = build_policy(work / "policy")
    pairs = write_pairs(work / "pairs.jsonl")
    rm = train_reward_model(base, work / "pairs.jsonl", work / "rm", flags=TRAIN_RM_FLAGS)
    return {"work": work, "base": base, "pairs": pairs, "rm": rm}


def pair_scores(model, tokenizer, pairs) -> tuple[list[float], list[float]]:
    """The model's rewards of the chosen and the rejected text of each pair, tokenized as RewardDataset does."""
    import torch

    def score(prompt, response):
        text = (prompt + response).rstrip("\n")
        if not text.endswith(tokenizer.eos_token):
            text += " " + tokenizer.eos_token
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(ids, torch.ones_like(ids)).float().item()

    chosen = [score(p["prompt"], p["chosen"]) for p in pairs]
    rejected = [score(p["prompt"], p["rejected"]) for p in pairs]
    return chosen, rejected


def separated(chosen, rejected) -> float:
    return sum(c - r > MARGIN for c, r in zip(chosen, rejected)) / len(chosen)


def load(path, **kwargs):
    from openrlhf.models import get_llm_for_sequence_regression
    from transformers import AutoTokenizer

    model = get_llm_for_sequence_regression(str(path), "reward", attn_implementation="sdpa", **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def test_train_rm_separates_chosen_from_rejected(reward_model):
    import torch

    model, tokenizer = load(reward_model["rm"])
    chosen, rejected = pair_scores(model, tokenizer, reward_model["pairs"])
    assert separated(chosen, rejected) >= 0.9, list(zip(chosen, rejected))

    # Where train_rm started: the base with a freshly initialised value head (train_rm's init_value_head).
    torch.manual_seed(42)
    untrained, _ = load(reward_model["base"], init_value_head=True)
    assert separated(*pair_scores(untrained, tokenizer, reward_model["pairs"])) < 0.5


def test_train_rm_stores_the_normalisation_statistics_of_its_evaluation_pairs(reward_model):
    import statistics

    config = json.loads((reward_model["rm"] / "config.json").read_text())
    assert config["value_head_prefix"] == "score"
    # train_rm's evaluate: mean and std of the rewards of every evaluation pair's chosen and rejected response
    # (here the training pairs, passed as --eval.dataset by train_reward_model), computed in bf16.
    model, tokenizer = load(reward_model["rm"])
    chosen, rejected = pair_scores(model, tokenizer, reward_model["pairs"])
    assert config["std"] > 0.5
    assert config["mean"] == pytest.approx(statistics.fmean(chosen + rejected), abs=0.05)
    assert config["std"] == pytest.approx(statistics.stdev(chosen + rejected), rel=0.05)


# -- PPO with that reward model: the real train_ppo_ray, the in-job stage through its RewardModelActor group --------

GREEDY = "0.001"  # baseline temperature: every baseline is the policy's greedy response, so two stages see the same


def rm_flags(rm) -> list[str]:
    return ["--reward.model_name_or_path", str(rm), "--reward.num_nodes", "1", "--reward.num_gpus_per_node", "1"]


def baseline_flags(store) -> list[str]:
    from cpu_runs import contrastive_flags  # tests/e2e

    return [*contrastive_flags(store), "--contrastive.keep_responses", "--contrastive.temperature", GREEDY]


@pytest.fixture(scope="module")
def rm_runs(reward_model):
    """raw (no --reward_fn), first (the in-job stage writes the store through the trainer's RewardModelActor group,
    then PPO), second (same store); then `sample` standalone (a vLLM CPU engine and its own RewardModelActor group)
    into another store with the same flags, and `evaluate` through the openrlhf backend. The critic starts from the
    reward model, as in OpenRLHF's examples."""
    from cpu_runs import QUESTIONS, launch, run_launcher, store_files, train_flags

    work, rm = reward_model["work"], reward_model["rm"]
    (work / "prompts.jsonl").write_text("".join(json.dumps({"input": q}) + "\n" for q in QUESTIONS))
    store = work / "baselines"
    runs = {"work": work, "rm": rm, "store": store}
    runs["raw"] = launch(work, "raw", rm_flags(rm), [], critic=rm)
    runs["first"] = launch(work, "first", rm_flags(rm), baseline_flags(store), critic=rm)
    runs["stored"] = store_files(store)
    runs["second"] = launch(work, "second", rm_flags(rm), baseline_flags(store), critic=rm)

    # The training command, given to `sample` and `evaluate` as it is (flags that do not change baselines are ignored).
    def command(name, *extra):
        out = work / name
        return ["-m", "openrlhf_contrastive.cli", *extra, *train_flags(work, out, rm_flags(rm), rm),
                "--contrastive.backend", "openrlhf"], out

    args, out = command("sample", "sample")
    rc, log = run_launcher([*args, *baseline_flags(work / "sampled")], out, "sample")
    assert rc == 0, log.read_text(errors="replace")[-5000:]
    args, out = command("evaluate", "evaluate")
    rc, log = run_launcher([*args, *baseline_flags(store), "--eval.n", "4", "--eval.output_dir", str(out / "report")],
                           out, "evaluate")
    assert rc == 0, log.read_text(errors="replace")[-5000:]
    runs["evaluation"] = json.loads((out / "report" / "evaluation.json").read_text())
    return runs


def kept_rewards(store_dir) -> dict:
    """{prompt text: [(response, reward), ...]} of a store that keeps its responses."""
    from openrlhf_contrastive.store import BaselineStore, read_prompt_texts, read_responses

    store = BaselineStore.load(store_dir)
    texts, responses = read_prompt_texts(store_dir), read_responses(store_dir)
    return {texts[key]: list(zip(responses[key], rewards.tolist())) for key, rewards in zip(store.keys.tolist(), store.rewards)}


def test_in_job_stage_scores_baselines_with_the_reward_model_then_ppo_trains(rm_runs):
    from cpu_runs import K, QUESTIONS, STEPS

    from openrlhf_contrastive.fingerprint import model_identity
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(rm_runs["store"])
    assert store.k == K and len(store) == len(QUESTIONS)
    assert store.fingerprint["reward"] == [model_identity(str(rm_runs["rm"]))]
    assert store.fingerprint["normalize_reward"] is False
    # The trainer's own reward-model group was started and scored (OpenRLHF's RewardModelActor logs its settings).
    assert "reward normalization status: False" in (rm_runs["work"] / "first" / "train.log").read_text(errors="replace")
    # Each rollout's reward is the RM's and PPO ran every step on r - b (the plugin's value).
    for name in ("first", "second"):
        scalars = rm_runs[name]
        assert set(scalars["train/contrastive/baseline"]) == set(STEPS), name
        for step in STEPS:
            assert scalars["train/contrastive/reward"][step] == pytest.approx(
                scalars["train/reward"][step] - scalars["train/contrastive/baseline"][step], abs=1e-5
            )
    logged = sorted(rm_runs["second"]["train/contrastive/baseline"].values())
    assert logged == pytest.approx(sorted(float(m) for m in store.mean), abs=1e-5)


def test_second_run_generates_no_baselines(rm_runs):
    from cpu_runs import store_files

    assert store_files(rm_runs["store"]) == rm_runs["stored"]


def test_returns_move_by_the_baseline_against_an_identical_raw_run(rm_runs):
    from cpu_runs import STEP1

    raw, con = rm_runs["raw"], rm_runs["second"]
    assert con["train/reward"][STEP1] == pytest.approx(raw["train/reward"][STEP1], abs=1e-5)
    assert con["train/response_length"][STEP1] == raw["train/response_length"][STEP1]
    baseline = con["train/contrastive/baseline"][STEP1]
    assert baseline != pytest.approx(0.0, abs=1e-3)
    assert con["train/return"][STEP1] == pytest.approx(raw["train/return"][STEP1] - baseline, abs=1e-5)


def same_text_rewards(a: dict, b: dict) -> list[tuple[float, float]]:
    """(reward in a, reward in b) of every response text that both {prompt: [(text, reward), ...]} hold for a prompt."""
    return [(ra, rb) for prompt, pairs in a.items() for ta, ra in pairs for tb, rb in b.get(prompt, []) if ta == tb]


def test_sample_standalone_gives_the_in_job_rewards_for_the_same_responses(rm_runs):
    """`sample --contrastive.backend openrlhf` (its own vLLM engine and RewardModelActor group) against the in-job
    stage (the trainer's): the same fingerprint, and the same reward for every response both wrote (near-greedy
    sampling makes most of them the same; vLLM's CPU engine is unseeded, so not all)."""
    from openrlhf_contrastive.store import read_header

    work = rm_runs["work"]
    assert read_header(work / "sampled")["fingerprint"] | {"info": None} == read_header(rm_runs["store"])["fingerprint"] | {"info": None}
    in_job, standalone = kept_rewards(rm_runs["store"]), kept_rewards(work / "sampled")
    assert in_job.keys() == standalone.keys()
    same = same_text_rewards(in_job, standalone)
    assert len(same) >= len(in_job), "near-greedy baselines should repeat at least one response per prompt"
    assert [a for a, _ in same] == pytest.approx([b for _, b in same], **BF16_SCORE_TOLERANCE)


def evaluated_rewards(report) -> dict:
    """{prompt: [(response, reward), ...]} of the policy's responses in an evaluation's samples.jsonl."""
    lines = Path(report["output"]["samples"]).read_text().splitlines()
    return {s["prompt"]: list(zip(s["responses"], s["rewards"])) for s in map(json.loads, lines)}


def check_evaluation(report, store_dir, backend):
    """The report compares the policy's RM rewards with the store's baselines, prompt by prompt."""
    import numpy as np

    from openrlhf_contrastive.store import BaselineStore

    assert report["backend"] == backend and report["prompts"]["evaluated"] == len(kept_rewards(store_dir))
    figures = report["rewards"][report["store_reward"]]
    assert figures["baseline_mean"] == pytest.approx(float(np.mean(BaselineStore.load(store_dir).mean)), abs=1e-6)
    policy = [r for pairs in evaluated_rewards(report).values() for _, r in pairs]
    assert figures["policy_mean"] == pytest.approx(float(np.mean(policy)), abs=1e-6)
    assert figures["difference"] == pytest.approx(figures["policy_mean"] - figures["baseline_mean"], abs=1e-6)


def test_evaluate_the_sft_policy_against_its_own_store_through_the_openrlhf_backend(rm_runs):
    """The SFT policy sampled by a fresh vLLM engine and scored by a fresh RewardModelActor group: a response that
    is also in the store gets the store's reward."""
    report = rm_runs["evaluation"]
    check_evaluation(report, rm_runs["store"], "openrlhf")
    same = same_text_rewards(evaluated_rewards(report), kept_rewards(rm_runs["store"]))
    assert same and [a for a, _ in same] == pytest.approx([b for _, b in same], **BF16_SCORE_TOLERANCE)

# -- the same reward model in evaluate and rescore through the hf backend (in this process, on the CPU) ------------

def hf_command(rm_runs, store, *extra) -> list[str]:
    from cpu_runs import train_flags

    work = rm_runs["work"]
    return [*train_flags(work, work / "hf", rm_flags(rm_runs["rm"]), rm_runs["rm"]), *baseline_flags(store),
            "--contrastive.backend", "hf", *extra]


def direct_scores(rm, tokenizer_path, prompt, responses) -> list[float]:
    """OpenRLHF's reward model (fp32) on prompt and response tokenized apart, as rescore reads kept responses."""
    import torch
    from transformers import AutoTokenizer

    from openrlhf.models import get_llm_for_sequence_regression

    model = get_llm_for_sequence_regression(str(rm), "reward", attn_implementation="sdpa").float().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    scores = []
    for text in responses:
        ids = torch.tensor([(prompt_ids + tokenizer(text, add_special_tokens=False)["input_ids"])[:64]])
        with torch.no_grad():
            scores.append(model(ids, torch.ones_like(ids)).item())
    return scores


def test_rescore_with_the_reward_model(rm_runs, tmp_path):
    """rescore scores the kept responses with the RM in this process: every reward is the RM's score of the
    re-tokenized text. (Not the in-job reward in general: a random policy often samples token sequences that the
    tokenizer would split otherwise, and the RM reads tokens; see README, After training.)"""
    from openrlhf_contrastive import rescore

    assert rescore.main(["--contrastive.baseline_path", str(rm_runs["store"]), "--rescore.output_path",
                         str(tmp_path / "rescored"), *rm_flags(rm_runs["rm"])]) == 0
    in_job, rescored = kept_rewards(rm_runs["store"]), kept_rewards(tmp_path / "rescored")
    assert in_job.keys() == rescored.keys()
    for prompt, pairs in rescored.items():
        assert [text for text, _ in pairs] == [text for text, _ in in_job[prompt]]
        direct = direct_scores(rm_runs["rm"], rm_runs["work"] / "policy", prompt, [text for text, _ in pairs])
        assert [r for _, r in pairs] == pytest.approx(direct, abs=1e-4), prompt


def test_evaluate_through_the_hf_backend_with_the_reward_model(rm_runs, tmp_path):
    """The SFT policy against its own store, generated by transformers and scored by the RM in this process."""
    from openrlhf_contrastive import evaluate

    report = evaluate.main(hf_command(rm_runs, rm_runs["store"], "--eval.n", "4", "--eval.output_dir", str(tmp_path)))
    check_evaluation(report, rm_runs["store"], "hf")
