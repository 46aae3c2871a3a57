#!/usr/bin/env bash
# The offline stage on its own, on a Ray cluster: write the baseline store before training, on as many
# GPUs as you like, with OpenRLHF's own vLLM engines and a RewardModelActor group. Resumable: rerun the same
# command after a crash and finished prompts are skipped. Train afterwards with the same model, reward, data
# and rollout flags plus --reward_fn contrastive --contrastive.baseline_path (the stage is then skipped).
#
# On the head node:    ray start --head --num-gpus 8
# On each worker:      ray start --address <head-ip>:6379 --num-gpus 8
# Every node needs:    pip install "openrlhf[vllm]==0.11.2" openrlhf-contrastive && openrlhf-contrastive patch
set -x

ray job submit --address="http://127.0.0.1:8265" \
   --runtime-env-json='{"working_dir": "."}' \
   -- openrlhf-contrastive sample \
   --actor.model_name_or_path OpenRLHF/Llama-3-8b-sft-mixture \
   --reward.model_name_or_path OpenRLHF/Llama-3-8b-rm-700k \
   --reward.num_nodes 1 \
   --reward.num_gpus_per_node 4 \
   --vllm.num_engines 6 \
   --vllm.tensor_parallel_size 2 \
   --vllm.gpu_memory_utilization 0.85 \
   --vllm.enable_prefix_caching \
   --data.prompt_dataset OpenRLHF/prompt-collection-v0.1 \
   --data.input_key context_messages \
   --data.apply_chat_template \
   --data.max_samples 100000 \
   --data.max_len 2048 \
   --rollout.max_new_tokens 1024 \
   --rollout.temperature 1.0 \
   --contrastive.k 4 \
   --contrastive.chunk_size 512 \
   --contrastive.baseline_path /shared/baselines/llama3-8b-sft-rm-700k

# The knobs:
#   --contrastive.k 4              baseline responses per prompt: 100k prompts x 4 = 400k generations
#   --contrastive.chunk_size 512   prompts sampled, scored and appended together: the unit of resume
#   --rollout.temperature          baselines are sampled at the rollout temperature unless --contrastive.temperature
#   --vllm.num_engines 6 x tp 2    12 GPUs generate, --reward.num_gpus_per_node 4 score (16 in all)
#   --contrastive.baseline_path    on storage every node of the training job can read
# Inspect the result (prompts, k, provenance, baseline distribution, PNG):
#   openrlhf-contrastive inspect /shared/baselines/llama3-8b-sft-rm-700k
