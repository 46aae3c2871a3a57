"""The `openrlhf` backend: OpenRLHF's own vLLM rollout actors over Ray, rewards exactly as training gets them.

Generation goes through `RolloutRayActor.generate_responses` (OpenRLHF's `SingleTurnAgentExecutor`: the same
tokenization, truncation and, with --reward.remote_url, the same reward-function / HTTP call as a rollout), one
request per baseline sample with `SamplingParams(seed=stage_seed(key, j))`, so a prompt's k responses do not
depend on batching or on which engine serves it (on GPU engines; vLLM's CPU backend cannot seed reliably, see
`OpenRLHFBackend.__init__`). Responses become `Experience`s through
`SamplesGenerator._process_response_into_experience`; without a remote reward, the reward-model group's
`forward` scores them through `RayActorGroup.async_run_method_batch`, as `RemoteExperienceMaker.make_experience`
does. In a training job the engines, reward group, tokenizer and samples generator are the trainer's own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from pathlib import Path

from openrlhf_contrastive.backends import DriverStrategy, remote_reward_sources, rewards_from_rollout_actor, stage_seed
from openrlhf_contrastive.fingerprint import baseline_temperature

logger = logging.getLogger(__name__)

KV_CACHE_SPACE = "VLLM_CPU_KVCACHE_SPACE"


def kv_cache_why_and_fix(args) -> str:
    """Why a vLLM CPU engine refuses its KV-cache size, and the fix: the end of both refusals below."""
    space = os.environ.get(KV_CACHE_SPACE)
    return (
        f"On its CPU backend vLLM sizes the KV cache as {KV_CACHE_SPACE} GiB when that variable is set, and otherwise "
        f"as --vllm.gpu_memory_utilization ({args.vllm.gpu_memory_utilization}) of the memory of the CPU's NUMA node "
        "(clamped to a container's memory limit) minus what the engine process already holds: where the node is "
        "smaller than the machine or busy, that is negative or more than is free, and vLLM refuses to start. Fix: "
        + (f"{KV_CACHE_SPACE} is {space} GiB in this process; " if space else "")
        + f"set {KV_CACHE_SPACE}=<GiB> to a size the node's free memory holds (1 is plenty for small models and few "
        "concurrent sequences) where the engines run (on a Ray cluster: in every node's environment or the job's "
        "runtime_env), or use --contrastive.backend hf (transformers on one device, no vLLM)."
    )


def check_cpu_kv_cache_size(args) -> None:
    """On vLLM's CPU platform, refuse before anything starts when the engines' KV cache would be a share of memory
    (or the size is not the whole number of GiB vLLM reads)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    space = os.environ.get(KV_CACHE_SPACE)
    if not space:
        raise ValueError(
            f"vLLM runs on its CPU backend here and {KV_CACHE_SPACE} is not set, so its engines would size their KV "
            f"cache by a share of memory. {kv_cache_why_and_fix(args)}"
        )
    if not space.strip().isdigit() or int(space) < 1:
        raise ValueError(
            f"{KV_CACHE_SPACE}={space!r}: vLLM reads it as a whole number of GiB (at least 1) for the KV cache of each "
            f"CPU engine, and would fail on this value. Set it to one, e.g. {KV_CACHE_SPACE}=1."
        )


def wait_for_engines(engines, args) -> None:
    """Wait until every engine has started; vLLM's refusal of its CPU KV-cache size becomes what / why / fix."""
    import ray

    try:
        ray.get([engine.__ray_ready__.remote() for engine in engines])
    except ray.exceptions.RayActorError as e:
        refusal = kv_cache_refusal(e)
        if refusal is None:
            raise
        raise ValueError(
            f"vLLM refused to start its CPU engine: the KV cache does not fit the memory it sees on the NUMA node "
            f"(vLLM: {refusal!r}). {kv_cache_why_and_fix(args)}"
        ) from None


def kv_cache_refusal(error) -> str | None:
    """vLLM's words when it refused an engine's KV-cache size, found in the engine actor's error or, since vLLM's async
    engine runs its core in a child process whose traceback reaches only the actor's log, in that log on this node."""
    import ray

    refusal = re.compile(r"Available memory on node[^\n]*")
    found = refusal.search(str(error))
    pid = re.search(r"\bpid=(\d+)", str(error))
    node = ray._private.worker._global_node  # this process's Ray node (its logs directory), None when not connected
    if found is None and pid and node is not None:
        for log in sorted(Path(node.get_logs_dir_path()).glob(f"worker-*-{pid.group(1)}.*")):
            found = found or refusal.search(log.read_text(errors="replace"))
    return found.group(0).strip() if found else None


