"""The table of statistics: every report column declared once, as data.

Each :class:`Statistic` says which slots of the partial state it owns, how those
merge, how its report column(s) are finalized, whether the column is in nats (bits
with ``base=2``) or unitless, and how closely it must match a float64 reference. Everything else
reads this table: the state layout (``CELL_FIELDS``... and the index constants the
Numba kernels use, in ``_layout.py``), ``ClassStats.empty``/``merge``/``finalize``,
the column lists downstream (:func:`class_columns`, :func:`summary_columns`) and the
generic tests (``tests/test_statistics.py``). The steps follow flox's ``Aggregation``
(chunk, combine, finalize): the chunk step is the kernel, which writes the slots.

Adding a per-class statistic: one entry here (its field in the cell sums, a finalize
rule), its per-row value in the kernels (``_narrow.py``, ``_wide.py``, a constant in
``_layout.py``) and a reference in ``tests/test_statistics.py``.

Pure Python and NumPy: the kernels import the layout, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal

import numpy as np

MergeRule = Literal["sum", "compensated", "chan_m2"]


@dataclass(frozen=True)
class StateArray:
    """One array of the partial state (``ClassStats`` attributes `attributes`).

    `axes` name its dimensions: ``slice``, ``bucket`` (the row's jackknife bucket, see
    :mod:`xent_kernels.intervals`; only arrays that interval statistics read have it),
    ``class`` (the true class), ``predicted`` (the predicted class: C, or 0 with the
    confusion matrix off), ``bin`` (confidence histogram), ``threshold`` (ROC
    histogram bins: 0 with AUC off) and ``field`` (one per slot that statistics
    declare in it, in table order).
    `merge`: ``sum`` (exact, integers), ``compensated`` (a float64 sum carried with
    its TwoSum compensation term: attributes (sum, compensation)), ``chan_m2``
    (Σw(x - mean)² of the CE, combined with Chan's formula from the cell sums).
    """

    name: str
    attributes: tuple[str, ...]
    axes: tuple[str, ...]
    dtype: type
    merge: MergeRule
    description: str


STATE_ARRAYS: tuple[StateArray, ...] = (
    StateArray("counts", ("counts",), ("slice", "bucket", "class"), np.int64, "sum",
               "rows counted per cell (finite, not ignored)"),
    StateArray("cell", ("cell_sum", "cell_comp"), ("slice", "bucket", "class", "field"), np.float64, "compensated",
               "weighted per-row values summed per (slice, true class): Σw, Σw·CE, ..."),
    StateArray("ce_m2", ("ce_m2",), ("slice", "bucket", "class"), np.float64, "chan_m2",
               "Σw·(CE - mean)² per cell"),
    StateArray("marginal", ("marginal_sum", "marginal_comp"), ("slice", "class"), np.float64, "compensated",
               "Σw·q: the predicted class distribution summed per slice"),
    StateArray("hist", ("hist_sum", "hist_comp"), ("slice", "bucket", "bin", "field"), np.float64, "compensated",
               "confidence histogram per slice, bins of the top probability"),
    StateArray("row_counts", ("row_counts",), ("slice", "field"), np.int64, "sum",
               "per-slice counts of rows that are in no cell"),
    StateArray("confusion_counts", ("confusion_counts",), ("slice", "class", "predicted"), np.int64, "sum",
               "rows per (slice, true class, predicted class); empty when the confusion matrix is off"),
    StateArray("confusion", ("confusion_sum", "confusion_comp"), ("slice", "class", "predicted"), np.float64,
               "compensated", "Σw per (slice, true class, predicted class), plain float64 within a partition"),
    StateArray("roc", ("roc_sum", "roc_comp"), ("slice", "class", "threshold", "field"), np.float64, "compensated",
               "per class j, Σw of all rows and of rows of class j, binned by q_j (ROC AUC); empty when off"),
)
STATE_ARRAY = {array.name: array for array in STATE_ARRAYS}


@dataclass(frozen=True)
class Slot:
    """A place in the partial state: array `array`, field `field` (None for an
    array without a field axis)."""

    array: str
    field: str | None = None


Finalize = Callable[["Totals"], np.ndarray]


@dataclass(frozen=True)
class Statistic:
    """One report column (or report array) and the state it is computed from.

    Attributes
    ----------
    name : str
        The column name in ``ClassReport.per_class``/``per_slice`` (or the
        ``ClassReport`` attribute, for ``role="array"``).
    description : str
        One line for readers of a report.
    slots : tuple of Slot
        The state this statistic owns (the kernels fill it). Finalize rules may also
        read slots of other statistics (``ce_macro`` reads the CE sums).
    per_class, per_slice : callable or None
        Finalize rules: ``Totals -> array`` with one value per present (slice, class)
        cell, or one per slice. None where the statistic has no such column.
    units : "information" or "unitless"
        "information": in nats, or bits (divided by ln 2) with ``finalize(base=2)``.
    role : "metric", "count" or "array"
        "count": totals (rows, weight); "array": a ``ClassReport`` array, not a column.
    reference_only : bool
        Only in reports of states made with a reference prediction.
    interval : bool
        The report also has ``<name>_lo`` and ``<name>_hi``: its jackknife interval
        over the buckets (:mod:`xent_kernels.intervals`), or with `standard_error`
        a normal interval. Metrics only.
    standard_error : (per-class rule, per-slice rule) or None
        Rules for an analytic standard error, for statistics whose state has no
        bucket axis (AUC: DeLong's); the interval is value ± z·SE, clipped to `clip`.
    clip : (low, high)
        The range of the statistic, to which its bounds are clipped (a jackknife
        interval of an accuracy near 1 would otherwise reach past 1).
    better : +1, -1 or 0
        Which way the metric improves (+1: higher is better); 0 for a metric that is
        not better either way (entropy). Comparisons give verdicts by it.
    headline : frozenset of "class", "slice"
        The tables (per class, per slice) whose short views show this column: the
        terminal report and the Prefect artifacts.
    rtol, atol : float
        How closely the column matches a float64 reference computed the obvious way.
    """

    name: str
    description: str
    slots: tuple[Slot, ...]
    per_class: Finalize | None = None
    per_slice: Finalize | None = None
    units: Literal["information", "unitless"] = "unitless"
    role: Literal["metric", "count", "array"] = "metric"
    reference_only: bool = False
    interval: bool = False
    standard_error: tuple[Finalize | None, Finalize | None] | None = None
    clip: tuple[float, float] = (-np.inf, np.inf)
    better: Literal[-1, 0, 1] = 0
    headline: frozenset[str] = frozenset()
    rtol: float = 1e-11
    atol: float = 1e-13

    def __post_init__(self):
        if self.interval and self.role != "metric":
            raise ValueError(f"statistic {self.name!r}: only metrics have intervals, its role is {self.role!r}")

    @property
    def merge(self) -> tuple[MergeRule, ...]:
        """How each of its slots merges."""
        return tuple(STATE_ARRAY[slot.array].merge for slot in self.slots)

    def present(self, has_reference: bool) -> bool:
        """Whether a report of a state with/without a reference has this statistic."""
        return has_reference or not self.reference_only


# --------------------------------------------------------------------------- finalize rules


def ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is not positive (no warning)."""
    return np.divide(
        numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, np.nan),
        where=denominator > 0,
    )


def _chan_m2_buckets(buckets: dict[str, np.ndarray]) -> np.ndarray:
    """Σw(CE - mean)² per cell over all buckets (Chan's formula for many groups):
    the buckets' own m2 plus Σ_k w_k (mean_k - mean)² over buckets with weight."""
    weight = buckets["cell"][..., CELL_FIELDS.index("weight")]
    ce = buckets["cell"][..., CELL_FIELDS.index("ce")]
    total_weight, total_ce = weight.sum(axis=1), ce.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(weight > 0, ce / weight - (total_ce / total_weight)[:, None], 0.0)
    return buckets["ce_m2"].sum(axis=1) + (weight * delta * delta).sum(axis=1)


class Totals:
    """A state's merged sums, as the finalize rules read them.

    ``values`` maps each state array's name to its totals over buckets, without the
    bucket axis: (S, C, fields) for ``cell`` and so on; ``auc_rows`` holds the state's
    rows kept for an exact AUC (``ClassStats.auc_rows``: per slice, or None). ``cells`` are the present
    (slice, class) cells, in row-major order for :meth:`of`; per-class columns have
    one value per cell, per-slice columns one per slice.
    """

    def __init__(self, n_classes: int, values: dict[str, np.ndarray], cells: tuple[np.ndarray, np.ndarray]):
        self.n_classes = n_classes
        self.values = values
        self.cells = cells

    @staticmethod
    def by_bucket(state) -> dict[str, np.ndarray]:
        """Each state array with its compensation added: (S, K, ...)."""
        values = {}
        for array in STATE_ARRAYS:
            parts = [getattr(state, name) for name in array.attributes]
            values[array.name] = parts[0] + parts[1] if array.merge == "compensated" else parts[0]
        return values

    @staticmethod
    def has_buckets(name: str) -> bool:
        return "bucket" in STATE_ARRAY[name].axes

    @classmethod
    def of(cls, state, buckets: dict[str, np.ndarray] | None = None) -> "Totals":
        """The totals of a state over all its buckets (`buckets`: its
        :meth:`by_bucket`, if already computed)."""
        buckets = cls.by_bucket(state) if buckets is None else buckets
        values = {name: value.sum(axis=1) if cls.has_buckets(name) else value for name, value in buckets.items()}
        values["auc_rows"] = state.auc_rows
        if state.n_buckets > 1:
            values["ce_m2"] = _chan_m2_buckets(buckets)
        return cls(state.n_classes, values, np.nonzero(values["counts"] > 0))

    @classmethod
    def leave_one_out(cls, state, buckets: dict[str, np.ndarray], totals: "Totals") -> "Totals":
        """The K delete-one-bucket totals of a state, as the totals of S·K slices:
        slice s·K + k is slice s without bucket k. The cells are those of `totals`,
        each repeated for k = 0 .. K-1 (so a per-class rule gives (cells, K) values,
        row-major). ``ce_m2`` is NaN: no interval statistic reads it; arrays without
        a bucket axis keep their totals (only statistics with a `standard_error`
        read them)."""
        n_slices, n_buckets = state.counts.shape[:2]
        values = {}
        with np.errstate(invalid="ignore"):  # inf - inf: an infinite bucket's complement is NaN
            for name, value in buckets.items():
                if not cls.has_buckets(name):
                    values[name] = np.repeat(totals.values[name], n_buckets, axis=0)
                    continue
                rest = totals.values[name][:, None] - value
                values[name] = rest.reshape((n_slices * n_buckets,) + value.shape[2:])
        values["ce_m2"] = np.full(values["ce_m2"].shape, np.nan)
        slice_index, class_index = totals.cells
        k = np.arange(n_buckets)
        cells = ((slice_index[:, None] * n_buckets + k).ravel(), np.repeat(class_index, n_buckets))
        return cls(state.n_classes, values, cells)

    def cell_grid(self, field: str) -> np.ndarray:
        """(S, C) totals of one cell field."""
        return self.values["cell"][..., CELL_FIELDS.index(field)]

    def at_cells(self, grid: np.ndarray) -> np.ndarray:
        """The values of an (S, C) grid at the present cells."""
        return grid[self.cells]

    @cached_property
    def slice_cell(self) -> np.ndarray:
        """(S, fields): the cell sums added over classes."""
        return self.values["cell"].sum(axis=1)

    def slice_total(self, field: str) -> np.ndarray:
        return self.slice_cell[:, CELL_FIELDS.index(field)]

    def hist(self, field: str) -> np.ndarray:
        return self.values["hist"][..., HIST_FIELDS.index(field)]


Scope = Literal["per_class", "per_slice"]


def scoped_rules(has_reference: bool, divisor: float = 1.0, intervals_only: bool = False):
    """(statistic, scope, rule, scale) for every finalize rule of the statistics present
    with/without a reference (only those with an interval: `intervals_only`), in table
    order; `scale` is what the rule's values are divided by: `divisor` (ln 2 for bits)
    for information, else 1."""
    for statistic in STATISTICS:
        if not statistic.present(has_reference) or (intervals_only and not statistic.interval):
            continue
        scale = divisor if statistic.units == "information" else 1.0
        for scope in ("per_class", "per_slice"):
            rule = getattr(statistic, scope)
            if rule is not None:
                yield statistic, scope, rule, scale


def used_buckets(weight: np.ndarray, cells: tuple[np.ndarray, np.ndarray]) -> dict[Scope, np.ndarray]:
    """The buckets that hold weight, per present cell ((cells, K)) and per slice ((S, K)),
    from the (S, K, C) cell weights: the jackknife skips the others."""
    slice_index, class_index = cells
    return {"per_class": weight[slice_index, :, class_index] > 0, "per_slice": weight.sum(axis=2) > 0}


def _class_mean(field: str, min_classes: int = 1) -> Finalize:
    """Σw·x / Σw per cell; NaN throughout with fewer than `min_classes` classes."""

    def rule(t: Totals) -> np.ndarray:
        weight = t.at_cells(t.cell_grid("weight"))
        if t.n_classes < min_classes:
            return np.full(weight.shape, np.nan)
        return ratio(t.at_cells(t.cell_grid(field)), weight)

    return rule


def _slice_mean(field: str, min_classes: int = 1) -> Finalize:
    """Σw·x / Σw per slice; NaN throughout with fewer than `min_classes` classes."""

    def rule(t: Totals) -> np.ndarray:
        weight = t.slice_total("weight")
        if t.n_classes < min_classes:
            return np.full(weight.shape, np.nan)
        return ratio(t.slice_total(field), weight)

    return rule


def _class_total(field: str) -> Finalize:
    return lambda t: t.at_cells(t.cell_grid(field))


def _slice_total(field: str) -> Finalize:
    return lambda t: t.slice_total(field)


def _row_count(field: str) -> Finalize:
    return lambda t: t.values["row_counts"][:, ROW_COUNT_FIELDS.index(field)].copy()


def _ce_std(t: Totals) -> np.ndarray:
    """Weighted population standard deviation of the CE per cell."""
    return np.sqrt(ratio(t.at_cells(t.values["ce_m2"]), t.at_cells(t.cell_grid("weight"))))


def _ce_macro(t: Totals) -> np.ndarray:
    """Mean over the classes present in a slice of their mean CE."""
    weight = t.cell_grid("weight")
    class_ce = ratio(t.cell_grid("ce"), weight)
    present = weight > 0
    with np.errstate(invalid="ignore"):
        return np.where(present, class_ce, 0.0).sum(axis=1) / present.sum(axis=1)


def _ece(t: Totals) -> np.ndarray:
    """Σ over bins |Σw·correct - Σw·confidence| / Σw."""
    gap = np.abs(t.hist("correct") - t.hist("conf")).sum(axis=1)
    return ratio(gap, t.slice_total("weight"))


def _predicted_marginal(t: Totals) -> np.ndarray:
    return ratio(t.values["marginal"], t.slice_total("weight")[:, None])


def _brier_scale(t: Totals) -> float:
    """sklearn's ``brier_score_loss(scale_by_half="auto")``: a binary model's score is
    (q_1 - y)², half of Σ_j (q_j - y_j)²; multiclass scores are not halved."""
    return 0.5 if t.n_classes == 2 else 1.0


def _brier_class(t: Totals) -> np.ndarray:
    return _class_mean("brier")(t) * _brier_scale(t)


def _brier_slice(t: Totals) -> np.ndarray:
    return _slice_mean("brier")(t) * _brier_scale(t)


def zero_division(numerator, denominator) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's default
    ``zero_division``: a class never predicted has precision 0)."""
    return np.nan_to_num(ratio(numerator, denominator), nan=0.0)


def _class_rates(t: Totals) -> dict[str, np.ndarray]:
    """(S, C) precision, recall and F1 of every class, 0 where undefined (sklearn)."""
    hits, true, predicted = t.cell_grid("top1"), t.cell_grid("weight"), t.cell_grid("predicted")
    return {
        "precision": zero_division(hits, predicted),
        "recall": zero_division(hits, true),
        "f1": zero_division(2.0 * hits, predicted + true),
    }


def _class_rate(name: str) -> Finalize:
    return lambda t: t.at_cells(_class_rates(t)[name])


def _averaged_rate(name: str, average: Literal["macro", "weighted"]) -> Finalize:
    """sklearn's ``average="macro"`` (mean over the classes that are true or predicted
    in the slice) or ``"weighted"`` (weighted by each class's true weight)."""

    def rule(t: Totals) -> np.ndarray:
        rate = _class_rates(t)[name]
        true = t.cell_grid("weight")
        if average == "weighted":
            return ratio((rate * true).sum(axis=1), true.sum(axis=1))
        labels = (true > 0) | (t.cell_grid("predicted") > 0)
        return ratio(np.where(labels, rate, 0.0).sum(axis=1), labels.sum(axis=1).astype(np.float64))

    return rule


def _auc_of_histograms(positive: np.ndarray, negative: np.ndarray) -> dict[str, np.ndarray]:
    """AUC, the binning's worst-case error and DeLong's standard error from the Σw of
    positives and of negatives per bin along the last axis, bins in increasing score
    (pairs in the same bin count one half); NaN without positives or negatives. With one
    bin per distinct score this is the exact AUC (ties ½) and textbook DeLong with
    midranks, weights as frequency weights."""
    n_pos, n_neg = positive.sum(axis=-1), negative.sum(axis=-1)
    below = np.cumsum(negative, axis=-1) - negative  # negatives in lower bins
    above = n_pos[..., None] - np.cumsum(positive, axis=-1)  # positives in higher bins
    with np.errstate(invalid="ignore", divide="ignore"):
        v10 = (below + 0.5 * negative) / n_neg[..., None]  # per positive in a bin: share of negatives under it
        v01 = (above + 0.5 * positive) / n_pos[..., None]
        auc = (positive * v10).sum(axis=-1) / n_pos
        bound = 0.5 * (positive * negative).sum(axis=-1) / (n_pos * n_neg)
        s10 = (positive * (v10 - auc[..., None]) ** 2).sum(axis=-1) / (n_pos - 1.0)
        s01 = (negative * (v01 - auc[..., None]) ** 2).sum(axis=-1) / (n_neg - 1.0)
        se = np.sqrt(s10 / n_pos + s01 / n_neg)
    valid = (n_pos > 0) & (n_neg > 0)
    return {name: np.where(valid, value, np.nan) for name, value in
            (("auc", auc), ("bound", bound), ("se", se))}


def _exact_auc(rows: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """(C,) exact one-vs-rest AUC, bound 0 and DeLong's SE of one slice's AUC rows
    (q_0 .. q_{C-1}, true class, weight): the histogram rule over the distinct scores."""
    labels, weights = rows[:, -2], rows[:, -1]
    parts: dict[str, list] = {"auc": [], "bound": [], "se": []}
    for j in range(n_classes):
        values, bins = np.unique(rows[:, j], return_inverse=True)
        positive = np.bincount(bins, np.where(labels == j, weights, 0.0), len(values))
        negative = np.bincount(bins, np.where(labels == j, 0.0, weights), len(values))
        for name, value in _auc_of_histograms(positive, negative).items():
            parts[name].append(value)
    out = {name: np.array(value, dtype=np.float64) for name, value in parts.items()}
    out["bound"] = np.where(np.isnan(out["auc"]), np.nan, 0.0)
    return out


def _roc_parts(t: Totals) -> dict[str, np.ndarray]:
    """(S, C) one-vs-rest ROC AUC of each class, the worst-case error of its binning and
    DeLong's standard error: exact (bound 0) for slices that kept their rows
    (``auc_rows``), else from the class's histograms (pairs in the same bin count one
    half; the bound is half the share of positive-negative pairs that share a bin).
    NaN where a class has no positives or no negatives (or AUC is off)."""
    roc = t.values["roc"]  # (S, C, T, fields)
    if roc.shape[1] == 0:  # AUC off
        nan = np.full(t.values["marginal"].shape, np.nan)
        return {"auc": nan, "bound": nan, "se": nan}
    positive = roc[..., ROC_FIELDS.index("positive")]
    parts = _auc_of_histograms(positive, roc[..., ROC_FIELDS.index("all")] - positive)
    for s, rows in enumerate(t.values.get("auc_rows") or ()):
        if rows is not None:
            for name, value in _exact_auc(rows, t.n_classes).items():
                parts[name][s] = value
    return parts


def _roc_class(part: str) -> Finalize:
    return lambda t: t.at_cells(_roc_parts(t)[part])


def _roc_slice(part: str) -> Finalize:
    """Binary models: class 1's value (sklearn ``roc_auc_score(y, q_1)``); else the mean
    over the classes with a value (``multi_class="ovr", average="macro"``). The mean's
    standard error is taken as the mean of the classes' standard errors: an upper
    bound whatever their correlation."""

    def rule(t: Totals) -> np.ndarray:
        value = _roc_parts(t)[part]
        if t.n_classes == 2:
            return value[:, 1]
        with np.errstate(invalid="ignore"):
            present = np.isfinite(value)
            return np.where(present, value, 0.0).sum(axis=1) / present.sum(axis=1)

    return rule


# --------------------------------------------------------------------------- the table

# Table order is report column order (flows writes the columns in this order); the
# fields of each state array are numbered in the order statistics declare them.
STATISTICS: tuple[Statistic, ...] = (
    Statistic(
        "n", "rows counted (finite prediction, label not ignored)",
        slots=(Slot("counts"),),
        per_class=lambda t: t.at_cells(t.values["counts"]),
        per_slice=lambda t: t.values["counts"].sum(axis=1),
        role="count", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "weight", "total row weight (the row count when unweighted)",
        slots=(Slot("cell", "weight"),),
        per_class=_class_total("weight"), per_slice=_slice_total("weight"),
        role="count",
    ),
    Statistic(
        "ce_mean", "weighted mean cross-entropy -log q(true class)",
        slots=(Slot("cell", "ce"),),
        per_class=_class_mean("ce"), per_slice=_slice_mean("ce"),
        units="information", headline=frozenset({"class", "slice"}),
        interval=True,
        better=-1,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "ce_std", "weighted population standard deviation of the cross-entropy",
        slots=(Slot("ce_m2"),),
        per_class=_ce_std,
        units="information", headline=frozenset({"class"}),
    ),
    Statistic(
        "ce_macro", "mean over the classes present of their mean cross-entropy",
        slots=(),
        per_slice=_ce_macro,
        units="information", headline=frozenset({"slice"}),
        interval=True,
        better=-1,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "accuracy", "weighted share of rows whose true class has the top probability (ties: lower index)",
        slots=(Slot("cell", "top1"),),
        per_class=_class_mean("top1"), per_slice=_slice_mean("top1"),
        headline=frozenset({"class", "slice"}),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "top5_accuracy", "weighted share of rows whose true class is among the 5 most probable (NaN for C <= 5)",
        slots=(Slot("cell", "top5"),),
        per_class=_class_mean("top5", min_classes=6), per_slice=_slice_mean("top5", min_classes=6),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "p_true_mean", "weighted mean probability of the true class",
        slots=(Slot("cell", "p_true"),),
        per_class=_class_mean("p_true"), per_slice=_slice_mean("p_true"),
        headline=frozenset({"class"}),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "entropy_mean", "weighted mean entropy of the prediction",
        slots=(Slot("cell", "entropy"),),
        per_class=_class_mean("entropy"), per_slice=_slice_mean("entropy"),
        units="information", headline=frozenset({"class"}),
        interval=True,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "ece", "expected calibration error over the confidence histogram's bins",
        slots=(),
        per_slice=_ece,
        headline=frozenset({"slice"}),
        interval=True,
        better=-1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "brier", "weighted mean Brier score Σ_j (q_j - y_j)² (binary models: (q_1 - y)², as sklearn)",
        slots=(Slot("cell", "brier"),),
        per_class=_brier_class, per_slice=_brier_slice,
        headline=frozenset({"slice"}),
        interval=True,
        better=-1,
        clip=(0.0, 2.0),
    ),
    Statistic(
        "precision", "weighted share of the rows predicted as the class that are of the class (0 if none)",
        slots=(Slot("cell", "predicted"),),
        per_class=_class_rate("precision"),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "recall", "weighted share of the class's rows predicted as the class (its accuracy)",
        slots=(),
        per_class=_class_rate("recall"),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "f1", "harmonic mean of precision and recall: 2·hits / (predicted + true) (0 if both are 0)",
        slots=(),
        per_class=_class_rate("f1"),
        headline=frozenset({"class"}),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    *(
        Statistic(
            f"{name}_{average}", f"{name} averaged over classes, {how} (sklearn average={average!r})",
            slots=(),
            per_slice=_averaged_rate(name, average),
            better=+1,
            clip=(0.0, 1.0),
            headline=frozenset({"slice"}) if (name, average) == ("f1", "macro") else frozenset(),
            interval=True,
        )
        for name in ("precision", "recall", "f1")
        for average, how in (("macro", "unweighted, over the classes true or predicted in the slice"),
                             ("weighted", "weighted by the classes' true weight"))
    ),
    Statistic(
        "auc", "one-vs-rest ROC AUC of the class, exact for slices within exact_auc_max_values, else from "
        "binned probabilities (slice: class 1 if binary, else the macro mean); interval from DeLong's standard error",
        slots=(Slot("roc", "positive"), Slot("roc", "all")),
        per_class=_roc_class("auc"), per_slice=_roc_slice("auc"),
        headline=frozenset({"slice"}),
        interval=True, standard_error=(_roc_class("se"), _roc_slice("se")), clip=(0.0, 1.0),
        better=+1,
    ),
    Statistic(
        "auc_error_bound", "worst-case |auc - exact AUC| from the binning: half the share of "
        "(positive, negative) pairs in the same bin; 0 where the AUC is exact",
        slots=(),
        per_class=_roc_class("bound"), per_slice=_roc_slice("bound"),
    ),
    Statistic(
        "n_ignored", "rows whose label marks them ignored",
        slots=(Slot("row_counts", "ignored"),),
        per_slice=_row_count("ignored"),
        role="count", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "n_nonfinite", "rows skipped for a NaN or infinite prediction (or reference)",
        slots=(Slot("row_counts", "nonfinite"),),
        per_slice=_row_count("nonfinite"),
        role="count", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "kl_mean", "weighted mean KL(reference ‖ prediction)",
        slots=(Slot("cell", "kl"),),
        per_class=_class_mean("kl"), per_slice=_slice_mean("kl"),
        units="information", reference_only=True,
        interval=True,
        better=-1,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "predicted_marginal", "(S, C): the weighted mean predicted distribution per slice",
        slots=(Slot("marginal"),),
        per_slice=_predicted_marginal,
        role="array", atol=1e-14,
    ),
    Statistic(
        "confidence_hist", "(S, bins, 3): Σw, Σw·correct, Σw·confidence per bin of the top probability",
        slots=(Slot("hist", "weight"), Slot("hist", "correct"), Slot("hist", "conf")),
        per_slice=lambda t: t.values["hist"],
        role="array",
    ),
    Statistic(
        "confusion_n", "(S, C, C): rows per (slice, true class, predicted class); (S, 0, 0) when off",
        slots=(Slot("confusion_counts"),),
        per_slice=lambda t: t.values["confusion_counts"],
        role="array", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "confusion_weight", "(S, C, C): Σw per (slice, true class, predicted class); (S, 0, 0) when off",
        slots=(Slot("confusion"),),
        per_slice=lambda t: t.values["confusion"],
        role="array",
    ),
)
STATISTIC = {statistic.name: statistic for statistic in STATISTICS}


def fields(array: str) -> tuple[str, ...]:
    """The fields of a state array, in the order statistics declare them."""
    out: list[str] = []
    for statistic in STATISTICS:
        for slot in statistic.slots:
            if slot.array == array and slot.field is not None and slot.field not in out:
                out.append(slot.field)
    return tuple(out)


CELL_FIELDS = fields("cell")
HIST_FIELDS = fields("hist")
ROW_COUNT_FIELDS = fields("row_counts")
ROC_FIELDS = fields("roc")
FIELDS = {"cell": CELL_FIELDS, "hist": HIST_FIELDS, "row_counts": ROW_COUNT_FIELDS, "roc": ROC_FIELDS}


def state_shape(
    array: StateArray, n_slices: int, n_buckets: int, n_classes: int, n_bins: int, *,
    confusion: bool = False, n_thresholds: int = 0,
) -> tuple[int, ...]:
    """The shape of a state array; the confusion matrix and the ROC histograms are
    empty (a zero-length axis) when off."""
    sizes = {
        "slice": n_slices, "bucket": n_buckets, "class": n_classes, "bin": n_bins,
        "predicted": n_classes if confusion else 0, "threshold": n_thresholds,
        "field": len(FIELDS.get(array.name, ())),
    }
    if array.name.startswith("confusion") and not confusion:
        sizes["class"] = 0
    if array.name == "roc" and not n_thresholds:
        sizes["class"] = 0
    return tuple(sizes[axis] for axis in array.axes)


# --------------------------------------------------------------------------- merge rules


def two_sum(sum_a, comp_a, sum_b, comp_b):
    """Elementwise compensated addition of (sum, compensation) pairs."""
    total = sum_a + sum_b
    with np.errstate(invalid="ignore"):
        back = total - sum_a
        error = (sum_a - (total - back)) + (sum_b - back)
    # an infinite sum has no rounding error to carry (and inf - inf is NaN)
    return total, comp_a + comp_b + np.where(np.isfinite(total), error, 0.0)


def _chan_m2(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> np.ndarray:
    """Σw(CE - mean)² of the union of two cells (Chan et al.), from their sums."""
    weight, ce = CELL_FIELDS.index("weight"), CELL_FIELDS.index("ce")
    wx = x["cell_sum"][..., weight] + x["cell_comp"][..., weight]
    wy = y["cell_sum"][..., weight] + y["cell_comp"][..., weight]
    cx = x["cell_sum"][..., ce] + x["cell_comp"][..., ce]
    cy = y["cell_sum"][..., ce] + y["cell_comp"][..., ce]
    both = (wx > 0) & (wy > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(both, cy / wy - cx / wx, 0.0)
        between = np.where(both, delta * delta * (wx * wy) / (wx + wy), 0.0)  # symmetric in x, y
    return x["ce_m2"] + y["ce_m2"] + between


def merge_array(array: StateArray, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One state array of the merge of two states, given both states' (aligned)
    arrays by attribute name. Symmetric in x and y."""
    if array.merge == "sum":
        (name,) = array.attributes
        return {name: x[name] + y[name]}
    if array.merge == "compensated":
        total, comp = array.attributes
        return dict(zip(array.attributes, two_sum(x[total], x[comp], y[total], y[comp])))
    if array.merge == "chan_m2":
        (name,) = array.attributes
        return {name: _chan_m2(x, y)}
    raise AssertionError(f"unknown merge rule {array.merge!r}")


# --------------------------------------------------------------------------- for report writers


def class_columns(has_reference: bool = False, headline: bool = False) -> list[str]:
    """The metric columns of ``ClassReport.per_class``, in report order (without the
    counts ``n`` and ``weight``); ``kl_mean`` only with a reference; with `headline`,
    only those of the short views."""
    return [
        s.name for s in STATISTICS
        if s.role == "metric" and s.per_class is not None and s.present(has_reference)
        and (not headline or "class" in s.headline)
    ]


def summary_columns(has_reference: bool = False, headline: bool = False) -> list[str]:
    """The metric columns of ``ClassReport.per_slice``, in report order (without the
    counts ``n``, ``weight``, ``n_ignored``, ``n_nonfinite``); with `headline`, only
    those of the short views."""
    return [
        s.name for s in STATISTICS
        if s.role == "metric" and s.per_slice is not None and s.present(has_reference)
        and (not headline or "slice" in s.headline)
    ]


def report_columns(scope: Literal["class", "slice"], has_reference: bool = False) -> list[str]:
    """Every column of ``ClassReport.per_class`` (`scope` "class") or ``per_slice``
    ("slice"), counts and metrics, in report order."""
    return [
        s.name for s in STATISTICS
        if s.role != "array" and getattr(s, f"per_{scope}") is not None and s.present(has_reference)
    ]


def interval_columns(scope: Literal["class", "slice"], has_reference: bool = False) -> list[str]:
    """The interval columns of ``ClassReport.per_class`` (`scope` "class") or
    ``per_slice`` ("slice"): ``<metric>_lo``, ``<metric>_hi`` for each metric with
    ``interval=True``, in report order."""
    return [
        f"{s.name}_{bound}" for s in STATISTICS
        if s.interval and getattr(s, f"per_{scope}") is not None and s.present(has_reference)
        for bound in ("lo", "hi")
    ]


INFORMATION_COLUMNS = frozenset(s.name for s in STATISTICS if s.units == "information")
"""Columns in nats (bits when finalized with ``base=2``); all others are unitless."""
