"""`--contrastive.refresh_every 2` in the real `train_ppo_ray` on CPU: a run killed after a refresh, then resumed.

`first`: 4 prompts, one rollout per PPO step, 2 episodes (8 PPO steps), `gae`, an actor learning rate high enough
that a tiny policy moves visibly in two steps (its tokenizer has one token per character, so that a kept response's
text tokenizes back to the tokens the engine sampled); the in-job stage writes the SFT store (k = 4, responses kept), the
baselines are refreshed every 2 steps, DeepSpeed and HF checkpoints every 2 steps. Once refresh.json records the
refresh at policy step 4 (inside PPO step 5), the reward function parks the run at its next call, inside step 6 and
before its checkpoint (reward_func_text.py, REWARD_HOLD); the test then kills its whole process session (SIGKILL). A
fixed point, however fast the machine: killing on sight of the record raced step 5, which a fast machine finished
within the 0.2 s poll. `resumed`: the same flags plus --ckpt.load_enable: it resumes from the checkpoint of step 4.

Checked: the generation in use and its age at every step (0, 0, 2, 2 | 4, 4, 6, 6: a refresh at policy steps 2, 4
and 6, each used by the batch its policy sampled and the next one), the refresh generations spent and the logged
shifts; the resumed run uses generation 4 as the killed run left it (files untouched, nothing sampled) and samples
generation 6; each refreshed generation's responses are likelier under the actor of its step (its HF checkpoint)
than under the SFT policy, relative to the SFT store's own responses; every step trained on r minus the mean of the
generation in use. (With refresh_every 0, nothing of this exists: test_train_ppo_ray_cpu.py.)

Slow: about 2 min on 2 quiet cores, 6.5 min on busy ones (the killed run about 55 s quiet, the resumed one 60 s; nearly
all process start-up).
"""

import json
import time
from pathlib import Path

import pytest

from cpu_runs import ATOL, K, QUESTIONS, RUN_TIMEOUT_S, SAMPLING  # tests/e2e
from lab import harness

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

REWARD_FILE = Path(__file__).parent / "reward_func_text.py"
EVERY = 2
PPO = harness.PPO(estimator="gae", prompts_per_step=1, episodes=2, seed=42, warmup_ratio=None, actor_lr=1e-2)
STEPS = len(QUESTIONS) * PPO.episodes  # 8
KILLED_AFTER_REFRESH = 4  # the refresh after whose record the run is parked (inside step 6); checkpoint 4 is the latest


def build_char_policy(out_dir: Path) -> Path:
    """A random tiny Llama whose tokenizer has one token per printable ASCII character (no merges) and the demo's
    special tokens and chat template: decoding sampled tokens and tokenizing the text again gives the same tokens
    (with the demo's byte-level BPE, 19 of 20 random responses tokenize differently), which the log-probability
    check needs."""
    import torch
    from tokenizers import Tokenizer, decoders, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from openrlhf_contrastive.demo.tiny import CHAT_TEMPLATE

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    vocab = {token: i for i, token in enumerate(specials + [chr(c) for c in range(32, 127)])}
    characters = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    characters.decoder = decoders.Fuse()
    characters.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=characters, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(out_dir))
    return out_dir


def flags(work: Path, out: Path) -> list[str]:
    return (harness.testbed_flags(work / "policy", work / "prompts.jsonl", ["--reward.remote_url", str(REWARD_FILE)], SAMPLING)
            + harness.CPU_PLACEMENT + harness.ppo_flags(PPO, work / "critic") + harness.output_flags(out)
            + harness.contrastive_flags(work / "store", K, ["--contrastive.refresh_every", str(EVERY), "--contrastive.keep_responses"])
            + ["--ckpt.save_steps", str(EVERY), "--ckpt.save_hf", "--ckpt.max_num", "10"])


