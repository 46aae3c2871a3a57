"""A deterministic reward function file for `--reward.remote_url` (OpenRLHF's reward_func(queries, prompts, labels)).

The reward of a rollout is a fixed function of its text: a hash of the response mapped into [-1, 1].

`REWARD_HOLD=<refresh.json>:<s>` and `REWARD_HELD=<file>` (test_refresh_cpu.py) park the run at a known point so
that the test can kill it there: once refresh.json records the refresh at policy step s, the next call writes <file>
and waits instead of answering. The refresh at s scores its samples before it is recorded, and the batch of step
s + 1 was scored before the refresh, so a run held this way has trained and logged step s + 1 and waits inside step
s + 2, before that step's checkpoint.
"""

import hashlib
import json
import os
import time

import torch


def held() -> bool:
    hold = os.environ.get("REWARD_HOLD")
    if not hold:
        return False
    path, step = hold.rsplit(":", 1)
    try:
        with open(path) as f:
            return any(entry["policy_step"] == int(step) for entry in json.load(f)["refreshes"])
    except (OSError, ValueError, KeyError):  # not written yet
        return False


def reward_func(queries, prompts, labels):
    if held():
        open(os.environ["REWARD_HELD"], "w").close()
        while True:
            time.sleep(1)
    rewards = []
    for query, prompt in zip(queries, prompts):
        response = query[len(prompt):] if query.startswith(prompt) else query
        digest = hashlib.blake2b(response.encode("utf-8"), digest_size=4).digest()
        rewards.append(int.from_bytes(digest, "little") / 2**31 - 1.0)
    rewards = torch.tensor(rewards, dtype=torch.float32)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}
