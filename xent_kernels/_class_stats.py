"""``class_stats_kernel``: one partition into the per-class statistics state, by the
narrow (``_narrow.py``) or the wide (``_wide.py``) path."""

from __future__ import annotations

from ._narrow import NARROW_CLASSES, _class_stats_narrow
from ._numba import kernel
from ._wide import _class_stats_wide


@kernel
def class_stats_kernel(
    z, labels, weights, slice_ids, ref, kind, ref_kind, n_bins, max_ce, has_weights, has_slices, has_ref,
    counts, cell_sum, cell_comp, ce_m2, marg_sum, marg_comp, hist_sum, hist_comp, row_counts,
):
    """Accumulate one partition into the (zeroed or running) state arrays.

    `max_ce` caps each row's CE (-log eps: the true class's probability is clipped to
    at least eps), +inf for exact CE.

    Rows with label < 0 are ignored; rows with a non-finite prediction (or reference)
    are counted and skipped. Each block is reduced to per-row summaries (CE, entropy,
    rank of the true class, ...), which are then scattered into per-cell sums. Those
    are plain float64 over one block of rows and fold into the compensated totals at
    the end of the block (cells; narrow predictions: every NARROW_FOLD_ROWS rows) or
    every FOLD_ROWS rows (per-slice marginals and histogram). CE is summed shifted by
    the first value seen since the last fold, so its variance (Chan's formula) does
    not cancel. Predictions with C <= NARROW_CLASSES go to ``_class_stats_narrow``,
    wider ones to ``_class_stats_wide``; both work on the flat state arrays.
    """
    n_slices = counts.shape[0]
    flat = (
        counts.reshape(-1), cell_sum.reshape(-1), cell_comp.reshape(-1), ce_m2.reshape(-1),
        marg_sum.reshape(-1), marg_comp.reshape(-1), hist_sum.reshape(-1), hist_comp.reshape(-1),
    )
    if z.shape[1] <= NARROW_CLASSES:
        _class_stats_narrow(
            z, labels, weights, slice_ids, ref, kind, ref_kind, n_bins, max_ce, has_weights, has_slices, has_ref,
            n_slices, *flat, row_counts,
        )
    else:
        _class_stats_wide(
            z, labels, weights, slice_ids, ref, kind, ref_kind, n_bins, max_ce, has_weights, has_slices, has_ref,
            n_slices, *flat, row_counts,
        )