def store_files(path: Path) -> dict:
    """{name: (bytes, mtime)} of the files directly in a store directory (its generations/ folder aside)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.iterdir()) if p.is_file()}


def run_until_held(command: list[str], out: Path, store: Path, step: int) -> tuple[int | None, float]:
    """Start the run with the reward function set to park it after the refresh at policy step `step`; kill its whole
    session once it is parked. (exit code if it ended by itself else None, seconds)."""
    start, held = time.time(), out / "reward_held"
    env = harness.run_env(REWARD_HOLD=f"{store / 'generations' / 'refresh.json'}:{step}", REWARD_HELD=str(held))
    process = harness.start_in_own_session(command, out / "train.log", cwd=out, env=env)
    try:
        while process.poll() is None and not held.exists() and time.time() - start < RUN_TIMEOUT_S:
            time.sleep(0.2)
        return process.poll(), time.time() - start
    finally:
        harness.kill_session(process)
        process.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_reward_model

    work = tmp_path_factory.mktemp("refresh_cpu")
    build_char_policy(work / "policy")
    build_reward_model(work / "critic", seed=2)  # its 512-token embedding covers the policy's 101 tokens
    (work / "prompts.jsonl").write_text("".join(json.dumps({"input": q}) + "\n" for q in QUESTIONS))
    out, store = work / "run", work / "store"
    out.mkdir()
    command = harness.launch_command(flags(work, out))
    rc, seconds = run_until_held(command, out, store, KILLED_AFTER_REFRESH)
    print(f"first: killed after {seconds:.0f} s")
    assert rc is None, f"the first run ended by itself ({rc}) before it was parked after the refresh at step 4:\n{harness.tail(out / 'train.log', 60)}"
    first = harness.read_scalars(out / "tb")
    killed = {"sft": store_files(store), "generation 4": store_files(store / "generations" / "step-000004"),
              "checkpoints": sorted(p.name for p in (out / "ckpt" / "checkpoints" / "_actor").glob("global_step*"))}
    resumed_tb = out / "tb_resumed"
    start = time.time()
    rc = harness.run_in_own_session(command + ["--ckpt.load_enable", "--logger.tensorboard_dir", str(resumed_tb)],
                                    out / "resumed.log", RUN_TIMEOUT_S, cwd=out, env=harness.run_env())
    print(f"resumed: {time.time() - start:.0f} s")
    assert rc == 0, f"the resumed run exited with {rc}:\n{harness.tail(out / 'resumed.log', 60)}"
    return {"work": work, "out": out, "store": store, "first": first, "resumed": harness.read_scalars(resumed_tb),
            "killed": killed}


def test_killed_run_stopped_after_the_refresh_of_step_4_with_checkpoint_4_its_latest(runs):
    assert runs["killed"]["checkpoints"] == ["global_step2", "global_step4"]  # as the kill left them
    assert set(runs["first"]["train/contrastive/generation"]) == {1, 2, 3, 4, 5}  # killed inside step 6


def test_the_generation_in_use_changes_at_the_refresh_steps(runs):
    first, resumed = runs["first"], runs["resumed"]
    expected = {1: 0, 2: 0, 3: 2, 4: 2, 5: 4, 6: 4, 7: 6, 8: 6}  # step t trains on the batch of policy step t - 1
    assert first["train/contrastive/generation"] == {t: expected[t] for t in range(1, 6)}
    assert set(resumed["train/contrastive/generation"]) == {5, 6, 7, 8}
    logged = {**first["train/contrastive/generation"], **resumed["train/contrastive/generation"]}
    assert logged == expected
    ages = {**first["train/contrastive/generation_age"], **resumed["train/contrastive/generation_age"]}
    assert ages == {t: (t - 1) - g for t, g in expected.items()}
    spent = {**first["train/contrastive/refresh_generations"], **resumed["train/contrastive/refresh_generations"]}
    per_refresh = len(QUESTIONS) * K
    assert spent == {t: per_refresh * (g // EVERY) for t, g in expected.items()}
    summary = json.loads((runs["store"] / "generations" / "refresh.json").read_text())
    assert [e["policy_step"] for e in summary["refreshes"]] == [2, 4, 6]
    assert summary["refresh_generations"] == 3 * per_refresh
    shifts = {**first["train/contrastive/refresh_shift"], **resumed["train/contrastive/refresh_shift"]}
    assert set(shifts) == {3, 5, 7}  # logged at the steps that refreshed (or, resumed, took generation 4 up again)
    for entry in summary["refreshes"]:
        assert shifts[entry["policy_step"] + 1] == pytest.approx(entry["mean_shift"], abs=ATOL)


def test_each_step_trained_on_r_minus_the_baseline_of_its_generation(runs):
    from openrlhf_contrastive.store import BaselineStore, generation_path

    means = {0: BaselineStore.load(runs["store"]).mean}
    for s in (2, 4, 6):
        means[s] = BaselineStore.load(generation_path(runs["store"], s)).mean
    for scalars in (runs["first"], runs["resumed"]):
        for t, g in scalars["train/contrastive/generation"].items():
            b = scalars["train/contrastive/baseline"][t]
            assert min(abs(b - m) for m in means[int(g)]) < ATOL, (t, g)  # one of the generation's stored b(x)
            assert scalars["train/contrastive/reward"][t] == pytest.approx(scalars["train/reward"][t] - b, abs=ATOL)


def test_the_resumed_run_reuses_generation_4_untouched_and_samples_generation_6(runs):
    from openrlhf_contrastive.store import BaselineStore, generation_path, list_generations

    store = runs["store"]
    assert store_files(generation_path(store, 4)) == runs["killed"]["generation 4"]
    assert store_files(store) == runs["killed"]["sft"]
    log = (runs["out"] / "resumed.log").read_text(errors="replace")
    assert "refresh generation 4 is complete" in log and "nothing sampled" in log
    assert [s for s, _ in list_generations(store)] == [2, 4, 6]
    runs_of = {BaselineStore.load(p).fingerprint["run"] for _, p in list_generations(store)}
    assert len(runs_of) == 1
    for s, path in list_generations(store):
        generation = BaselineStore.load(path)
        assert generation.fingerprint["policy_step"] == s and len(generation) == len(QUESTIONS) and generation.k == K
    assert "policy_step" not in BaselineStore.load(store).fingerprint  # the SFT store is as without refresh


def test_inspect_lists_the_generations_and_how_far_b_moved(runs):
    from openrlhf_contrastive.report import describe, generations
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(runs["store"])
    listed = generations(store)
    assert [g["policy_step"] for g in listed] == [2, 4, 6]
    summary = {e["policy_step"]: e for e in json.loads((runs["store"] / "generations" / "refresh.json").read_text())["refreshes"]}
    for g in listed:  # all prompts refreshed each time: the shift from the previous generation is the logged one
        assert g["mean_shift"] == pytest.approx(summary[g["policy_step"]]["mean_shift"], abs=1e-9)
    text = describe(store)
    assert all(f"s = {s}: {len(QUESTIONS)} prompts" in text for s in (2, 4, 6))


def response_logprobs(model_dir: Path, tokenizer, pairs) -> "torch.Tensor":
    """log p(response | prompt) under the model in `model_dir`, summed over the response's tokens, per pair, as
    OpenRLHF's engines sample (vLLM min_tokens=1: the end-of-sequence token is masked at the first position)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in pairs:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            r = tokenizer(response, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([p + r])
            logits = model(ids).logits[0, :-1].float()
            logits[len(p) - 1, tokenizer.eos_token_id] = float("-inf")
            logp = logits.log_softmax(-1)
            out.append(logp[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)].sum())
    return torch.stack(out)


