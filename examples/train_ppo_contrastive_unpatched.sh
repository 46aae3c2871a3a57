#!/usr/bin/env bash
# Contrastive rewards on UNPATCHED OpenRLHF 0.11.2 (no `openrlhf-contrastive patch`): the plugin's
# openrlhf_contrastive/reward_func.py is the reward-function file of --reward.remote_url. It calls your base reward
# (an HTTP reward model or another reward-function file), looks the prompt up in the baseline store and returns
# r - g(baselines). Two steps:
#
# 1. baselines, scored by the base reward (the `sample` command needs only `pip install openrlhf-contrastive`):
#      openrlhf-contrastive sample --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
#          --reward.remote_url http://rm-host:5000/get_reward --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 \
#          --data.input_key context_messages --data.apply_chat_template --rollout.max_new_tokens 1024 \
#          --data.max_len 2048 --contrastive.k 4 --contrastive.baseline_path /shared/baselines/unpatched
# 2. training (this script), with the same prompt and rollout flags. Configuration travels in environment
#    variables, which must reach the vLLM engines: on a multi-node cluster submit with
#    ray job submit --runtime-env-json '{"env_vars": {"CONTRASTIVE_BASE_REWARD": "...", ...}}'.
# Length penalties (--reward.overlong_buffer_len, --reward.stop_properly_penalty_coef) are applied by OpenRLHF after
# the reward function: leave them off on this path, or use the patched --reward_fn contrastive.
set -x

export CONTRASTIVE_BASE_REWARD=http://rm-host:5000/get_reward      # or /path/to/your_reward_func.py
export CONTRASTIVE_BASELINE_PATH=/shared/baselines/unpatched
export CONTRASTIVE_SHAPE=mean                                      # as --contrastive.shape
export CONTRASTIVE_COEF=1.0                                        # as --contrastive.coef
export CONTRASTIVE_ON_MISSING=error                                # as --contrastive.on_missing
REWARD_FUNC=$(python3 -c 'import importlib.util; print(importlib.util.find_spec("openrlhf_contrastive.reward_func").origin)')

python3 -m openrlhf.cli.train_ppo_ray \
   --ref.num_nodes 1 \
   --ref.num_gpus_per_node 8 \
   --critic.num_nodes 1 \
   --critic.num_gpus_per_node 8 \
   --actor.num_nodes 1 \
   --actor.num_gpus_per_node 8 \
   --vllm.num_engines 4 \
   --vllm.tensor_parallel_size 2 \
   --train.colocate_all \
   --vllm.gpu_memory_utilization 0.5 \
   --vllm.enable_sleep \
   --ds.enable_sleep \
   --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
   --reward.remote_url "$REWARD_FUNC" \
   --ckpt.output_dir ./checkpoint/llama3-8b-contrastive-unpatched \
   --train.batch_size 128 \
   --rollout.batch_size 1024 \
   --train.max_epochs 1 \
   --data.max_len 2048 \
   --rollout.max_new_tokens 1024 \
   --ds.zero_stage 3 \
   --ds.param_dtype bf16 \
   --actor.adam.lr 5e-7 \
   --critic.adam.lr 9e-6 \
   --algo.kl.init_coef 0.01 \
   --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 \
   --data.input_key context_messages \
   --data.apply_chat_template \
   --actor.gradient_checkpointing_enable \
   --algo.advantage.estimator gae

# The knobs:
#   --algo.advantage.estimator gae   keep gae, reinforce or flash_reinforce: group-centred estimators (rloo, grpo...)
#                                    cancel a linear contrastive reward, and nothing refuses them on this path
#   CONTRASTIVE_LABEL_KEYED=1        when the stage ran with --data.label_key (store keys then include labels)
#   train/contrastive/* metrics come back through the reward function's extra_logs
