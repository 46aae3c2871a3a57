"""Baselines that move with the policy: `--contrastive.refresh_every N` (PVPO-style refreshed reference rollouts).

The store's baselines are the SFT policy's; as PPO moves away from it, b(x) no longer says how hard a prompt is for
the policy being trained. With refresh, every N PPO steps the in-job stage (`stage.run_stage`, on the trainer's own
vLLM engines and reward, length penalties included) samples k new baselines per prompt from the current policy, and
training compares rollouts with the newest baselines from then on:

    when     OpenRLHF calls the plugin's `transform` for the batch of PPO step t after the trainer's engines sampled it
             and before step t's update reaches them (the actor's weights are broadcast to the engines at the end of
             every step): the engines hold the policy after t - 1 updates, the one that sampled the batch. When that
             policy step s = t - 1 is a positive multiple of N, the refresh samples it first, so this batch and the
             next N - 1 are compared with baselines of policy step s (age 0 .. N - 1 steps).
    which    all training prompts (default): the dataloader reshuffles every episode and the plugin cannot see its
             order, so only the whole set surely holds the prompts training visits next, and every b(x) in use then
             comes from the same policy. --contrastive.refresh_prompts M: the M prompts whose baselines are oldest
             (dataset order among equals), k * M generations per refresh; every prompt is refreshed once in
             ceil(P / M) refreshes and the others keep their older baselines meanwhile.
    where    generation s of the store, <baseline_path>/generations/step-<s>/: a store of its own written by the same
             StoreWriter (lock, checksums, resume), whose fingerprint is the run's plus the policy step s and the
             run's identity (`fingerprint.run_identity`). generations/refresh.json sums the refreshes up. The SFT
             baselines stay where they were, for `evaluate` and `rescore`.
    resume   a run resumed from its checkpoint at step g (--ckpt.load_enable) uses the newest generation s <= g. A
             generation s > g was sampled from a policy the resumed run has not reached (the killed run's, which
             it does not reproduce) and is removed; a generation of another run is refused. A complete generation
             is never sampled again; a half-written one (killed during the refresh at s = g) is completed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from openrlhf_contrastive.fingerprint import generation_fingerprint, run_identity
from openrlhf_contrastive.flags import (
    METRIC_GENERATION,
    METRIC_GENERATION_AGE,
    METRIC_REFRESH_GENERATIONS,
    METRIC_REFRESH_SHIFT,
)
from openrlhf_contrastive.stage import in_job_log, run_stage, unique_prompts
from openrlhf_contrastive.store import (
    GENERATIONS,
    REFRESH_SUMMARY,
    BaselineStore,
    StoreError,
    compare_fingerprints,
    generation_path,
    holds_baselines,
    list_generations,
    read_header,
)

OTHER_RUN_FIX = (
    "The refresh generations of a store belong to the run whose policy sampled them. Resume that run (its flags and "
    "--ckpt.load_enable), or give this run a store without them: move or delete {generations} (the SFT baselines "
    "beside it stay), or copy the store without that folder."
)


def due(policy_step: int, every: int) -> bool:
    """Whether the batch sampled by the policy after `policy_step` PPO updates starts with a refresh."""
    return every > 0 and policy_step > 0 and policy_step % every == 0


def in_job_sampler(trainer):
    """`sample(prompts, labels, fingerprint, path)` for a Refresher: the stage on the trainer's own vLLM engines (which
    hold the current policy) and reward group, logging where train_ppo_ray's output shows it."""
    backend = []  # wrapped at the first refresh that samples

    def sample(prompts, labels, fingerprint: dict, path) -> dict:
        if not backend:
            from openrlhf_contrastive.backends.openrlhf import OpenRLHFBackend

            backend.append(OpenRLHFBackend.from_trainer(trainer))
        return run_stage(trainer.args, backend[0], prompts, labels, log=in_job_log, fingerprint=fingerprint, path=path)

    return sample


