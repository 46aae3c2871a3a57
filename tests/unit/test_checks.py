"""Input checks shared by train_ppo_ray's check_args and `sample` (openrlhf_contrastive.checks), without openrlhf."""

import datetime
import json
from types import SimpleNamespace

import pytest

from openrlhf_contrastive.checks import (
    InputError,
    check_contrastive_args,
    check_prompt_file,
    check_store_directory,
    dated_chat_template,
    dated_prompt_message,
)


def contrastive_args(tmp_path, **overrides):
    settings = dict(
        baseline_path=str(tmp_path / "store"), shape="mean", coef=1.0, k=4, temperature=None, chunk_size=64,
        allow_dated_prompts=False,
    )
    settings.update(overrides)
    return SimpleNamespace(contrastive=SimpleNamespace(**settings), rollout=SimpleNamespace(temperature=1.0))


@pytest.mark.parametrize(
    "overrides, flag",
    [
        (dict(k=0), "--contrastive.k"),
        (dict(k=-1), "--contrastive.k"),
        (dict(temperature=0.0), "--contrastive.temperature"),
        (dict(temperature=-0.5), "--contrastive.temperature"),
        (dict(chunk_size=0), "--contrastive.chunk_size"),
        (dict(shape="zscore", k=1), "--contrastive.k >= 2"),
        (dict(shape="quantile:2"), "quantile"),
        (dict(coef=float("nan")), "--contrastive.coef"),
        (dict(baseline_path=None), "--contrastive.baseline_path"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(tmp_path, overrides, flag):
    with pytest.raises(InputError, match=flag.replace(".", r"\.").replace("+", r"\+")):
        check_contrastive_args(contrastive_args(tmp_path, **overrides))
    assert not (tmp_path / "store").exists()


def test_rollout_temperature_zero_is_refused_when_the_baselines_inherit_it(tmp_path):
    args = contrastive_args(tmp_path)
    args.rollout.temperature = 0.0
    with pytest.raises(InputError, match=r"--rollout\.temperature"):
        check_contrastive_args(args)


def test_cancelling_estimator_is_refused_only_in_training(tmp_path):
    args = contrastive_args(tmp_path)
    with pytest.raises(InputError, match="cancels exactly"):
        check_contrastive_args(args, estimator="rloo")
    check_contrastive_args(args, estimator="gae")
    check_contrastive_args(args)  # sample has no estimator


def test_store_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_store_directory(tmp_path / "file")
    with pytest.raises(InputError, match="is a file"):
        check_store_directory(tmp_path / "file" / "store")


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "holds no prompts"),
        ("\n\n", "holds no prompts"),
        ('{"input": "a"}\nnot json\n', "line 2, is not JSON"),
        ('{"question": "a"}\n', "has no key 'input'"),
        ('["a"]\n', "has no key 'input'"),
    ],
)
def test_bad_prompt_files_are_refused_with_file_and_line(tmp_path, content, match):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as error:
        check_prompt_file(path, "input", None)
    assert str(path) in str(error.value)


def test_non_utf8_prompt_file_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"input": "caf"}).encode()[:-2] + b'\xe9"}\n')
    with pytest.raises(InputError, match="not UTF-8") as error:
        check_prompt_file(path, "input", None)
    assert str(path) in str(error.value)


def test_missing_label_key_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"input": "a"}) + "\n")
    check_prompt_file(path, "input", None)
    with pytest.raises(InputError, match="--data.label_key"):
        check_prompt_file(path, "input", "answer")


# -- dates in chat templates -------------------------------------------------------------------------------


def tokenizer_with(template, tmp_path):
    from openrlhf_contrastive.demo.tiny import build_tokenizer

    tok = build_tokenizer(tmp_path)
    tok.chat_template = template
    return tok


BODY = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize(
    "template",
    [
        "Today: {{ strftime_now('%d %b %Y') }}" + BODY,
        "Date: {{ strftime_now('%Y-%m-%d') }}" + BODY,
        "{{ strftime_now('%A, %B %-d') }}" + BODY,  # a weekday and month name, no year
        "{{ strftime_now('%H:%M') }}" + BODY,  # a clock time
        # the date only when the conversation has a system message
        "{% if messages[0]['role'] == 'system' %}Knowledge cutoff, today {{ strftime_now('%d.%m.%y') }}{% endif %}" + BODY,
    ],
)
def test_dated_templates_are_found_whatever_the_format(tmp_path, template):
    snippet = dated_chat_template(tokenizer_with(template, tmp_path))
    assert snippet is not None
    message = dated_prompt_message(snippet)
    assert "writes today's date" in message and "--contrastive.allow_dated_prompts" in message
    assert "--data.input_template" in message and "strftime_now" in message


def test_undated_templates_pass(tmp_path):
    assert dated_chat_template(tokenizer_with(BODY, tmp_path)) is None
    fixed = '{% set date_string = "26 Jul 2024" %}Today: {{ date_string }}' + BODY
    assert dated_chat_template(tokenizer_with(fixed, tmp_path / "fixed")) is None
    no_system = "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'] }}{% endfor %}"
    assert dated_chat_template(tokenizer_with(no_system, tmp_path / "nosys")) is None


def test_date_probe_leaves_the_clock_alone(tmp_path):
    from transformers.utils import chat_template_utils

    dated_chat_template(tokenizer_with("{{ strftime_now('%Y') }}" + BODY, tmp_path))
    assert chat_template_utils.datetime is datetime.datetime
