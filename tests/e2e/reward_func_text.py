"""A deterministic reward function file for `--reward.remote_url` (OpenRLHF's reward_func(queries, prompts, labels)).

The reward of a rollout is a fixed function of its text: a hash of the response mapped into [-1, 1].
"""

import hashlib

import torch


def reward_func(queries, prompts, labels):
    rewards = []
    for query, prompt in zip(queries, prompts):
        response = query[len(prompt):] if query.startswith(prompt) else query
        digest = hashlib.blake2b(response.encode("utf-8"), digest_size=4).digest()
        rewards.append(int.from_bytes(digest, "little") / 2**31 - 1.0)
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}
