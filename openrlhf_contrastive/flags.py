"""Every command-line flag this package declares, and the names it logs under: a stdlib-only leaf module.

`--contrastive.*` flags are declared here once (train_ppo_ray gets them through the plugin's `add_args`; the
`sample` and `evaluate` commands through their parsers), next to the subset of train_ppo_ray's own flags that
decide which prompts, policy, reward and sampling baselines come from. Nothing here imports torch or openrlhf,
so `--help` answers at once.
"""

from __future__ import annotations

import argparse

BACKENDS = ("openrlhf", "hf")
ON_MISSING = ("error", "raw")

# Per-sample metrics written to experience.info (patched path) or extra_logs (reward_func.py); OpenRLHF logs each
# as train/<key> (wandb, tensorboard).
METRIC_BASELINE = "contrastive/baseline"
METRIC_RAW_REWARD = "contrastive/raw_reward"
METRIC_REWARD = "contrastive/reward"
METRIC_BEAT_BASELINE = "contrastive/beat_baseline"
METRIC_HIT = "contrastive/hit"
# Per PPO batch (the same value for every sample, so OpenRLHF's mean logs it as is): std over the batch of the
# contrastive value over std of r (written only where r varies), and the store's prediction for fresh SFT samples
# (openrlhf_contrastive.diagnose): the two agree at step 1, where the rollouts are SFT samples.
METRIC_SPREAD_RATIO = "contrastive/spread_ratio"
METRIC_SPREAD_RATIO_PREDICTED = "contrastive/spread_ratio_predicted"
# With --contrastive.refresh_every N (openrlhf_contrastive.refresh), per PPO step: the policy step whose samples gave
# the baselines in use (0: the SFT store), that generation's age in PPO steps (policy updates since it was sampled),
# the baseline generations spent on refreshes so far, and, at a step that refreshed, the mean over the refreshed
# prompts of b_new(x) - b_before(x). Without refresh none of them is logged.
METRIC_GENERATION = "contrastive/generation"
METRIC_GENERATION_AGE = "contrastive/generation_age"
METRIC_REFRESH_GENERATIONS = "contrastive/refresh_generations"
METRIC_REFRESH_SHIFT = "contrastive/refresh_shift"


