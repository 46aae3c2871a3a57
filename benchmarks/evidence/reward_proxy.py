"""The proxy reward model of the evidence experiment, as an OpenRLHF reward-function file (--reward.remote_url).

PPO trains on `rewards` = proxy (testbed.proxy: gold + per-prompt offset + per-prompt noise + length bias).
The gold reward of the same rollout goes only to `extra_logs`, which OpenRLHF 0.11.2 turns into
`experience.info["gold"]` and logs as `train/gold` per step: measured on the rollouts, never trained on.
`prompt_tag` (a number in [0, 1) fixed per prompt word) is logged the same way: its mean over a step identifies the
step's prompts, so two runs can be checked to have trained on the same prompts step by step (the demo does).
The proxy settings are read from config.json next to this file (EVIDENCE_CONFIG overrides the path).
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import testbed  # noqa: E402

_P = testbed.load_config(os.environ.get("EVIDENCE_CONFIG", testbed.CONFIG_PATH))["proxy"]


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
