"""``class_stats_kernel``: one partition into the per-class statistics state, by the
narrow (``_narrow.py``) or the wide (``_wide.py``) path.

The choice is made here, in Python, once per partition: a compiled function that
called both paths would compile both (and optimize them again as one module) on
the first call, about half of a fresh machine's first run. Python picks the path the
data needs, and only that path compiles. The inputs go over as read-only views:
Numba types a read-only array apart from a writable one, and the reader hands over
both (zero-copy views of Arrow's buffers, copies), so each would compile its own
specialisation of the same code."""

from __future__ import annotations

import numpy as np

from ._layout import N_ROC_FIELDS
from ._narrow import NARROW_CLASSES, _class_stats_narrow
from ._wide import _class_stats_wide


def class_stats_kernel(
    z, labels, weights, slice_ids, bucket_ids, ref, kind, ref_kind, n_bins, max_ce,
    has_weights, has_slices, has_buckets, has_ref,
    counts, cell_sum, cell_comp, ce_m2, marg_sum, marg_comp, hist_sum, hist_comp, row_counts,
    conf_n, conf_sum, conf_comp, roc_sum, roc_comp,
):
    """Accumulate one partition into the (zeroed or running) state arrays, all flat
    (``ClassStats`` attributes in ``STATE_ATTRIBUTES`` order, raveled).

    `max_ce` caps each row's CE (-log eps: the true class's probability is clipped to
    at least eps), +inf for exact CE.

    Rows with label < 0 are ignored; rows with a non-finite prediction (or reference)
    are counted and skipped. Each block is reduced to per-row summaries (CE, entropy,
    rank of the true class, predicted class, ...), which are then scattered into
    per-cell sums. Those are plain float64 over one block of rows and fold into the
    compensated totals at the end of the block (cells; narrow predictions: every
    NARROW_FOLD_ROWS rows per bucket) or every FOLD_ROWS rows per bucket (per-slice
    marginals and histogram); the confusion matrix and the ROC histograms are plain
    sums over the partition (their compensation terms stay 0). CE is summed shifted by
    the first value seen since the last fold, so its variance (Chan's formula) does
    not cancel. Predictions with C <= NARROW_CLASSES go to ``_class_stats_narrow``,
    wider ones to ``_class_stats_wide``.
    """
    n_classes = z.shape[1]
    n_slices = marg_sum.shape[0] // n_classes
    n_buckets = counts.shape[0] // (n_slices * n_classes)
    n_thresholds = roc_sum.shape[0] // (n_slices * n_classes * N_ROC_FIELDS)
    z, labels, weights, slice_ids, bucket_ids, ref = map(_read_only, (z, labels, weights, slice_ids, bucket_ids, ref))
    args = (
        z, labels, weights, slice_ids, bucket_ids, ref, kind, ref_kind, n_bins, max_ce,
        has_weights, has_slices, has_buckets, has_ref, n_slices, n_buckets, n_thresholds, conf_n.shape[0] > 0,
        counts, cell_sum, cell_comp, ce_m2, marg_sum, marg_comp, hist_sum, hist_comp, row_counts,
        conf_n, conf_sum, roc_sum,
    )
    if n_classes <= NARROW_CLASSES:
        _class_stats_narrow(*args)
    else:
        _class_stats_wide(*args)


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of `array` (no copy)."""
    view = array.view()
    view.flags.writeable = False
    return view