def add_contrastive_args(parser: argparse.ArgumentParser) -> None:
    """Declare every --contrastive.* flag (used by train_ppo_ray and by `openrlhf-contrastive sample`)."""
    group = parser.add_argument_group("contrastive rewards (openrlhf-contrastive)")
    group.add_argument(
        "--contrastive.baseline_path", type=str, default=None,
        help="Directory of the baseline store (k baseline rewards per prompt). Written by the offline stage.",
    )
    group.add_argument(
        "--contrastive.shape", type=str, default="mean",
        help="How r is compared with the prompt's baseline rewards r_1..r_k: mean (the paper: r - mean), median, "
        "quantile:Q, min, max, logmeanexp:BETA (r - BETA * log mean exp(r_j / BETA), A*-PO's V*: the mean as BETA "
        "grows, the max as it shrinks), zscore ((r - mean) / max(sample std, floor), floor = the store's pooled within-prompt std / sqrt(k): scale-free; k >= 2), sigmoid (mean of "
        "sigmoid(r - r_j)), winrate (fraction of baselines beaten, ties half, centred), logsigmoid or "
        "logsigmoid:Q (LSC: log sigmoid(r - ref), ref = mean + z_Q * std, Q = 0.85).",
    )
    group.add_argument(
        "--contrastive.coef", type=float, default=1.0,
        help="lambda in r - lambda * g(baselines); 1 is the paper's contrastive reward, 0 the raw reward.",
    )
    group.add_argument(
        "--contrastive.on_missing", type=str, default="error", choices=ON_MISSING,
        help="A rollout whose prompt is not in the store: error (stop, naming the prompt) or raw (keep r, count "
        "the miss in train/contrastive/hit).",
    )
    group.add_argument(
        "--contrastive.k", type=int, default=4, help="Baseline responses sampled per prompt by the offline stage."
    )
    group.add_argument(
        "--contrastive.temperature", type=float, default=None,
        help="Sampling temperature of the baseline responses (default: --rollout.temperature).",
    )
    group.add_argument(
        "--contrastive.chunk_size", type=int, default=64,
        help="Offline stage: prompts sampled, scored and appended to the store together (the unit of resume).",
    )
    group.add_argument(
        "--contrastive.allow_dated_prompts", action="store_true", default=False,
        help="Offline stage: go on when the chat template writes today's date into the prompts (keys then change daily).",
    )
    group.add_argument(
        "--contrastive.accept_fingerprint_mismatch", action="store_true", default=False,
        help="Use a store whose provenance (policy, reward, prompt or sampling settings) differs from this run's.",
    )
    group.add_argument(
        "--contrastive.keep_responses", action="store_true", default=False,
        help="Offline stage: also keep the k response texts per prompt (JSON lines in the store), for "
        "`openrlhf-contrastive evaluate --eval.judge`, second rewards on the baselines and `rescore`.",
    )
    group.add_argument(
        "--contrastive.refresh_every", type=int, default=0,
        help="Training only: every N PPO steps, sample k new baselines per prompt from the current policy (the "
        "trainer's vLLM engines, synced with the actor), score them like the rollouts, and train on them from then on "
        "(a new generation of the store; the SFT baselines stay for evaluate and rescore). 0 (default): never, the "
        "baselines stay the SFT policy's.",
    )
    group.add_argument(
        "--contrastive.refresh_prompts", type=int, default=0,
        help="With --contrastive.refresh_every: how many training prompts each refresh samples, those whose baselines "
        "are oldest first (dataset order among equals); 0 (default): all of them.",
    )


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Declare the --eval.* flags of `openrlhf-contrastive evaluate` (the rest are `sample`'s flags)."""
    group = parser.add_argument_group("evaluation against the stored SFT baselines (openrlhf-contrastive evaluate)")
    group.add_argument(
        "--eval.n", type=int, default=4,
        help="Responses sampled per prompt from the policy under test (--actor.model_name_or_path), with the store's "
        "sampling settings.",
    )
    group.add_argument(
        "--eval.output_dir", type=str, default="evaluation",
        help="Where evaluation.json, evaluation.png and samples.jsonl (the policy's responses and rewards) are written.",
    )
    group.add_argument(
        "--eval.reward.remote_url", type=str, action="append", default=None,
        help="A second reward (HTTP reward server or reward-function .py file) scoring the same policy responses and, "
        "when the store keeps them, the same baseline responses. Repeat the flag for several.",
    )
    group.add_argument(
        "--eval.reward.model_name_or_path", type=str, action="append", default=None,
        help="A second reward model (OpenRLHF reward checkpoint), scored in this process on one device. Repeatable.",
    )
    group.add_argument(
        "--eval.judge", type=str, default=None,
        help="A .py file defining judge(prompts, responses_a, responses_b) -> probabilities that a is better: win rate "
        "of the policy against the stored SFT responses (positions swapped on every other pair). Needs a store "
        "written with --contrastive.keep_responses.",
    )
    group.add_argument(
        "--eval.top", type=int, default=5, help="Prompts listed as most improved and most degraded.",
    )


def add_rescore_args(parser: argparse.ArgumentParser) -> None:
    """Declare the --rescore.* flags of `openrlhf-contrastive rescore` (the reward flags are train_ppo_ray's)."""
    group = parser.add_argument_group("re-scoring kept baseline responses (openrlhf-contrastive rescore)")
    group.add_argument(
        "--rescore.output_path", type=str, default=None,
        help="Directory of the new store: the same prompts and kept responses as --contrastive.baseline_path, scored "
        "with the --reward.* flags given here (resumable like the stage).",
    )


# The flags of train_ppo_ray that decide which prompts, policy, reward and sampling the baselines come from
# (same names, types and defaults as openrlhf 0.11.2's train_ppo_ray).
TRAIN_PPO_RAY_FLAGS = [
    ("--actor.model_name_or_path", dict(type=str, default=None, help="HF model name or path")),
    ("--reward.model_name_or_path", dict(type=str, default=None, help="HF model name or path")),
    ("--reward.remote_url", dict(type=str, default=None, help="remote RM API (HTTP) or reward_func .py file")),
    ("--reward.normalize_enable", dict(action="store_true", default=False, help="Enable Reward Normalization")),
    ("--reward.overlong_buffer_len", dict(type=float, default=None, help="reward with optional overlong penalty")),
    ("--reward.overlong_penalty_factor", dict(type=float, default=1, help="overlong penalty factor")),
    ("--reward.stop_properly_penalty_coef", dict(type=float, default=None, help="Penalty for truncated samples")),
    ("--reward.num_nodes", dict(type=int, default=1, help="number of nodes for reward model")),
    ("--reward.num_gpus_per_node", dict(type=int, default=8, help="number of gpus per node for reward model")),
    ("--reward.offload", dict(action="store_true", default=False, help="Offload reward model to CPU")),
    ("--data.prompt_dataset", dict(type=str, default=None, help="HF dataset name or path")),
    ("--data.prompt_probs", dict(type=str, default=None, help="sampling probs for datasets")),
    ("--data.prompt_split", dict(type=str, default="train")),
    ("--data.input_key", dict(type=str, default="input", help="JSON dataset key")),
    ("--data.label_key", dict(type=str, default=None, help="JSON dataset key")),
    ("--data.input_template", dict(type=str, default=None)),
    ("--data.apply_chat_template", dict(action="store_true", default=False, help="Use HF tokenizer chat template")),
    ("--data.max_samples", dict(type=int, default=int(1e8), help="Max number of samples")),
    ("--data.max_len", dict(type=int, default=2048, help="Max total sequence length (prompt + response)")),
    ("--data.disable_fast_tokenizer", dict(action="store_true", default=False)),
    ("--data.image_key", dict(type=str, default="images", help="Dataset key for image paths/URLs")),
    ("--rollout.max_new_tokens", dict(type=int, default=None, help="Max tokens to generate per sample")),
    ("--rollout.temperature", dict(type=float, default=1.0)),
    ("--rollout.top_p", dict(type=float, default=1.0)),
    ("--vllm.num_engines", dict(type=int, default=None, help="number of vLLM Engines")),
    ("--vllm.tensor_parallel_size", dict(type=int, default=1, help="tensor parallel size of vLLM Engine")),
    ("--vllm.enable_prefix_caching", dict(action="store_true", default=False)),
    ("--vllm.enforce_eager", dict(action="store_true", default=False, help="Disable CUDA graph in vLLM")),
    ("--vllm.enable_sleep", dict(action="store_true", default=False, help="(in-job only) sleep vLLM between phases")),
    ("--vllm.gpu_memory_utilization", dict(type=float, default=0.95, help="vLLM gpu_memory_utilization")),
    ("--train.seed", dict(type=int, default=42)),
    ("--train.agent_func_path", dict(type=str, default=None, help="Agent script path (the agent gives the reward)")),
    ("--train.full_determinism_enable", dict(action="store_true", default=False)),
    ("--train.colocate_all", dict(action="store_true", default=False)),
    ("--local_rank", dict(type=int, default=-1, help="local_rank for deepspeed")),
    ("--ds.zero_stage", dict(type=int, default=2, help="DeepSpeed ZeRO stage")),
    ("--ds.param_dtype", dict(type=str, default="bf16", choices=["bf16", "fp16"], help="Model data type")),
    ("--ds.attn_implementation", dict(type=str, default="flash_attention_2", help="Attention implementation")),
    ("--ds.experts_implementation", dict(type=str, default=None)),
    ("--ds.load_in_4bit", dict(action="store_true", default=False)),
    ("--ds.packing_samples", dict(action="store_true", default=False)),
    ("--ds.value_head_prefix", dict(type=str, default="score")),
    ("--use_ms", dict(action="store_true", default=False)),
]


def add_train_ppo_ray_args(parser: argparse.ArgumentParser) -> None:
    """Declare TRAIN_PPO_RAY_FLAGS (for commands that take a copy of the training command)."""
    for flag, spec in TRAIN_PPO_RAY_FLAGS:
        parser.add_argument(flag, **spec)
