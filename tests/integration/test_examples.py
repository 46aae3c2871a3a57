"""Every launch script in examples/ parses with the parser that will run it, so no example rots.

train_ppo_ray commands go through the real, patched train_ppo_ray argument handling (lab/cpu_training/openrlhf_cli.py:
parse, validate, the plugin's check_args, stop at get_strategy); `openrlhf-contrastive sample` commands through
the stage's parser, `openrlhf-contrastive demo` through the demo's, all strictly (an unknown flag fails).
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from openrlhf_cli import parse_train_args

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.sh"))
COMMANDS = ("python3 -m openrlhf.cli.train_ppo_ray", "openrlhf-contrastive sample", "openrlhf-contrastive demo",
            "python -m lab.demo")


def commands(script: Path) -> list[tuple[str, list[str]]]:
    """(command, argv) of each launch in the script: continuation lines joined, comment lines dropped."""
    lines = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in text.splitlines():
        for command in COMMANDS:
            if command in line:
                argv = shlex.split(line.split(command, 1)[1])
                reward_func = importlib.util.find_spec("openrlhf_contrastive.reward_func").origin
                found.append((command, [reward_func if a == "$REWARD_FUNC" else a for a in argv]))
    return found


def test_there_are_examples_for_every_setup():
    names = {p.name for p in EXAMPLES}
    assert {"train_ppo_contrastive_llama3_8b.sh", "sample_baselines_ray_cluster.sh", "train_ppo_contrastive_remote_rm.sh",
            "train_ppo_contrastive_unpatched.sh", "demo_cpu.sh"} <= names
    assert all(commands(p) for p in EXAMPLES), "an example without a launch command"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_flags_parse(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative baseline paths resolve to nothing: the plugin sees no store yet
    for command, argv in commands(script):
        if command.endswith("train_ppo_ray"):
            args = parse_train_args(argv, base=[])
            assert args.actor.model_name_or_path
            if "--reward_fn" in argv:
                assert args.reward_fn == "contrastive" and args.algo.advantage.estimator == "gae"
            else:  # stock openrlhf path: the plugin's reward_func file is the reward
                assert args.reward.remote_url[0].endswith("openrlhf_contrastive/reward_func.py")
        elif command.endswith("sample"):
            from openrlhf_contrastive.stage import build_parser

            args = build_parser().parse_args(argv)
            assert getattr(args, "contrastive.baseline_path")
        elif command.endswith("lab.demo"):  # the clone's demo: the package's flags and the training part's
            from lab.demo import build_parser

            build_parser().parse_args(argv)
        else:
            from openrlhf_contrastive.demo.run import build_parser

            build_parser().parse_args(argv)
