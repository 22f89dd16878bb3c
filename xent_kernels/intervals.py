"""Jackknife intervals over delete-one-bucket aggregates, and the Student t quantile.

Every row belongs to one of K buckets (an axis of ``ClassStats``). A metric's
leave-one-out values θ_(k) are its finalize rule applied to the totals without bucket
k; over the K' buckets that hold weight, the jackknife standard error is
SE = sqrt((K'-1)/K' · Σ(θ_(k) - mean θ)²) and the interval θ̂ ± t_{K'-1} · SE.

The t quantile is SciPy's (``scipy.special.stdtrit``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import stdtrit

DEFAULT_BUCKETS = 20
DEFAULT_LEVEL = 0.95


def jackknife_se(leave_one_out: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jackknife standard error of a statistic from its leave-one-bucket-out values.

    Parameters
    ----------
    leave_one_out : (m, K) float
        θ_(k): the value without bucket k.
    used : (m, K) bool
        The buckets that hold weight; the others are skipped.

    Returns
    -------
    se : (m,) float
        sqrt((K'-1)/K' · Σ(θ_(k) - mean θ)²) over the K' buckets used; NaN where K' = 0.
    k : (m,) int
        K', the buckets used.
    """
    k = used.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(used, leave_one_out, 0.0).sum(axis=-1) / k
        deviation = np.where(used, leave_one_out - mean[..., None], 0.0)
        se = np.sqrt((k - 1) / k * (deviation * deviation).sum(axis=-1))
    return se, k


def t_quantile(df: np.ndarray, level: float = DEFAULT_LEVEL) -> np.ndarray:
    """t_{df, (1+level)/2}: the two-sided Student t quantile; NaN where df < 1."""
    df = np.asarray(df)
    t = np.full(df.shape, np.nan)
    t[df >= 1] = stdtrit(df[df >= 1], (1.0 + level) / 2.0)
    return t


def jackknife_bounds(
    value: np.ndarray, leave_one_out: np.ndarray, used: np.ndarray, level: float = DEFAULT_LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Jackknife t-interval bounds of `value` from its leave-one-bucket-out values.

    Parameters
    ----------
    value : (m,) float
        The point values θ̂ (from all buckets).
    leave_one_out : (m, K) float
        θ_(k): the value without bucket k.
    used : (m, K) bool
        The buckets that hold weight; the others are skipped.
    level : float in (0, 1)
        Two-sided confidence level.

    Returns
    -------
    lo, hi : (m,) float
        θ̂ ∓ t_{K'-1, (1+level)/2} · SE (:func:`jackknife_se`), K' the buckets used;
        NaN where K' < 2.
    """
    se, k = jackknife_se(leave_one_out, used)
    half = t_quantile(k - 1, level) * se
    return value - half, value + half
