"""Will a per-prompt baseline help this reward model? The variance decomposition of a baseline store.

Write a prompt's rewards as r(x, y) = m(x) + e(x, y): m(x) the prompt's mean under the SFT policy, e the part that
varies between its responses. A store holds k rewards r_ij of N prompts i (responses j). With b_i the mean and
s2_i the unbiased variance (ddof 1) of prompt i's k rewards:

    S   = mean_i s2_i                             within-prompt variance, pooled (unbiased)
    V   = max(0, Var_i(b_i) - S / k)              between-prompt variance of m(x) (Var with ddof 1; the prompt
                                                  means carry the baselines' own noise S / k, removed here)
    ICC = V / (V + S)                             the prompts' share of the reward variance

For a fresh SFT sample y of a prompt x and the mean b(x) of k stored rewards: Var(r) = V + S and
Var(r - b) = S (1 + 1/k), so the spread of r - b relative to that of r is

    ratio(k) = sqrt(S (1 + 1/k) / (V + S)) = sqrt((1 - ICC) (1 + 1/k))

below 1 (the baseline removes more variance than it adds) exactly when V > S / k, i.e. ICC > 1 / (k + 1). It
is reported for the store's k and for k = 2, 4, 8, 16; no k brings it below sqrt(1 - ICC).

Intervals: 95% percentile bootstrap over prompts (prompts resampled with replacement, `RESAMPLES` times, or fewer
for stores of over 50 000 prompts, down to `MIN_RESAMPLES`, so that a million prompts take seconds; fixed seed, from the prompts in a canonical order so that any order of the same store gives the same numbers); the
ratio's interval is the ICC's mapped through ratio(k) (decreasing in ICC).

Model-free check on the same store (leave-one-out): each stored reward against the mean of its k - 1 siblings,
loo_ij = r_ij - (k b_i - r_ij) / (k - 1); measured = std_ij(loo) / std_ij(r) over all N k rewards (population
std), beside the prediction for a (k - 1)-sample baseline, ratio(k - 1). Both use the same rewards, so they agree
up to the (N - 1) / N of the variance of prompt means and the floor of V at 0: a large gap means too few prompts
for the estimate. The check that counts is training's: `contrastive/spread_ratio` (std of r - b over a PPO batch
over std of r) at step 1, where rollouts are fresh SFT samples, against `contrastive/spread_ratio_predicted`.

What the ratio does not say: a GAE critic can learn prompt effects that are smooth functions of the prompt, and
group-centred estimators remove any per-prompt constant themselves (see METHOD.md). Imports numpy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

RESAMPLES = 1000
MIN_RESAMPLES = 100
RESAMPLED_CELLS = 50_000_000  # prompts x resamples at most (about a second): large stores get fewer resamples
SEED = 0
K_SHOWN = (2, 4, 8, 16)
_BOOTSTRAP_CELLS = 4_000_000  # prompts x resamples gathered at once (memory bound for large stores)


@dataclass
class Decomposition:
    """Point estimates from an (N, k) reward array: S, V, ICC (see the module docstring)."""

    within: float  # S
    between: float  # V
    icc: float

    def ratio(self, k: int | float) -> float:
        """Predicted std(r - b) / std(r) for a fresh SFT sample and the mean of k baselines."""
        return spread_ratio(self.icc, k)


@dataclass
class Diagnosis:
    """The store's decomposition, its intervals, the predicted and leave-one-out ratios and a verdict; or, where the
    store cannot be decomposed (k = 1, one prompt, all rewards equal), `available` False and the reason in
    `verdict`."""

    prompts: int
    k: int
    available: bool
    verdict: str
    within: float | None = None
    between: float | None = None
    icc: float | None = None
    within_interval: list[float] | None = None
    between_interval: list[float] | None = None
    icc_interval: list[float] | None = None
    threshold_icc: float | None = None  # 1 / (k + 1): above it the baseline lowers the spread
    predicted_ratio: float | None = None
    predicted_ratio_interval: list[float] | None = None
    predicted_ratio_by_k: dict[str, float] = field(default_factory=dict)
    loo_ratio: float | None = None
    loo_predicted_ratio: float | None = None
    resamples: int = RESAMPLES
    seed: int = SEED

    def to_dict(self) -> dict:
        """JSON-ready (summary.json, `inspect --json`)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """The text lines `inspect`, `sample` and the in-job stage print."""
        if not self.available:
            return [f"will it help? {self.verdict}"]
        lo, hi = self.icc_interval
        rlo, rhi = self.predicted_ratio_interval
        by_k = ", ".join(f"k={k} {r:.2f}" for k, r in self.predicted_ratio_by_k.items())
        return [
            f"will it help? {self.verdict}",
            f"  variance decomposition over {self.prompts} prompts x k={self.k}: between prompts V {self.between:.4g} "
            f"[95%: {self.between_interval[0]:.4g}, {self.between_interval[1]:.4g}], within S {self.within:.4g} "
            f"[{self.within_interval[0]:.4g}, {self.within_interval[1]:.4g}], ICC {self.icc:.3f} [{lo:.3f}, {hi:.3f}] "
            f"(the baseline helps above ICC {self.threshold_icc:.3f} = 1/(k+1))",
            f"  predicted std(r - b) / std(r) for fresh SFT samples: {self.predicted_ratio:.3f} [{rlo:.3f}, {rhi:.3f}] "
            f"at k={self.k}; {by_k}",
            f"  leave-one-out on the store (each reward minus the mean of its k-1 siblings): measured "
            f"{self.loo_ratio:.3f}, predicted {self.loo_predicted_ratio:.3f}",
        ]


