#!/usr/bin/env bash
# Contrastive PPO (Shen et al. 2024) on a realistic 8B setup: Llama-3-8B SFT policy + 8B reward model,
# one node of 8 GPUs, hybrid engine (all models and vLLM colocated, vLLM and DeepSpeed sleep in turn).
# Before the first PPO step the plugin runs the offline stage on the trainer's own vLLM engines and reward
# model (k baselines per prompt of the whole prompt set), unless --contrastive.baseline_path already holds them.
#
# Once per environment, on every node:  pip install "openrlhf[vllm]==0.11.2" openrlhf-contrastive
#                                       openrlhf-contrastive patch
set -x

python3 -m openrlhf.cli.train_ppo_ray \
   --ref.num_nodes 1 \
   --ref.num_gpus_per_node 8 \
   --reward.num_nodes 1 \
   --reward.num_gpus_per_node 8 \
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
   --vllm.enforce_eager \
   --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
   --reward.model_name_or_path OpenRLHF/Llama-3-8b-rm-700k \
   --ckpt.output_dir ./checkpoint/llama3-8b-contrastive-ppo \
   --ckpt.path ./ckpt/llama3-8b-contrastive-ppo \
   --ckpt.save_hf \
   --train.batch_size 128 \
   --rollout.batch_size 1024 \
   --rollout.n_samples_per_prompt 1 \
   --train.max_epochs 1 \
   --data.max_len 2048 \
   --rollout.max_new_tokens 1024 \
   --data.max_samples 100000 \
   --ds.zero_stage 3 \
   --ds.param_dtype bf16 \
   --actor.adam.lr 5e-7 \
   --critic.adam.lr 9e-6 \
   --algo.kl.init_coef 0.01 \
   --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 \
   --data.input_key context_messages \
   --data.apply_chat_template \
   --actor.gradient_checkpointing_enable \
   --ds.packing_samples \
   --algo.advantage.estimator gae \
   --reward_fn contrastive \
   --contrastive.baseline_path ./baselines/llama3-8b-sft-rm-700k \
   --contrastive.k 4 \
   --contrastive.shape mean \
   --contrastive.coef 1.0 \
   --logger.tensorboard_dir ./logs/llama3-8b-contrastive-ppo

# The contrastive knobs:
#   --algo.advantage.estimator gae     the paper's PPO; reinforce / flash_reinforce work too. rloo,
#                                      reinforce_baseline, dr_grpo and group_norm subtract each prompt's group mean,
#                                      which cancels a linear contrastive reward: the plugin refuses them (use
#                                      --contrastive.shape sigmoid or winrate with those).
#   --contrastive.k 4                  baseline responses per prompt (k generations per prompt, once, before PPO)
#   --contrastive.shape mean           r - mean of the k baseline rewards (the paper); median, quantile:0.25, min,
#                                      max, zscore, sigmoid, winrate are the alternatives
#   --contrastive.coef 1.0             lambda in r - lambda * g; 0.5 keeps half of the prompt's difficulty in r
#   --contrastive.temperature 1.0      sampling temperature of the baselines (default: --rollout.temperature)
#   --contrastive.on_missing raw       train prompts without baselines on r instead of stopping
# Do not change --reward.normalize_enable, the length-penalty flags, the prompt flags or the models between the
# stage and training: the store's fingerprint would no longer match (that is refused, with the difference named).
# Watch train/contrastive/{baseline,raw_reward,reward,beat_baseline,hit} in tensorboard or wandb.
