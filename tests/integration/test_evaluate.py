"""`openrlhf-contrastive evaluate` and `rescore`, and stores that keep their responses, on tiny models (hf backend).

One SFT store (k = 4, responses kept) serves the module. The store's reward is a deterministic reward-function
file: a hash of the response text in [0, 1] plus 10 per "!" in it. The "better" policy is the SFT architecture
with its weights set so that it always writes "!": under that reward it beats every SFT baseline. A second
reward (the response's length) and small judge files check the second-reward and judge paths exactly.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration

REWARD = '''
import torch

def reward_func(queries, prompts, labels):
    """hash(response) in [0, 1] + 10 per '!' in the response."""
    out = []
    for q, p in zip(queries, prompts):
        response = q[len(p):] if q.startswith(p) else q
        out.append((sum(map(ord, response)) % 101) / 100.0 + 10.0 * response.count("!"))
    return {"rewards": torch.tensor(out), "scores": torch.tensor(out)}
'''

SECOND_REWARD = '''
import torch

def reward_func(queries, prompts, labels):
    """The response's length in characters / 10 (knows nothing of '!')."""
    out = [len(q[len(p):] if q.startswith(p) else q) / 10.0 for q, p in zip(queries, prompts)]
    return {"rewards": torch.tensor(out), "scores": torch.tensor(out)}
'''

JUDGE_BANG = '''
def judge(prompts, responses_a, responses_b):
    """Deterministic: a is better when it has more '!', tie half."""
    return [1.0 if a.count("!") > b.count("!") else 0.0 if a.count("!") < b.count("!") else 0.5
            for a, b in zip(responses_a, responses_b)]
'''

JUDGE_POSITION = '''
import json

LOG = {log!r}

def judge(prompts, responses_a, responses_b):
    """Always prefers position a (0.9), and logs which side holds the better policy's response ('!' * 8)."""
    with open(LOG, "a") as f:
        for a, b in zip(responses_a, responses_b):
            f.write(json.dumps({{"policy_in_a": a == "!" * 8, "policy_in_b": b == "!" * 8}}) + "\\n")
    return [0.9] * len(prompts)
