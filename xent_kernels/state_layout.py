"""The arrays of the partial state: their names, axes, dtypes and merge rules.

``ClassStats`` has one attribute per entry of ``STATE_ARRAYS`` (two for a compensated
sum); the fields along an array's ``field`` axis are numbered by the statistics that
declare them (:mod:`xent_kernels.statistics`), and the arrays merge by the rules of
:mod:`xent_kernels.merge_rules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
