"""A candidate model against a baseline on the same rows: paired differences with
jackknife intervals, and per-row cross-entropy wins, ties and losses.

Both models' predictions of a row go into the same jackknife bucket (a hash of the
row's key), so the K delete-one-bucket totals of the two states leave out the same
rows. For every statistic with ``interval=True`` in :mod:`xent_kernels.statistics`,
the difference θ_cand - θ_base is finalized from both states' totals with the
statistic's own rule, and its interval is the jackknife over the K paired
differences θ_cand(-k) - θ_base(-k) (:func:`xent_kernels.intervals.jackknife_bounds`).
The pairing removes the variation the two models share (which rows are hard), so the
interval of a difference is much narrower than the two intervals side by side.
Statistics whose interval is analytic (AUC: its ROC histograms have no bucket axis)
get their difference but no paired interval (NaN) and so no verdict. Bounds are
clipped to the difference's range, as a report's to the metric's.

Pure NumPy: ``PairedStats`` speaks the contract of :mod:`xent_kernels.mergeable`
(``empty``/``merge``/``finalize``), made of two ``ClassStats`` and a small table of
outcome counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks as C
from .intervals import DEFAULT_BUCKETS, DEFAULT_LEVEL, jackknife_bounds
from .losses import cross_entropy
from .mergeable import add_counts
from .statistics import CELL_FIELDS, STATISTIC, Totals, scoped_rules, used_buckets
from .stats import DEFAULT_BINS, ClassStats, _key_order, class_stats_partial

SliceKey = tuple[Hashable, ...]
OUTCOMES = ("wins", "ties", "losses")  # of the candidate's per-row CE against the baseline's

VERDICTS = ("better", "worse", "no_significant_difference")


def direction(metric: str) -> int:
    """+1 (higher is better), -1 or 0 (no verdict) for `metric`: its ``better`` in
    the statistics table."""
    return STATISTIC[metric].better if metric in STATISTIC else 0

@dataclass(frozen=True, eq=False)
class PairedStats:
    """Mergeable state of a paired comparison.

    Attributes
    ----------
    baseline, candidate : ClassStats
        Each model's statistics of the same rows, with the same slices and buckets.
    outcomes : dict of slice key to (C, 3) int64
        Per slice and true class: rows where the candidate's CE is lower (wins), within
        the tie tolerance (ties), higher (losses) than the baseline's.
    """

    baseline: ClassStats
    candidate: ClassStats
    outcomes: dict[SliceKey, NDArray[np.int64]]

    @classmethod
    def empty(cls, n_classes: int, *, n_bins: int = DEFAULT_BINS, n_buckets: int = DEFAULT_BUCKETS,
              n_thresholds: int | None = None, exact_auc_max_values: int | None = None) -> "PairedStats":
        """The identity of :meth:`merge` (of states made with the same options)."""
        state = ClassStats.empty(n_classes, n_bins=n_bins, n_buckets=n_buckets, confusion=False,
                                 n_thresholds=n_thresholds, exact_auc_max_values=exact_auc_max_values)
        return cls(state, state, {})

    @classmethod
    def merge(cls, *states: "PairedStats") -> "PairedStats":
        """One state of all `states`; associative and commutative as ``ClassStats.merge``."""
        outcomes = add_counts(state.outcomes for state in states)
        return cls(ClassStats.merge(*(s.baseline for s in states)), ClassStats.merge(*(s.candidate for s in states)),
                   outcomes)

    def collapse_slices(self, key: SliceKey = ()) -> "PairedStats":
        """All slices merged into one slice named `key` (the overall rows)."""
        total = np.zeros((self.baseline.n_classes, len(OUTCOMES)), np.int64)
        for counts in self.outcomes.values():
            total = total + counts
        return PairedStats(self.baseline.collapse_slices(key), self.candidate.collapse_slices(key), {tuple(key): total})

    def finalize(self, base: Literal["e", 2] = "e", level: float = DEFAULT_LEVEL) -> "PairedReport":
        """The paired differences of every interval metric, with intervals and verdicts,
        per (slice, class) and per slice, in nats or bits."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        divisor = C.log_base(base)
        keys = tuple(sorted(set(self.baseline.slice_keys) | set(self.candidate.slice_keys) | set(self.outcomes),
                            key=_key_order))
        states = {"baseline": _aligned(self.baseline, keys), "candidate": _aligned(self.candidate, keys)}
        n_buckets = states["candidate"].n_buckets
        buckets = {name: Totals.by_bucket(state) for name, state in states.items()}
        totals = {name: Totals.of(state, buckets[name]) for name, state in states.items()}
        # One set of cells for both: those with rows on either side.
        cells = np.nonzero((totals["baseline"].values["counts"] > 0) | (totals["candidate"].values["counts"] > 0))
        totals = {name: Totals(t.n_classes, t.values, cells) for name, t in totals.items()}
        slice_index, class_index = cells
        n_classes = states["candidate"].n_classes
        outcomes = np.stack([self.outcomes.get(k, np.zeros((n_classes, len(OUTCOMES)), np.int64)) for k in keys]) \
            if keys else np.zeros((0, n_classes, len(OUTCOMES)), np.int64)
        per_class: dict[str, np.ndarray] = {
            "slice": slice_index.astype(np.int64), "class": class_index.astype(np.int32),
            "n": totals["candidate"].values["counts"][cells],
        }
        per_slice: dict[str, np.ndarray] = {
            "slice": np.arange(len(keys), dtype=np.int64), "n": totals["candidate"].values["counts"].sum(axis=1),
        }
        for i, name in enumerate(OUTCOMES):
            per_class[name] = outcomes[slice_index, class_index, i]
            per_slice[name] = outcomes[..., i].sum(axis=1)
        used: dict[str, np.ndarray] = {}
        if n_buckets > 1:
            left_out = {name: Totals.leave_one_out(states[name], buckets[name], totals[name]) for name in states}
            used = used_buckets(sum(b["cell"][..., CELL_FIELDS.index("weight")] for b in buckets.values()), cells)
        metrics: dict[str, list[str]] = {"per_class": [], "per_slice": []}
        columns_of = {"per_class": per_class, "per_slice": per_slice}
        for statistic, scope, rule, scale in scoped_rules(False, divisor, intervals_only=True):
            metrics[scope].append(statistic.name)
            values = {name: rule(totals[name]) / scale for name in states}
            diff = values["candidate"] - values["baseline"]
            if n_buckets > 1 and statistic.standard_error is None:
                theta = (rule(left_out["candidate"]) - rule(left_out["baseline"])).reshape(len(diff), n_buckets) / scale
                lo, hi = jackknife_bounds(diff, theta, used[scope], level)
            else:
                lo = hi = np.full(len(diff), np.nan)
            add_difference(columns_of[scope], statistic.name, values, lo, hi)
        return PairedReport(keys, "nats" if divisor == 1.0 else "bits", per_class, per_slice,
                            {scope: tuple(names) for scope, names in metrics.items()}, level)


