"""The `hf` backend: transformers `generate` + OpenRLHF's reward model on one device (CPU or one GPU).

Sampling is seeded per fixed chunk of the deduplicated prompt list (`torch.manual_seed(--train.seed + chunk)`),
so a chunk redone after a crash produces exactly the same responses. Prompts are tokenized and truncated as
OpenRLHF's `SingleTurnAgentExecutor` does; the reward comes from `get_llm_for_sequence_regression(..., "reward",
normalize_reward=--reward.normalize_enable)` (as `RewardModelActor` builds it) or, with --reward.remote_url, from
OpenRLHF's executor's own reward-function / HTTP calls on the decoded query.

`first_tokens` is `evaluate`'s check for a policy that learned to answer nothing: responses sampled as served
(EOS allowed at the first position, unlike OpenRLHF's rollouts and this backend's baselines) and P(EOS first).
"""

from __future__ import annotations

import asyncio
import contextlib

import torch

from openrlhf_contrastive.backends import remote_reward_sources
from openrlhf_contrastive.fingerprint import baseline_temperature


class HFBackend:
    def __init__(self, args, device: str | None = None, reward_batch_size: int = 16, generate: bool = True):
        """`generate=False`: a scorer only (no policy weights loaded; the policy's tokenizer still is), for scoring
        kept responses again (`rescore`, second rewards in `evaluate`)."""
        from transformers import AutoModelForCausalLM

        from openrlhf.utils.utils import get_tokenizer

        self.args = args
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.policy = None
        if generate:
            self.policy = AutoModelForCausalLM.from_pretrained(args.actor.model_name_or_path, dtype=dtype).to(self.device)
            self.policy.eval()
        self.tokenizer = get_tokenizer(
            args.actor.model_name_or_path, self.policy, "left", None, use_fast=not args.data.disable_fast_tokenizer
        )
        self.reward_batch_size = reward_batch_size
        self.remote_urls = remote_reward_sources(args)
        self.reward_model = self.executor = None
        if self.remote_urls:
            from openrlhf.utils.agent import SingleTurnAgentExecutor

            self.executor = SingleTurnAgentExecutor(self.remote_urls)
        else:
            from openrlhf.models import get_llm_for_sequence_regression

            self.reward_model = get_llm_for_sequence_regression(
                args.reward.model_name_or_path.split(",")[0],
                "reward",
                normalize_reward=args.reward.normalize_enable,
                attn_implementation="sdpa",
                param_dtype="bf16",
                value_head_prefix=args.ds.value_head_prefix,
            )
            self.reward_model = self.reward_model.to(self.device, dtype=dtype).eval()
        self.num_generations = 0
        self.num_tokens = 0

    # -- sample k responses per prompt -----------------------------------------------------------------------

    def submit(self, prompts, labels, keys, k: int, chunk_index: int):
        """Generate now (one device, nothing to overlap); return a function that gives the Experiences."""
        experiences = self.sample(prompts, labels, keys, k, chunk_index)
        return lambda: experiences

    @contextlib.contextmanager
    def awake(self):
        yield

    @torch.no_grad()
    def sample(self, prompts, labels, keys, k: int, chunk_index: int):
        from openrlhf.trainer.ppo_utils.experience import Experience

        args, tok = self.args, self.tokenizer
        max_len = args.data.max_len
        prompt_ids = prompt_token_ids(tok, prompts, args)
        torch.manual_seed(int(args.train.seed) + chunk_index)  # TRY NOT TO MODIFY: seeding makes resume exact
        out = generate(self.policy, tok, prompt_ids, args, k, self.device, min_new_tokens=1)
        experiences = []
        for row, sequence in enumerate(out.tolist()):
            i = row // k
            eos = sequence.index(tok.eos_token_id) if tok.eos_token_id in sequence else None
            response = sequence if eos is None else sequence[: eos + 1]
            tokens = (prompt_ids[i] + response)[:max_len]
            n_resp = len(tokens) - len(prompt_ids[i])
            self.num_tokens += len(response)
            experiences.append(Experience(
                sequences=torch.tensor([tokens]),
                attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
                action_mask=torch.tensor([[0] * (len(prompt_ids[i]) - 1) + [1] * n_resp]),
                response_length=torch.tensor([n_resp]),
                truncated=torch.tensor([eos is None]),
                total_length=torch.tensor([float(len(tokens))]),
                prompts=[prompts[i]],
                labels=[labels[i]],
                info={},
            ))
        self.num_generations += len(experiences)
        return experiences

    # -- score like training ---------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, experiences) -> None:
        if self.executor is not None:
            rewards = asyncio.run(self._remote_rewards(experiences))
        else:
            rewards = []
            for start in range(0, len(experiences), self.reward_batch_size):
                batch = experiences[start : start + self.reward_batch_size]
                width = max(e.sequences.shape[1] for e in batch)
                seqs = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, e in enumerate(batch):  # right padding: the reward head reads the last real token
                    seqs[row, : e.sequences.shape[1]] = e.sequences[0]
                    mask[row, : e.sequences.shape[1]] = 1
                r = self.reward_model(seqs.to(self.device), mask.to(self.device), pad_sequence=True)
                rewards.extend(r.float().cpu().tolist())
        for e, r in zip(experiences, rewards):
            e.rewards = None if r is None else torch.as_tensor(r, dtype=torch.float32).detach().reshape(-1).cpu()
            e.info["reward"] = e.rewards

    async def _remote_rewards(self, experiences):
        """One query per sample through OpenRLHF's executor, read as its rollout actor reads the answer.

        Like the rollout actor, a failing call leaves the reward missing (None); unlike it, the cause is kept
        (info["reward_error"]) so that the stage's check_rewards can name it.
        """
        fetch = self.executor._fetch_rewards_via_func if self.executor.reward_func else self.executor._fetch_rewards_via_http
        queries = [self.tokenizer.decode(e.sequences[0].tolist(), skip_special_tokens=False) for e in experiences]
        results = await asyncio.gather(
            *(fetch([q], e.prompts, e.labels) for q, e in zip(queries, experiences)), return_exceptions=True
        )
        rewards = []
        for e, result in zip(experiences, results):
            if isinstance(result, Exception):
                e.info["reward_error"] = f"the call raised {type(result).__name__}: {result}"
                rewards.append(None)
                continue
            answer = result[0] if result else None
            if not isinstance(answer, dict):
                e.info["reward_error"] = (
                    f"it returned {type(answer).__name__}, not a dict {{'rewards': ..., 'scores': ...}} as OpenRLHF expects"
                )
                rewards.append(None)
                continue
            rewards.append(answer.get("rewards"))
        return rewards

    def close(self) -> None:
        self.policy = self.reward_model = None


