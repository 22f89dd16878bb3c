"""Mergeable per-(slice, class) statistics: the partial aggregate of the pipeline.

``class_stats_partial`` turns one partition into a small :class:`ClassStats`
(O(slices × classes), never per row); ``ClassStats.merge`` combines two of them and is
associative and commutative with ``ClassStats.empty`` as identity; ``finalize`` turns
the sums into report columns. Every float is a float64 sum carried with its
compensation term (TwoSum), so the report does not depend on how rows were split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks as C
from ._class_stats import class_stats_kernel
from ._layout import NONFINITE
from .statistics import STATE_ARRAYS, STATISTICS, Totals, merge_array, state_shape

SliceKey = tuple[Hashable, ...]
DEFAULT_BINS = 15
STATE_ATTRIBUTES = tuple(name for array in STATE_ARRAYS for name in array.attributes)


def _key_order(key: SliceKey):
    # Slice values of one column share a type; None (a null slice value) sorts last.
    return tuple((value is None, "" if value is None else value) for value in key)


@dataclass(frozen=True, eq=False)
class ClassStats:
    """Sums per (slice, true class) and per slice. The arrays and their fields are
    declared in :mod:`xent_kernels.statistics` (``STATE_ARRAYS``, and the fields in
    the order of ``STATISTICS``: ``CELL_FIELDS``, ``HIST_FIELDS``, ``ROW_COUNT_FIELDS``).

    Attributes
    ----------
    slice_keys : tuple of tuples, sorted
        One key per slice (a tuple of slice-column values; ``()`` when not sliced).
    counts : (S, C) int64
        Rows counted per cell (finite, not ignored).
    cell_sum, cell_comp : (S, C, len(CELL_FIELDS)) float64
        Σw, Σw·CE, Σw·top1, Σw·top5, Σw·p_true, Σw·entropy, Σw·KL(reference‖pred).
    ce_m2 : (S, C) float64
        Σw·(CE - mean)², merged with Chan's formula.
    marginal_sum, marginal_comp : (S, C) float64
        Σw·q: the model's predicted class marginal per slice.
    hist_sum, hist_comp : (S, n_bins, 3) float64
        Confidence histogram (bins of the top probability): Σw, Σw·correct, Σw·confidence.
    row_counts : (S, 2) int64
        Ignored rows and rows with non-finite predictions, per slice.
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

    @classmethod
    def empty(
        cls,
        n_classes: int,
        *,
        n_bins: int = DEFAULT_BINS,
        has_reference: bool = False,
        slice_keys: Sequence[SliceKey] = (),
    ) -> "ClassStats":
        """A state with the given slices and all sums zero; with no slices, the
        identity of :meth:`merge`."""
        if n_classes < 1 or n_bins < 1:
            raise ValueError(f"n_classes and n_bins must be >= 1, got {n_classes} and {n_bins}")
        keys = tuple(tuple(k) for k in slice_keys)
        if len(set(keys)) != len(keys):
            raise ValueError("slice_keys must be distinct")
        arrays = {
            name: np.zeros(state_shape(array, len(keys), n_classes, n_bins), array.dtype)
            for array in STATE_ARRAYS
            for name in array.attributes
        }
        return cls(
            n_classes=int(n_classes), n_bins=int(n_bins), has_reference=bool(has_reference), slice_keys=keys, **arrays
        )

    @property
    def n_nonfinite(self) -> int:
        """Rows skipped because their prediction (or reference) held NaN or inf."""
        return int(self.row_counts[:, NONFINITE].sum())

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

    @staticmethod
    def merge(a: "ClassStats", b: "ClassStats") -> "ClassStats":
        """Combine two states (any slices). Associative and commutative up to
        float64 rounding of the compensated sums; ``empty()`` is the identity."""
        if (a.n_classes, a.n_bins, a.has_reference) != (b.n_classes, b.n_bins, b.has_reference):
            raise ValueError(
                "cannot merge statistics of different shape: "
                f"(classes, bins, reference) = {(a.n_classes, a.n_bins, a.has_reference)} "
                f"and {(b.n_classes, b.n_bins, b.has_reference)}"
            )
        keys = tuple(sorted(set(a.slice_keys) | set(b.slice_keys), key=_key_order))
        x, y = a._aligned(keys), b._aligned(keys)
        arrays: dict[str, np.ndarray] = {}
        for array in STATE_ARRAYS:
            arrays.update(merge_array(array, x, y))
        return ClassStats(
            n_classes=a.n_classes, n_bins=a.n_bins, has_reference=a.has_reference, slice_keys=keys, **arrays
        )

    def collapse_slices(self, key: SliceKey = ()) -> "ClassStats":
        """All slices merged into one slice named `key` (the overall row of a report)."""
        total = ClassStats.empty(self.n_classes, n_bins=self.n_bins, has_reference=self.has_reference)
        for i in range(len(self.slice_keys)):
            total = ClassStats.merge(total, self.slice(i, key))
        if not total.slice_keys:
            total = ClassStats.merge(
                total,
                ClassStats.empty(self.n_classes, n_bins=self.n_bins, has_reference=self.has_reference, slice_keys=[key]),
            )
        return total

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
        )

    # ------------------------------------------------------------------ finalize

    def finalize(self, base: Literal["e", 2] = "e") -> "ClassReport":
        """Means and rates per (slice, class) and per slice, in nats or bits.

        Cells with no rows are left out of ``per_class``. Rates over zero weight
        are NaN (no warning). ``ce_std`` is the weighted population standard deviation.
        Columns follow ``statistics.STATISTICS``; those with ``units="information"``
        are divided by ln 2 for bits.
        """
        divisor = C.log_base(base)
        totals = Totals(self)
        slice_index, class_index = totals.cells
        per_class: dict[str, np.ndarray] = {
            "slice": slice_index.astype(np.int64),
            "class": class_index.astype(np.int32),
        }
        per_slice: dict[str, np.ndarray] = {"slice": np.arange(len(self.slice_keys), dtype=np.int64)}
        arrays: dict[str, np.ndarray] = {}
        for statistic in STATISTICS:
            if not statistic.present(self.has_reference):
                continue
            scale = divisor if statistic.units == "information" else None
            for rule, columns in ((statistic.per_class, per_class), (statistic.per_slice, per_slice)):
                if rule is None:
                    continue
                value = rule(totals) if scale is None else rule(totals) / scale
                if statistic.role == "array":
                    arrays[statistic.name] = value
                else:
                    columns[statistic.name] = value
        return ClassReport(
            slice_keys=self.slice_keys,
            units="nats" if divisor == 1.0 else "bits",
            per_class=per_class,
            per_slice=per_slice,
            **arrays,
        )