def _finite_rows(pred: np.ndarray, kind: str) -> np.ndarray:
    if kind == "log_probs":  # -inf is a probability of 0
        return ~(np.isnan(pred) | (pred == np.inf)).any(axis=1)
    return np.isfinite(pred).all(axis=1)


def paired_partial(
    baseline: ArrayLike,
    candidate: ArrayLike,
    labels: ArrayLike,
    *,
    buckets: ArrayLike,
    n_buckets: int = DEFAULT_BUCKETS,
    kind: Literal["logits", "probs", "log_probs"] = "logits",
    weights: ArrayLike | None = None,
    slice_ids: ArrayLike | None = None,
    slice_keys: Sequence[SliceKey] | None = None,
    n_bins: int = DEFAULT_BINS,
    eps: float | None = None,
    tie_tolerance: float = 0.0,
    n_thresholds: int | None = None,
    exact_auc_max_values: int | None = None,
) -> PairedStats:
    """Both models' statistics of the same rows, in the same jackknife buckets, and the
    per-row CE outcomes.

    Parameters
    ----------
    baseline, candidate : (n, C) float32 or float64
        The two models' predictions of the same rows, row by row, of one `kind`.
    labels : (n,) integers
        True class in [0, C); negative: ignored.
    buckets : (n,) integers in [0, n_buckets)
        The jackknife bucket of each row: a function of its key alone
        (:func:`xent_kernels.hashing.key_buckets`, as evaluations use).
    weights, slice_ids, slice_keys, n_bins, eps
        As for :func:`xent_kernels.class_stats_partial`; the same for both models.
    tie_tolerance : float >= 0
        |CE_cand - CE_base| <= tie_tolerance (nats) is a tie; 0 means exact equality.
        Rows ignored or non-finite in either model have no outcome.
    n_thresholds, exact_auc_max_values : int, optional
        ROC bins and the exact-AUC cap, as for ``class_stats_partial``. No confusion
        matrix is kept: no difference reads it.
    """
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance!r}")
    base_pred, cand_pred = C.as_predictions(baseline, "baseline"), C.as_predictions(candidate, "candidate")
    if base_pred.shape != cand_pred.shape:
        raise ValueError(f"baseline and candidate must have one shape, got {base_pred.shape} and {cand_pred.shape}")
    common = dict(kind=kind, weights=weights, slice_ids=slice_ids, slice_keys=slice_keys, n_bins=n_bins, eps=eps,
                  buckets=buckets, n_buckets=n_buckets, confusion=False, n_thresholds=n_thresholds,
                  exact_auc_max_values=exact_auc_max_values)
    base_stats = class_stats_partial(base_pred, labels, **common)
    cand_stats = class_stats_partial(cand_pred, labels, **common)
    labels = np.asarray(labels, dtype=np.int64)
    n, n_classes = cand_pred.shape
    ids = np.zeros(n, np.int64) if slice_ids is None else np.asarray(slice_ids, dtype=np.int64)
    keys = ((),) if slice_keys is None else tuple(tuple(k) for k in slice_keys)
    valid = (labels >= 0) & _finite_rows(base_pred, kind) & _finite_rows(cand_pred, kind)
    ce = {}
    for name, pred in (("baseline", base_pred), ("candidate", cand_pred)):
        ce[name] = cross_entropy(pred[valid], labels[valid], kind=kind, eps=eps) if valid.any() else np.zeros(0)
    with np.errstate(invalid="ignore"):  # inf - inf: both models give the true class probability 0, a tie
        delta = ce["candidate"] - ce["baseline"]
    tie = (np.abs(delta) <= tie_tolerance) | (ce["candidate"] == ce["baseline"])
    outcome = np.where(tie, 1, np.where(delta < 0, 0, 2))
    flat = (ids[valid] * n_classes + labels[valid]) * len(OUTCOMES) + outcome
    # the outcome axis spelled out: with no slice keys (no rows) -1 cannot be inferred
    counts = np.bincount(flat, minlength=len(keys) * n_classes * len(OUTCOMES))
    counts = counts.reshape(len(keys), n_classes, len(OUTCOMES))
    return PairedStats(base_stats, cand_stats, {key: counts[i] for i, key in enumerate(keys)})