'''


def build_constant_policy(out_dir, token=None, logit=50.0):
    """The tiny SFT architecture made to write one token at every step: attention and MLP outputs zeroed, so the
    last hidden state is the token embedding, set to one constant direction that only that token's row of lm_head
    reads (`token`: a token string, None for the end-of-sequence token)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from openrlhf_contrastive.demo.tiny import build_policy

    build_policy(out_dir)
    model = LlamaForCausalLM.from_pretrained(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    row = tokenizer.eos_token_id if token is None else tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[row, 0] = logit
    model.save_pretrained(str(out_dir))
    return out_dir


def build_better_policy(out_dir):
    """A policy that writes '!' at every step: under the store's reward it beats every SFT baseline."""
    return build_constant_policy(out_dir, "!")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.demo.tiny import build_policy

    tmp = tmp_path_factory.mktemp("evaluate")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"Question {i}: what is {i} plus two?"}) + "\n" for i in range(8)))
    for name, text in (("reward.py", REWARD), ("second.py", SECOND_REWARD), ("judge_bang.py", JUDGE_BANG)):
        (tmp / name).write_text(text)
    env = dict(tmp=tmp, prompts=prompts, sft=build_policy(tmp / "sft"), better=build_better_policy(tmp / "better"))
    stage.main(sample_flags(env, tmp / "store", "--contrastive.keep_responses"))
    return env


def sample_flags(env, store, *extra, policy=None, prompts=None):
    return [
        "--actor.model_name_or_path", str(policy or env["sft"]), "--reward.remote_url", str(env["tmp"] / "reward.py"),
        "--data.prompt_dataset", str(prompts or env["prompts"]), "--data.apply_chat_template", "--data.max_len", "64",
        "--rollout.max_new_tokens", "8", "--contrastive.k", "4", "--contrastive.chunk_size", "4",
        "--contrastive.backend", "hf", "--contrastive.baseline_path", str(store), *extra,
    ]


def evaluate(env, out, *extra, policy=None, store=None, prompts=None):
    from openrlhf_contrastive import evaluate as evaluate_module

    return evaluate_module.main(sample_flags(env, store or env["tmp"] / "store", "--eval.n", "4", "--eval.output_dir",
                                             str(out), *extra, policy=policy, prompts=prompts))


def reward_of(file, prompt, response):
    """A reward-function file called directly on one query (prompt + response text)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("direct", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return float(module.reward_func([prompt + response], [prompt], [""])["rewards"][0])


def kept(store_dir):
    """(prompt text, k responses, k rewards) of every prompt of a store, in key order."""
    from openrlhf_contrastive.store import BaselineStore, read_prompt_texts, read_responses

    store = BaselineStore.load(store_dir)
    texts, responses = read_prompt_texts(store_dir), read_responses(store_dir)
    return [(texts[key], responses[key], rewards) for key, rewards in zip(store.keys.tolist(), store.rewards)]


def test_stage_keeps_the_responses_behind_each_reward(env):
    """Each kept response text, scored again by the reward file, gives exactly its stored reward."""
    rows = kept(env["tmp"] / "store")
    assert len(rows) == 8 and all(len(responses) == 4 for _, responses, _ in rows)
    for prompt, responses, rewards in rows:
        direct = [reward_of(env["tmp"] / "reward.py", prompt, r) for r in responses]
        assert direct == pytest.approx(rewards.tolist(), abs=1e-6)


def test_sft_policy_against_its_own_store_is_even(env, tmp_path):
    report = evaluate(env, tmp_path / "out", "--eval.reward.remote_url", str(env["tmp"] / "second.py"))
    figures = report["rewards"][report["store_reward"]]
    lo, hi = figures["win_rate_interval"]
    assert lo <= 0.5 <= hi and 0 < figures["win_rate"] < 1
    assert report["prompts"] == {"given": 8, "unique": 8, "evaluated": 8, "missing": 0, "missing_prompts": []}
    assert len(figures["per_prompt"]) == 8
    assert figures["difference"] == pytest.approx(figures["policy_mean"] - figures["baseline_mean"])
    # The second reward scored the stored baseline responses (kept): its baseline mean is theirs under it.
    second = report["rewards"][str(env["tmp"] / "second.py")]
    direct = np.mean([np.mean([reward_of(env["tmp"] / "second.py", p, r) for r in rs]) for p, rs, _ in kept(env["tmp"] / "store")])
    assert second["baseline_mean"] == pytest.approx(direct, abs=1e-6)
    slo, shi = second["win_rate_interval"]
    assert slo <= 0.5 <= shi
    # The files: JSON equal to the result, a PNG, and the policy's responses with their rewards.
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "out" / "evaluation.png").read_bytes()[:4] == b"\x89PNG"
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(len(s["responses"]) == 4 for s in samples)
    for s in samples:  # the rewards written are the reward file's of the written texts
        assert s["rewards"] == pytest.approx([reward_of(env["tmp"] / "reward.py", s["prompt"], r) for r in s["responses"]], abs=1e-6)


def test_strictly_better_policy_wins_every_comparison(env, tmp_path):
    report = evaluate(env, tmp_path / "out", "--eval.judge", str(env["tmp"] / "judge_bang.py"),
                      "--eval.reward.remote_url", str(env["tmp"] / "second.py"), policy=env["better"])
    figures = report["rewards"][report["store_reward"]]
    assert figures["win_rate"] == 1.0 and figures["win_rate_interval"] == [1.0, 1.0]
    assert figures["improved"] == 1.0 and figures["degraded"] == 0.0 and len(figures["most_improved"]) == 5
    assert report["judge"]["win_rate"] == 1.0 and report["judge"]["pairs"] == 32
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert {r for s in samples for r in s["responses"]} == {"!" * 8}
    # The second reward (length) sees "!!!!!!!!" (8 characters) in every policy response: 0.8 each.
    assert report["rewards"][str(env["tmp"] / "second.py")]["policy_mean"] == pytest.approx(0.8)


def test_judge_positions_are_swapped_on_every_other_pair(env, tmp_path):
    log = tmp_path / "judge.jsonl"
    (tmp_path / "judge.py").write_text(JUDGE_POSITION.format(log=str(log)))
    report = evaluate(env, tmp_path / "out", "--eval.judge", str(tmp_path / "judge.py"), policy=env["better"])
    # A judge that always prefers position a gives exactly 0.5 once positions alternate.
    assert report["judge"]["win_rate"] == pytest.approx(0.5) and report["judge"]["win_rate_interval"] == pytest.approx([0.5, 0.5])
    calls = [json.loads(line) for line in log.read_text().splitlines()][2:]  # the first two are the check on stored pairs
    assert len(calls) == 32
    assert [c["policy_in_a"] for c in calls] == [i % 2 == 0 for i in range(32)]
    assert [c["policy_in_b"] for c in calls] == [i % 2 == 1 for i in range(32)]


def test_rescore_same_reward_reproduces_the_store_other_reward_equals_direct_scores(env, tmp_path):
    from openrlhf_contrastive import rescore
    from openrlhf_contrastive.store import BaselineStore

    store = env["tmp"] / "store"
    base = ["--contrastive.baseline_path", str(store), "--contrastive.chunk_size", "3"]
    assert rescore.main([*base, "--rescore.output_path", str(tmp_path / "same"), "--reward.remote_url", str(env["tmp"] / "reward.py")]) == 0
    old, same = BaselineStore.load(store), BaselineStore.load(tmp_path / "same")
    assert (same.keys == old.keys).all() and (same.rewards == old.rewards).all()
    assert same.fingerprint["reward"] == old.fingerprint["reward"] and same.has_responses

    assert rescore.main([*base, "--rescore.output_path", str(tmp_path / "other"), "--reward.remote_url", str(env["tmp"] / "second.py")]) == 0
    other = BaselineStore.load(tmp_path / "other")
    assert (other.keys == old.keys).all() and other.fingerprint["reward"] != old.fingerprint["reward"]
    assert {k: v for k, v in other.fingerprint.items() if k not in ("reward", "info")} == \
           {k: v for k, v in old.fingerprint.items() if k not in ("reward", "info")}
    direct = [[reward_of(env["tmp"] / "second.py", p, r) for r in rs] for p, rs, _ in kept(store)]
    assert other.rewards == pytest.approx(np.array(direct), abs=1e-6)
    assert [rs for _, rs, _ in kept(tmp_path / "other")] == [rs for _, rs, _ in kept(store)]


def test_kept_responses_survive_sigkill_and_resume(env, tmp_path):
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.store import REWARDS, record_dtype

    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"Task {i}: say {i}."}) + "\n" for i in range(40)))
    flags = lambda store: [*sample_flags(env, store, "--contrastive.keep_responses", prompts=prompts), "--contrastive.chunk_size", "1"]
    stage.main(flags(tmp_path / "whole"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "openrlhf_contrastive.cli", "sample", *flags(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / REWARDS).exists() and (killed / REWARDS).stat().st_size >= 2 * record_dtype(4).itemsize:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the stage ended before it could be killed: {proc.communicate()[1][-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = kept(killed)
    assert 0 < len(partial) < 40 and all(len(rs) == 4 for _, rs, _ in partial)
    resumed = stage.main(flags(killed))
    assert resumed["already_stored"] == len(partial)
    # Resumed: the same texts and rewards, prompt by prompt, as the uninterrupted run (the hf backend is seeded).
    as_lists = lambda rows: [(p, rs, r.tolist()) for p, rs, r in rows]
    assert as_lists(kept(killed)) == as_lists(kept(tmp_path / "whole"))


@pytest.fixture(scope="module")
def plain_store(env):
    """A store of 4 prompts written without --contrastive.keep_responses."""
    from openrlhf_contrastive import stage

    stage.main(sample_flags(env, env["tmp"] / "plain", "--data.max_samples", "4"))
    return env["tmp"] / "plain"


def test_store_without_responses_loads_and_evaluates_on_rewards(env, plain_store, tmp_path, capsys):
    from openrlhf_contrastive import cli
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(plain_store)
    assert len(store) == 4 and not store.has_responses
    report = evaluate(env, tmp_path / "out", "--eval.reward.remote_url", str(env["tmp"] / "second.py"),
                      "--data.max_samples", "4", store=plain_store)
    assert report["prompts"]["evaluated"] == 4
    assert report["rewards"][str(env["tmp"] / "second.py")]["baseline_mean"] is None  # nothing to score on the SFT side
    assert "no baseline figures" in capsys.readouterr().out
    assert cli.main(["inspect", str(plain_store), "--png", str(tmp_path / "r.png")]) == 0
    assert "kept responses" not in capsys.readouterr().out
    assert cli.main(["inspect", str(env["tmp"] / "store"), "--png", str(tmp_path / "r.png")]) == 0
    assert "kept responses" in capsys.readouterr().out


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: every refusal below comes before one."""
    from openrlhf_contrastive.backends import hf

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(hf.HFBackend, "__init__", refuse)


@pytest.mark.parametrize("case, flags, message", [
    ("judge missing", ["--eval.judge", "{tmp}/nope.py"], "--eval.judge {tmp}/nope.py does not exist"),
    ("judge raises on import", ["--eval.judge", "{tmp}/j.py"], "raised ZeroDivisionError: division by zero while it was imported"),
    ("judge raises", ["--eval.judge", "{tmp}/j.py"], "raised RuntimeError: judge server down on a batch of 2 pairs"),
    ("judge wrong length", ["--eval.judge", "{tmp}/j.py"], "returned 1 values for 2 pairs"),
    ("judge out of range", ["--eval.judge", "{tmp}/j.py"], "returned 1.5 for pair 0"),
    ("judge not finite", ["--eval.judge", "{tmp}/j.py"], "returned nan for pair 0"),
    ("no overlap", ["--data.prompt_dataset", "{tmp}/other.jsonl"], "None of the 2 prompts of --data.prompt_dataset"),
    ("mismatched fingerprint", ["--rollout.temperature", "0.7"], "temperature: store has 1.0, now 0.7"),
    ("other reward", ["--reward.remote_url", "{tmp}/other_reward.py"], "reward: store has"),
    ("n is 0", ["--eval.n", "0"], "--eval.n is 0"),
    ("second reward missing", ["--eval.reward.remote_url", "{tmp}/gold.py"], "--eval.reward.remote_url {tmp}/gold.py does not exist"),
])
def test_bad_evaluate_inputs_are_refused_before_any_model_loads(env, tmp_path, no_models, case, flags, message):
    from openrlhf_contrastive import evaluate as evaluate_module

    judges = {
        "judge raises on import": "1 / 0\n",
        "judge raises": "def judge(p, a, b):\n    raise RuntimeError('judge server down')\n",
        "judge wrong length": "def judge(p, a, b):\n    return [0.5]\n",
        "judge out of range": "def judge(p, a, b):\n    return [1.5] * len(p)\n",
        "judge not finite": "def judge(p, a, b):\n    return [float('nan')] * len(p)\n",
    }
    if case in judges:
        (tmp_path / "j.py").write_text(judges[case])
    (tmp_path / "other.jsonl").write_text('{"input": "unrelated one"}\n{"input": "unrelated two"}\n')
    (tmp_path / "other_reward.py").write_text(SECOND_REWARD)
    store = env["tmp"] / "store"
    before = digest(store)
    argv = sample_flags(env, store, "--eval.output_dir", str(tmp_path / "out"))
    for flag, value in zip(flags[::2], flags[1::2]):
        value = value.format(tmp=tmp_path)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    with pytest.raises(ValueError) as error:
        evaluate_module.main(argv)
    assert message.format(tmp=tmp_path) in str(error.value)
    assert digest(store) == before and not (tmp_path / "out").exists()  # nothing written, nothing lost


def test_mismatch_accepted_explicitly_runs(env, tmp_path):
    report = evaluate(env, tmp_path / "out", "--rollout.max_new_tokens", "6", "--contrastive.accept_fingerprint_mismatch",
                      "--data.max_samples", "2")
    assert report["fingerprint_differences"] == ["max_new_tokens: store has 8, now 6"]


def test_missing_prompts_are_counted_and_named(env, tmp_path):
    extra = tmp_path / "prompts.jsonl"
    extra.write_text(env["prompts"].read_text() + '{"input": "A prompt the store never saw."}\n')
    report = evaluate(env, tmp_path / "out", prompts=extra)
    assert report["prompts"]["missing"] == 1 and report["prompts"]["evaluated"] == 8
    assert "A prompt the store never saw." in report["prompts"]["missing_prompts"][0]


def test_judge_failing_after_generation_keeps_the_reward_figures(env, tmp_path):
    from openrlhf_contrastive.checks import InputError

    (tmp_path / "j.py").write_text("def judge(p, a, b):\n    if len(p) > 2:\n        raise TimeoutError('rate limited')\n    return [0.5] * len(p)\n")
    with pytest.raises(InputError) as error:
        evaluate(env, tmp_path / "out", "--eval.judge", str(tmp_path / "j.py"))
    assert "raised TimeoutError: rate limited" in str(error.value) and "already written" in str(error.value)
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert written["judge"] is None and written["rewards"][written["store_reward"]]["win_rate"] > 0
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 8


def test_rescore_refuses_a_store_without_responses(env, plain_store, tmp_path, no_models, capsys):
    from openrlhf_contrastive import rescore

    code = rescore.main(["--contrastive.baseline_path", str(plain_store), "--rescore.output_path", str(tmp_path / "new"),
                         "--reward.remote_url", str(env["tmp"] / "second.py")])
    assert code == 2 and not (tmp_path / "new").exists()
    assert "keeps no responses" in capsys.readouterr().err


def test_judge_refuses_a_store_without_responses(env, plain_store, tmp_path, no_models):
    from openrlhf_contrastive import evaluate as evaluate_module

    with pytest.raises(ValueError, match="(?s)keeps no responses.*--contrastive.keep_responses"):
        evaluate_module.main(sample_flags(env, plain_store, "--eval.judge", str(env["tmp"] / "judge_bang.py"),
                                          "--data.max_samples", "4", "--eval.output_dir", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


@pytest.mark.vllm
def test_evaluate_through_the_openrlhf_backend_on_vllm_cpu(env, tmp_path, monkeypatch):
    """The same store, the better policy sampled by OpenRLHF's own vLLM engine and scored by its rollout actor."""
    import ray

    from ray_start import init_ray  # cpu_training/

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    init_ray(num_cpus=2, num_gpus=1, include_dashboard=False,
             runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        report = evaluate(env, tmp_path / "out", "--contrastive.backend", "openrlhf", "--vllm.num_engines", "1",
                          "--vllm.enforce_eager", "--eval.judge", str(env["tmp"] / "judge_bang.py"), policy=env["better"])
    finally:
        ray.shutdown()
    assert report["backend"] == "openrlhf"
    figures = report["rewards"][report["store_reward"]]
    assert figures["win_rate"] == 1.0 and report["judge"]["win_rate"] == 1.0
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert {r for s in samples for r in s["responses"]} == {"!" * 8}
    for s in samples:  # the rollout actor's rewards are the reward file's of the written texts
        assert s["rewards"] == pytest.approx([reward_of(env["tmp"] / "reward.py", s["prompt"], r) for r in s["responses"]], abs=1e-6)


def test_a_policy_that_answers_with_nothing_is_flagged(env, tmp_path, capsys):
    """P(EOS first) made high (EOS's lm_head row alone reads the constant hidden state): sampled as OpenRLHF samples
    (EOS masked first) it still answers, so its reward figures look normal; sampled as served it answers nothing."""
    report = evaluate(env, tmp_path / "out", policy=build_constant_policy(tmp_path / "silent", None))
    d = report["degeneration"]
    assert d["samples_per_prompt"] == 4 and d["sft_path"] == str(env["sft"])
    assert d["policy"]["p_eos_first"] > 0.99 and d["policy"]["empty"] == 1.0 and d["policy"]["one_token"] == 0.0
    assert d["sft"]["p_eos_first"] < 0.05 and d["sft"]["empty"] < 0.2
    assert "ends its response at the first token far more often than its SFT start" in d["warning"]
    assert "min_tokens=1" in d["warning"] and "Fix:" in d["warning"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert all(r != "" for s in samples for r in s["responses"])  # step 3 samples as training does: never empty
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["degeneration"] == d
    out = capsys.readouterr().out
    assert "WARNING: the policy ends its response at the first token" in out and "answering with nothing" in out


def test_the_sft_policy_is_not_flagged(env, tmp_path):
    report = evaluate(env, tmp_path / "out", "--data.max_samples", "4")
    d = report["degeneration"]
    assert d["warning"] is None and d["policy"] == d["sft"]  # the same model, prompts and seeds
