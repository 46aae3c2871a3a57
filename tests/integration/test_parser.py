"""The real train_ppo_ray parser of patched openrlhf 0.11.2 with --reward_fn contrastive."""

import pytest

from openrlhf_cli import parse_train_args

pytestmark = pytest.mark.integration


def test_contrastive_flags_are_accepted_and_nested(tmp_path):
    args = parse_train_args([
        "--reward_fn", "contrastive",
        "--contrastive.baseline_path", str(tmp_path),
        "--contrastive.shape", "quantile:0.25",
        "--contrastive.coef", "0.5",
        "--contrastive.on_missing", "raw",
        "--contrastive.k", "8",
        "--contrastive.temperature", "0.7",
    ])
    assert args.reward_fn == "contrastive"
    c = args.contrastive
    assert (c.baseline_path, c.shape, c.coef, c.on_missing, c.k, c.temperature) == (
        str(tmp_path), "quantile:0.25", 0.5, "raw", 8, 0.7,
    )


def test_without_reward_fn_there_are_no_contrastive_flags():
    args = parse_train_args([])
    assert args.reward_fn is None and not hasattr(args, "contrastive")
    with pytest.raises(SystemExit):
        parse_train_args(["--contrastive.k", "4"])


def test_an_unknown_reward_fn_lists_the_installed_ones():
    with pytest.raises(ValueError, match=r"--reward_fn 'contrastve' .*openrlhf.reward_fns: contrastive\)"):
        parse_train_args(["--reward_fn", "contrastve"])


def test_a_module_attr_path_loads_too(tmp_path):
    args = parse_train_args([
        "--reward_fn", "openrlhf_contrastive.plugin:ContrastiveReward", "--contrastive.baseline_path", str(tmp_path),
    ])
    assert args.contrastive.shape == "mean"


@pytest.mark.parametrize("estimator", ["rloo", "reinforce_baseline", "group_norm", "dr_grpo"])
def test_a_linear_shape_under_a_group_centred_estimator_is_refused(tmp_path, estimator):
    flags = ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path),
             "--algo.advantage.estimator", estimator, "--rollout.n_samples_per_prompt", "4"]
    with pytest.raises(SystemExit, match=rf"(?s){estimator} subtracts .* cancels exactly.*estimator gae"):
        parse_train_args(flags)
    assert parse_train_args(flags + ["--contrastive.shape", "sigmoid"]).contrastive.shape == "sigmoid"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--contrastive.shape", "avg"], "not a known shape. Choose one of: mean, median"),
        (["--contrastive.shape", "zscore", "--contrastive.k", "1"], "needs --contrastive.k >= 2"),
        (["--contrastive.k", "0"], "at least 1"),
        (["--contrastive.temperature", "0"], "temperature 0.0 .* identical greedy responses"),
        (["--rollout.temperature", "-1"], r"temperature -1.0 \(--rollout.temperature\)"),
        (["--contrastive.chunk_size", "0"], "--contrastive.chunk_size is 0"),
    ],
)
def test_bad_contrastive_flags_are_refused_with_the_fix(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        parse_train_args(["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path), *flags])


def test_a_missing_baseline_path_flag_is_refused():
    with pytest.raises(SystemExit, match="--contrastive.baseline_path is not set"):
        parse_train_args(["--reward_fn", "contrastive"])


def test_a_bad_on_missing_choice_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path),
                          "--contrastive.on_missing", "skip"])
    assert "invalid choice: 'skip'" in capsys.readouterr().err


def test_a_dated_chat_template_is_refused_at_parse_time_unless_allowed(tmp_path):
    """The in-job stage would otherwise key the store by today's date; --contrastive.allow_dated_prompts goes on."""
    from openrlhf_contrastive.demo.tiny import build_tokenizer

    tokenizer = build_tokenizer(tmp_path / "policy")
    tokenizer.chat_template = "{% if messages[0]['role'] == 'system' %}{{ strftime_now('%Y-%m-%d') }}{% endif %}" + (
        tokenizer.chat_template
    )
    tokenizer.save_pretrained(str(tmp_path / "policy"))
    flags = ["--reward_fn", "contrastive", "--contrastive.baseline_path", str(tmp_path / "store"),
             "--actor.model_name_or_path", str(tmp_path / "policy"), "--data.apply_chat_template"]
    with pytest.raises(SystemExit, match="writes today's date"):
        parse_train_args(flags)
    assert parse_train_args(flags + ["--contrastive.allow_dated_prompts"]).contrastive.allow_dated_prompts