# --------------------------------------------------------------------------- finalize


@dataclass(frozen=True, eq=False)
class PairedReport:
    """Columns of a paired comparison, indexed into ``slice_keys`` (as ``ClassReport``).

    ``per_class`` has one entry per (slice, class) with rows on either side,
    ``per_slice`` one per slice. For each interval metric m of the scope:
    ``m_baseline``, ``m_candidate``, ``m_diff`` (candidate - baseline), ``m_diff_lo``,
    ``m_diff_hi`` (paired jackknife interval at `level`) and ``m_verdict`` (None for
    a metric without a direction). Also ``n`` (the candidate's rows counted) and the
    outcome counts ``wins``, ``ties``, ``losses``.
    """

    slice_keys: tuple[SliceKey, ...]
    units: str
    per_class: dict[str, np.ndarray]
    per_slice: dict[str, np.ndarray]
    metrics: dict[str, tuple[str, ...]]  # scope ("per_class", "per_slice") -> its interval metrics
    level: float = DEFAULT_LEVEL


def verdicts(lo: np.ndarray, hi: np.ndarray, better: int) -> np.ndarray:
    """better / worse / no_significant_difference per interval of candidate - baseline,
    for a metric where higher (`better` +1) or lower (-1) is better; None where a bound is NaN."""
    up, down = (VERDICTS[0], VERDICTS[1]) if better > 0 else (VERDICTS[1], VERDICTS[0])
    out = np.full(len(lo), VERDICTS[2], dtype=object)
    out[lo > 0] = up
    out[hi < 0] = down
    out[np.isnan(lo) | np.isnan(hi)] = None
    return out


def _aligned(state: ClassStats, keys: tuple[SliceKey, ...]) -> ClassStats:
    empty = ClassStats.empty(state.n_classes, slice_keys=keys, **state.options())
    return ClassStats.merge(state, empty)


def add_difference(columns: dict[str, np.ndarray], metric: str, values: dict[str, np.ndarray],
                   lo: np.ndarray, hi: np.ndarray) -> None:
    """A metric's columns of a comparison: its baseline and candidate values, their
    difference with its interval [lo, hi] clipped to the difference's range (the
    metric's ``clip`` range minus itself: [-1, 1] for an accuracy), and the verdict by
    its direction."""
    diff = values["candidate"] - values["baseline"]
    low, high = STATISTIC[metric].clip
    lo, hi = np.clip(lo, low - high, high - low), np.clip(hi, low - high, high - low)
    columns[f"{metric}_baseline"], columns[f"{metric}_candidate"] = values["baseline"], values["candidate"]
    columns[f"{metric}_diff"], columns[f"{metric}_diff_lo"], columns[f"{metric}_diff_hi"] = diff, lo, hi
    better = direction(metric)
    columns[f"{metric}_verdict"] = verdicts(lo, hi, better) if better else np.full(len(diff), None, object)
