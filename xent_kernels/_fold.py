"""Folding plain per-block sums into the compensated running state."""

from __future__ import annotations

import numpy as np

from ._layout import BLK_CE_SQ, BLK_COUNT, CE, N_BLK_FIELDS, N_CELL_FIELDS, N_HIST_FIELDS, WEIGHT
from ._numba import kernel, strict_kernel

# Per-slice sums (marginals, histogram) fold into their compensated totals at least
# this often; plain float64 sums over so few rows lose nothing measurable.
FOLD_ROWS = 256


@strict_kernel
def _add_compensated(sums, comps, idx, x):
    """Neumaier/TwoSum: sums[idx] + comps[idx] gains x with the rounding error kept.
    Strict (no fastmath): reassociation would simplify the error term to zero."""
    s = sums[idx]
    total = s + x
    back = total - s
    if np.isfinite(total):  # an infinite sum has no rounding error to carry (and inf - inf is NaN)
        comps[idx] += (s - (total - back)) + (x - back)
    sums[idx] = total


@kernel
def _fold_cell(blk, f, shift_c, cell, flat_counts, flat_sum, flat_comp, flat_m2):
    """Fold one cell's block sums blk[f:f + N_BLK_FIELDS] (layout in ``_layout.py``; CE
    shifted by K = shift_c) into the running state: Chan's formula for the CE spread,
    TwoSum for the sums. Zeroes blk[f:f + N_BLK_FIELDS]. A NaN shift (a cell that only
    had predicted rows) counts as 0."""
    if shift_c != shift_c:
        shift_c = 0.0
    w_blk = blk[f + WEIGHT]
    ce_blk = blk[f + CE] + shift_c * w_blk
    f0 = cell * N_CELL_FIELDS
    w_old = flat_sum[f0 + WEIGHT] + flat_comp[f0 + WEIGHT]
    if w_blk > 0.0:
        m2_blk = blk[f + BLK_CE_SQ] - blk[f + CE] * blk[f + CE] / w_blk
        if not np.isfinite(ce_blk):
            m2_blk = np.nan  # the spread of values that include inf is undefined
        elif m2_blk < 0.0:
            m2_blk = 0.0  # rounding
        if w_old > 0.0:
            ce_old = flat_sum[f0 + CE] + flat_comp[f0 + CE]
            delta = ce_blk / w_blk - ce_old / w_old
            m2_blk += delta * delta * w_old * w_blk / (w_old + w_blk)
        flat_m2[cell] += m2_blk
    flat_counts[cell] += np.int64(blk[f + BLK_COUNT])
    for k in range(N_CELL_FIELDS):
        _add_compensated(flat_sum, flat_comp, f0 + k, ce_blk if k == CE else blk[f + k])
    for k in range(N_BLK_FIELDS):
        blk[f + k] = 0.0


@kernel
def _fold_slices(slice_list, n_slice_list, n_cols, n_buckets, n_bins, s_marg, s_hist, msum, mcomp, hsum, hcomp):
    """Fold the touched slices' plain marginal and histogram sums (flat arrays; the
    histogram has `n_buckets` per slice) into their compensated totals, and zero them."""
    for k in range(n_slice_list):
        sl = slice_list[k]
        for j in range(sl * n_cols, (sl + 1) * n_cols):
            _add_compensated(msum, mcomp, j, s_marg[j])
            s_marg[j] = 0.0
        size = n_buckets * n_bins * N_HIST_FIELDS
        for q in range(sl * size, (sl + 1) * size):
            _add_compensated(hsum, hcomp, q, s_hist[q])
            s_hist[q] = 0.0


@kernel
def _touch(cell, epoch, stamp, touched, n_touched, shift):
    """Mark `cell` touched in this fold epoch, its CE shift not yet set (NaN: set by
    the first true row, see ``_shift_of``). Returns the new n_touched."""
    if stamp[cell] != epoch:
        stamp[cell] = epoch
        touched[n_touched] = cell
        n_touched += 1
        shift[cell] = np.nan
    return n_touched


@kernel
def _shift_of(cell, ce, shift):
    """The CE shift of a cell: the CE of the first true row since its last fold (a
    true class given probability 0 has CE = inf, and shifting by it would give NaN)."""
    if shift[cell] != shift[cell]:
        shift[cell] = ce if np.isfinite(ce) else 0.0
    return shift[cell]
