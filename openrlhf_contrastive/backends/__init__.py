"""Generation and scoring backends of the offline stage (`openrlhf_contrastive.stage`).

Both give the stage the same two calls, on OpenRLHF `Experience` objects of one sample each:

    sample(prompts, labels, keys, k, chunk_index) -> list of len(prompts) * k Experiences, prompt-major
    submit(prompts, labels, keys, k, chunk_index) -> a function returning what `sample` returns (the openrlhf
                                                     backend dispatches at once, so chunks overlap)
    score(experiences)                             fills experience.rewards like training does
    awake()                                        context manager around the whole stage (vLLM sleep mode)

`openrlhf` (default where vLLM is installed): OpenRLHF's own vLLM rollout actors (`create_vllm_engines`) over
Ray, seeded per request from the prompt key; rewards from the rollout actor (--reward.remote_url: HTTP server or
reward-function file) or from a reward-model Ray actor group (`RewardModelActor`, as `RemoteExperienceMaker`).

`hf`: transformers `generate` on one device, seeded per chunk; rewards from OpenRLHF's
`get_llm_for_sequence_regression` reward model or from --reward.remote_url through OpenRLHF's own executor.
"""

import logging

from openrlhf_contrastive.flags import BACKENDS  # noqa: F401  (re-exported: the stage's choices)

logger = logging.getLogger(__name__)


class DriverStrategy:
    """The few DeepspeedStrategy members that OpenRLHF's SamplesGenerator, blending_datasets and PromptDataset
    read (args, print, is_rank_0), for a process that drives them without DeepSpeed (`sample`, both backends)."""

    def __init__(self, args):
        self.args = args

    def print(self, *msg):
        logger.info(" ".join(str(m) for m in msg))

    def is_rank_0(self) -> bool:
        return True


def default_backend() -> str:
    """`openrlhf` where vLLM is installed, else `hf`."""
    import importlib.util

    return "openrlhf" if importlib.util.find_spec("vllm") is not None else "hf"


def backend_name(args) -> str:
    """The backend `sample`, `evaluate` and the demo's stage use: --contrastive.backend, else `default_backend()`."""
    return getattr(args.contrastive, "backend", None) or default_backend()


def start_backend(args):
    """Start the backend `backend_name(args)` names, for `args`: `HFBackend` (transformers on one device) or
    `OpenRLHFBackend` (OpenRLHF's vLLM engines and reward group over Ray). Close it with `.close()`."""
    if backend_name(args) == "hf":
        from openrlhf_contrastive.backends.hf import HFBackend

        return HFBackend(args)
    from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend

    return OpenRLHFBackend.from_args(args)


def remote_reward_sources(args) -> list[str] | None:
    """--reward.remote_url as train_ppo_ray passes it on (a list of HTTP URLs or reward-function files), or None
    when a reward model scores."""
    remote = args.reward.remote_url
    if not remote:
        return None
    return list(remote) if isinstance(remote, (list, tuple)) else str(remote).split(",")


def stage_seed(args, key: int, sample: int) -> int:
    """The vLLM seed of baseline `sample` of the prompt with store `key`: fixed by key, sample and --train.seed."""
    return (int(key) * 1_000_003 + sample * 7_919 + int(args.train.seed)) % (2**31 - 1)


def reward_source(args) -> str:
    """The reward the stage scores with, as the user named it (for messages)."""
    if getattr(args.train, "agent_func_path", None):
        return f"the agent --train.agent_func_path {args.train.agent_func_path}"
    if args.reward.remote_url:
        urls = args.reward.remote_url
        return "--reward.remote_url " + ",".join(urls if isinstance(urls, (list, tuple)) else [urls])
    return f"the reward model --reward.model_name_or_path {args.reward.model_name_or_path}"


def rewards_from_rollout_actor(args) -> bool:
    """Whether OpenRLHF's rollout actor scores each response itself (remote reward or agent), as in training."""
    return bool(args.reward.remote_url or getattr(args.train, "agent_func_path", None))


