"""The demo's training part (lab/demo.py) without training: the flags it gives train_ppo_ray, reading OpenRLHF's log
lines as they grow, r - b of the raw run, and the refusal of training options out of range."""

import subprocess
from pathlib import Path

import pytest

from lab import demo as train
from lab import harness

PPO = {"k": 4, "temperature": 1.0, "max_new_tokens": 16, "data_max_len": 32, "actor_lr": 1e-4, "critic_lr": 5e-4,
       "kl_init_coef": 0.02, "max_epochs": 4}
BED = train.Testbed(Path("/m/sft"), Path("/d/prompts.jsonl"), Path("/r/reward_proxy.py"), Path("/d/config.json"), PPO)
STATUS = {"reward": 0.5, "kl": 0.001, "timing/step_total": 3.25}


def test_train_flags_are_the_testbeds_and_evidence_v2s_ppo(tmp_path):
    flags = train.train_flags(BED, tmp_path, prompts_per_step=8, episodes=2)
    value = lambda name: flags[flags.index(name) + 1]
    assert value("--actor.model_name_or_path") == value("--critic.model_name_or_path") == "/m/sft"
    assert value("--reward.remote_url") == "/r/reward_proxy.py" and "--vllm.enforce_eager" in flags
    assert value("--data.prompt_dataset") == "/d/prompts.jsonl" and "--reward_fn" not in flags
    assert (value("--rollout.batch_size"), value("--train.batch_size"), value("--train.num_episodes")) == ("8", "8", "2")
    assert (value("--train.max_epochs"), value("--actor.adam.lr"), value("--rollout.max_new_tokens")) == ("4", "0.0001", "16")
    assert value("--algo.advantage.estimator") == "gae"
    assert value("--ckpt.output_dir") == str(tmp_path / "ckpt") == str(train.Run("raw", tmp_path, flags).policy)
    assert harness.contrastive_flags(tmp_path, 4) == ["--reward_fn", "contrastive", "--contrastive.baseline_path",
                                                      str(tmp_path), "--contrastive.k", "4"]


def test_the_log_is_read_as_it_grows_one_complete_line_at_a_time(tmp_path):
    run = train.Run("raw", tmp_path, [])
    prefix = "\x1b[36m(PPOTrainer pid=7)\x1b[0m INFO 12-02 09:20:01 ppo_trainer.py:553] "
    step1 = f"{prefix}✨ Global step 1: {STATUS}\n"
    run.log.write_text(f"noise\n{prefix}Sample: ['abba', 1.25]\n" + step1[:30])  # the step line is being written
    assert train.parse_log(run) == []
    with open(run.log, "a") as f:
        f.write(step1[30:] + f"{prefix}✨ Global step 2: {dict(STATUS, reward=0.75)}\n")
    assert [s["step"] for s in train.parse_log(run)] == [1, 2]
    assert [s["reward"] for s in run.steps] == [0.5, 0.75]


def finished(tmp_path, name: str, tags: list[float]) -> "train.Run":
    run = train.Run(name, tmp_path / name, [], process=subprocess.Popen(["true"]))
    run.process.wait()
    run.out.mkdir(parents=True)
    run.log.write_text("")
    run.steps = [{**STATUS, "step": i, "prompt_tag": tag} for i, tag in enumerate(tags, 1)]
    return run


def test_runs_that_trained_on_other_prompts_at_some_step_are_refused(tmp_path):
    same = {"contrastive": finished(tmp_path, "contrastive", [0.41, 0.55]), "raw": finished(tmp_path, "raw", [0.41 + 3e-8, 0.55])}
    train.check_runs(same, 2)  # the same prompts, summed in another order
    other = {"contrastive": finished(tmp_path / "2", "contrastive", [0.41, 0.55]), "raw": finished(tmp_path / "2", "raw", [0.41, 0.62])}
    with pytest.raises(SystemExit, match=r"different prompts at steps \[2\]"):
        train.check_runs(other, 2)


def test_raw_steps_subtract_the_contrastive_runs_baseline_of_the_same_step(tmp_path):
    runs = {"contrastive": train.Run("contrastive", tmp_path / "c", []), "raw": train.Run("raw", tmp_path / "r", [])}
    runs["contrastive"].steps = [{**STATUS, "step": 1, "contrastive/baseline": 0.25, "contrastive/reward": 0.2}]
    baselines = train.step_baselines(runs)
    assert train.reward_minus_baseline({**STATUS, "step": 1}, baselines) == pytest.approx(0.25)  # raw: r - b
    assert train.reward_minus_baseline(runs["contrastive"].steps[0], baselines) == 0.2  # the plugin's own value
    line = train.step_line("raw", {**STATUS, "step": 1}, 8, baselines)
    assert "raw         step  1/8  reward r +0.500  r - b +0.250  KL 0.00100    3.2 s" in line


def test_training_options_out_of_range_are_refused_with_the_fix():
    opts = train.build_parser().parse_args(["--train-prompts", "8", "--train-prompts-per-step", "16"])
    with pytest.raises(SystemExit, match=r"--train-prompts 8, --train-prompts-per-step 16 .* Fix: pick values"):
        train.check_training_options(opts)


def test_a_run_that_failed_while_starting_up_is_started_again_once(tmp_path, monkeypatch):
    launched = []

    def fake_launch(run, env):  # what launch does to the run, without starting train_ppo_ray
        launched.append(run.name)
        run.starts += 1
        run.process = subprocess.Popen(["false"])
        run.process.wait()
        run.log.write_text("EADDRINUSE again\n")

    monkeypatch.setattr(train, "launch", fake_launch)
    run = finished(tmp_path, "contrastive", [])
    run.starts = 1
    run.process = subprocess.Popen(["false"])
    run.process.wait()
    run.log.write_text("torch.distributed.DistNetworkError: ... EADDRINUSE\n")
    assert train.restart_failed_start(run, {}) and launched == ["contrastive"]
    assert (run.out / "train.attempt1.log").read_text().endswith("EADDRINUSE\n")
    assert not train.restart_failed_start(run, {}) and launched == ["contrastive"]  # once only

    stepped = finished(tmp_path / "2", "raw", [])
    stepped.starts = 1
    stepped.process = subprocess.Popen(["false"])
    stepped.process.wait()
    stepped.log.write_text(f"✨ Global step 1: {STATUS}\nTraceback ...\n")  # failed after training: not a start-up
    assert not train.restart_failed_start(stepped, {}) and launched == ["contrastive"]