class Refresher:
    """The refresh generations of one training run: which baselines each batch uses, and the refreshes themselves.

    `start_step` is the PPO step the run starts from (the checkpoint's when resuming); the batch of every later step
    calls `before_batch` (refresh when due), `lookup` and `metrics`, then `after_batch`. `prompts`, `labels`: the
    training set as the trainer's PromptDataset holds it; `sample(prompts, labels, fingerprint, path)` writes the
    baselines of those prompts into the store at `path` (`in_job_sampler`).
    """

    def __init__(self, args, store: BaselineStore, fingerprint: dict, start_step: int, prompts, labels, sample,
                 log=print):
        self.args, self.sample, self.log = args, sample, log
        self.every, self.limit, self.k = args.contrastive.refresh_every, args.contrastive.refresh_prompts, store.k
        self.sft, self.root = store, Path(store.path)
        self.fingerprint, self.run = fingerprint, run_identity(args)
        keys, _, self.prompts, self.labels = unique_prompts(prompts, labels, bool(args.data.label_key))
        self.keys = np.asarray(keys, dtype=np.uint64)
        self.generations: list[tuple[int, BaselineStore]] = []  # oldest first
        self.refreshes: dict[int, dict] = {}  # policy step -> its entry of refresh.json
        self.policy_step = start_step
        self.resume(start_step)

    def expected(self, policy_step: int) -> dict:
        return generation_fingerprint(self.fingerprint, policy_step, self.run)

    # -- start of training -------------------------------------------------------------------------------------

    def resume(self, start_step: int) -> None:
        """Take the generations this run made up to `start_step` into use; remove those of later steps."""
        found = list_generations(self.root)
        check_generations_of_run(self.root, self.fingerprint, self.run)  # before anything is removed
        summary = self.root / GENERATIONS / REFRESH_SUMMARY
        recorded = json.loads(summary.read_text()).get("refreshes", []) if summary.exists() else []
        for step, path in found:
            if step > start_step:
                shutil.rmtree(path)
                self.log(f"contrastive: removed refresh generation {path}: it was sampled from the policy of step "
                         f"{step}, after the step {start_step} this run starts from (a resumed run samples it again)")
            elif holds_baselines(path):
                self.generations.append((step, self.load(step)))
        kept = {step for step, _ in self.generations}
        self.refreshes = {entry["policy_step"]: entry for entry in recorded if entry["policy_step"] in kept}
        if self.generations:
            self.log(f"contrastive: run starts at step {start_step} on refresh generation {self.generations[-1][0]} "
                     f"({len(self.generations)} generation(s) of this run kept in {self.root / GENERATIONS})")

    def load(self, step: int) -> BaselineStore:
        store = BaselineStore.load(generation_path(self.root, step))
        store.check_fingerprint(self.expected(step))
        return store

    # -- every PPO step ----------------------------------------------------------------------------------------

    def before_batch(self) -> float | None:
        """Refresh when this batch's policy step is due; the mean shift of b(x) over the refreshed prompts, if so."""
        return self.refresh(self.policy_step) if due(self.policy_step, self.every) else None

    def after_batch(self) -> None:
        self.policy_step += 1

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(baselines (n, k), hit, generation): each key's baselines from the newest generation that holds it (the
        SFT store is generation 0)."""
        baselines, hit = self.sft.lookup(keys)
        generation = np.zeros(len(keys), dtype=np.int64)
        for step, store in self.generations:
            rows, found = store.lookup(keys)
            baselines[found], generation[found] = rows[found], step
            hit |= found
        return baselines, hit, generation

    def metrics(self, generation: np.ndarray, shift: float | None) -> dict:
        """The per-sample refresh metrics of a batch (flags.py METRIC_GENERATION...), as float32 tensors."""
        import torch

        n = len(generation)
        out = {
            METRIC_GENERATION: torch.from_numpy(generation.astype(np.float32)),
            METRIC_GENERATION_AGE: torch.from_numpy((self.policy_step - generation).astype(np.float32)),
            METRIC_REFRESH_GENERATIONS: torch.full((n,), float(self.spent()), dtype=torch.float32),
        }
        if shift is not None:
            out[METRIC_REFRESH_SHIFT] = torch.full((n,), shift, dtype=torch.float32)
        return out

    def spent(self) -> int:
        """Baseline generations of the refreshes this run has used so far (whichever process sampled them)."""
        return sum(len(store) * self.k for _, store in self.generations)

    # -- a refresh ---------------------------------------------------------------------------------------------

    def targets(self) -> np.ndarray:
        """Indices (into the training prompts) that a refresh samples: all, or the `limit` with the oldest baselines."""
        if not self.limit or self.limit >= len(self.keys):
            return np.arange(len(self.keys))
        _, _, generation = self.lookup(self.keys)
        return np.sort(np.argsort(generation, kind="stable")[: self.limit])

    def refresh(self, step: int) -> float:
        """Make generation `step` (sample what it lacks from the engines, which hold the policy of `step`) and use it."""
        import time

        start = time.time()
        self.generations = [(s, store) for s, store in self.generations if s != step]  # b(x) before this refresh
        idx = self.targets()
        keys = self.keys[idx]
        before, _, _ = self.lookup(keys)
        path = generation_path(self.root, step)
        complete = holds_baselines(path) and bool(self.load(step).lookup(keys)[1].all())
        if complete:
            self.log(f"contrastive: refresh generation {step} is complete in {path}: used as it is, nothing sampled")
        else:
            self.sample([self.prompts[i] for i in idx], [self.labels[i] for i in idx], self.expected(step), path)
        self.generations.append((step, self.load(step)))
        after, _, _ = self.lookup(keys)
        moved = after.mean(axis=1) - before.mean(axis=1)
        shift = float(moved.mean())
        if not (complete and step in self.refreshes):  # a reused generation keeps the record of its sampling
            self.refreshes[step] = {
                "policy_step": step, "prompts": len(keys), "generations": len(keys) * self.k,
                "mean_shift": shift, "mean_abs_shift": float(np.abs(moved).mean()),
                "baseline_mean": float(after.mean()), "seconds": time.time() - start,
            }
        self.write_summary()
        self.log(
            f"contrastive: refresh at policy step {step}: {len(keys)} prompts x k={self.k} from the current policy "
            f"(generation {step}); b(x) moved by {shift:+.4f} on average ({self.refreshes[step]['mean_abs_shift']:.4f} "
            f"in absolute value); {self.spent()} generations spent on refreshes so far"
        )
        return shift

    def write_summary(self) -> None:
        """generations/refresh.json: every refresh of this run in use, and the generations they cost in total."""
        file = self.root / GENERATIONS / REFRESH_SUMMARY
        summary = {
            "refresh_every": self.every, "refresh_prompts": self.limit or len(self.keys), "run": self.run,
            "refreshes": [self.refreshes[s] for s in sorted(self.refreshes)],
            "refresh_generations": self.spent(),
        }
        file.with_name(REFRESH_SUMMARY + ".tmp").write_text(json.dumps(summary, indent=2))
        os.replace(file.with_name(REFRESH_SUMMARY + ".tmp"), file)


def check_generations_of_run(root, fingerprint: dict, run: str) -> None:
    """Every refresh generation in the store at `root` was made by the run `run` (`fingerprint.run_identity`) under
    the store fingerprint `fingerprint`, else StoreError naming the difference and the fix."""
    for step, path in list_generations(root):
        if holds_baselines(path):
            compare_fingerprints(read_header(path)["fingerprint"], generation_fingerprint(fingerprint, step, run), path,
                                 fix=OTHER_RUN_FIX.format(generations=Path(root) / GENERATIONS))


def check_store_for_refresh(store_path, diffs: list[str]) -> None:
    """Refuse refresh on a store accepted under --contrastive.accept_fingerprint_mismatch (`diffs`: its differences)."""
    if diffs:
        raise StoreError(
            f"--contrastive.refresh_every with the baseline store {store_path}, which was made under other settings "
            "than this run (accepted with --contrastive.accept_fingerprint_mismatch):\n  " + "\n  ".join(diffs)
            + "\nA refresh samples and scores under this run's settings, so b(x) would jump at the first refresh by "
            "the difference of settings (reward, normalisation, length penalties, prompts or sampling) as well as by "
            "the policy's progress, and the refreshed and SFT baselines would not be on one scale. Write a store "
            "under this run's settings (another --contrastive.baseline_path: the in-job stage does it), or train "
            "without --contrastive.refresh_every."
        )
