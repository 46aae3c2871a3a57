"""The evidence testbed's reward as an OpenRLHF reward-function file (--reward.remote_url lab/testbed_reward.py).

PPO trains on `rewards` = the proxy of lab/testbed.py (gold + per-prompt offset + per-prompt noise + length bias),
with the settings of the "proxy" section of the experiment's config.json, whose path is EVIDENCE_CONFIG (set by
lab.harness.run_env(EVIDENCE_CONFIG=...)). With every proxy error 0 the reward is gold itself (the oracle arms).
The gold reward of the same rollout goes only to `extra_logs`, which OpenRLHF 0.11.2 turns into
`experience.info["gold"]` and logs as `train/gold` per step: measured on the rollouts, never trained on.
`prompt_tag` (a number in [0, 1) fixed per prompt word) is logged the same way: its mean over a step identifies the
step's prompts, so two runs can be checked to have trained on the same prompts step by step (the demo does).

OpenRLHF loads this file by its path in its reward workers; it imports the lab as a package, which the lab's
harness makes importable there (the repository root is on their PYTHONPATH).
"""

import os

import torch

from lab import testbed

if "EVIDENCE_CONFIG" not in os.environ:
    raise RuntimeError(
        "lab/testbed_reward.py: EVIDENCE_CONFIG is not set. Why: the proxy's settings come from the experiment's "
        "config.json. Fix: start the run with lab.harness.run_env(EVIDENCE_CONFIG=<config.json>)."
    )
_P = testbed.load_config(os.environ["EVIDENCE_CONFIG"])["proxy"]


def reward_func(queries, prompts, labels):
    proxies, golds, lengths, tags = [], [], [], []
    for query, prompt in zip(queries, prompts):
        word = testbed.word_of(prompt)
        response = testbed.response_of(query, prompt)
        proxies.append(testbed.proxy(word, response, _P))
        golds.append(testbed.gold(word, response))
        lengths.append(float(len(response)))
        tags.append(testbed.prompt_tag(word))
    proxies = torch.tensor(proxies, dtype=torch.float32)
    return {
        "rewards": proxies,
        "scores": proxies,
        "extra_logs": {
            "gold": torch.tensor(golds, dtype=torch.float32),
            "proxy_sq": proxies * proxies,  # with train/reward: the batch std of the proxy
            "resp_chars": torch.tensor(lengths, dtype=torch.float32),
            "prompt_tag": torch.tensor(tags, dtype=torch.float32),
        },
    }
