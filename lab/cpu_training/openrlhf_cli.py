"""TEST-ONLY: run the real `openrlhf.cli.train_ppo_ray` argument handling and capture the final args.

Shared by the tests (tests/integration: the parser, the examples, the transform) and the transform benchmark.

train_ppo_ray builds its parser under `if __name__ == "__main__":`, parses, validates, calls the plugin's
check_args and then `train(args)`, whose first step is `get_strategy(args)`. Running the module with runpy
while `openrlhf.utils.get_strategy` raises `ParsedArgs` stops it right there, with every openrlhf-side
normalisation applied and nothing started.
"""

import runpy
import sys
from unittest import mock


class ParsedArgs(Exception):
    def __init__(self, args):
        super().__init__("train_ppo_ray parsed its arguments")
        self.parsed = args


def _stop(args):
    raise ParsedArgs(args)


# The smallest flag set train_ppo_ray accepts on its own.
BASE_FLAGS = [
    "--actor.model_name_or_path", "policy",
    "--reward.model_name_or_path", "reward",
    "--rollout.batch_size", "4",
    "--rollout.micro_batch_size", "2",
    "--actor.num_gpus_per_node", "1",
]


def parse_train_args(argv, base=BASE_FLAGS):
    """The hierarchized args the real train_ppo_ray would train with; SystemExit where it refuses."""
    import openrlhf.utils
    import ray

    with mock.patch.object(sys, "argv", ["train_ppo_ray", *base, *argv]), mock.patch.object(
        openrlhf.utils, "get_strategy", _stop
    ), mock.patch.object(ray, "is_initialized", lambda: True):
        try:
            runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")
        except ParsedArgs as parsed:
            return parsed.parsed
    raise AssertionError("train_ppo_ray returned without reaching train(args)")
