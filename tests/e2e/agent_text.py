"""A small agent for `--train.agent_func_path` (OpenRLHF's MultiTurnAgentExecutor): the environment pays each turn.

The reward of a turn is a fixed function of the action's text: a hash mapped into [0, 1]; the episode ends after
two turns (or when OpenRLHF's token budget runs out first).
"""

import hashlib

import torch

from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor


class AgentInstance(AgentInstanceBase):
    def __init__(self, *args, **kwargs):
        self.turn = 0

    async def step(self, states, **kwargs):
        self.turn += 1
        digest = hashlib.blake2b(states["action_text"].encode("utf-8"), digest_size=4).digest()
        reward = torch.tensor(int.from_bytes(digest, "little") / 2**32)
        return {"rewards": reward, "scores": reward, "environment_feedback": " Go on:", "done": self.turn == 2,
                "extra_logs": {}}


class AgentExecutor(MultiTurnAgentExecutor):
    def __init__(self):
        super().__init__(AgentInstance)
