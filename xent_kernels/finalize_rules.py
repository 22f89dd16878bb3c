"""The finalize rules the statistics table names: merged sums -> report values.

Each rule takes a :class:`Totals` (a state's sums over its
buckets, or its leave-one-bucket-out totals) and gives one value per present (slice,
class) cell or one per slice. Rules read the totals through its accessors
(``cell_grid``, ``slice_total``, ``hist``, ``row_count``, ``roc``), never the field
positions, so this module needs nothing from the table.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol

import numpy as np


class Totals(Protocol):
    """What a rule reads of a state's sums (:class:`xent_kernels.statistics.Totals`
    implements it): the class count, the totals by state array, and these accessors."""

    n_classes: int
    values: dict[str, Any]

    def cell_grid(self, field: str) -> np.ndarray: ...
    def at_cells(self, grid: np.ndarray) -> np.ndarray: ...
    def slice_total(self, field: str) -> np.ndarray: ...
    def hist(self, field: str) -> np.ndarray: ...
    def row_count(self, field: str) -> np.ndarray: ...
    def roc(self, field: str) -> np.ndarray: ...


Finalize = Callable[[Totals], np.ndarray]


def ratio(numerator, denominator) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is not positive (no warning)."""
    return np.divide(
        numerator, denominator, out=np.full(np.broadcast(numerator, denominator).shape, np.nan),
        where=denominator > 0,
    )


def class_mean(field: str, min_classes: int = 1) -> Finalize:
    """Σw·x / Σw per cell; NaN throughout with fewer than `min_classes` classes."""

    def rule(t: Totals) -> np.ndarray:
        weight = t.at_cells(t.cell_grid("weight"))
        if t.n_classes < min_classes:
            return np.full(weight.shape, np.nan)
        return ratio(t.at_cells(t.cell_grid(field)), weight)

    return rule


def slice_mean(field: str, min_classes: int = 1) -> Finalize:
    """Σw·x / Σw per slice; NaN throughout with fewer than `min_classes` classes."""

    def rule(t: Totals) -> np.ndarray:
        weight = t.slice_total("weight")
        if t.n_classes < min_classes:
            return np.full(weight.shape, np.nan)
        return ratio(t.slice_total(field), weight)

    return rule


def class_total(field: str) -> Finalize:
    return lambda t: t.at_cells(t.cell_grid(field))


def slice_total(field: str) -> Finalize:
    return lambda t: t.slice_total(field)


def row_count(field: str) -> Finalize:
    return lambda t: t.row_count(field)


def ce_std(t: Totals) -> np.ndarray:
    """Weighted population standard deviation of the CE per cell."""
    return np.sqrt(ratio(t.at_cells(t.values["ce_m2"]), t.at_cells(t.cell_grid("weight"))))


def ce_macro(t: Totals) -> np.ndarray:
    """Mean over the classes present in a slice of their mean CE."""
    weight = t.cell_grid("weight")
    class_ce = ratio(t.cell_grid("ce"), weight)
    present = weight > 0
    with np.errstate(invalid="ignore"):
        return np.where(present, class_ce, 0.0).sum(axis=1) / present.sum(axis=1)


def ece(t: Totals) -> np.ndarray:
    """Σ over bins |Σw·correct - Σw·confidence| / Σw."""
    gap = np.abs(t.hist("correct") - t.hist("conf")).sum(axis=1)
    return ratio(gap, t.slice_total("weight"))


def predicted_marginal(t: Totals) -> np.ndarray:
    return ratio(t.values["marginal"], t.slice_total("weight")[:, None])


def _brier_scale(t: Totals) -> float:
    """sklearn's ``brier_score_loss(scale_by_half="auto")``: a binary model's score is
    (q_1 - y)², half of Σ_j (q_j - y_j)²; multiclass scores are not halved."""
    return 0.5 if t.n_classes == 2 else 1.0


def brier_class(t: Totals) -> np.ndarray:
    return class_mean("brier")(t) * _brier_scale(t)


def brier_slice(t: Totals) -> np.ndarray:
    return slice_mean("brier")(t) * _brier_scale(t)


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


def class_rate(name: str) -> Finalize:
    return lambda t: t.at_cells(_class_rates(t)[name])


def averaged_rate(name: str, average: Literal["macro", "weighted"]) -> Finalize:
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
    positive = t.roc("positive")
    parts = _auc_of_histograms(positive, t.roc("all") - positive)
    for s, rows in enumerate(t.values.get("auc_rows") or ()):
        if rows is not None:
            for name, value in _exact_auc(rows, t.n_classes).items():
                parts[name][s] = value
    return parts


def roc_class(part: str) -> Finalize:
    return lambda t: t.at_cells(_roc_parts(t)[part])


def roc_slice(part: str) -> Finalize:
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
