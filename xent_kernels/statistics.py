"""The table of statistics: every report column declared once, as data.

Each :class:`Statistic` says which slots of the partial state it owns, how those
merge, how its report column(s) are finalized, whether the column is in nats (bits
with ``base=2``) or unitless, and how closely it must match a float64 reference. Everything else
reads this table: the state layout (``CELL_FIELDS``... and the index constants the
Numba kernels use, in ``_layout.py``), ``ClassStats.empty``/``merge``/``finalize``,
the column lists downstream (:func:`class_columns`, :func:`summary_columns`) and the
generic tests (``tests/test_statistics.py``). The steps follow flox's ``Aggregation``
(chunk, combine, finalize): the chunk step is the kernel, which writes the slots.

The table's parts live by job: the state arrays in :mod:`xent_kernels.state_layout`,
their merge in :mod:`xent_kernels.merge_rules`, the finalize rules in
:mod:`xent_kernels.finalize_rules`; here are the table, the fields it numbers, the
totals the rules read (:class:`Totals`) and the column lists.

Adding a per-class statistic: one entry here (its field in the cell sums, a finalize
rule in ``finalize_rules.py``), its per-row value in the kernels (``_narrow.py``,
``_wide.py``, a constant in ``_layout.py``) and a reference in ``tests/test_statistics.py``.

Pure Python and NumPy: the kernels import the layout, never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from . import finalize_rules as rules
from .finalize_rules import Finalize
from .state_layout import STATE_ARRAY, STATE_ARRAYS, MergeRule, Slot, StateArray

__all__ = [  # the layout's names are re-exported: the table is where readers look them up
    "CELL_FIELDS", "FIELDS", "HIST_FIELDS", "INFORMATION_COLUMNS", "ROC_FIELDS", "ROW_COUNT_FIELDS", "STATE_ARRAY",
    "STATE_ARRAYS", "STATISTIC", "STATISTICS", "Finalize", "MergeRule", "Slot", "StateArray", "Statistic", "Totals",
    "class_columns", "fields", "interval_columns", "report_columns", "scoped_rules", "state_shape", "summary_columns",
    "used_buckets",
]


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
    label : str
        Its name on the report page ("mean CE"); the column name where empty.
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
    label: str = ""

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



def _chan_m2_buckets(buckets: dict[str, np.ndarray]) -> np.ndarray:
    """Σw(CE - mean)² per cell over all buckets (Chan's formula for many groups):
    the buckets' own m2 plus Σ_k w_k (mean_k - mean)² over buckets with weight."""
    weight = buckets["cell"][..., CELL_FIELDS.index("weight")]
    ce = buckets["cell"][..., CELL_FIELDS.index("ce")]
    total_weight, total_ce = weight.sum(axis=1), ce.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(weight > 0, ce / weight - (total_ce / total_weight)[:, None], 0.0)
    return buckets["ce_m2"].sum(axis=1) + (weight * delta * delta).sum(axis=1)


def canonical_rows(rows: np.ndarray) -> np.ndarray:
    """A slice's exact-AUC rows in one order whatever order they came in (sorted by
    every column; -0.0 made 0.0), so the AUC's float sums do not depend on sharding."""
    rows = rows + 0.0
    return rows[np.lexsort(rows.T[::-1])]


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
        values["auc_rows"] = tuple(None if rows is None else canonical_rows(rows) for rows in state.auc_rows)
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

    def row_count(self, field: str) -> np.ndarray:
        """(S,) totals of one per-slice row count."""
        return self.values["row_counts"][:, ROW_COUNT_FIELDS.index(field)].copy()

    def roc(self, field: str) -> np.ndarray:
        """(S, C, T) totals of one ROC histogram field."""
        return self.values["roc"][..., ROC_FIELDS.index(field)]


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


# --------------------------------------------------------------------------- the table

# Table order is report column order (flows writes the columns in this order); the
# fields of each state array are numbered in the order statistics declare them.
STATISTICS: tuple[Statistic, ...] = (
    Statistic(
        "n", "rows counted (finite prediction, label not ignored)", label="rows",
        slots=(Slot("counts"),),
        per_class=lambda t: t.at_cells(t.values["counts"]),
        per_slice=lambda t: t.values["counts"].sum(axis=1),
        role="count", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "weight", "total row weight (the row count when unweighted)",
        slots=(Slot("cell", "weight"),),
        per_class=rules.class_total("weight"), per_slice=rules.slice_total("weight"),
        role="count",
    ),
    Statistic(
        "ce_mean", "weighted mean cross-entropy -log q(true class)", label="mean CE",
        slots=(Slot("cell", "ce"),),
        per_class=rules.class_mean("ce"), per_slice=rules.slice_mean("ce"),
        units="information", headline=frozenset({"class", "slice"}),
        interval=True,
        better=-1,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "ce_std", "weighted population standard deviation of the cross-entropy", label="CE std",
        slots=(Slot("ce_m2"),),
        per_class=rules.ce_std,
        units="information", headline=frozenset({"class"}),
    ),
    Statistic(
        "ce_macro", "mean over the classes present of their mean cross-entropy", label="macro CE",
        slots=(),
        per_slice=rules.ce_macro,
        units="information", headline=frozenset({"slice"}),
        interval=True,
        better=-1,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "accuracy", "weighted share of rows whose true class has the top probability (ties: lower index)", label="accuracy",
        slots=(Slot("cell", "top1"),),
        per_class=rules.class_mean("top1"), per_slice=rules.slice_mean("top1"),
        headline=frozenset({"class", "slice"}),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "top5_accuracy", "weighted share of rows whose true class is among the 5 most probable (NaN for C <= 5)",
        slots=(Slot("cell", "top5"),),
        per_class=rules.class_mean("top5", min_classes=6), per_slice=rules.slice_mean("top5", min_classes=6),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "p_true_mean", "weighted mean probability of the true class", label="mean p(true)",
        slots=(Slot("cell", "p_true"),),
        per_class=rules.class_mean("p_true"), per_slice=rules.slice_mean("p_true"),
        headline=frozenset({"class"}),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "entropy_mean", "weighted mean entropy of the prediction", label="mean entropy",
        slots=(Slot("cell", "entropy"),),
        per_class=rules.class_mean("entropy"), per_slice=rules.slice_mean("entropy"),
        units="information", headline=frozenset({"class"}),
        interval=True,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "ece", "expected calibration error over the confidence histogram's bins", label="ECE",
        slots=(),
        per_slice=rules.ece,
        headline=frozenset({"slice"}),
        interval=True,
        better=-1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "brier", "weighted mean Brier score Σ_j (q_j - y_j)² (binary models: (q_1 - y)², as sklearn)", label="Brier",
        slots=(Slot("cell", "brier"),),
        per_class=rules.brier_class, per_slice=rules.brier_slice,
        headline=frozenset({"slice"}),
        interval=True,
        better=-1,
        clip=(0.0, 2.0),
    ),
    Statistic(
        "precision", "weighted share of the rows predicted as the class that are of the class (0 if none)",
        slots=(Slot("cell", "predicted"),),
        per_class=rules.class_rate("precision"),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "recall", "weighted share of the class's rows predicted as the class (its accuracy)",
        slots=(),
        per_class=rules.class_rate("recall"),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    Statistic(
        "f1", "harmonic mean of precision and recall: 2·hits / (predicted + true) (0 if both are 0)", label="F1",
        slots=(),
        per_class=rules.class_rate("f1"),
        headline=frozenset({"class"}),
        interval=True,
        better=+1,
        clip=(0.0, 1.0),
    ),
    *(
        Statistic(
            f"{name}_{average}", f"{name} averaged over classes, {how} (sklearn average={average!r})",
            slots=(),
            per_slice=rules.averaged_rate(name, average),
            better=+1,
            clip=(0.0, 1.0),
            headline=frozenset({"slice"}) if (name, average) == ("f1", "macro") else frozenset(),
            interval=True,
            label="macro F1" if (name, average) == ("f1", "macro") else "",
        )
        for name in ("precision", "recall", "f1")
        for average, how in (("macro", "unweighted, over the classes true or predicted in the slice"),
                             ("weighted", "weighted by the classes' true weight"))
    ),
    Statistic(
        "auc", "one-vs-rest ROC AUC of the class, exact for slices within exact_auc_max_values, else from "
        "binned probabilities (slice: class 1 if binary, else the macro mean); interval from DeLong's standard error", label="AUC",
        slots=(Slot("roc", "positive"), Slot("roc", "all")),
        per_class=rules.roc_class("auc"), per_slice=rules.roc_slice("auc"),
        headline=frozenset({"slice"}),
        interval=True, standard_error=(rules.roc_class("se"), rules.roc_slice("se")), clip=(0.0, 1.0),
        better=+1,
    ),
    Statistic(
        "auc_error_bound", "worst-case |auc - exact AUC| from the binning: half the share of "
        "(positive, negative) pairs in the same bin; 0 where the AUC is exact",
        slots=(),
        per_class=rules.roc_class("bound"), per_slice=rules.roc_slice("bound"),
    ),
    Statistic(
        "n_ignored", "rows whose label marks them ignored",
        slots=(Slot("row_counts", "ignored"),),
        per_slice=rules.row_count("ignored"),
        role="count", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "n_nonfinite", "rows skipped for a NaN or infinite prediction (or reference)",
        slots=(Slot("row_counts", "nonfinite"),),
        per_slice=rules.row_count("nonfinite"),
        role="count", rtol=0.0, atol=0.0,
    ),
    Statistic(
        "kl_mean", "weighted mean KL(reference ‖ prediction)",
        slots=(Slot("cell", "kl"),),
        per_class=rules.class_mean("kl"), per_slice=rules.slice_mean("kl"),
        units="information", reference_only=True,
        interval=True,
        better=-1,
        clip=(0.0, np.inf),
    ),
    Statistic(
        "predicted_marginal", "(S, C): the weighted mean predicted distribution per slice",
        slots=(Slot("marginal"),),
        per_slice=rules.predicted_marginal,
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