def prompt_token_ids(tokenizer, prompts, args) -> list[list[int]]:
    """Each prompt tokenized and truncated as OpenRLHF's SingleTurnAgentExecutor.execute does."""
    max_len, max_new = args.data.max_len, args.rollout.max_new_tokens
    out = []
    for prompt in prompts:
        ids = tokenizer(text=prompt, add_special_tokens=False)["input_ids"]
        budget = max_new if max_new is not None else max(1, max_len - len(ids))
        out.append(ids[-(max_len - budget) :] if len(ids) > max_len - budget else ids)
    return out


def generate(model, tokenizer, prompt_ids, args, n: int, device, min_new_tokens: int, max_new_tokens: int | None = None):
    """`n` responses per prompt (left-padded batch, the baselines' sampling settings of `args`), prompt-major: the
    generated tokens after the padded prompts (`generate`'s output minus the prompt columns)."""
    width = max(len(ids) for ids in prompt_ids)
    new_tokens = args.rollout.max_new_tokens if args.rollout.max_new_tokens is not None else max(1, args.data.max_len - width)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids], device=device)
    attention_mask = (torch.arange(width, device=device)[None, :] >= torch.tensor(
        [width - len(ids) for ids in prompt_ids], device=device)[:, None]).long()
    temperature = baseline_temperature(args)
    sampling = dict(do_sample=True, temperature=temperature, top_p=args.rollout.top_p) if temperature > 0 else dict(do_sample=False)
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=min(new_tokens, max_new_tokens or new_tokens),
        min_new_tokens=min_new_tokens, num_return_sequences=n, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )
    return out[:, width:]


@torch.no_grad()
def first_tokens(args, model_path: str, prompts: list[str], n: int, seed: int, chunk: int = 64, device: str | None = None) -> dict:
    """How often the model at `model_path` answers `prompts` with nothing, as it would be served.

    Per prompt: `p_eos_first`, the probability of the end-of-sequence token at the first response position (one
    forward pass of the prompt tokens, as OpenRLHF tokenizes them); `empty` and `one_token`, the shares of `n`
    responses sampled with the baselines' settings and no minimum length (EOS allowed first; OpenRLHF's rollouts
    and the baselines use min_tokens=1) that end at the first or the second token. Seeded per chunk from `seed`.
    Returns numpy arrays (P,).
    """
    import numpy as np
    from transformers import AutoModelForCausalLM

    from openrlhf.utils.utils import get_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    tok = get_tokenizer(model_path, model, "left", None, use_fast=not args.data.disable_fast_tokenizer)
    eos = tok.eos_token_id
    prompt_ids = prompt_token_ids(tok, prompts, args)
    p_eos = [float(model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().softmax(-1)[eos])
             for ids in prompt_ids]
    empty, one_token = [], []
    for index, start in enumerate(range(0, len(prompt_ids), chunk)):
        torch.manual_seed(seed + index)
        out = generate(model, tok, prompt_ids[start : start + chunk], args, n, device, min_new_tokens=0, max_new_tokens=2)
        first = out[:, 0] == eos
        second = out[:, 1] == eos if out.shape[1] > 1 else torch.zeros_like(first)
        empty += first.reshape(-1, n).double().mean(1).tolist()
        one_token += (~first & second).reshape(-1, n).double().mean(1).tolist()
    return {"p_eos_first": np.array(p_eos), "empty": np.array(empty), "one_token": np.array(one_token)}
