"""Jackknife intervals over delete-one-bucket aggregates, and the Student t quantile.

Every row belongs to one of K buckets (an axis of ``ClassStats``). A metric's
leave-one-out values θ_(k) are its finalize rule applied to the totals without bucket
k; over the K' buckets that hold weight, the jackknife standard error is
SE = sqrt((K'-1)/K' · Σ(θ_(k) - mean θ)²) and the interval θ̂ ± t_{K'-1} · SE.

Pure Python and NumPy (no SciPy): the t quantile inverts the regularized incomplete
beta function, evaluated by its continued fraction.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

DEFAULT_BUCKETS = 20
DEFAULT_LEVEL = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # the fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0, T Student-t with `df` degrees of freedom."""
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t distribution with `df` degrees of freedom.

    Parameters
    ----------
    p : float in (0, 1)
    df : float > 0

    Returns
    -------
    float
        t with P(T <= t) = p, to about 1e-12 relative (bisection on the tail
        probability, which is monotone).
    """
    if not 0.0 < p < 1.0 or not df > 0.0:
        raise ValueError(f"t_quantile needs p in (0, 1) and df > 0, got p={p!r}, df={df!r}")
    if p == 0.5:
        return 0.0
    tail = min(p, 1.0 - p)
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * hi:
            break
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t


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
        θ̂ ∓ t_{K'-1, (1+level)/2} · SE, K' the buckets used; NaN where K' < 2.
    """
    k = used.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(used, leave_one_out, 0.0).sum(axis=-1) / k
        deviation = np.where(used, leave_one_out - mean[..., None], 0.0)
        se = np.sqrt((k - 1) / k * (deviation * deviation).sum(axis=-1))
    t = np.full(k.shape, np.nan)
    for df in np.unique(k[k >= 2]):
        t[k == df] = t_quantile((1.0 + level) / 2.0, float(df - 1))
    half = t * se
    return value - half, value + half
