"""openrlhf_contrastive/reward_func.py inside stock OpenRLHF's rollout actor on a real vLLM CPU engine.

OpenRLHF's create_vllm_engines(..., remote_rm_url=[reward_func.py]) loads the file in its RolloutRayActor; the
configuration reaches the actor through Ray's runtime_env, as on a cluster. The reward of a rollout must be the
base reward minus the prompt's baseline mean, and the plugin's metrics must arrive in Experience.info.
"""

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.vllm]

BASE = '''
import torch

def reward_func(queries, prompts, labels):
    r = torch.tensor([(len(q) - len(p)) / 10 for q, p in zip(queries, prompts)])
    return {"rewards": r, "scores": r}
'''
PROMPTS = ["Say something about the sea.", "What is two plus two?"]
BASELINES = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 0.0, 1.0]])


def test_contrastive_reward_through_openrlhfs_rollout_actor(tmp_path):
    import ray
    from vllm import SamplingParams

    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.trainer.ray.vllm_engine import create_vllm_engines
    from openrlhf.utils.utils import get_tokenizer

    import openrlhf_contrastive.reward_func as reward_func_module
    from openrlhf_contrastive.fingerprint import model_identity
    from openrlhf_contrastive.store import StoreWriter, prompt_keys
    from openrlhf_contrastive.demo.tiny import build_policy

    policy = build_policy(tmp_path / "policy")
    base = tmp_path / "base_reward.py"
    base.write_text(BASE)
    with StoreWriter(tmp_path / "store", 4, {"reward": [model_identity(str(base))]}) as w:
        w.append(prompt_keys(PROMPTS), PROMPTS, BASELINES)
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": os.environ["PYTHONPATH"],
        "CONTRASTIVE_BASE_REWARD": str(base), "CONTRASTIVE_BASELINE_PATH": str(tmp_path / "store"),
    }
    from ray_start import init_ray  # lab/cpu_training/

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    init_ray(num_cpus=2, num_gpus=1, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        (engine,) = create_vllm_engines(
            1, 1, str(policy), 42, False, False, True, 96, None, 0.05, False, None,
            remote_rm_url=[reward_func_module.__file__],
        )
        tokenizer = get_tokenizer(str(policy), None, "left", None)
        params = SamplingParams(temperature=1.0, max_tokens=10, min_tokens=1, skip_special_tokens=False, seed=3)
        refs = [engine.generate_responses.remote(prompt=p, label=None, sampling_params=params, max_length=96,
                                                 hf_tokenizer=tokenizer, num_samples=1) for p in PROMPTS]
        responses = [out[0] for out in ray.get(refs)]
    finally:
        ray.shutdown()

    for response, prompt, baselines in zip(responses, PROMPTS, BASELINES):
        query = tokenizer.decode(response["observation_tokens"], skip_special_tokens=False)
        raw = (len(query) - len(prompt)) / 10
        assert float(response["reward"]) == pytest.approx(raw - baselines.mean(), abs=1e-5)
        assert float(response["scores"]) == pytest.approx(raw, abs=1e-5)
        # The metrics travel as extra_logs into Experience.info, which OpenRLHF logs as train/contrastive/*.
        experience = SamplesGenerator._process_response_into_experience(None, response, max_len=96)
        assert float(experience.info["contrastive/baseline"][0]) == pytest.approx(baselines.mean())
        assert float(experience.info["contrastive/hit"][0]) == 1.0
        assert float(experience.rewards[0]) == pytest.approx(raw - baselines.mean(), abs=1e-5)