def engines_run_on_cpu(engines) -> bool:
    """Whether OpenRLHF's rollout actors run vLLM's CPU platform (asked inside the actors themselves)."""
    import ray

    def platform_is_cpu(_actor):
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    return any(ray.get([engine.__ray_call__.remote(platform_is_cpu) for engine in engines]))


class OpenRLHFBackend:
    def __init__(self, args, vllm_engines, tokenizer, reward_model_group=None, samples_generator=None, owned=()):
        from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

        if not vllm_engines:
            raise ValueError(
                "The openrlhf backend of the baseline stage needs vLLM engines, and this job has none "
                "(--vllm.num_engines is 0 or unset). Set --vllm.num_engines, or write the store beforehand with "
                "`openrlhf-contrastive sample ... --contrastive.backend hf`."
            )
        self.args = args
        self.engines = vllm_engines
        self.tokenizer = tokenizer
        self.reward_model_group = reward_model_group
        self.generator = samples_generator or SamplesGenerator(DriverStrategy(args), None, None, tokenizer, vllm_engines)
        self.owned = list(owned)  # Ray actors this backend started (standalone), killed by close()
        self.num_generations = 0
        self.num_tokens = 0
        self.seeded = not engines_run_on_cpu(vllm_engines)
        if not self.seeded:
            logger.warning(
                "The vLLM engines run on the CPU backend, whose seeded requests crash when a prompt's prefill is "
                "split across scheduler steps (vLLM 0.29 rewinds the request's generator, which CPU generators do "
                "not support). Baseline requests go unseeded there: every baseline is valid, but a resumed stage "
                "samples the unfinished prompts afresh instead of reproducing them. GPU engines are seeded."
            )

    @classmethod
    def from_trainer(cls, trainer) -> "OpenRLHFBackend":
        """The trainer's own engines (still the initial policy at the start of fit) and reward group."""
        return cls(trainer.args, trainer.vllm_engines, trainer.tokenizer, trainer.reward_model_group, trainer.samples_generator)

    @classmethod
    def from_args(cls, args) -> "OpenRLHFBackend":
        """Start engines (and a RewardModelActor group unless --reward.remote_url) as train_ppo_ray does."""
        import ray

        from openrlhf.trainer.ray.vllm_engine import create_vllm_engines
        from openrlhf.utils.utils import get_tokenizer

        check_cpu_kv_cache_size(args)
        num_engines = args.vllm.num_engines or 1
        remote = remote_reward_sources(args)
        needed = num_engines * args.vllm.tensor_parallel_size
        if not rewards_from_rollout_actor(args):
            needed += args.reward.num_nodes * args.reward.num_gpus_per_node
        if not ray.is_initialized():
            ray.init()
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < needed:
            raise ValueError(
                f"The openrlhf backend needs {needed} GPUs ({num_engines} vLLM engine(s) x "
                f"--vllm.tensor_parallel_size {args.vllm.tensor_parallel_size}"
                + ("" if rewards_from_rollout_actor(args) else f" + reward model {args.reward.num_nodes} x {args.reward.num_gpus_per_node}")
                + f"), the Ray cluster has {gpus:g}. Lower --vllm.num_engines / --reward.num_gpus_per_node, or use "
                "--contrastive.backend hf (one device, CPU included)."
            )
        engines = create_vllm_engines(
            num_engines,
            args.vllm.tensor_parallel_size,
            args.actor.model_name_or_path,
            args.train.seed,
            args.train.full_determinism_enable,
            args.vllm.enable_prefix_caching,
            args.vllm.enforce_eager,
            args.data.max_len,
            None,
            args.vllm.gpu_memory_utilization,
            False,
            None,
            agent_func_path=args.train.agent_func_path,
            remote_rm_url=remote,
        )
        wait_for_engines(engines, args)
        group = None
        if not rewards_from_rollout_actor(args):
            from openrlhf.trainer.ray.launcher import RayActorGroup, RewardModelActor
            from openrlhf.utils import get_strategy

            group = RayActorGroup(args.reward.num_nodes, args.reward.num_gpus_per_node, RewardModelActor)
            ray.get(group.async_init_model_from_pretrained(get_strategy(args), args.reward.model_name_or_path))
        tokenizer = get_tokenizer(args.actor.model_name_or_path, None, "left", None, use_fast=not args.data.disable_fast_tokenizer)
        owned = list(engines) + (list(group._actor_handlers) if group is not None else [])
        return cls(args, engines, tokenizer, group, owned=owned)

    # -- sample k responses per prompt -----------------------------------------------------------------------

    def sample(self, prompts, labels, keys, k: int, chunk_index: int):
        """k responses per prompt as Experiences, prompt-major (`submit` and wait)."""
        return self.submit(prompts, labels, keys, k, chunk_index)()

    def submit(self, prompts, labels, keys, k: int, chunk_index: int):
        """Dispatch the chunk's requests to the engines and return a function that waits for its Experiences.

        The stage keeps two chunks in flight, so the engines never drain at a chunk boundary.
        """
        import ray
        from vllm import SamplingParams

        args = self.args
        temperature = baseline_temperature(args)
        max_len = args.data.max_len
        # Seeded engines: one request per sample, each with its own seed. Unseeded (vLLM CPU): one request of k
        # samples per prompt, as SamplesGenerator sends rollouts (the prompt is prefilled once).
        per_request = 1 if self.seeded else k
        refs = []
        for prompt, label, key in zip(prompts, labels, keys):
            for j in range(0, k, per_request):
                params = SamplingParams(  # as SamplesGenerator._dispatch_prompts_to_vllm, plus a per-request seed
                    temperature=temperature, top_p=args.rollout.top_p, top_k=-1,
                    max_tokens=args.rollout.max_new_tokens, min_tokens=1, skip_special_tokens=False,
                    seed=stage_seed(args, key, j) if self.seeded else None,
                )
                engine = self.engines[len(refs) % len(self.engines)]
                refs.append(engine.generate_responses.remote(
                    prompt=prompt, label=label, sampling_params=params, max_length=max_len,
                    hf_tokenizer=self.tokenizer, num_samples=per_request,
                ))

        def collect():
            responses = [response for out in ray.get(refs) for response in out]
            experiences = [self.generator._process_response_into_experience(r, max_len=max_len) for r in responses]
            self.num_generations += len(experiences)
            self.num_tokens += int(sum(e.response_length.sum() for e in experiences))
            return experiences

        return collect

    @contextlib.contextmanager
    def awake(self):
        """With --vllm.enable_sleep (colocated), wake the engines for the whole stage and put them back to sleep."""
        from openrlhf.trainer.ray.vllm_engine import batch_vllm_engine_call

        if self.args.vllm.enable_sleep:
            batch_vllm_engine_call(self.engines, "wake_up")
        try:
            yield
        finally:
            if self.args.vllm.enable_sleep:
                batch_vllm_engine_call(self.engines, "sleep")

    # -- score like training ---------------------------------------------------------------------------------

    def score(self, experiences) -> None:
        """Rewards as RemoteExperienceMaker gets them: the rollout actor's (remote reward or agent), else the RM group.

        The stage's `check_rewards` then refuses missing, multiple or non-finite rewards, naming the prompt.
        """
        import ray

        args = self.args
        if rewards_from_rollout_actor(args):
            return
        group = self.reward_model_group
        if group is None:
            raise ValueError(
                "No reward source for the baseline stage: set --reward.model_name_or_path (reward model) or "
                "--reward.remote_url (HTTP server or reward-function .py file), as for training."
            )
        refs = group.async_run_method_batch(
            method_name="forward",
            sequences=[e.sequences for e in experiences],
            attention_mask=[e.attention_mask for e in experiences],
            pad_sequence=[True] * len(experiences),
        )
        if args.train.colocate_all:  # as RemoteExperienceMaker._dispatch_forward with colocated models
            ray.get(refs)
            ray.get(group.async_run_method(method_name="empty_cache"))
        duplicate = getattr(args.ds, "ring_attn_size", 1) * getattr(args.ds, "tensor_parallel_size", 1)
        rewards = list(itertools.chain.from_iterable(ray.get(refs)[::duplicate]))
        for e, r in zip(experiences, rewards):
            e.rewards = r
            e.info["reward"] = r

    def close(self) -> None:
        import ray

        for actor in self.owned:
            ray.kill(actor)
        self.owned = []
