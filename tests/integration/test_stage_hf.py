"""The offline stage's hf backend (transformers generate + OpenRLHF's reward model), through the real CLI.

Covers: a store written by `openrlhf-contrastive sample`, a rerun with zero generations, a stage killed with
SIGKILL at several moments (and a half-written record) that resumes to exactly the uninterrupted store, and a
store made under other settings refused.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from openrlhf_contrastive.demo.tiny import build_policy, build_reward_model

    tmp = tmp_path_factory.mktemp("hf")
    prompts = tmp / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i in range(48):
            f.write(json.dumps({"input": f"Question {i % 40}: what is {i % 40} plus two?"}) + "\n")
    return build_policy(tmp / "policy"), build_reward_model(tmp / "rm"), prompts


def sample_flags(models, store, *extra):
    policy, rm, prompts = models
    return [
        "--actor.model_name_or_path", str(policy), "--reward.model_name_or_path", str(rm),
        "--data.prompt_dataset", str(prompts), "--data.apply_chat_template", "--data.max_len", "64",
        "--rollout.max_new_tokens", "10", "--contrastive.k", "3", "--contrastive.chunk_size", "4",
        "--contrastive.backend", "hf", "--contrastive.baseline_path", str(store), *extra,
    ]


def test_sample_cli_writes_store_and_rerun_generates_nothing(models, tmp_path, capsys):
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.diagnose import diagnose
    from openrlhf_contrastive.store import SUMMARY, BaselineStore

    first = stage.main(sample_flags(models, tmp_path / "s", "--ds.zero_stage", "3"))  # a training-only flag is ignored
    assert (first["prompts"], first["duplicates_dropped"], first["generations"]) == (40, 8, 120)
    assert first["prompts_per_s"] > 0 and first["tokens_per_s"] > 0
    store = BaselineStore.load(tmp_path / "s")
    assert len(store) == 40 and store.k == 3 and np.isfinite(store.rewards).all()
    # The end of `sample`: the diagnosis of the store it wrote, printed and in the store's summary.json.
    expected = diagnose(store.rewards)
    assert f"will it help? {expected.verdict}" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / SUMMARY).read_text()) == json.loads(json.dumps(first))
    assert first["diagnosis"] == expected.to_dict() and first["diagnosis"]["available"]
    rerun = stage.main(sample_flags(models, tmp_path / "s"))
    assert rerun["generations"] == 0 and rerun["already_stored"] == 40


def test_store_made_under_other_settings_is_refused(models, tmp_path):
    from openrlhf_contrastive import cli

    assert cli.main(["sample", *sample_flags(models, tmp_path / "s", "--data.max_samples", "4")]) == 0
    err = subprocess.run(
        [sys.executable, "-m", "openrlhf_contrastive.cli", "sample",
         *sample_flags(models, tmp_path / "s", "--data.max_samples", "4", "--rollout.temperature", "0.7")],
        capture_output=True, text=True, timeout=300,
    )
    assert err.returncode == 2
    assert "temperature: store has 1.0, now 0.7" in err.stderr and "one setting only" in err.stderr
    assert "--contrastive.accept_fingerprint_mismatch" not in err.stderr  # sample never mixes settings in a store


def records(store_dir):
    from openrlhf_contrastive.store import BaselineStore

    store = BaselineStore.load(store_dir)
    return store.keys, store.rewards


def test_kill_and_resume_equals_uninterrupted_run(models, tmp_path):
    from openrlhf_contrastive import stage
    from openrlhf_contrastive.store import REWARDS, record_dtype

    stage.main(sample_flags(models, tmp_path / "whole"))
    record_size = record_dtype(3).itemsize

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "openrlhf_contrastive.cli", "sample", *sample_flags(models, killed)]
    # SIGKILL: once before anything is written, then after 1 and after 4 more chunks have reached the disk.
    for records_before_kill in (None, 1, 5 * 4):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        start_size = (killed / REWARDS).stat().st_size if (killed / REWARDS).exists() else 0
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            size = (killed / REWARDS).stat().st_size if (killed / REWARDS).exists() else 0
            if records_before_kill is None and (killed / "header.json").exists():
                break
            if records_before_kill is not None and size - start_size >= records_before_kill * record_size:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the stage ended before it could be killed: {proc.communicate()[1][-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # A half-written last record, as a kill in the middle of a write leaves it.
    with open(killed / REWARDS, "ab") as f:
        f.write(b"\x01" * (record_size // 2))
    done_before = len(records(killed)[0])
    assert 0 < done_before < 40

    resumed = stage.main(sample_flags(models, killed))
    assert resumed["already_stored"] == done_before and resumed["sampled_prompts"] == 40 - done_before
    keys, rewards = records(killed)
    whole_keys, whole_rewards = records(tmp_path / "whole")
    assert (keys == whole_keys).all() and (rewards == whole_rewards).all()


def test_dated_chat_template_refused_before_sampling(models, tmp_path):
    from transformers import AutoTokenizer

    from openrlhf_contrastive import stage
    from openrlhf_contrastive.checks import InputError

    policy, rm, prompts = models
    dated = tmp_path / "dated"
    tokenizer = AutoTokenizer.from_pretrained(str(policy))
    tokenizer.chat_template = "Today is {{ strftime_now('%d %b %Y') }}. " + tokenizer.chat_template
    tokenizer.save_pretrained(str(dated))
    for name in os.listdir(policy):
        if not (dated / name).exists():
            os.symlink(policy / name, dated / name)
    flags = sample_flags((dated, rm, prompts), tmp_path / "s")
    with pytest.raises(InputError, match="writes today's date"):
        stage.main(flags)
    assert not (tmp_path / "s").exists()
    assert stage.main([*flags, "--contrastive.allow_dated_prompts", "--data.max_samples", "2"])["prompts"] == 2