def spread_ratio(icc: float, k: int | float) -> float:
    """sqrt((1 - ICC) (1 + 1/k)): predicted std(r - b) / std(r) with b the mean of k SFT baselines."""
    return math.sqrt(max(0.0, 1.0 - icc) * (1.0 + 1.0 / k))


def _components(means: np.ndarray, variances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S, V, ICC along the last axis of per-prompt means and variances (several resamples at once); ICC NaN where
    V + S is 0."""
    within = variances.mean(axis=-1)
    between = np.maximum(0.0, means.var(axis=-1, ddof=1) - within / k)
    total = between + within
    icc = np.divide(between, total, out=np.full_like(total, np.nan), where=total > 0)
    return within, between, icc


def decompose(rewards: np.ndarray) -> Decomposition:
    """S, V and ICC of an (N, k) reward array (N >= 2, k >= 2, not all equal; else ValueError saying why)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    problem = unavailable_reason(rewards)
    if problem:
        raise ValueError(problem)
    within, between, icc = _components(rewards.mean(axis=1), rewards.var(axis=1, ddof=1), rewards.shape[1])
    return Decomposition(float(within), float(between), float(icc))


def unavailable_reason(rewards: np.ndarray) -> str | None:
    """What / why / fix when an (N, k) reward array cannot be decomposed, else None."""
    n, k = rewards.shape if rewards.ndim == 2 else (len(rewards), 0)
    if k < 2:
        return (f"This store holds k = {k} baseline reward per prompt; the within-prompt variance (how much one prompt's "
                "rewards differ) needs at least 2, so whether the baseline helps cannot be told. Sample a store with "
                "--contrastive.k 2 or more to see it.")
    if n < 2:
        return (f"This store holds {n} prompt(s); the between-prompt variance (how much prompts differ) needs at least "
                "2, so whether the baseline helps cannot be told. Sample baselines for more prompts (a few hundred give "
                "a tight estimate).")
    if np.ptp(rewards) == 0:
        return (f"All {n * k} stored rewards equal {float(rewards.flat[0]):.4g}: neither r nor r - b varies, so the "
                "baseline can change nothing and PPO gets no signal from this reward on these prompts. Check the reward "
                "source (a constant reward, a rule every response fails or passes) or sample with a higher temperature.")
    return None


def verdict(d: Decomposition, k: int, ratio_interval: list[float]) -> str:
    """One line in plain words: how much prompts explain and what the baseline does to the spread at k."""
    ratio = d.ratio(k)
    share = f"prompts explain {d.icc:.0%} of this reward's variance"
    sure = (f" (its 95% interval [{ratio_interval[0]:.2f}, {ratio_interval[1]:.2f}] includes 1: more prompts would "
            "tell)") if ratio_interval[0] < 1 < ratio_interval[1] else ""
    if ratio < 1:
        return (f"{share}; r - b should spread {ratio:.2f}x as much as r{sure}: the baseline removes prompt difficulty"
                + (", though only a little" if ratio > 0.95 else ""))
    floor = spread_ratio(d.icc, math.inf)  # what any number of baselines could reach
    if d.between > 0 and floor < 0.95:
        needed = math.floor(d.within / d.between) + 1  # smallest k with V > S / k
        fix = (f"k >= {needed} baselines per prompt would make it remove more than it adds (at most down to "
               f"{floor:.2f}x with many)")
    else:
        fix = f"even many baselines would only reach {floor:.2f}x: a larger k or another shape will not fix that"
    return (f"{share}: at k = {k} the baseline adds more noise than it removes (r - b should spread {ratio:.2f}x as "
            f"much as r{sure}); {fix}")


def _bootstrap(means: np.ndarray, variances: np.ndarray, k: int, resamples: int, seed: int) -> dict[str, list[float]]:
    """95% percentile intervals of S, V and ICC, prompts resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = len(means)
    per_batch = max(1, _BOOTSTRAP_CELLS // n)
    parts = []
    for start in range(0, resamples, per_batch):
        idx = rng.integers(0, n, size=(min(per_batch, resamples - start), n))
        parts.append(np.stack(_components(means[idx], variances[idx], k)))
    within, between, icc = np.concatenate(parts, axis=1)

    def ci(values):
        values = values[np.isfinite(values)]  # a resample of prompts whose rewards are all equal has no ICC
        return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else [math.nan, math.nan]

    return {"within": ci(within), "between": ci(between), "icc": ci(icc)}


def diagnose(rewards: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> Diagnosis:
    """The full diagnosis of an (N, k) array of stored baseline rewards (a `BaselineStore.rewards`)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    n, k = rewards.shape if rewards.ndim == 2 else (len(rewards), 0)
    reason = unavailable_reason(rewards)
    if reason:
        return Diagnosis(prompts=n, k=k, available=False, verdict=reason, resamples=resamples, seed=seed)
    d = decompose(rewards)
    resamples = min(resamples, max(MIN_RESAMPLES, RESAMPLED_CELLS // n))
    means, variances = rewards.mean(axis=1), rewards.var(axis=1, ddof=1)
    order = np.lexsort((variances, means))  # the same intervals whatever the order of the prompts
    ci = _bootstrap(means[order], variances[order], k, resamples, seed)
    icc_lo, icc_hi = ci["icc"]
    ratio_interval = [spread_ratio(icc_hi, k), spread_ratio(icc_lo, k)]
    loo = rewards - (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    return Diagnosis(
        prompts=n, k=k, available=True, verdict=verdict(d, k, ratio_interval),
        within=d.within, between=d.between, icc=d.icc,
        within_interval=ci["within"], between_interval=ci["between"], icc_interval=ci["icc"],
        threshold_icc=1.0 / (k + 1),
        predicted_ratio=d.ratio(k), predicted_ratio_interval=ratio_interval,
        predicted_ratio_by_k={str(kk): d.ratio(kk) for kk in K_SHOWN},
        loo_ratio=float(loo.std() / rewards.std()), loo_predicted_ratio=d.ratio(k - 1),
        resamples=resamples, seed=seed,
    )
