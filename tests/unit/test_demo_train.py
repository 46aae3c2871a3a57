"""The demo's training part without training: the flags it gives train_ppo_ray, reading OpenRLHF's log lines as they
grow, r - b of the raw run, and the refusal of a --repo that is not a clone."""

import pytest

from openrlhf_contrastive.demo import train

STAGE = ["--actor.model_name_or_path", "/m/policy", "--reward.remote_url", "/r.py", "--contrastive.k", "4",
         "--contrastive.chunk_size", "8", "--contrastive.baseline_path", "/s/store", "--vllm.enforce_eager"]
STATUS = {"reward": 0.5, "kl": 0.001, "timing/step_total": 3.25}


def test_train_flags_keep_the_stage_flags_that_shape_rewards_and_drop_the_stage_only_ones(tmp_path):
    flags = train.train_flags(STAGE, tmp_path, prompts_per_step=8, episodes=2)
    value = lambda name: flags[flags.index(name) + 1]
    assert value("--actor.model_name_or_path") == value("--critic.model_name_or_path") == "/m/policy"
    assert value("--reward.remote_url") == "/r.py" and "--vllm.enforce_eager" in flags
    assert not {"--contrastive.k", "--contrastive.chunk_size", "--contrastive.baseline_path", "4", "/s/store"} & set(flags)
    assert (value("--rollout.batch_size"), value("--train.batch_size"), value("--train.num_episodes")) == ("8", "8", "2")
    assert value("--algo.advantage.estimator") == "gae"
    assert value("--ckpt.output_dir") == str(tmp_path / "policy")
    assert train.contrastive_flags(tmp_path, 4) == ["--reward_fn", "contrastive", "--contrastive.baseline_path",
                                                    str(tmp_path), "--contrastive.k", "4"]


def test_the_log_is_read_as_it_grows_one_complete_line_at_a_time(tmp_path):
    run = train.Run("raw", tmp_path, [])
    prefix = "\x1b[36m(PPOTrainer pid=7)\x1b[0m INFO 12-02 09:20:01 ppo_trainer.py:553] "
    sample = f"{prefix}Sample: ['system\\nAnswer.\\nuser\\nWhat is the capital of Italy?\\nassistant\\nRome.', 1.25]\n"
    step1 = f"{prefix}✨ Global step 1: {STATUS}\n"
    run.log.write_text("noise\n" + sample + step1[:30])  # the step line is still being written
    assert train.parse_log(run) == []
    assert run.samples == ["system\nAnswer.\nuser\nWhat is the capital of Italy?\nassistant\nRome."]
    with open(run.log, "a") as f:
        f.write(step1[30:] + f"{prefix}✨ Global step 2: {dict(STATUS, reward=0.75)}\n")
    assert [s["step"] for s in train.parse_log(run)] == [1, 2]
    assert [s["reward"] for s in run.steps] == [0.5, 0.75]
    assert train.question_of(run.samples[0], ["What is the capital of France?", "What is the capital of Italy?"]) \
        == "What is the capital of Italy?"


def test_raw_steps_subtract_the_contrastive_runs_baseline_of_the_same_step(tmp_path):
    runs = {"contrastive": train.Run("contrastive", tmp_path / "c", []), "raw": train.Run("raw", tmp_path / "r", [])}
    runs["contrastive"].steps = [{**STATUS, "step": 1, "contrastive/baseline": 0.25, "contrastive/reward": 0.2}]
    baselines = train.step_baselines(runs)
    assert train.reward_minus_baseline({**STATUS, "step": 1}, baselines) == pytest.approx(0.25)  # raw: r - b
    assert train.reward_minus_baseline(runs["contrastive"].steps[0], baselines) == 0.2  # the plugin's own value
    line = train.step_line("raw", {**STATUS, "step": 1}, 8, baselines)
    assert "raw         step  1/8  reward r +0.500  r - b +0.250  KL 0.00100    3.2 s" in line


def test_a_repo_that_is_not_a_clone_is_refused_with_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="not a clone of openrlhf-contrastive.*make demo.*--repo ."):
        train.check_clone(tmp_path)
