"""Divergences between two discrete distributions, for drift monitoring.

Histograms are compared after additive smoothing: each bin's share becomes
(share + ε) / (1 + B·ε), so an empty bin on either side gives a large but finite
divergence instead of infinity. Confidence histograms are re-binned at the
reference's quantiles (edges frozen from the reference), so both sides are
compared on bins that hold equal reference mass.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def smoothed_shares(weights: NDArray[np.float64], smoothing: float) -> NDArray[np.float64]:
    """Bin weights -> probabilities with additive smoothing; all-zero input gives NaN."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if not total > 0:
        return np.full(weights.shape, np.nan)
    return (weights / total + smoothing) / (1.0 + smoothing * weights.size)


def histogram_divergences(reference: NDArray[np.float64], current: NDArray[np.float64], smoothing: float) -> dict[str, float]:
    """KL(reference‖current), Jensen-Shannon divergence and the population stability
    index PSI = Σ (c - r) ln(c / r), in nats, of two histograms over the same bins."""
    r = smoothed_shares(reference, smoothing)
    c = smoothed_shares(current, smoothing)
    m = 0.5 * (r + c)
    return {
        "kl": float(np.sum(r * np.log(r / c))),
        "js": float(0.5 * np.sum(r * np.log(r / m)) + 0.5 * np.sum(c * np.log(c / m))),
        "psi": float(np.sum((c - r) * np.log(c / r))),
    }


def quantile_bin_edges(reference_fine: NDArray[np.float64], n_bins: int) -> NDArray[np.int64]:
    """Boundaries (indices into the fine bins, 0 and n_fine included) that split the
    reference's fine histogram into up to `n_bins` bins of about equal mass.
    Boundaries that would coincide are merged, so heavy single bins stay whole."""
    fine = np.asarray(reference_fine, dtype=np.float64)
    total = fine.sum()
    if not total > 0:
        return np.array([0, fine.size], dtype=np.int64)
    cumulative = np.cumsum(fine) / total
    targets = np.arange(1, n_bins) / n_bins
    inner = np.searchsorted(cumulative, targets, side="left") + 1
    edges = np.unique(np.concatenate([[0], np.clip(inner, 1, fine.size - 1), [fine.size]]))
    return edges.astype(np.int64)


def rebin(fine: NDArray[np.float64], edges: NDArray[np.int64]) -> NDArray[np.float64]:
    """Sum fine bins between consecutive `edges`."""
    return np.add.reduceat(np.asarray(fine, dtype=np.float64), edges[:-1])