def check_rewards(experiences, args, responses: str = "a baseline response") -> None:
    """Each response has exactly one finite reward, else refuse naming the prompt and the reward source.

    `responses` says whose responses they are in the message (baselines for the stage; evaluate's policy).

    Run on every chunk before anything is written: a reward source that returns nothing, several values per
    response, NaN or inf would otherwise be stored silently (or break training later).
    """
    import torch

    problems = []
    for e in experiences:
        reward = None if e.rewards is None else torch.as_tensor(e.rewards, dtype=torch.float64).flatten()
        if reward is None:
            cause = e.info.get("reward_error") if isinstance(e.info, dict) else None
            problems.append((e, "no reward" + (f" ({cause})" if cause else "")))
        elif reward.numel() != 1:
            problems.append((e, f"{reward.numel()} values instead of one ({reward.tolist()[:4]})"))
        elif not torch.isfinite(reward).all():
            problems.append((e, f"the non-finite reward {reward.item()}"))
    if problems:
        e, what = problems[0]
        hint = (  # the rollout actor (openrlhf backend) swallows the cause; the hf backend names it in `what`
            " OpenRLHF's rollout actor catches a failing reward call and logs it at INFO in the Ray worker log "
            "('Failed to fetch reward')." if what == "no reward" and rewards_from_rollout_actor(args) else ""
        )
        raise ValueError(
            f"{reward_source(args)} gave {what} for {responses} of the prompt {e.prompts[0][:200]!r} "
            f"({len(problems)} of {len(experiences)} responses of this chunk have such a problem). Every response needs "
            f"exactly one finite reward, as in training; nothing of this chunk was written.{hint} Fix the reward "
            "source and rerun."
        )


def response_texts(experiences, tokenizer, k: int) -> list[list[str]]:
    """The response text of each Experience, k per prompt: (prompts) lists of k strings, prompt-major.

    A response is every token after the prompt (from the first action token on: an agent's turns included),
    decoded with special tokens kept (the end-of-sequence token marks a response that stopped by itself), as
    OpenRLHF's rollout actor decodes the query it sends to a reward function. `experiences_from_texts` is the
    inverse.
    """
    texts = []
    for e in experiences:
        actions = e.action_mask[0].nonzero()
        start = int(actions[0]) + 1 if len(actions) else e.sequences.shape[1]
        texts.append(tokenizer.decode(e.sequences[0, start:].tolist(), skip_special_tokens=False))
    return [texts[i : i + k] for i in range(0, len(texts), k)]


def experiences_from_texts(tokenizer, prompts, labels, responses, max_len: int):
    """One Experience per response text (responses: a list of k strings per prompt), prompt-major, for scoring
    kept responses again without generating: prompt and response tokenized apart (as the rollout actor tokenizes
    the prompt), truncated to `max_len`; a response not ending with the end-of-sequence token counts as truncated.

    A reward function reads the same query text as when the response was sampled; a reward model reads the
    re-tokenized text, whose tokens can differ from the sampled ones where the policy sampled a non-canonical
    tokenization.
    """
    import torch

    from openrlhf.trainer.ppo_utils.experience import Experience

    experiences = []
    for prompt, label, texts in zip(prompts, labels, responses):
        prompt_ids = tokenizer(text=prompt, add_special_tokens=False)["input_ids"]
        for text in texts:
            response_ids = tokenizer(text=text, add_special_tokens=False)["input_ids"]
            tokens = (prompt_ids + response_ids)[:max_len]
            n_resp = len(tokens) - len(prompt_ids)
            experiences.append(Experience(
                sequences=torch.tensor([tokens]),
                attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
                action_mask=torch.tensor([[0] * (len(prompt_ids) - 1) + [1] * n_resp]),
                response_length=torch.tensor([n_resp]),
                truncated=torch.tensor([not text.endswith(tokenizer.eos_token)]),
                total_length=torch.tensor([float(len(tokens))]),
                prompts=[prompt],
                labels=[label],
                info={},
            ))
    return experiences
