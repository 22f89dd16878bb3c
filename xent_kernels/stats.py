"""Mergeable per-(slice, class) statistics: the partial aggregate of the pipeline.

``class_stats_partial`` turns one partition into a small :class:`ClassStats`
(O(slices × classes), never per row); ``ClassStats.merge`` combines any number of them
and is associative and commutative with ``ClassStats.empty`` as identity; ``finalize``
turns the sums into report columns (the contract of :mod:`xent_kernels.mergeable`).
Every float is a float64 sum carried with its compensation term (TwoSum), so the
report does not depend on how rows were split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Hashable, Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks as C
from ._checks import counted_rows, probabilities
from ._class_stats import class_stats_kernel
from ._layout import NONFINITE
from scipy.special import ndtri

from .intervals import DEFAULT_BUCKETS, DEFAULT_LEVEL, jackknife_bounds
from .merge_rules import merge_array
from .statistics import CELL_FIELDS, STATE_ARRAYS, Totals, scoped_rules, state_shape, used_buckets

SliceKey = tuple[Hashable, ...]
DEFAULT_BINS = 15
# ROC histogram bins of the predicted probability (AUC); 0 turns AUC off.
DEFAULT_THRESHOLDS = 1000
# Defaults that keep the state of a slice under 4 MiB: the confusion matrix up to this
# many classes (C² cells), ROC histograms (C × thresholds bins) up to this many.
MAX_CONFUSION_CLASSES = 256
MAX_AUC_CLASSES = 64
# Exact AUC: a slice keeps its rows' AUC inputs (C scores, true class and weight: C + 2
# float64 values a row) while rows × (C + 2) is at most this many values: 1.5 MiB, so the
# largest default state (C = 64 with AUC, 2.26 MiB) stays under 4 MiB a slice with its
# rows; 16,384 rows of 10 classes, 49,152 binary rows. 0 turns exact AUC off.
DEFAULT_EXACT_AUC_VALUES = 196_608


def resolve_options(n_classes: int, confusion: bool | None, n_thresholds: int | None) -> tuple[bool, int]:
    """`confusion` and `n_thresholds` with None replaced by their defaults for C classes:
    the confusion matrix when C <= MAX_CONFUSION_CLASSES, DEFAULT_THRESHOLDS ROC bins
    when C <= MAX_AUC_CLASSES (else 0: AUC off)."""
    if confusion is None:
        confusion = n_classes <= MAX_CONFUSION_CLASSES
    if n_thresholds is None:
        n_thresholds = DEFAULT_THRESHOLDS if n_classes <= MAX_AUC_CLASSES else 0
    if n_thresholds < 0:
        raise ValueError(f"n_thresholds must be >= 0 (0 turns AUC off), got {n_thresholds}")
    return bool(confusion), int(n_thresholds)


def resolve_exact_auc(n_thresholds: int, exact_auc_max_values: int | None) -> int:
    """The exact-AUC cap: `exact_auc_max_values` (None: DEFAULT_EXACT_AUC_VALUES), 0
    when AUC is off (`n_thresholds` = 0)."""
    if exact_auc_max_values is None:
        exact_auc_max_values = DEFAULT_EXACT_AUC_VALUES
    if exact_auc_max_values < 0:
        raise ValueError(f"exact_auc_max_values must be >= 0 (0 turns exact AUC off), got {exact_auc_max_values}")
    return int(exact_auc_max_values) if n_thresholds else 0


STATE_ATTRIBUTES = tuple(name for array in STATE_ARRAYS for name in array.attributes)


def _key_order(key: SliceKey):
    # Slice values of one column share a type; None (a null slice value) sorts last.
    return tuple((value is None, "" if value is None else value) for value in key)


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Sums per (slice, bucket, true class) and per (slice, bucket). The arrays and
    their fields are declared in :mod:`xent_kernels.statistics` (``STATE_ARRAYS``, and
    the fields in the order of ``STATISTICS``: ``CELL_FIELDS``, ``HIST_FIELDS``,
    ``ROW_COUNT_FIELDS``). K = ``n_buckets`` is 1 without jackknife buckets; the
    report's values are over all buckets, its intervals from the buckets.

    Attributes
    ----------
    slice_keys : tuple of tuples, sorted
        One key per slice (a tuple of slice-column values; ``()`` when not sliced).
    counts : (S, K, C) int64
        Rows counted per cell (finite, not ignored).
    cell_sum, cell_comp : (S, K, C, len(CELL_FIELDS)) float64
        Σw, Σw·CE, Σw·top1, ... in the order of ``CELL_FIELDS``; "predicted" is the
        weight of the rows predicted as the cell's class (not of its true rows).
    ce_m2 : (S, K, C) float64
        Σw·(CE - mean)², merged with Chan's formula.
    marginal_sum, marginal_comp : (S, C) float64
        Σw·q: the model's predicted class marginal per slice (no bucket axis).
    hist_sum, hist_comp : (S, K, n_bins, 3) float64
        Confidence histogram (bins of the top probability): Σw, Σw·correct, Σw·confidence.
    row_counts : (S, 2) int64
        Ignored rows and rows with non-finite predictions, per slice.
    confusion_counts : (S, C, C) int64; confusion_sum, confusion_comp : (S, C, C) float64
        Rows and Σw per (slice, true class, predicted class); (S, 0, 0) when off.
    roc_sum, roc_comp : (S, C, T, 2) float64
        Per class j: Σw of the rows of class j and of all rows, binned by q_j in T
        bins of width 1/T; (S, 0, 0, 2) when AUC is off.
    exact_auc_max_values : int
        The exact-AUC cap (0: off). A slice whose rows × (C + 2) is at most the cap
        keeps its rows for an exact AUC; the outcome depends only on the slice's total
        row count, so it does not depend on sharding or merge order.
    auc_rows : tuple of ((n, C + 2) float64 or None), one per slice
        A slice's counted rows (q_0 .. q_{C-1}, true class, weight) in the order they
        were merged (a multiset: ``Totals.of`` sorts them, so reports do not depend on
        sharding or merge order, and pieces never sort rows a later merge drops), or None: the slice is past the cap (or exact AUC is off) and its AUC is
        binned. Not given: every slice binned (a state stored before exact AUC).
    """

    n_classes: int
    n_bins: int
    has_reference: bool
    slice_keys: tuple[SliceKey, ...]
    counts: NDArray[np.int64]
    cell_sum: NDArray[np.float64]
    cell_comp: NDArray[np.float64]
    ce_m2: NDArray[np.float64]
    marginal_sum: NDArray[np.float64]
    marginal_comp: NDArray[np.float64]
    hist_sum: NDArray[np.float64]
    hist_comp: NDArray[np.float64]
    row_counts: NDArray[np.int64]
    confusion_counts: NDArray[np.int64]
    confusion_sum: NDArray[np.float64]
    confusion_comp: NDArray[np.float64]
    roc_sum: NDArray[np.float64]
    roc_comp: NDArray[np.float64]
    exact_auc_max_values: int = 0
    auc_rows: tuple[NDArray[np.float64] | None, ...] = ()

    def __post_init__(self):
        if not self.auc_rows and self.slice_keys:
            object.__setattr__(self, "auc_rows", (None,) * len(self.slice_keys))
        if len(self.auc_rows) != len(self.slice_keys):
            raise ValueError(f"auc_rows has {len(self.auc_rows)} entries for {len(self.slice_keys)} slices")

    @classmethod
    def empty(
        cls,
        n_classes: int,
        *,
        n_bins: int = DEFAULT_BINS,
        has_reference: bool = False,
        slice_keys: Sequence[SliceKey] = (),
        n_buckets: int = 1,
        confusion: bool | None = None,
        n_thresholds: int | None = None,
        exact_auc_max_values: int | None = None,
    ) -> "ClassStats":
        """A state with the given slices and `n_buckets` jackknife buckets, all sums
        zero; with no slices, the identity of :meth:`merge` (of states of the same
        shape). `confusion` keeps the confusion matrix; `n_thresholds` > 0 keeps ROC
        histograms of that many bins (AUC); `exact_auc_max_values` caps the rows kept
        for an exact AUC; defaults as in :func:`class_stats_partial`."""
        if n_classes < 1 or n_bins < 1 or n_buckets < 1:
            raise ValueError(
                f"n_classes, n_bins and n_buckets must be >= 1, got {n_classes}, {n_bins} and {n_buckets}"
            )
        confusion, n_thresholds = resolve_options(n_classes, confusion, n_thresholds)
        cap = resolve_exact_auc(n_thresholds, exact_auc_max_values)
        keys = tuple(tuple(k) for k in slice_keys)
        if len(set(keys)) != len(keys):
            raise ValueError("slice_keys must be distinct")
        arrays = {
            name: np.zeros(
                state_shape(array, len(keys), n_buckets, n_classes, n_bins, confusion=confusion,
                            n_thresholds=n_thresholds),
                array.dtype,
            )
            for array in STATE_ARRAYS
            for name in array.attributes
        }
        no_rows = np.zeros((0, n_classes + 2)) if cap else None
        return cls(
            n_classes=int(n_classes), n_bins=int(n_bins), has_reference=bool(has_reference), slice_keys=keys, **arrays,
            exact_auc_max_values=cap, auc_rows=(no_rows,) * len(keys),
        )

    @property
    def n_buckets(self) -> int:
        """K: the jackknife buckets (1 without)."""
        return self.counts.shape[1]

    @property
    def has_confusion(self) -> bool:
        return self.confusion_counts.shape[1] > 0

    @property
    def n_thresholds(self) -> int:
        """ROC histogram bins (0: AUC off)."""
        return self.roc_sum.shape[2]

    def _shape(self) -> tuple:
        return (self.n_classes, self.n_bins, self.has_reference, self.n_buckets, self.has_confusion, self.n_thresholds,
                self.exact_auc_max_values)

    def keeps_auc_rows(self, n_rows: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Whether slices of `n_rows` counted rows keep them for an exact AUC."""
        cap = self.exact_auc_max_values
        return (cap > 0) & (np.asarray(n_rows, np.int64) * (self.n_classes + 2) <= cap)

    @property
    def auc_exact(self) -> NDArray[np.bool_]:
        """(S,): whether each slice's AUC is exact (its rows kept), else binned."""
        return np.array([rows is not None for rows in self.auc_rows], dtype=bool)

    @property
    def n_nonfinite(self) -> int:
        """Rows skipped because their prediction (or reference) held NaN or inf."""
        return int(self.row_counts[..., NONFINITE].sum())

    # ------------------------------------------------------------------ merge

    def _arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in STATE_ATTRIBUTES}

    def _aligned(self, keys: tuple[SliceKey, ...]) -> dict[str, np.ndarray]:
        """This state's arrays laid out on `keys` (a superset of its own), zeros elsewhere."""
        if keys == self.slice_keys:
            return self._arrays()
        position = {k: i for i, k in enumerate(keys)}
        rows = np.array([position[k] for k in self.slice_keys], dtype=np.int64)
        out = {}
        for name, array in self._arrays().items():
            wide = np.zeros((len(keys),) + array.shape[1:], array.dtype)
            wide[rows] = array
            out[name] = wide
        return out

    @classmethod
    def merge(cls, *states: "ClassStats") -> "ClassStats":
        """One state of all `states` (any slices, one shape). Associative and
        commutative up to float64 rounding of the compensated sums (two states merge to
        the same bits either way round); ``empty()`` is the identity. States are added
        left to right on the union of their slices."""
        if not states:
            raise ValueError("ClassStats.merge needs at least one state; ClassStats.empty(...) is the identity")
        first = states[0]
        for other in states[1:]:
            if other._shape() != first._shape():
                raise ValueError(
                    "cannot merge statistics of different shape: "
                    f"(classes, bins, reference, buckets, confusion, thresholds, exact AUC values) = {first._shape()} "
                    f"and {other._shape()}; states to merge must be made with the same options"
                )
        keys = tuple(sorted(set().union(*(state.slice_keys for state in states)), key=_key_order))
        arrays = first._aligned(keys)
        for other in states[1:]:
            y = other._aligned(keys)
            arrays = {name: value for array in STATE_ARRAYS for name, value in merge_array(array, arrays, y).items()}
        # A slice keeps its rows while its merged total is within the cap (then so were
        # all parts); past it, or with a part stored without rows, its AUC is binned.
        keep = first.keeps_auc_rows(arrays["counts"].sum(axis=(1, 2)))
        parts = zip(*(state._auc_rows_on(keys) for state in states))
        rows = tuple(
            np.concatenate(part) if kept and all(r is not None for r in part) else None
            for kept, part in zip(keep, parts)
        )
        return cls(
            n_classes=first.n_classes, n_bins=first.n_bins, has_reference=first.has_reference, slice_keys=keys,
            **arrays, exact_auc_max_values=first.exact_auc_max_values, auc_rows=rows,
        )

    def _auc_rows_on(self, keys: tuple[SliceKey, ...]) -> list[NDArray[np.float64] | None]:
        """This state's AUC rows laid out on `keys`: no rows for a slice it lacks."""
        mine = dict(zip(self.slice_keys, self.auc_rows))
        no_rows = np.zeros((0, self.n_classes + 2)) if self.exact_auc_max_values else None
        return [mine.get(k, no_rows) for k in keys]

    def collapse_slices(self, key: SliceKey = ()) -> "ClassStats":
        """All slices merged into one slice named `key` (the overall row of a report)."""
        like = self.options()
        slices = [self.slice(i, key) for i in range(len(self.slice_keys))]
        named = [] if slices else [ClassStats.empty(self.n_classes, slice_keys=[key], **like)]
        return ClassStats.merge(ClassStats.empty(self.n_classes, **like), *slices, *named)

    def options(self) -> dict:
        """The options of :meth:`empty` that give a state of this one's shape."""
        return dict(n_bins=self.n_bins, has_reference=self.has_reference, n_buckets=self.n_buckets,
                    confusion=self.has_confusion, n_thresholds=self.n_thresholds,
                    exact_auc_max_values=self.exact_auc_max_values)

    def slice(self, i: int, key: SliceKey | None = None) -> "ClassStats":
        """The state of slice `i` alone, named `key` (default: its own key).

        Parameters
        ----------
        i : int
            Position in ``slice_keys``.
        key : tuple, optional
            The key the one slice of the result gets.
        """
        if not -len(self.slice_keys) <= i < len(self.slice_keys):
            raise IndexError(f"slice {i} out of range: the state has {len(self.slice_keys)} slices")
        i = i % len(self.slice_keys)
        arrays = {name: array[i : i + 1] for name, array in self._arrays().items()}
        return ClassStats(
            n_classes=self.n_classes,
            n_bins=self.n_bins,
            has_reference=self.has_reference,
            slice_keys=(self.slice_keys[i] if key is None else tuple(key),),
            **arrays,
            exact_auc_max_values=self.exact_auc_max_values,
            auc_rows=(self.auc_rows[i],),
        )

    # ------------------------------------------------------------------ finalize

    def finalize(self, base: Literal["e", 2] = "e", level: float = DEFAULT_LEVEL) -> "ClassReport":
        """Means and rates per (slice, class) and per slice, in nats or bits, with
        jackknife intervals.

        Cells with no rows are left out of ``per_class``. Rates over zero weight
        are NaN (no warning). ``ce_std`` is the weighted population standard deviation.
        Columns follow ``statistics.STATISTICS``; those with ``units="information"``
        are divided by ln 2 for bits. Each statistic with ``interval=True`` also has
        ``<name>_lo`` and ``<name>_hi``: the jackknife t-interval at `level` over
        the delete-one-bucket totals (:mod:`xent_kernels.intervals`), NaN where
        fewer than 2 buckets hold weight (always, with one bucket). A statistic with a
        ``standard_error`` rule (AUC) gets value ± z·SE instead. Bounds are clipped
        to the statistic's range (``Statistic.clip``).
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        divisor = C.log_base(base)
        buckets = Totals.by_bucket(self)
        totals = Totals.of(self, buckets)
        slice_index, class_index = totals.cells
        per_class: dict[str, np.ndarray] = {
            "slice": slice_index.astype(np.int64),
            "class": class_index.astype(np.int32),
        }
        per_slice: dict[str, np.ndarray] = {"slice": np.arange(len(self.slice_keys), dtype=np.int64)}
        arrays: dict[str, np.ndarray] = {}
        n_slices, n_buckets = self.counts.shape[:2]
        if n_buckets > 1:  # with one bucket every bound is NaN: no leave-one-out totals to build
            left_out = Totals.leave_one_out(self, buckets, totals)
            used = used_buckets(buckets["cell"][..., CELL_FIELDS.index("weight")], totals.cells)
        columns_of = {"per_class": per_class, "per_slice": per_slice}
        for statistic, scope, rule, scale in scoped_rules(self.has_reference, divisor):
            value = rule(totals) if scale == 1.0 else rule(totals) / scale
            if statistic.role == "array":
                arrays[statistic.name] = value
                continue
            columns = columns_of[scope]
            columns[statistic.name] = value
            if statistic.interval and statistic.standard_error is not None:
                se_rule = statistic.standard_error[0 if scope == "per_class" else 1]
                half = ndtri((1.0 + level) / 2.0) * se_rule(totals)
                columns[f"{statistic.name}_lo"] = np.clip(value - half, *statistic.clip)
                columns[f"{statistic.name}_hi"] = np.clip(value + half, *statistic.clip)
            elif statistic.interval and n_buckets > 1:
                theta = rule(left_out).reshape(len(value), n_buckets) / scale
                lo, hi = jackknife_bounds(value, theta, used[scope], level)
                columns[f"{statistic.name}_lo"] = np.clip(lo, *statistic.clip)
                columns[f"{statistic.name}_hi"] = np.clip(hi, *statistic.clip)
            elif statistic.interval:
                columns[f"{statistic.name}_lo"] = columns[f"{statistic.name}_hi"] = np.full(len(value), np.nan)
        return ClassReport(
            slice_keys=self.slice_keys,
            units="nats" if divisor == 1.0 else "bits",
            per_class=per_class,
            per_slice=per_slice,
            level=level,
            auc_exact=self.auc_exact,
            **arrays,
        )


@dataclass(frozen=True, eq=False)
class ClassReport:
    """Columns of a finished report (NumPy arrays), indexed into ``slice_keys``.

    ``per_class`` has one entry per (slice, class) with rows; ``per_slice`` one per
    slice; ``predicted_marginal`` is (S, C), the mean predicted distribution;
    ``confidence_hist`` is (S, n_bins, 3): Σw, Σw·correct, Σw·confidence per bin of
    the top probability (bins of width 1/n_bins over [0, 1]); ``confusion_n`` and
    ``confusion_weight`` are (S, C, C) rows and Σw per (true, predicted) class, or
    (S, 0, 0) when the confusion matrix is off; ``auc_exact`` (S,) says which slices'
    AUC is exact (``auc_error_bound`` 0) rather than binned. Interval columns
    (``<metric>_lo``, ``<metric>_hi``: :func:`xent_kernels.interval_columns`) are
    two-sided at `level`.
    """

    slice_keys: tuple[SliceKey, ...]
    units: str
    per_class: dict[str, np.ndarray] = field(repr=False)
    per_slice: dict[str, np.ndarray] = field(repr=False)
    predicted_marginal: np.ndarray = field(repr=False)
    confidence_hist: np.ndarray = field(repr=False)
    confusion_n: np.ndarray = field(repr=False)
    confusion_weight: np.ndarray = field(repr=False)
    level: float = DEFAULT_LEVEL
    auc_exact: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)


def class_stats_partial(
    pred: ArrayLike,
    labels: ArrayLike,
    *,
    kind: Literal["logits", "probs", "log_probs"] = "logits",
    weights: ArrayLike | None = None,
    slice_ids: ArrayLike | None = None,
    slice_keys: Sequence[SliceKey] | None = None,
    reference: ArrayLike | None = None,
    reference_kind: Literal["logits", "probs", "log_probs"] | None = None,
    n_bins: int = DEFAULT_BINS,
    eps: float | None = None,
    buckets: ArrayLike | None = None,
    n_buckets: int | None = None,
    confusion: bool | None = None,
    n_thresholds: int | None = None,
    exact_auc_max_values: int | None = None,
) -> ClassStats:
    """Per-class statistics of one partition, in one fused pass.

    Parameters
    ----------
    pred : (n, C) float32 or float64
        Predictions of the declared `kind`. Rows holding NaN or inf (or a negative
        probability) are counted in ``n_nonfinite`` and skipped; use
        :func:`xent_kernels.find_invalid_row` first to reject them instead. Rows of
        probabilities are used as given (check normalisation the same way).
    labels : (n,) integers
        True class in [0, C); any negative value marks an ignored row.
    weights : (n,) non-negative floats, optional
    slice_ids : (n,) integers in [0, len(slice_keys)), optional
        The slice of each row; `slice_keys` names the slices. Default: one slice ``()``.
    reference : (n, C) floats, optional
        A reference prediction for the same rows: adds Σw·KL(reference‖pred).
    reference_kind : kind of `reference`; default `kind`.
    n_bins : bins of the confidence histogram.
    eps : float in (0, 1), optional
        Clip the true class's probability to at least `eps` (CE at most -log eps, and
        p_true at least eps); None (default) is exact. Other statistics are unclipped.
    buckets : (n,) integers in [0, n_buckets), optional
        The jackknife bucket of each row, for the intervals of ``finalize``. It must
        depend on the row alone (a hash of its key), never on its shard or position,
        so that intervals do not depend on sharding. Default: one bucket, no intervals.
    n_buckets : int, optional
        K, the number of buckets: default 20 with `buckets`, 1 without.
    confusion : bool, optional
        Keep the (slice, true, predicted) confusion matrix; default: when C <=
        MAX_CONFUSION_CLASSES.
    n_thresholds : int, optional
        Bins of the ROC histograms (AUC); 0 turns AUC off. Default
        DEFAULT_THRESHOLDS when C <= MAX_AUC_CLASSES, else 0.
    exact_auc_max_values : int, optional
        A slice whose counted rows × (C + 2) are at most this keeps them (q_j as
        float64, true class, weight) for an exact AUC (``ClassStats.auc_rows``); 0
        turns exact AUC off. Default DEFAULT_EXACT_AUC_VALUES (0 with AUC off).
    """
    pred = C.as_predictions(pred, "pred")
    if eps is not None and not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1) or None, got {eps!r}")
    max_ce = np.inf if eps is None else -math.log(eps)
    n, n_classes = pred.shape
    code = C.kind_code(kind)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise ValueError(f"labels must be ({n},) integers, got {labels.dtype} {labels.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if n and labels.max() >= n_classes:
        row = int(np.argmax(labels >= n_classes))
        raise ValueError(f"labels: row {row} has class {labels[row]}, expected a class in [0, {n_classes})")
    weights_arr = C.as_weights(weights, n)
    if slice_ids is None:
        keys: tuple[SliceKey, ...] = ((),) if slice_keys is None else tuple(tuple(k) for k in slice_keys)
        if len(keys) != 1:
            raise ValueError("slice_ids are required when there is more than one slice key")
        ids = np.zeros(0, np.int64)
    else:
        if slice_keys is None:
            raise ValueError("slice_keys must name the slices when slice_ids are given")
        keys = tuple(tuple(k) for k in slice_keys)
        ids = np.ascontiguousarray(slice_ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"slice_ids must have shape ({n},), got {ids.shape}")
        if n and (ids.min() < 0 or ids.max() >= len(keys)):
            raise ValueError(f"slice_ids must be in [0, {len(keys)})")
    if reference is not None:
        ref = C.as_predictions(reference, "reference")
        if ref.shape != pred.shape:
            raise ValueError(f"reference must have the shape of pred {pred.shape}, got {ref.shape}")
        ref_code = C.kind_code(reference_kind or kind)
    else:
        ref = np.zeros((0, n_classes), pred.dtype)
        ref_code = code
    confusion, n_thresholds = resolve_options(n_classes, confusion, n_thresholds)
    if buckets is None:
        if n_buckets not in (None, 1):
            raise ValueError(f"n_buckets={n_buckets} needs buckets: the bucket of each row")
        n_buckets = 1
        bucket_ids = np.zeros(0, np.int64)
    else:
        n_buckets = DEFAULT_BUCKETS if n_buckets is None else int(n_buckets)
        bucket_ids = np.asarray(buckets)
        if bucket_ids.dtype.kind not in "iu" or bucket_ids.shape != (n,):
            raise ValueError(f"buckets must be ({n},) integers, got {bucket_ids.dtype} {bucket_ids.shape}")
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        outside = (bucket_ids < 0) | (bucket_ids >= n_buckets)
        if outside.any():
            row = int(np.argmax(outside))
            raise ValueError(f"buckets: row {row} has bucket {bucket_ids[row]}, expected a bucket in [0, {n_buckets})")
        bucket_ids = np.ascontiguousarray(bucket_ids, dtype=np.int64)
    like = dict(n_bins=n_bins, has_reference=reference is not None, n_buckets=n_buckets, confusion=confusion,
                n_thresholds=n_thresholds, exact_auc_max_values=exact_auc_max_values)
    state = ClassStats.empty(n_classes, slice_keys=keys, **like)
    if n:
        class_stats_kernel(
            pred, labels, np.zeros(0) if weights_arr is None else weights_arr, ids, bucket_ids, ref,
            code, ref_code, state.n_bins, max_ce, weights_arr is not None, slice_ids is not None,
            buckets is not None, reference is not None,
            *(getattr(state, name).reshape(-1) for name in STATE_ATTRIBUTES),
        )
        state = replace(state, auc_rows=_partial_auc_rows(
            state, pred, kind, labels, weights_arr, ids if slice_ids is not None else np.zeros(n, np.int64),
            None if reference is None else ref, reference_kind or kind,
        ))
    # Merging with the identity lays the slices out in the canonical (sorted) order.
    return ClassStats.merge(state, ClassStats.empty(n_classes, **like))


def _partial_auc_rows(
    state: ClassStats, pred: np.ndarray, kind: str, labels: NDArray[np.int64], weights: NDArray[np.float64] | None,
    slice_ids: NDArray[np.int64], reference: np.ndarray | None, reference_kind: str,
) -> tuple[NDArray[np.float64] | None, ...]:
    """The AUC rows of each slice of a partition's `state` (filled by the kernel): the
    counted rows of the slices within the exact-AUC cap, None for the others."""
    n_rows = state.counts.sum(axis=(1, 2))
    keep = state.keeps_auc_rows(n_rows)
    if not keep.any():  # a piece past the cap never materialises its rows
        return (None,) * len(keep)
    counted = (labels >= 0) & counted_rows(pred, kind) & keep[slice_ids]
    if reference is not None:
        counted &= counted_rows(reference, reference_kind)
    ids = slice_ids[counted]
    per_slice = np.bincount(ids, minlength=len(keep))
    # A slice whose rows the checks here count otherwise than the kernel (a row of huge
    # logits whose sum overflows) stays binned rather than have an AUC of other rows.
    keep &= per_slice == n_rows
    rows = np.empty((len(ids), state.n_classes + 2))
    rows[:, :-2] = probabilities(pred[counted], kind)
    rows[:, -2] = labels[counted]
    rows[:, -1] = 1.0 if weights is None else weights[counted]
    order = np.argsort(ids, kind="stable")
    parts = np.split(rows[order], np.cumsum(per_slice)[:-1])
    return tuple(part if kept else None for kept, part in zip(keep, parts))
