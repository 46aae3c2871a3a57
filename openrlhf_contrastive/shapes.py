"""The math of contrastive rewards: k baseline rewards of a prompt -> one contrastive value per rollout.

Shen et al. 2024 (arXiv 2403.07708) replace the reward of a rollout y of prompt x by

    r_cr(x, y) = r(x, y) - lambda * g(r(x, y_1), ..., r(x, y_k)),    y_j ~ pi_SFT(. | x)

with g the mean. This module offers g and a few relatives from the field ("shapes"), all computed from the
same k stored baseline rewards, knows under which OpenRLHF advantage estimators a shape is a no-op, and turns
a batch of rewards into the values and metrics both OpenRLHF paths log (`contrastive_batch`).

Parsing a shape and the estimator tables need only the standard library (the plugin checks them while
train_ppo_ray parses its flags); the functions that compute values import torch when called.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openrlhf_contrastive.flags import METRIC_BASELINE, METRIC_BEAT_BASELINE, METRIC_HIT, METRIC_RAW_REWARD, METRIC_REWARD

if TYPE_CHECKING:
    import torch

# Shapes that subtract a per-prompt statistic: r - lambda * stat(baselines).
SHIFT_SHAPES = ("mean", "median", "min", "max")
SHAPE_NAMES = SHIFT_SHAPES + ("quantile:Q", "logmeanexp:BETA", "zscore", "sigmoid", "winrate", "logsigmoid", "logsigmoid:Q")
# Per-prompt shifts: the value is r - lambda * s(x) with s(x) a statistic of the prompt's baselines.
PER_PROMPT_SHIFTS = SHIFT_SHAPES + ("quantile", "logmeanexp")

# OpenRLHF 0.11.2 estimators that subtract the mean of the prompt's own rollout group (rloo: leave-one-out
# mean) before computing returns, so that any per-prompt constant added to r cancels exactly.
GROUP_CENTRED_ESTIMATORS = ("rloo", "reinforce_baseline", "dr_grpo", "group_norm")
# group_norm also divides by the group's std, so a per-prompt positive scale cancels as well.
GROUP_SCALED_ESTIMATORS = ("group_norm",)

LOGSIGMOID_LEVEL = 0.85
"""`logsigmoid`'s default reference: the 85th percentile of a normal fit to the baselines, as PAR's LSC code."""


def zscore_std_floor(pooled_std: float, k: int) -> float:
    """The smallest baseline std `zscore` divides by: the store's pooled within-prompt std / sqrt(k).

    `pooled_std` is sqrt(mean over the store's prompts of the sample variance of their k baselines), computed once
    when the store loads (`BaselineStore.pooled_std`): the typical spread of a prompt's baselines. Being relative to
    the store, the floor scales with the rewards as each std does, so zscore is scale-free (multiplying every reward
    and baseline by c > 0 leaves every value unchanged, whatever the reward's units). A prompt whose baselines agree
    more than the floor allows (std 0 when all k are equal, common with 0/1 rule-based rewards) is divided by the
    floor: its centred reward weighs at most sqrt(k) times as much as on a prompt of typical spread, instead of 1/std.
    """
    return pooled_std * k**-0.5


@dataclass(frozen=True)
class Shape:
    """A parsed `--contrastive.shape` value: a name and its argument (the level q of `quantile` and
    `logsigmoid`, the temperature beta of `logmeanexp`)."""

    name: str
    q: float | None = None
    beta: float | None = None

    def __str__(self) -> str:
        if self.name == "logmeanexp":
            return f"logmeanexp:{self.beta:g}"
        return f"{self.name}:{self.q:g}" if self.q is not None else self.name

    @property
    def min_k(self) -> int:
        """The smallest number of baseline rewards the shape is defined for."""
        return 2 if self.name == "zscore" else 1


def _number(spec: str, arg: str, what: str, ok, example: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        value = float("nan")
    if not ok(value):
        raise ValueError(f"--contrastive.shape {spec!r}: {what}. Write it as {example}.")
    return value


def parse_shape(spec: str) -> Shape:
    """Parse one of SHAPE_NAMES: `mean`, `quantile:0.25`, `logmeanexp:1`, `logsigmoid`, `logsigmoid:0.9`, ..."""
    name, colon, arg = spec.partition(":")
    if name == "quantile":
        q = _number(spec, arg, "the quantile level must be a number in [0, 1]", lambda x: 0.0 <= x <= 1.0,
                    "quantile:Q, for example quantile:0.25")
        return Shape("quantile", q=q)
    if name == "logmeanexp":
        beta = _number(spec, arg, "the temperature beta must be a positive finite number", lambda x: 0.0 < x < math.inf,
                       "logmeanexp:BETA, for example logmeanexp:1 (large beta: the mean, small beta: the max)")
        return Shape("logmeanexp", beta=beta)
    if name == "logsigmoid" and colon:
        q = _number(spec, arg, "the reference level must be a number strictly between 0 and 1", lambda x: 0.0 < x < 1.0,
                    f"logsigmoid:Q, for example logsigmoid:{LOGSIGMOID_LEVEL} (the default)")
        return Shape("logsigmoid", q=q)
    if colon or name not in SHIFT_SHAPES + ("zscore", "sigmoid", "winrate", "logsigmoid"):
        raise ValueError(f"--contrastive.shape {spec!r} is not a known shape. Choose one of: {', '.join(SHAPE_NAMES)}.")
    return Shape(name)


def cancelling_estimator_reason(shape: Shape, estimator: str) -> str | None:
    """Why `shape` leaves the advantages of `estimator` exactly unchanged, or None when it does not."""
    if estimator in GROUP_CENTRED_ESTIMATORS and shape.name in PER_PROMPT_SHIFTS:
        return (
            f"--algo.advantage.estimator {estimator} subtracts the mean reward of each prompt's own rollout group, "
            f"so the per-prompt baseline that --contrastive.shape {shape} subtracts cancels exactly: training "
            "would be identical to training on the raw reward"
        )
    if estimator in GROUP_SCALED_ESTIMATORS and shape.name == "zscore":
        return (
            f"--algo.advantage.estimator {estimator} centres and divides by each prompt group's std, so the "
            "per-prompt shift and scale of --contrastive.shape zscore cancel exactly"
        )
    return None


def check_finite(values: torch.Tensor, what: str, fix: str) -> None:
    """Raise ValueError naming `what` and `fix` when `values` holds NaN or inf."""
    import torch

    bad = ~torch.isfinite(values)
    if bad.any():
        n = int(bad.sum())
        raise ValueError(f"{n} of {values.numel()} {what} are NaN or infinite; contrastive rewards need finite values. {fix}")


def baseline_statistic(baselines: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The per-prompt statistic g of baselines (B, k) that the shape compares r with; returns (B,).

    - mean, median, quantile:q, min, max: that statistic. `median` is the midpoint of the two middle values for
      even k (quantile 0.5 with linear interpolation), not torch.median's lower middle value.
    - logmeanexp:beta: V* = beta * log mean_j exp(r_j / beta), computed as max_j r_j + beta * log1p(mean_j
      expm1((r_j - max) / beta)): the logsumexp shift by the max (no overflow as beta -> 0, where V* -> max),
      with expm1/log1p keeping the digits of the small correction as beta -> inf (where V* -> mean).
    - logsigmoid:q: the reference mean_j r_j + z_q * std_j r_j (a normal fit, population std; z_0.85 = 1.0364).
    - zscore, sigmoid, winrate: the baseline mean (what gets logged as "the baseline").
    """
    import torch

    if shape.name in ("mean", "zscore", "sigmoid", "winrate"):
        return baselines.mean(dim=-1)
    if shape.name == "min":
        return baselines.min(dim=-1).values
    if shape.name == "max":
        return baselines.max(dim=-1).values
    if shape.name == "logmeanexp":
        top = baselines.max(dim=-1).values
        return top + shape.beta * torch.log1p(torch.expm1((baselines - top[:, None]) / shape.beta).mean(dim=-1))
    if shape.name == "logsigmoid":
        z = statistics.NormalDist().inv_cdf(LOGSIGMOID_LEVEL if shape.q is None else shape.q)
        return baselines.mean(dim=-1) + z * baselines.std(dim=-1, correction=0)
    q = 0.5 if shape.name == "median" else shape.q
    return torch.quantile(baselines, q, dim=-1)


def contrastive_value(
    rewards: torch.Tensor,
    baselines: torch.Tensor,
    shape: Shape | str = "mean",
    coef: float = 1.0,
    pooled_std: float | None = None,
) -> torch.Tensor:
    """The contrastive value of each reward given its prompt's k baseline rewards.

    rewards: (B,) rewards r of the rollouts; baselines: (B, k) baseline rewards r_j of each rollout's prompt;
    pooled_std: the store's pooled within-prompt std (`BaselineStore.pooled_std`), which zscore needs for its floor.
    Returns (B,) in the dtype of `rewards` promoted to at least float32:

    - per-prompt shifts (mean, median, quantile:q, min, max, logmeanexp:beta):  r - coef * g(r_1..r_k)
      (g of logmeanexp: A*-PO's V* = beta * log mean_j exp(r_j / beta); see `baseline_statistic`)
    - zscore:     (r - coef * mean_j r_j) / max(std_j r_j, pooled_std / sqrt(k)), sample std (Bessel's correction,
                  k >= 2), floored by `zscore_std_floor` so that k equal baselines give a bounded value; scale-free
    - sigmoid:    mean_j sigmoid(r - coef * r_j)                      (bounded in (0, 1); PAR)
    - winrate:    mean_j [1(r > coef * r_j) + 0.5 * 1(r == coef * r_j)] - 0.5   (ties count half; in [-0.5, 0.5])
    - logsigmoid: log sigmoid(r - coef * ref), ref = mean_j r_j + z_q * std_j r_j (LSC; q = 0.85 by default)
    """
    import torch
    import torch.nn.functional as F

    shape = parse_shape(shape) if isinstance(shape, str) else shape
    if rewards.dim() != 1 or baselines.dim() != 2 or baselines.shape[0] != rewards.shape[0]:
        raise ValueError(f"expected rewards (B,) and baselines (B, k), got {tuple(rewards.shape)} and {tuple(baselines.shape)}")
    k = baselines.shape[1]
    if k < shape.min_k:
        raise ValueError(
            f"--contrastive.shape {shape} needs at least {shape.min_k} baseline rewards per prompt, the store has "
            f"{k}. Sample more baselines (--contrastive.k) or choose another shape."
        )
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    r, b = rewards.to(dtype), baselines.to(dtype)
    check_finite(r, "rewards", "Check the reward model or reward function for NaN/inf outputs.")
    check_finite(b, "baseline rewards", "Re-run the offline stage; the store should never hold them.")

    if shape.name == "zscore":
        if pooled_std is None or not pooled_std > 0:
            raise ValueError(
                f"zscore divides by max(std_j, pooled_std / sqrt(k)) and needs the store's pooled within-prompt std > 0 "
                f"(BaselineStore.pooled_std), got {pooled_std}."
            )
        return (r - coef * b.mean(dim=-1)) / b.std(dim=-1).clamp(min=zscore_std_floor(pooled_std, k))
    if shape.name == "sigmoid":
        return torch.sigmoid(r[:, None] - coef * b).mean(dim=-1)
    if shape.name == "winrate":
        diff = r[:, None] - coef * b
        return (diff > 0).to(dtype).mean(dim=-1) + 0.5 * (diff == 0).to(dtype).mean(dim=-1) - 0.5
    if shape.name == "logsigmoid":
        return F.logsigmoid(r - coef * baseline_statistic(b, shape))
    return r - coef * baseline_statistic(b, shape)


def contrastive_batch(
    rewards: torch.Tensor,
    baselines: torch.Tensor,
    hit: torch.Tensor,
    shape: Shape,
    coef: float,
    pooled_std: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reward to train on and the metrics to log, for a batch whose prompts may miss baselines.

    rewards (B,), baselines (B, k) (any values where `hit` is False), hit (B,) bool: whether the rollout's
    prompt has baselines, pooled_std: the store's `BaselineStore.pooled_std` (zscore's floor). Returns (value,
    metrics), all (B,) in the dtype of `rewards` promoted to at least float32: value is `contrastive_value` where
    hit and r itself where not; metrics maps the METRIC_* keys to the baseline statistic (0 where missed), r, the
    value, r > baseline (beat) and hit, as 0/1 floats. Both OpenRLHF paths call this, with the same store: the
    plugin's transform and the unpatched reward function.
    """
    import torch

    dtype = torch.promote_types(rewards.dtype, torch.float32)
    r, b = rewards.to(dtype), baselines.to(dtype)
    value = torch.where(hit, contrastive_value(r, b, shape, coef, pooled_std), r)
    baseline = torch.where(hit, baseline_statistic(b, shape), torch.zeros_like(r))
    metrics = {
        METRIC_BASELINE: baseline,
        METRIC_RAW_REWARD: r,
        METRIC_REWARD: value,
        METRIC_BEAT_BASELINE: ((r > baseline) & hit).to(dtype),
        METRIC_HIT: hit.to(dtype),
    }
    return value, metrics
