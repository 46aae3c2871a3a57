#!/usr/bin/env bash
# Contrastive PPO with the reward model behind an HTTP server (OpenRLHF's remote RM protocol:
# POST {"query": [...], "prompts": [...], "labels": [...]} -> {"rewards": [...]}), e.g. started with
#   python -m openrlhf.cli.serve_rm --reward_pretrain OpenRLHF/Llama-3-8b-rm-700k --port 5000 --bf16 --max_len 8192
# The baselines are scored through the same URL: the stage (in-job here, or `openrlhf-contrastive sample` with the
# same --reward.remote_url) calls it from OpenRLHF's rollout actors exactly as training does.
set -x

python3 -m openrlhf.cli.train_ppo_ray \
   --ref.num_nodes 1 \
   --ref.num_gpus_per_node 4 \
   --critic.num_nodes 1 \
   --critic.num_gpus_per_node 4 \
   --actor.num_nodes 1 \
   --actor.num_gpus_per_node 4 \
   --vllm.num_engines 2 \
   --vllm.tensor_parallel_size 2 \
   --train.colocate_all \
   --vllm.gpu_memory_utilization 0.5 \
   --vllm.enable_sleep \
   --ds.enable_sleep \
   --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
   --reward.remote_url http://rm-host:5000/get_reward \
   --ckpt.output_dir ./checkpoint/llama3-8b-contrastive-remote-rm \
   --train.batch_size 128 \
   --rollout.batch_size 512 \
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
   --algo.advantage.estimator gae \
   --reward_fn contrastive \
   --contrastive.baseline_path ./baselines/llama3-8b-sft-remote-rm \
   --contrastive.k 4 \
   --contrastive.shape mean

# The knobs:
#   --reward.remote_url          one URL, or several separated by commas (requests rotate over them); the URL list
#                                is part of the store's fingerprint, so keep it identical between stage and training
#   --contrastive.shape mean     r - mean of the 4 baseline rewards; try median for an RM with outliers
#   no --reward.num_gpus_per_node: the reward model runs outside the job