def test_each_refreshed_generation_was_sampled_from_the_actor_of_its_step(runs):
    """For y ~ pi_s, E[log pi_s(y) - log pi_0(y)] = KL(pi_s || pi_0) > 0; for the SFT store's y ~ pi_0 it is
    -KL(pi_0 || pi_s) < 0. A generation sampled from the SFT weights would score like the SFT store's responses.
    (With lr 3e-3, HF samples gave means of +0.6 and -0.3 to -0.6 nats with per-response stds about 1; 1e-2 moves
    the policy further.)"""
    from transformers import AutoTokenizer

    from openrlhf_contrastive.store import generation_path, read_prompt_texts, read_responses

    store, ckpt = runs["store"], runs["out"] / "ckpt" / "checkpoints"
    tokenizer = AutoTokenizer.from_pretrained(str(runs["work"] / "policy"))
    prompts = read_prompt_texts(store)

    def pairs(path):
        return [(prompts[key], text) for key, texts in sorted(read_responses(path).items()) for text in texts]

    sft_pairs = pairs(store)
    sft_under_0 = response_logprobs(runs["work"] / "policy", tokenizer, sft_pairs)
    for s in (2, 4, 6):
        actor = ckpt / f"global_step{s}_hf"
        own = pairs(generation_path(store, s))
        own_ratio = (response_logprobs(actor, tokenizer, own) - response_logprobs(runs["work"] / "policy", tokenizer, own)).mean()
        sft_ratio = (response_logprobs(actor, tokenizer, sft_pairs) - sft_under_0).mean()
        print(f"generation {s}: mean log pi_{s} - log pi_0 on its responses {own_ratio:+.3f}, on the SFT's {sft_ratio:+.3f}")
        assert own_ratio > 0 > sft_ratio, s
