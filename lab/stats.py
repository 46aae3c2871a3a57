"""The numbers every evidence analysis reports: means with 95% t-intervals over seeds, gold win rates, per-step series
of a run's tensorboard scalars, trailing means. Runs are the result.json dicts of lab.experiment (or v1's runner)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# two-sided 95% Student-t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

TAG_GOLD, TAG_PROXY, TAG_KL = "train/gold", "train/reward", "train/kl"
TAG_CRITIC = "train/critic_loss"


def ci(values: list[float]) -> dict:
    """Mean and 95% t-interval of the finite values ({mean, ci95, n, values}; no interval below two values)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "ci95": None, "n": 0, "values": []}
    m = statistics.mean(values)
    if len(values) < 2:
        return {"mean": m, "ci95": None, "n": len(values), "values": values}
    half = _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": m, "ci95": [m - half, m + half], "n": len(values), "values": values}


def win_rate(policy_gold: list[list[float]], sft_gold: list[list[float]]) -> float:
    """P(gold(policy sample) > gold(SFT sample)) over same-prompt pairs, ties counting half."""
    wins = total = 0.0
    for ps, ss in zip(policy_gold, sft_gold):
        for a in ps:
            for b in ss:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                total += 1
    return wins / total


def series(run: dict, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one logged scalar of a run, by step."""
    return sorted((int(k), v) for k, v in run["scalars"].get(tag, {}).items())


def last_mean(run: dict, tag: str, n: int = 8) -> float | None:
    s = series(run, tag)
    return statistics.mean(v for _, v in s[-n:]) if s else None


def peak_smoothed(run: dict, tag: str, w: int = 8) -> float | None:
    """The highest `w`-step mean of a scalar along the run."""
    vals = [v for _, v in series(run, tag)]
    if not vals:
        return None
    w = min(w, len(vals))
    return max(statistics.mean(vals[i:i + w]) for i in range(len(vals) - w + 1))


def smooth(y, w: int):
    """Trailing `w`-step mean along the last axis of a numpy array, same length (the first steps average fewer)."""
    import numpy as np

    w = max(1, min(w, y.shape[-1]))
    kernel = np.ones(w) / w
    pad = np.concatenate([np.repeat(y[..., :1], w - 1, axis=-1), y], axis=-1)
    return np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), -1, pad)


def load_runs(work: Path) -> dict:
    """{arm: {seed: result}} of every finished run in an experiment's work directory."""
    runs: dict = {}
    for path in sorted((work / "runs").glob("*/seed*/result.json")):
        r = json.loads(path.read_text())
        runs.setdefault(r["arm"], {})[r["seed"]] = r
    return runs
