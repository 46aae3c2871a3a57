"""Agent rollouts (--train.agent_func_path): the stage's baselines are scored by the same agent executor as training.

A small multi-turn agent of our own (OpenRLHF's MultiTurnAgentExecutor, two turns, a reward from the environment)
runs inside OpenRLHF's vLLM CPU rollout actor, started by `openrlhf-contrastive sample --contrastive.backend
openrlhf` in a driver that declares one logical GPU to Ray (as the demo does).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

AGENT = '''
import torch

from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor


class AgentInstance(AgentInstanceBase):
    """Up to two turns (OpenRLHF gives the first turn the whole --data.max_len budget, so often one): each pays 1 per
    character of its action, capped at 5; the environment answers " again:"."""

    def __init__(self, *args, **kwargs):
        self.turn = 0

    async def step(self, states, **kwargs):
        self.turn += 1
        reward = torch.tensor(float(min(len(states["action_text"]), 5)))
        return {"rewards": reward, "scores": reward, "environment_feedback": " again:", "done": self.turn == 2,
                "extra_logs": {}}


class AgentExecutor(MultiTurnAgentExecutor):
    def __init__(self):
        super().__init__(AgentInstance)
'''

DRIVER = """
import os, sys
import ray
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False,
         runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ["PYTHONPATH"]}})
from openrlhf_contrastive import cli
sys.exit(cli.main(["sample", *sys.argv[1:]]))
"""


def test_sample_scores_baselines_through_the_agent(tmp_path):
    from openrlhf_contrastive.store import BaselineStore
    from openrlhf_contrastive.demo.tiny import build_policy

    policy = build_policy(tmp_path / "policy")
    (tmp_path / "agent.py").write_text(AGENT)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"Question {i}: what is {i} plus two?"}) + "\n" for i in range(5)))
    flags = [
        "--actor.model_name_or_path", str(policy), "--train.agent_func_path", str(tmp_path / "agent.py"),
        "--data.prompt_dataset", str(prompts), "--data.max_len", "64", "--rollout.max_new_tokens", "6",
        "--contrastive.k", "2", "--contrastive.chunk_size", "5", "--contrastive.backend", "openrlhf",
        "--contrastive.baseline_path", str(tmp_path / "store"), "--vllm.enforce_eager",
    ]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, "-c", DRIVER, *flags], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    store = BaselineStore.load(tmp_path / "store")
    assert len(store) == 5 and store.k == 2
    # Only the agent pays: whole numbers from 0 to 10 per response (at most two turns of at most 5).
    assert ((store.rewards >= 0) & (store.rewards <= 10) & (store.rewards == store.rewards.round())).all()
    assert store.rewards.max() > 0
    assert str(tmp_path / "agent.py") in json.dumps(store.fingerprint)
