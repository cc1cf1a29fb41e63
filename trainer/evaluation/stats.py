"""Confidence intervals for per-user metrics. Pure numpy, no I/O.

A run's Recall@K is the mean over (user, window) pairs after the warm-up. A user ranked in
several windows contributes correlated values, so the interval treats *users* as the units
(a cluster-robust normal approximation, the ratio estimator's linearised variance):

    mean = sum_u S_u / sum_u n_u      (S_u: the sum of user u's values, n_u: how many)
    se^2 = U / (U - 1) * sum_u (S_u - mean * n_u)^2 / (sum_u n_u)^2      (U users)
    95% interval = mean -/+ 1.96 se

With one value per user this is the usual ``s / sqrt(n)``. The same formula applied to paired
differences (a model's value minus popularity's, same user and window) gives the interval of
the difference, which is what says whether one ranker beats another.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959964


@dataclass(frozen=True, slots=True)
class Interval:
    """A mean and its 95% interval over ``units`` independent units (users); ``lo``/``hi`` are
    NaN with fewer than two units."""

    mean: float
    lo: float
    hi: float
    units: int
    values: int

    def rounded(self, digits: int = 5, clip: tuple[float, float] | None = None
                ) -> list[float | None]:
        """``[lo, hi]`` rounded, clipped to ``clip`` when given, None where undefined."""
        out: list[float | None] = []
        for x in (self.lo, self.hi):
            if math.isnan(x):
                out.append(None)
            else:
                out.append(round(min(max(x, clip[0]), clip[1]) if clip else x, digits))
        return out


def mean_ci95(values: Sequence[float], units: Sequence[Hashable] | None = None) -> Interval | None:
    """The mean of ``values`` and its 95% normal-approximation interval, clustered by
    ``units`` (the user of each value; ``None``: every value its own unit). None when empty."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return None
    if units is None:
        units = range(len(x))
    if len(units) != len(x):
        raise ValueError(f"{len(x)} values but {len(units)} units")
    _, idx = np.unique(np.asarray([str(u) for u in units]), return_inverse=True)
    sums = np.bincount(idx, weights=x)
    counts = np.bincount(idx).astype(np.float64)
    mean = float(sums.sum() / counts.sum())
    n_units = len(sums)
    if n_units < 2:
        return Interval(mean, math.nan, math.nan, n_units, int(x.size))
    resid = sums - mean * counts
    se = math.sqrt(n_units / (n_units - 1) * float((resid ** 2).sum()) / counts.sum() ** 2)
    return Interval(mean, mean - Z95 * se, mean + Z95 * se, n_units, int(x.size))
