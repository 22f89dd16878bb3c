"""Divergences between two discrete distributions, for drift monitoring.

Histograms are compared after additive smoothing: each bin's share becomes
(share + ε) / (1 + B·ε), so an empty bin on either side gives a large but finite
divergence instead of infinity. Confidence histograms are re-binned at the
reference's quantiles (edges frozen from the reference), so both sides are
compared on bins that hold equal reference mass.

Per-sample KL(reference‖current) of joined rows (:func:`per_sample_kl_partial`) is
exact by default: a row is infinite when the current side gives probability 0 to a
class the reference gives mass. With a smoothing ε both sides' rows are smoothed the
same additive way over their C classes, q' = (q + ε) / (1 + C·ε), which keeps each
row a distribution and bounds its KL by log((1 + C·ε)/ε). Either way the state counts
the rows whose exact KL is infinite, per slice and class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks as C
from ._checks import counted_rows, probabilities
from .mergeable import add_counts
from .stats import ClassStats, class_stats_partial

SliceKey = tuple[Hashable, ...]
# Per-sample KL reads only the KL sums: no intervals, confusion or AUC.
KL_OPTIONS = dict(n_bins=1, n_buckets=1, confusion=False, n_thresholds=0)


def additive_smoothing(shares: NDArray[np.float64], smoothing: float) -> NDArray[np.float64]:
    """(share + ε) / (1 + B·ε) along the last axis of B shares that sum to 1."""
    return (shares + smoothing) / (1.0 + smoothing * shares.shape[-1])


def smoothed_shares(weights: NDArray[np.float64], smoothing: float) -> NDArray[np.float64]:
    """Bin weights -> probabilities with additive smoothing; all-zero input gives NaN."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    if not total > 0:
        return np.full(weights.shape, np.nan)
    return additive_smoothing(weights / total, smoothing)


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


# --------------------------------------------------------------------------- per-sample KL


def infinite_kl_rows(reference: np.ndarray, current: np.ndarray, kind: str) -> NDArray[np.bool_]:
    """Rows whose exact KL(reference‖current) is +inf: the current side gives probability
    0 (a -inf log-probability) to a class the reference gives mass. Finite logits never do."""
    if kind == "logits":
        return np.zeros(len(current), dtype=bool)
    zero = np.isneginf(current) if kind == "log_probs" else current == 0
    mass = ~np.isneginf(reference) if kind == "log_probs" else reference > 0
    return (zero & mass).any(axis=1)


@dataclass(frozen=True, eq=False)
class PerSampleKL:
    """Mergeable state of per-sample KL(reference‖current) on joined rows
    (:mod:`xent_kernels.mergeable`).

    Attributes
    ----------
    stats : ClassStats
        The current side's statistics with the reference (``kl_mean`` per slice and
        class), of the smoothed rows when smoothing.
    infinite : dict of slice key to (C,) int64
        Per slice and true class, the rows whose exact (unsmoothed) KL is infinite.
    """

    stats: ClassStats
    infinite: dict[SliceKey, NDArray[np.int64]]

    @classmethod
    def empty(cls, n_classes: int) -> "PerSampleKL":
        """The identity of :meth:`merge`."""
        return cls(ClassStats.empty(n_classes, has_reference=True, **KL_OPTIONS), {})

    @classmethod
    def merge(cls, *states: "PerSampleKL") -> "PerSampleKL":
        """One state of all `states`; associative and commutative as ``ClassStats.merge``."""
        return cls(ClassStats.merge(*(state.stats for state in states)), add_counts(state.infinite for state in states))

    def collapse_slices(self, key: SliceKey = ()) -> "PerSampleKL":
        """All slices merged into one slice named `key` (the overall rows)."""
        total = sum(self.infinite.values(), np.zeros(self.stats.n_classes, np.int64))
        return PerSampleKL(self.stats.collapse_slices(key), {tuple(key): total})

    def infinite_counts(self, slice_keys: Sequence[SliceKey]) -> NDArray[np.int64]:
        """(S, C): the infinite rows per slice of `slice_keys` and class."""
        zeros = np.zeros(self.stats.n_classes, np.int64)
        return np.array([self.infinite.get(tuple(k), zeros) for k in slice_keys], dtype=np.int64).reshape(
            len(slice_keys), self.stats.n_classes)


def per_sample_kl_partial(
    reference: ArrayLike,
    current: ArrayLike,
    labels: ArrayLike,
    *,
    kind: Literal["logits", "probs", "log_probs"] = "logits",
    slice_ids: ArrayLike | None = None,
    slice_keys: Sequence[SliceKey] | None = None,
    smoothing: float | None = None,
) -> PerSampleKL:
    """Per-sample KL(reference‖current) statistics of joined rows, and the count of rows
    whose exact KL is infinite.

    Parameters
    ----------
    reference, current : (n, C) float32 or float64
        Both sides' predictions of the same rows, row by row, of one `kind`.
    labels : (n,) integers
        The current side's true class (negative: ignored); KL is split by it.
    slice_ids, slice_keys
        As for :func:`xent_kernels.class_stats_partial`.
    smoothing : float in (0, 1), optional
        ε: both sides' probabilities become (q + ε) / (1 + C·ε) before KL. None
        (default) is exact.
    """
    if smoothing is not None and not 0.0 < smoothing < 1.0:
        raise ValueError(f"smoothing must be in (0, 1) or None, got {smoothing!r}")
    ref, cur = C.as_predictions(reference, "reference"), C.as_predictions(current, "current")
    if ref.shape != cur.shape:
        raise ValueError(f"reference and current must have one shape, got {ref.shape} and {cur.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    n, n_classes = cur.shape
    ids = np.zeros(n, np.int64) if slice_ids is None else np.asarray(slice_ids, dtype=np.int64)
    keys = ((),) if slice_keys is None else tuple(tuple(k) for k in slice_keys)
    usable = counted_rows(ref, kind) & counted_rows(cur, kind)
    counted = usable & (labels >= 0)
    infinite = counted.copy()
    infinite[counted] = infinite_kl_rows(ref[counted], cur[counted], kind)
    flat = ids[infinite] * n_classes + labels[infinite]
    counts = np.bincount(flat, minlength=len(keys) * n_classes).reshape(len(keys), n_classes)
    common = dict(slice_ids=slice_ids, slice_keys=slice_keys, **KL_OPTIONS)
    if smoothing is None:
        stats = class_stats_partial(cur, labels, kind=kind, reference=ref, **common)
    else:  # rows the kernel would skip stay non-finite (NaN), so they are still counted as such
        smoothed = {}
        for name, pred in (("reference", ref), ("current", cur)):
            smoothed[name] = np.full(pred.shape, np.nan)
            smoothed[name][usable] = additive_smoothing(probabilities(pred[usable], kind), smoothing)
        stats = class_stats_partial(smoothed["current"], labels, kind="probs", reference=smoothed["reference"],
                                    **common)
    return PerSampleKL(stats, {key: counts[i] for i, key in enumerate(keys)})
