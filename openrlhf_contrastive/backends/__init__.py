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

from openrlhf_contrastive.flags import BACKENDS  # noqa: F401  (re-exported: the stage's choices)


def default_backend() -> str:
    """`openrlhf` where vLLM is installed, else `hf`."""
    import importlib.util

    return "openrlhf" if importlib.util.find_spec("vllm") is not None else "hf"


def remote_reward_urls(args) -> list[str] | None:
    """--reward.remote_url as train_ppo_ray passes it on (a list), or None when a reward model scores."""
    remote = args.reward.remote_url
    if not remote:
        return None
    return list(remote) if isinstance(remote, (list, tuple)) else str(remote).split(",")


def stage_seed(args, key: int, sample: int) -> int:
    """The vLLM seed of baseline `sample` of the prompt with store `key`: fixed by key, sample and --train.seed."""
    return (int(key) * 1_000_003 + sample * 7_919 + int(args.train.seed)) % (2**31 - 1)
