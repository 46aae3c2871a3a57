"""The math of contrastive rewards: k baseline rewards of a prompt -> one contrastive value per rollout.

Shen et al. 2024 (arXiv 2403.07708) replace the reward of a rollout y of prompt x by

    r_cr(x, y) = r(x, y) - lambda * g(r(x, y_1), ..., r(x, y_k)),    y_j ~ pi_SFT(. | x)

with g the mean. This module offers g and a few non-linear relatives ("shapes"), all computed from the
same k stored baseline rewards, and knows under which OpenRLHF advantage estimators a shape is a no-op.

Only torch is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Shapes that subtract a per-prompt statistic: r - lambda * stat(baselines).
SHIFT_SHAPES = ("mean", "median", "min", "max")
SHAPE_NAMES = SHIFT_SHAPES + ("quantile:q", "zscore", "sigmoid", "winrate")

# OpenRLHF 0.11.2 estimators that subtract the mean of the prompt's own rollout group (rloo: leave-one-out
# mean) before computing returns, so that any per-prompt constant added to r cancels exactly.
GROUP_CENTRED_ESTIMATORS = ("rloo", "reinforce_baseline", "dr_grpo", "group_norm")
# group_norm also divides by the group's std, so a per-prompt positive scale cancels as well.
GROUP_SCALED_ESTIMATORS = ("group_norm",)

ZSCORE_EPS = 1e-4
"""Added to the baseline std in `zscore`, so that k identical baseline rewards stay finite."""


@dataclass(frozen=True)
class Shape:
    """A parsed `--contrastive.shape` value: a name and, for `quantile`, its level q in [0, 1]."""

    name: str
    q: float | None = None

    def __str__(self) -> str:
        return f"quantile:{self.q:g}" if self.name == "quantile" else self.name

    @property
    def per_prompt_affine(self) -> bool:
        """True when the value is a(x) * r + c(x) with a(x) > 0 that depends on the prompt only."""
        return self.name in SHIFT_SHAPES + ("quantile", "zscore")

    @property
    def min_k(self) -> int:
        """The smallest number of baseline rewards the shape is defined for."""
        return 2 if self.name == "zscore" else 1


def parse_shape(spec: str) -> Shape:
    """Parse `mean`, `median`, `min`, `max`, `quantile:0.25`, `zscore`, `sigmoid` or `winrate`."""
    name, _, arg = spec.partition(":")
    if name == "quantile":
        try:
            q = float(arg)
        except ValueError:
            q = float("nan")
        if not 0.0 <= q <= 1.0:
            raise ValueError(
                f"--contrastive.shape {spec!r}: the quantile level must be a number in [0, 1]. "
                "Write it as quantile:Q, for example quantile:0.25."
            )
        return Shape("quantile", q)
    if arg or name not in SHIFT_SHAPES + ("zscore", "sigmoid", "winrate"):
        raise ValueError(f"--contrastive.shape {spec!r} is not a known shape. Choose one of: {', '.join(SHAPE_NAMES)}.")
    return Shape(name)


def cancelling_estimator_reason(shape: Shape, estimator: str) -> str | None:
    """Why `shape` leaves the advantages of `estimator` exactly unchanged, or None when it does not."""
    if estimator in GROUP_CENTRED_ESTIMATORS and shape.name in SHIFT_SHAPES + ("quantile",):
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
    bad = ~torch.isfinite(values)
    if bad.any():
        n = int(bad.sum())
        raise ValueError(f"{n} of {values.numel()} {what} are NaN or infinite; contrastive rewards need finite values. {fix}")


def baseline_statistic(baselines: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The per-prompt statistic g a shift shape subtracts, from baselines of shape (B, k); returns (B,).

    `median` is the midpoint of the two middle values for even k (quantile 0.5 with linear interpolation),
    not torch.median's lower middle value. For `zscore`, `sigmoid` and `winrate` this is the baseline mean,
    which is what gets logged as "the baseline".
    """
    if shape.name in ("mean", "zscore", "sigmoid", "winrate"):
        return baselines.mean(dim=-1)
    if shape.name == "min":
        return baselines.min(dim=-1).values
    if shape.name == "max":
        return baselines.max(dim=-1).values
    q = 0.5 if shape.name == "median" else shape.q
    return torch.quantile(baselines, q, dim=-1)


def contrastive_reward(
    rewards: torch.Tensor, baselines: torch.Tensor, shape: Shape | str = "mean", coef: float = 1.0
) -> torch.Tensor:
    """The contrastive value of each reward given its prompt's k baseline rewards.

    rewards: (B,) rewards r of the rollouts; baselines: (B, k) baseline rewards r_j of each rollout's prompt.
    Returns (B,) in the dtype of `rewards` promoted to at least float32:

    - shift shapes (mean, median, quantile:q, min, max):  r - coef * g(r_1..r_k)
    - zscore:   (r - coef * mean_j r_j) / (std_j r_j + ZSCORE_EPS), std with Bessel's correction (k >= 2)
    - sigmoid:  mean_j sigmoid(r - coef * r_j)                      (bounded in (0, 1))
    - winrate:  mean_j [1(r > coef * r_j) + 0.5 * 1(r == coef * r_j)] - 0.5   (in [-0.5, 0.5])
    """
    shape = parse_shape(shape) if isinstance(shape, str) else shape
    if rewards.dim() != 1 or baselines.dim() != 2 or baselines.shape[0] != rewards.shape[0]:
        raise ValueError(f"expected rewards (B,) and baselines (B, k), got {tuple(rewards.shape)} and {tuple(baselines.shape)}")
    if baselines.shape[1] < shape.min_k:
        raise ValueError(
            f"--contrastive.shape {shape} needs at least {shape.min_k} baseline rewards per prompt, the store has "
            f"{baselines.shape[1]}. Sample more baselines (--contrastive.k) or choose another shape."
        )
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    r, b = rewards.to(dtype), baselines.to(dtype)
    check_finite(r, "rewards", "Check the reward model or reward function for NaN/inf outputs.")
    check_finite(b, "baseline rewards", "Re-run the offline stage; the store should never hold them.")

    if shape.name == "zscore":
        return (r - coef * b.mean(dim=-1)) / (b.std(dim=-1) + ZSCORE_EPS)
    if shape.name == "sigmoid":
        return torch.sigmoid(r[:, None] - coef * b).mean(dim=-1)
    if shape.name == "winrate":
        diff = r[:, None] - coef * b
        return (diff > 0).to(dtype).mean(dim=-1) + 0.5 * (diff == 0).to(dtype).mean(dim=-1) - 0.5
    return r - coef * baseline_statistic(b, shape)