@dataclass(frozen=True, eq=False)
class ClassReport:
    """Columns of a finished report (NumPy arrays), indexed into ``slice_keys``.

    ``per_class`` has one entry per (slice, class) with rows; ``per_slice`` one per
    slice; ``predicted_marginal`` is (S, C), the mean predicted distribution;
    ``confidence_hist`` is (S, n_bins, 3): Σw, Σw·correct, Σw·confidence per bin of
    the top probability (bins of width 1/n_bins over [0, 1]).
    """

    slice_keys: tuple[SliceKey, ...]
    units: str
    per_class: dict[str, np.ndarray] = field(repr=False)
    per_slice: dict[str, np.ndarray] = field(repr=False)
    predicted_marginal: np.ndarray = field(repr=False)
    confidence_hist: np.ndarray = field(repr=False)


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
    state = ClassStats.empty(n_classes, n_bins=n_bins, has_reference=reference is not None, slice_keys=keys)
    if n:
        class_stats_kernel(
            pred, labels, np.zeros(0) if weights_arr is None else weights_arr, ids, ref,
            code, ref_code, state.n_bins, max_ce, weights_arr is not None, slice_ids is not None, reference is not None,
            state.counts, state.cell_sum, state.cell_comp, state.ce_m2, state.marginal_sum,
            state.marginal_comp, state.hist_sum, state.hist_comp, state.row_counts,
        )
    # Merging with the identity lays the slices out in the canonical (sorted) order.
    return ClassStats.merge(state, ClassStats.empty(n_classes, n_bins=n_bins, has_reference=reference is not None))
