"""The OpenRLHF reward-function plugin `contrastive` (entry point group `openrlhf.reward_fns`).

`python -m openrlhf.cli.train_ppo_ray ... --reward_fn contrastive --contrastive.baseline_path DIR` makes
OpenRLHF (patched by `openrlhf-contrastive patch`) call, in this order:

    add_args(parser)            the --contrastive.* flags, before parsing
    check_args(args)            refuse bad combinations before any model is placed on a GPU
    setup(trainer)              start of PPOTrainer.fit: load and validate the store once (run the stage if needed);
                                its coverage and diagnosis are logged where train_ppo_ray's output shows them
    transform(experiences, a)   every PPO step, after length penalties: r -> contrastive value; logs the metrics of
                                flags.py (METRIC_*), the batch's spread ratio of r - b to r beside its prediction;
                                with --contrastive.refresh_every, first refreshes the baselines when due (refresh.py)

Loading this module has no side effects and imports neither torch nor openrlhf; the object pickles.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from openrlhf_contrastive import stage
from openrlhf_contrastive.checks import (
    InputError,
    check_chat_template_date,
    check_contrastive_args,
    check_refresh_args,
    check_shape_fits_store,
)
from openrlhf_contrastive.diagnose import decompose, diagnose, unavailable_reason
from openrlhf_contrastive.fingerprint import baseline_temperature, run_identity, training_fingerprint
from openrlhf_contrastive.flags import (
    METRIC_RAW_REWARD,
    METRIC_REWARD,
    METRIC_SPREAD_RATIO,
    METRIC_SPREAD_RATIO_PREDICTED,
    add_contrastive_args,
)
from openrlhf_contrastive.refresh import Refresher, check_generations_of_run, check_store_for_refresh, in_job_sampler
from openrlhf_contrastive.shapes import contrastive_batch, parse_shape
from openrlhf_contrastive.store import HEADER, BaselineStore, StoreError, prompt_keys

logger = logging.getLogger(__name__)

class ContrastiveReward:
    """r -> r - coef * g(baseline rewards of the same prompt), inside OpenRLHF's PPO loop."""

    def __init__(self) -> None:
        self.store = None  # BaselineStore, loaded by setup() or by the first transform()
        self.predicted_spread_ratio = None  # the store's prediction of std(r - b) / std(r) (None: not decomposable)
        self.refresher = None  # Refresher, made by setup() with --contrastive.refresh_every (its sampler holds the trainer)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "refresher": None}  # the trainer stays in its process

    # -- parse time -----------------------------------------------------------------------------------------

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        add_contrastive_args(parser)

    def check_args(self, args) -> None:
        """Refuse what would waste a GPU job: the checks `sample` makes too (store path, shape, k, temperature,
        chunk size, a shape the estimator cancels, a dated chat template), async without a store, a mismatched store."""
        settings = args.contrastive
        try:
            check_contrastive_args(args, estimator=args.algo.advantage.estimator)
            check_refresh_args(args)
            if args.data.apply_chat_template and not settings.allow_dated_prompts:
                from openrlhf.utils.utils import get_tokenizer

                try:
                    tokenizer = get_tokenizer(
                        args.actor.model_name_or_path, None, "left", None, use_fast=not args.data.disable_fast_tokenizer
                    )
                except OSError as e:  # not reachable from this node (hub id offline): setup() checks the trainer's
                    logger.warning(
                        "contrastive: the chat template of %s is checked for dates when training starts (its tokenizer "
                        "cannot be loaded here: %s)", args.actor.model_name_or_path, e,
                    )
                else:
                    check_chat_template_date(args, tokenizer)
        except InputError as e:
            raise SystemExit(f"--reward_fn contrastive: {e}") from None
        has_store = Path(settings.baseline_path, HEADER).exists()
        if getattr(args.train, "async_enable", False) and not has_store:
            raise SystemExit(
                f"--train.async_enable with --reward_fn contrastive needs an existing baseline store, and "
                f"{settings.baseline_path} holds none: the async trainer generates from the first moment, so the "
                "in-job offline stage cannot run before it. Write the store first with `openrlhf-contrastive sample` "
                "and the same flags, then start training."
            )
        if has_store:
            try:
                store = BaselineStore.load(settings.baseline_path)
                expected = self.fingerprint(args)
                diffs = store.check_fingerprint(expected, settings.accept_fingerprint_mismatch)
                if settings.refresh_every:
                    check_store_for_refresh(store.path, diffs)
                    check_generations_of_run(store.path, expected, run_identity(args))
                # k only: the in-job stage may still add baselines that differ (setup checks the spread)
                check_shape_fits_store(parse_shape(settings.shape), store, spread=False)
            except (StoreError, InputError) as e:
                raise SystemExit(str(e)) from None

    def fingerprint(self, args) -> dict:
        return training_fingerprint(args, args.contrastive.k, baseline_temperature(args))

    # -- start of training ----------------------------------------------------------------------------------

    def setup(self, trainer) -> None:
        """Before the first PPO step: run the offline stage on the trainer's own engines when the store misses
        prompts of the training set (none: zero generations), then validate the store and report its coverage and
        diagnosis. The fingerprint (which hashes the models) is computed once and the store loaded once (again only
        after the stage has added to it)."""
        args = trainer.args
        if args.data.apply_chat_template and getattr(trainer, "tokenizer", None) is not None:
            check_chat_template_date(args, trainer.tokenizer)  # also at parse time, where the tokenizer loads
        expected = self.fingerprint(args)
        path = args.contrastive.baseline_path
        store = BaselineStore.load(path) if Path(path, HEADER).exists() else None
        dataset = getattr(getattr(trainer, "prompts_dataloader", None), "dataset", None)
        keys = None if dataset is None else prompt_keys(dataset.prompts, dataset.labels if args.data.label_key else None)
        staged = keys is not None and stage_needed(store, keys, expected)
        if staged:
            stage.run_in_job(trainer, fingerprint=expected)  # logs its summary and the diagnosis
            store = None  # loaded below, with what the stage added
        self.accept(store if store is not None else BaselineStore.load(path), expected, args)
        if not staged:
            for line in diagnose(self.store.rewards).lines():
                stage.in_job_log(line)
        if keys is not None:
            _, hit = self.store.lookup(keys)
            missing = int((~hit).sum())
            if missing and args.contrastive.on_missing == "error":
                raise ValueError(missing_baselines_message(self.store.path, dataset.prompts, hit, "training prompts"))
            stage.in_job_log(f"contrastive: store {self.store.path} covers {len(hit) - missing} of {len(hit)} training prompts")
        if args.contrastive.refresh_every:
            check_store_for_refresh(self.store.path, self.store.check_fingerprint(expected, accept_mismatch=True))
            start_step = trainer.init_checkpoint_states()["global_step"]  # what fit() resumes from, read the same way
            self.refresher = Refresher(args, self.store, expected, start_step, dataset.prompts, dataset.labels,
                                       in_job_sampler(trainer), log=stage.in_job_log)

    def load(self, args) -> None:
        """Load and validate the store of `args` unless it is loaded (OpenRLHF keeps one plugin object per process;
        setup() loads it in the trainer, the first transform() in any other process)."""
        if self.store is None or Path(self.store.path) != Path(args.contrastive.baseline_path):
            self.accept(BaselineStore.load(args.contrastive.baseline_path), self.fingerprint(args), args)
        if args.contrastive.refresh_every and self.refresher is None:
            raise ValueError(
                "--contrastive.refresh_every: rewards are being shaped in a process where the plugin's setup(trainer) "
                "did not run, so there are no engines to refresh the baselines from. OpenRLHF's synchronous "
                "PPOTrainer (patched by `openrlhf-contrastive patch`) calls both in its own process; run that trainer, "
                "or train without --contrastive.refresh_every."
            )

    def accept(self, store: BaselineStore, expected: dict, args) -> None:
        """Use `store` if it was made under this run's settings (fingerprint `expected`, or accepted) and can feed
        the shape; keep its predicted spread ratio for the per-step metric."""
        store.check_fingerprint(expected, args.contrastive.accept_fingerprint_mismatch)
        check_shape_fits_store(parse_shape(args.contrastive.shape), store)
        self.store = store
        rewards = store.rewards
        self.predicted_spread_ratio = None if unavailable_reason(rewards) else decompose(rewards).ratio(store.k)

    # -- every PPO step -------------------------------------------------------------------------------------

    def transform(self, experiences, args) -> None:
        """Replace each experience's per-sample rewards by the contrastive value; log length-B tensors in info.

        The whole rollout batch is looked up and shaped at once (a few vectorised ops per PPO step), then split
        back into the experiences.
        """
        import torch

        self.load(args)
        prompts = [p for e in experiences for p in e.prompts]
        labels = [label for e in experiences for label in e.labels] if args.data.label_key else None
        keys = prompt_keys(prompts, labels)
        if self.refresher is None:
            baselines, hit = self.store.lookup(keys)
        else:
            shift = self.refresher.before_batch()  # the engines still hold the policy that sampled this batch
            baselines, hit, generation = self.refresher.lookup(keys)
        if not hit.all() and args.contrastive.on_missing == "error":
            raise ValueError(missing_baselines_message(self.store.path, prompts, hit, "rollouts of this PPO batch"))

        # Rewards are (B,), or (B, 1) when an HTTP reward server answers with lists: shape back at the end.
        r = torch.cat([e.rewards.reshape(-1) for e in experiences])
        _, metrics = contrastive_batch(
            r, torch.from_numpy(baselines), torch.from_numpy(hit), parse_shape(args.contrastive.shape),
            args.contrastive.coef, self.store.pooled_std,
        )
        metrics.update(self.spread_metrics(metrics[METRIC_RAW_REWARD], metrics[METRIC_REWARD]))
        if self.refresher is not None:
            metrics.update(self.refresher.metrics(generation, shift))
            self.refresher.after_batch()
        sizes = [e.rewards.numel() for e in experiences]
        split = {key: tensor.split(sizes) for key, tensor in metrics.items()}
        for i, experience in enumerate(experiences):
            for key, chunks in split.items():
                experience.info[key] = chunks[i].clone()
            experience.rewards = experience.info[METRIC_REWARD].reshape(experience.rewards.shape).clone()


    def spread_metrics(self, r, value) -> dict:
        """METRIC_SPREAD_RATIO (std over the batch of the contrastive value / std of r, population stds; only where r
        varies) and METRIC_SPREAD_RATIO_PREDICTED (the store's), as length-B tensors of one value."""
        out = {}
        spread = r.std(unbiased=False)
        if spread > 0:
            out[METRIC_SPREAD_RATIO] = (value.std(unbiased=False) / spread).expand_as(r).clone()
        if self.predicted_spread_ratio is not None:
            out[METRIC_SPREAD_RATIO_PREDICTED] = r.new_full(r.shape, self.predicted_spread_ratio)
        return out


def stage_needed(store: BaselineStore | None, keys, expected: dict) -> bool:
    """No store yet, or a store with the fingerprint `expected` that lacks some of the training prompts' `keys` (a
    store made under other settings and accepted with --contrastive.accept_fingerprint_mismatch is never extended)."""
    if store is None:
        return True
    _, hit = store.lookup(keys)
    return not hit.all() and not store.check_fingerprint(expected, accept_mismatch=True)


def missing_baselines_message(store_path, prompts, hit, what: str, raw_option: str = "--contrastive.on_missing raw") -> str:
    """The refusal when some of `prompts` (those where `hit` is False) have no baselines in the store."""
    missing = int((~hit).sum())
    first = prompts[int((~hit).nonzero()[0][0])]
    return (
        f"{missing} of {len(hit)} {what} have no baselines in the store {store_path}, for example {first[:300]!r}. "
        "The store's keys are the exact prompt strings OpenRLHF builds (input template or chat template applied, "
        "plus the label when --data.label_key keys them); a different dataset, --data.* flag or a chat template that "
        "inserts today's date changes them. Rerun the stage with the training flags (finished prompts are kept), or "
        f"pass {raw_option} to train those prompts on the raw reward."
    )
