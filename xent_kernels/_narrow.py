"""The fused per-class statistics for narrow predictions (C <= NARROW_CLASSES):
blocks of NARROW_ROWS rows, column-major in one scratch (layout in ``_layout.py``)."""

from __future__ import annotations

import numpy as np

from ._fold import FOLD_ROWS, _fold_cell, _fold_slices, _shift_of, _touch
from ._layout import (
    _ARG, _CONF, _E2, _ET, _INV, _KL, _LOGN, _N_ROW_FIELDS, _OK, _PCELL, _RANK, _ROW_CE, _ROW_CELL, _ROW_HIST,
    _ROW_PRED_CELL, _ROW_W_BRIER, _ROW_W_CONF, _ROW_W_ENTROPY, _ROW_W_KL, _ROW_W_P_TRUE, _ROW_W_TOP1,
    _ROW_W_TOP5, _ROW_WEIGHT, _SCALE, _T0, _TOP, _TOT, _TY, _Y, BLK_CE_SQ, BLK_COUNT, BRIER, CE, ENTROPY,
    HIST_CONF, HIST_CORRECT, HIST_WEIGHT, IGNORED, KL, N_BLK_FIELDS, N_HIST_FIELDS, N_ROC_FIELDS,
    N_ROW_COUNT_FIELDS, NARROW_ROWS, NONFINITE, P_TRUE, PREDICTED, ROC_ALL, ROC_POSITIVE, TOP1, TOP5, WEIGHT,
)
from ._math import fast_exp, fast_log
from ._numba import kernel
from ._prepare import LOG_PROBS, LOGITS, _all_finite

# Predictions with at most this many classes use column-major ("narrow") blocks.
NARROW_CLASSES = 32
# Narrow per-cell sums fold into their compensated totals every this many rows (and at
# the end): the fold costs a few hundred cycles per touched cell, too much per block.
NARROW_FOLD_ROWS = 1024


@kernel
def narrow_scratch_size(n_classes):
    return (_N_ROW_FIELDS + 2 * n_classes) * NARROW_ROWS


@kernel
def _ix(row0, j, i):
    """W index row0 + j * NARROW_ROWS + i, unsigned: LLVM cannot prove a signed j * 128
    non-negative, so Numba's wraparound test stays in the loop and blocks vectorizing."""
    return np.uint64(row0) + np.uint64(j) * np.uint64(NARROW_ROWS) + np.uint64(i)


@kernel
def prepare_block_narrow(z, labels, r0, rows, kind, W, summarize, keep_t=True):
    """``prepare_block`` and the per-row summary of the true class for narrow
    predictions, column-major into the scratch W (layout in ``_layout.py``): with a handful of classes per row, row-wise loops
    are all loop overhead; column-major, every per-row reduction is a vertical vector
    operation across rows. For logits the exp pass also accumulates Σe, Σe·t and the
    rank of the true class, so each element is loaded once after the transpose.
    `summarize` False (a reference prediction) skips t_true and rank. For logits,
    `keep_t` False leaves the T rows holding the logits instead of t = z - max (one
    store less per value: for callers that read only E)."""
    C = z.shape[1]
    NR = NARROW_ROWS
    E0 = _T0 + C * NR
    for i in range(rows):
        W[_Y * NR + i] = max(labels[np.uint64(r0) + np.uint64(i)], 0)
    if kind == LOGITS:
        # Column by column: a strided load and a contiguous store per element; row by
        # row, an inner loop of C iterations would cost its overhead on every row.
        for j in range(C):
            for i in range(rows):
                W[_ix(_T0, j, i)] = z[np.uint64(r0) + np.uint64(i), j]
        for i in range(rows):
            W[_TOP * NR + i] = W[_T0 + i]
        for j in range(1, C):
            for i in range(rows):
                W[_TOP * NR + i] = max(W[_TOP * NR + i], W[_ix(_T0, j, i)])
        for i in range(rows):
            y = np.uint64(W[_Y * NR + i])
            W[_TY * NR + i] = W[_ix(_T0, y, i)] - W[_TOP * NR + i]
            W[_TOT * NR + i] = 0.0
            W[_ET * NR + i] = 0.0
            W[_RANK * NR + i] = 0.0
            W[_E2 * NR + i] = 0.0
            W[_ARG * NR + i] = C
        # Σ e·t is also the row's finiteness check: every term is finite when the row
        # is, and NaN when it holds NaN or ±inf (t = NaN, or e = 0 with t = -inf; and
        # fast_exp(NaN) = 0). The `summarize` test is loop-invariant: timed as fast as two copies.
        for j in range(C):
            fj = np.float64(j)
            for i in range(rows):
                tj = W[_ix(_T0, j, i)] - W[_TOP * NR + i]
                ej = fast_exp(tj)
                if keep_t:
                    W[_ix(_T0, j, i)] = tj
                W[_ix(E0, j, i)] = ej
                W[_TOT * NR + i] += ej
                W[_ET * NR + i] += ej * tj
                if summarize:
                    ty = W[_TY * NR + i]
                    above = (tj > ty) | ((tj == ty) & (fj < W[_Y * NR + i]))
                    W[_RANK * NR + i] += 1.0 if above else 0.0
                    W[_E2 * NR + i] += ej * ej
                    W[_ARG * NR + i] = min(W[_ARG * NR + i], fj if tj == 0.0 else C)  # the top has t = 0
        n_nan = 0
        for i in range(rows):
            s = W[_TOT * NR + i]
            inv = 1.0 / s
            ok = np.isfinite(W[_ET * NR + i])
            n_nan += not ok
            W[_OK * NR + i] = 1.0 if ok else 0.0
            W[_INV * NR + i] = inv
            W[_CONF * NR + i] = inv  # the largest E is exp(0) = 1
            # s is in [1, C] for a row without NaN or inf (its largest E is 1); other rows
            # are discarded, so any finite s >= 1 stands in and fast_log's branches for
            # 0, negative, NaN and inf fold away: the loop vectorizes.
            W[_LOGN * NR + i] = fast_log(s if (s >= 1.0) & (s <= 1e300) else 1.0)
        if n_nan:
            # Σ e·t is also NaN for a finite float64 row whose spread overflows (t = -inf,
            # e = 0): such a row counts, with 0·log 0 = 0.
            for i in range(rows):
                r = np.uint64(r0) + np.uint64(i)
                if W[_OK * NR + i] == 0.0 and _all_finite(z, r):
                    et = 0.0
                    for j in range(C):
                        ej = W[_ix(E0, j, i)]
                        et += ej * (np.float64(z[r, j]) - W[_TOP * NR + i]) if ej > 0.0 else 0.0
                    W[_ET * NR + i] = et
                    W[_OK * NR + i] = 1.0
        return
    for i in range(rows):
        W[_TOP * NR + i] = -np.inf if kind == LOG_PROBS else 0.0
        W[_TOT * NR + i] = 0.0
        W[_LOGN * NR + i] = 0.0
        W[_INV * NR + i] = 1.0
    for j in range(C):
        for i in range(rows):
            v = np.float64(z[np.uint64(r0) + np.uint64(i), j])
            W[_ix(_T0, j, i)] = v
            W[_TOP * NR + i] = max(W[_TOP * NR + i], v)
    if kind == LOG_PROBS:
        for j in range(C):
            for i in range(rows):
                v = W[_ix(_T0, j, i)]
                W[_TOT * NR + i] += v if v != -np.inf else 0.0
                W[_ix(E0, j, i)] = fast_exp(v)
        for i in range(rows):
            top = W[_TOP * NR + i]
            W[_OK * NR + i] = 1.0 if np.isfinite(W[_TOT * NR + i]) and top > -np.inf else 0.0
            W[_CONF * NR + i] = fast_exp(top)
    else:
        for j in range(C):
            for i in range(rows):
                v = W[_ix(_T0, j, i)]
                W[_TOT * NR + i] += v if v >= 0.0 else np.nan  # NaN marks a negative probability
                W[_ix(E0, j, i)] = v
        for j in range(C):
            for i in range(rows):
                W[_ix(_T0, j, i)] = fast_log(W[_ix(E0, j, i)])
        for i in range(rows):
            W[_OK * NR + i] = 1.0 if np.isfinite(W[_TOT * NR + i]) else 0.0
            W[_CONF * NR + i] = W[_TOP * NR + i]
    if summarize:
        _summarize_narrow(W, C, rows)


@kernel
def _summarize_narrow(W, C, rows):
    """t_true, Σ e·t (0·log 0 = 0), Σe², the rank of the true class (ties toward
    the lower class index) and the predicted class (the first with the top t: rank 0
    is the predicted class) from the T and E rows of W."""
    NR = NARROW_ROWS
    E0 = _T0 + C * NR
    for i in range(rows):
        y = np.uint64(W[_Y * NR + i])
        W[_TY * NR + i] = W[_ix(_T0, y, i)]
        W[_ET * NR + i] = 0.0
        W[_RANK * NR + i] = 0.0
        W[_E2 * NR + i] = 0.0
        W[_ARG * NR + i] = C
        W[_PCELL * NR + i] = W[_T0 + i]  # the top t, for the predicted class
    for j in range(1, C):
        for i in range(rows):
            W[_PCELL * NR + i] = max(W[_PCELL * NR + i], W[_ix(_T0, j, i)])
    for j in range(C):
        fj = np.float64(j)
        for i in range(rows):
            tj = W[_ix(_T0, j, i)]
            ej = W[_ix(E0, j, i)]
            W[_ET * NR + i] += ej * tj if ej > 0.0 else 0.0
            W[_E2 * NR + i] += ej * ej
            ty = W[_TY * NR + i]
            above = (tj > ty) | ((tj == ty) & (fj < W[_Y * NR + i]))
            W[_RANK * NR + i] += 1.0 if above else 0.0
            W[_ARG * NR + i] = min(W[_ARG * NR + i], fj if tj == W[_PCELL * NR + i] else C)


@kernel
def _kl_narrow(WR, W, C, rows):
    """W's KL row = KL(reference‖pred) from the reference's scratch WR; W's ok row
    becomes ok(pred) and ok(reference)."""
    NR = NARROW_ROWS
    E0 = _T0 + C * NR
    for i in range(rows):
        W[_KL * NR + i] = 0.0
    for j in range(C):
        for i in range(rows):
            k = _ix(_T0, j, i)
            ej = WR[_ix(E0, j, i)]
            W[_KL * NR + i] += ej * (WR[k] - W[k]) if ej > 0.0 else 0.0
    for i in range(rows):
        W[_KL * NR + i] = WR[_INV * NR + i] * W[_KL * NR + i] - WR[_LOGN * NR + i] + W[_LOGN * NR + i]
        W[_OK * NR + i] = W[_OK * NR + i] * WR[_OK * NR + i]


@kernel
def _marginal_narrow(W, C, rows, slice_ids, r0, has_slices, s_marg):
    """s_marg[slice * C + j] += scale_i * E[j, i]; scale is 0 for rows that do not count."""
    NR = NARROW_ROWS
    E0 = _T0 + C * NR
    first = slice_ids[r0] if has_slices else 0
    same = True
    if has_slices:
        for i in range(rows):
            same &= slice_ids[np.uint64(r0) + np.uint64(i)] == first
    if same:
        base = np.uint64(first * C)
        for j in range(C):
            acc = 0.0
            for i in range(rows):
                sc = W[_SCALE * NR + i]
                acc += sc * W[_ix(E0, j, i)] if sc > 0.0 else 0.0
            s_marg[base + np.uint64(j)] += acc
    else:
        for i in range(rows):
            sc = W[_SCALE * NR + i]
            if sc > 0.0:
                base = np.uint64(slice_ids[np.uint64(r0) + np.uint64(i)] * C)
                for j in range(C):
                    s_marg[base + np.uint64(j)] += sc * W[_ix(E0, j, i)]


# each cell with one vectorized pass over the block per class instead of scattering
# row by row (C passes per block: measured to break even with the scatter near C = 6-8).
NARROW_VERTICAL_CLASSES = 6


@kernel
def _cells_vertical(W, C, rows, sl, epoch, stamp, touched, n_touched, shift, blk):
    """The cell sums of one block whose rows are all in slice `sl` (and one bucket):
    per class, masked sums over the block's rows (W prepared for the scatter as in
    ``_class_stats_narrow``). Returns the new n_touched."""
    NR = NARROW_ROWS
    for j in range(C):
        cell = np.uint64(sl * C + j)
        fc = np.float64(sl * C + j)
        first = -1
        predicted = 0.0
        for i in range(rows):
            ok = W[_OK * NR + i] != 0.0
            predicted += W[_ROW_WEIGHT * NR + i] if ok & (W[_ROW_PRED_CELL * NR + i] == fc) else 0.0
            if first < 0 and ok and W[_ROW_CELL * NR + i] == fc:
                first = i
        if first < 0 and predicted == 0.0:
            continue  # no row of this class in the block
        n_touched = _touch(cell, epoch, stamp, touched, n_touched, shift)
        f = cell * np.uint64(N_BLK_FIELDS)
        blk[f + np.uint64(PREDICTED)] += predicted
        if first < 0:
            continue
        k = _shift_of(cell, W[_ROW_CE * NR + first], shift)
        count = 0.0
        sw = 0.0
        swd = 0.0
        swdd = 0.0
        s_entropy = 0.0
        s_p_true = 0.0
        s_top1 = 0.0
        s_top5 = 0.0
        s_kl = 0.0
        s_brier = 0.0
        for i in range(rows):
            hit = (W[_OK * NR + i] != 0.0) & (W[_ROW_CELL * NR + i] == fc)
            count += 1.0 if hit else 0.0
            w = W[_ROW_WEIGHT * NR + i]
            # rows of weight 0 count but add nothing (0 * inf must not make a NaN)
            use = hit & (w != 0.0)
            d = W[_ROW_CE * NR + i] - k
            wd = w * d
            sw += w if use else 0.0
            swd += wd if use else 0.0
            swdd += wd * d if use else 0.0
            s_entropy += W[_ROW_W_ENTROPY * NR + i] if use else 0.0
            s_p_true += W[_ROW_W_P_TRUE * NR + i] if use else 0.0
            s_top1 += W[_ROW_W_TOP1 * NR + i] if use else 0.0
            s_top5 += W[_ROW_W_TOP5 * NR + i] if use else 0.0
            s_kl += W[_ROW_W_KL * NR + i] if use else 0.0
            s_brier += W[_ROW_W_BRIER * NR + i] if use else 0.0
        blk[f + np.uint64(WEIGHT)] += sw
        blk[f + np.uint64(CE)] += swd
        blk[f + np.uint64(BLK_CE_SQ)] += swdd
        blk[f + np.uint64(ENTROPY)] += s_entropy
        blk[f + np.uint64(P_TRUE)] += s_p_true
        blk[f + np.uint64(TOP1)] += s_top1
        blk[f + np.uint64(TOP5)] += s_top5
        blk[f + np.uint64(KL)] += s_kl
        blk[f + np.uint64(BRIER)] += s_brier
        blk[f + np.uint64(BLK_COUNT)] += count
    return n_touched


@kernel
def _roc_narrow(W, C, rows, labels, slice_ids, r0, has_slices, n_thresholds, roc, cells, row_scale, row_weight, row_base):
    """The ROC histograms of one block: per class j, every counted row's weight into
    the bin of q_j (ROC_ALL), and into the bin of q_y of its true class y (ROC_POSITIVE,
    the same bin as its q_j for j = y). First each element's offset within its slice's
    histograms, in loops that vectorize (rows that do not count get weight 0 and bin 0,
    so the scatter needs no test); then the scatter. `cells` (C·NARROW_ROWS int32),
    `row_scale`, `row_weight` and `row_base` (NARROW_ROWS) are scratch."""
    NR = NARROW_ROWS
    E0 = _T0 + C * NR
    T = n_thresholds
    top = np.float64(T - 1)
    for i in range(rows):
        w = W[_ROW_WEIGHT * NR + i]
        counts = (W[_OK * NR + i] != 0.0) & (w != 0.0)
        row_scale[i] = W[_INV * NR + i] * T if counts else 0.0
        row_weight[i] = w if counts else 0.0
        sl = slice_ids[np.uint64(r0) + np.uint64(i)] if has_slices else 0
        row_base[i] = sl * C * T * N_ROC_FIELDS
    for j in range(C):
        for i in range(rows):
            x = W[_ix(E0, j, i)] * row_scale[i]  # q_j·T; NaN for rows that do not count
            x = x if x < top else top
            x = x if x > 0.0 else 0.0
            cells[j * NR + i] = (np.int32(j * T) + np.int32(x)) * np.int32(N_ROC_FIELDS)
    for i in range(rows):
        base = np.uint64(row_base[i])
        w = row_weight[i]
        for j in range(C):
            roc[base + np.uint64(cells[j * NR + i] + ROC_ALL)] += w
        y = max(labels[np.uint64(r0) + np.uint64(i)], 0)
        roc[base + np.uint64(cells[y * NR + i] + ROC_POSITIVE)] += w


@kernel
def _class_stats_narrow(
    z, labels, weights, slice_ids, bucket_ids, ref, kind, ref_kind, n_bins, max_ce,
    has_weights, has_slices, has_buckets, has_ref, n_slices, n_buckets, n_thresholds, has_confusion,
    flat_counts, flat_sum, flat_comp, flat_m2, flat_msum, flat_mcomp, flat_hsum, flat_hcomp, row_counts,
    conf_n, conf_w, roc,
):
    """``class_stats_kernel`` for C <= NARROW_CLASSES. Blocks of NARROW_ROWS rows are
    prepared column-major into one scratch (``prepare_block_narrow``); the scatter loop
    then only reads per-row values and adds them into the per-cell sums (blk, N_BLK_FIELDS
    a cell, contiguous) and the per-(slice, bucket) histogram. Cells fold every
    NARROW_FOLD_ROWS rows per bucket, with CE shifted by the first value each cell saw
    since its last fold; the confusion matrix and ROC histograms are plain sums over
    the partition."""
    n, C = z.shape
    NR = NARROW_ROWS
    K = n_buckets
    min_p_true = np.exp(-max_ce)  # 0 without eps
    W = np.zeros(narrow_scratch_size(C))
    WR = np.zeros(narrow_scratch_size(C) if has_ref else 0)

    n_cells = n_slices * K * C
    blk = np.zeros(n_cells * N_BLK_FIELDS)
    shift = np.zeros(n_cells)
    stamp = np.zeros(n_cells, dtype=np.int64)  # the fold epoch in which the cell was last touched
    touched = np.empty(n_cells, dtype=np.int64)
    # int64 from the start: a literal 0 or 1 would compile the callees once more
    n_touched = np.int64(0)
    epoch = np.int64(1)
    s_marg = np.zeros(n_slices * C)
    s_hist = np.zeros(n_slices * K * n_bins * N_HIST_FIELDS)
    slice_touched = np.zeros(n_slices, dtype=np.bool_)
    slice_list = np.empty(n_slices, dtype=np.int64)
    n_slice_list = 0
    if not has_slices:
        slice_touched[0] = True
        slice_list[0] = 0
        n_slice_list = 1
    roc_bins = np.zeros(C * NR if n_thresholds else 0, dtype=np.int32)
    roc_scale = np.zeros(NR)
    roc_weight = np.zeros(NR)
    roc_base = np.zeros(NR, dtype=np.int64)
    rows_since_fold = 0
    rows_since_cell_fold = 0
    # Flags as typed booleans, not literals: both calls of prepare_block_narrow (the
    # prediction's and the reference's) then share one compiled specialisation.
    yes, no = np.bool_(True), np.bool_(False)
    # With K buckets a cell gets about 1/K of the rows: fold K times less often.
    cell_fold_rows = NARROW_FOLD_ROWS * K
    slice_fold_rows = FOLD_ROWS * K

    for r0 in range(0, n, NR):
        r1 = min(n, r0 + NR)
        rows = r1 - r0
        prepare_block_narrow(z, labels, r0, rows, kind, W, yes, has_ref)  # KL reads t
        if has_ref:
            prepare_block_narrow(ref, labels, r0, rows, ref_kind, WR, no, yes)
            _kl_narrow(WR, W, C, rows)

        # Per row, in loops that vectorize, into the scatter stage's rows of W (_ROW_...,
        # see _layout.py): whether it counts (_OK), its cells, weight, marginal scale
        # (_SCALE, 0 for rows that do not count) and histogram offset; then the weighted
        # values the scatter adds. The scatter loop then reads W only and does pure adds.
        # Values of rows that do not count (or weigh 0) are never read.
        n_skipped = 0
        for i in range(rows):
            r = np.uint64(r0) + np.uint64(i)
            y = labels[r]
            valid = (y >= 0) & (W[_OK * NR + i] != 0.0)
            w = np.float64(weights[r]) if has_weights else 1.0
            group = (slice_ids[r] if has_slices else 0) * K + (bucket_ids[r] if has_buckets else 0)
            conf = W[_CONF * NR + i] if valid else 0.0
            b = min(int(conf * n_bins), n_bins - 1)
            inv = W[_INV * NR + i]
            W[_SCALE * NR + i] = w * inv if valid else 0.0
            W[_OK * NR + i] = 1.0 if valid else 0.0
            W[_ROW_CELL * NR + i] = np.float64(group * C + max(y, 0))
            W[_ROW_PRED_CELL * NR + i] = np.float64(group * C) + W[_ARG * NR + i]
            W[_ROW_WEIGHT * NR + i] = w
            lognorm = W[_LOGN * NR + i]
            q_true = fast_exp(W[_TY * NR + i]) * inv  # e of the true class, as the exp pass computed it
            # Σ_j (q_j - y_j)² = Σ q² - 2 q_y + 1
            W[_ROW_W_BRIER * NR + i] = w * (W[_E2 * NR + i] * inv * inv - 2.0 * q_true + 1.0)
            W[_ROW_W_P_TRUE * NR + i] = w * max(q_true, min_p_true)  # eps: q_true -> max(q_true, eps)
            W[_ROW_CE * NR + i] = min(lognorm - W[_TY * NR + i], max_ce)  # eps: q_true -> max(q_true, eps)
            W[_ROW_W_ENTROPY * NR + i] = w * (lognorm - inv * W[_ET * NR + i])
            W[_ROW_HIST * NR + i] = np.float64((group * n_bins + b) * N_HIST_FIELDS)
            n_skipped += not valid
        for i in range(rows):
            w = W[_ROW_WEIGHT * NR + i]
            rank = W[_RANK * NR + i]
            inv = W[_INV * NR + i]
            W[_ROW_W_TOP1 * NR + i] = w if rank < 1.0 else 0.0
            W[_ROW_W_TOP5 * NR + i] = w if rank < 5.0 else 0.0
            W[_ROW_W_CONF * NR + i] = w * W[_CONF * NR + i]
        if has_ref:
            for i in range(rows):
                W[_ROW_W_KL * NR + i] *= W[_ROW_WEIGHT * NR + i]  # KL -> w·KL
        if n_skipped:
            for i in range(rows):
                sl = slice_ids[np.uint64(r0) + np.uint64(i)] if has_slices else 0
                if labels[np.uint64(r0) + np.uint64(i)] < 0:
                    row_counts[sl * N_ROW_COUNT_FIELDS + IGNORED] += 1
                elif W[_OK * NR + i] == 0.0:
                    row_counts[sl * N_ROW_COUNT_FIELDS + NONFINITE] += 1

        vertical = (C <= NARROW_VERTICAL_CLASSES) & (not has_buckets)
        sl0 = slice_ids[r0] if has_slices else 0
        if vertical and has_slices:
            for i in range(rows):
                vertical &= slice_ids[np.uint64(r0) + np.uint64(i)] == sl0
        if vertical:
            n_touched = _cells_vertical(W, C, rows, sl0, epoch, stamp, touched, n_touched, shift, blk)
        for i in range(rows if not vertical else 0):
            if W[_OK * NR + i] == 0.0:
                continue
            cell = np.uint64(W[_ROW_CELL * NR + i])
            ce = W[_ROW_CE * NR + i]
            # Inline, not _touch/_shift_of: calls with array arguments cost more than the scatter.
            if stamp[cell] != epoch:
                stamp[cell] = epoch
                touched[n_touched] = cell
                n_touched += 1
                shift[cell] = ce if np.isfinite(ce) else 0.0
            elif shift[cell] != shift[cell]:  # touched only as a predicted class so far
                shift[cell] = ce if np.isfinite(ce) else 0.0
            k = shift[cell]
            f = cell * np.uint64(N_BLK_FIELDS)
            blk[f + np.uint64(BLK_COUNT)] += 1.0
            w = W[_ROW_WEIGHT * NR + i]
            if w == 0.0:  # counted, contributes nothing (and 0 * inf must not make a NaN)
                continue
            wd = w * (ce - k)
            blk[f + np.uint64(WEIGHT)] += w
            blk[f + np.uint64(CE)] += wd
            blk[f + np.uint64(BLK_CE_SQ)] += wd * (ce - k)
            blk[f + np.uint64(ENTROPY)] += W[_ROW_W_ENTROPY * NR + i]
            blk[f + np.uint64(P_TRUE)] += W[_ROW_W_P_TRUE * NR + i]
            blk[f + np.uint64(TOP1)] += W[_ROW_W_TOP1 * NR + i]
            blk[f + np.uint64(TOP5)] += W[_ROW_W_TOP5 * NR + i]
            blk[f + np.uint64(BRIER)] += W[_ROW_W_BRIER * NR + i]
            if has_ref:
                blk[f + np.uint64(KL)] += W[_ROW_W_KL * NR + i]
            pcell = np.uint64(W[_ROW_PRED_CELL * NR + i])
            if stamp[pcell] != epoch:
                stamp[pcell] = epoch
                touched[n_touched] = pcell
                n_touched += 1
                shift[pcell] = np.nan
            blk[pcell * np.uint64(N_BLK_FIELDS) + np.uint64(PREDICTED)] += w
            h = np.uint64(W[_ROW_HIST * NR + i])
            s_hist[h + np.uint64(HIST_WEIGHT)] += w
            s_hist[h + np.uint64(HIST_CORRECT)] += W[_ROW_W_TOP1 * NR + i]
            s_hist[h + np.uint64(HIST_CONF)] += W[_ROW_W_CONF * NR + i]
        for i in range(rows if vertical else 0):
            w = W[_ROW_WEIGHT * NR + i]
            if (W[_OK * NR + i] != 0.0) & (w != 0.0):
                h = np.uint64(W[_ROW_HIST * NR + i])
                s_hist[h + np.uint64(HIST_WEIGHT)] += w
                s_hist[h + np.uint64(HIST_CORRECT)] += W[_ROW_W_TOP1 * NR + i]
                s_hist[h + np.uint64(HIST_CONF)] += W[_ROW_W_CONF * NR + i]
        if has_confusion:
            for i in range(rows):
                if W[_OK * NR + i] != 0.0:
                    r = np.uint64(r0) + np.uint64(i)
                    sl = slice_ids[r] if has_slices else 0
                    q = np.uint64((sl * C + labels[r]) * C) + np.uint64(W[_ARG * NR + i])
                    conf_n[q] += 1
                    conf_w[q] += W[_ROW_WEIGHT * NR + i]
        if n_thresholds:
            _roc_narrow(W, C, rows, labels, slice_ids, r0, has_slices, n_thresholds, roc, roc_bins, roc_scale,
                        roc_weight, roc_base)
        if has_slices:
            for i in range(rows):
                if (W[_OK * NR + i] != 0.0) & (W[_ROW_WEIGHT * NR + i] != 0.0):
                    sl = slice_ids[np.uint64(r0) + np.uint64(i)]
                    if not slice_touched[sl]:
                        slice_touched[sl] = True
                        slice_list[n_slice_list] = sl
                        n_slice_list += 1

        _marginal_narrow(W, C, rows, slice_ids, r0, has_slices, s_marg)

        rows_since_cell_fold += rows
        if rows_since_cell_fold >= cell_fold_rows or r1 == n:
            for k in range(n_touched):
                cell = touched[k]
                _fold_cell(blk, cell * N_BLK_FIELDS, shift[cell], cell, flat_counts, flat_sum, flat_comp, flat_m2)
            n_touched = 0
            epoch += 1
            rows_since_cell_fold = 0

        rows_since_fold += rows
        if rows_since_fold >= slice_fold_rows or r1 == n:
            _fold_slices(slice_list, n_slice_list, C, K, n_bins, s_marg, s_hist, flat_msum, flat_mcomp, flat_hsum,
                         flat_hcomp)
            if has_slices:
                for k in range(n_slice_list):
                    slice_touched[slice_list[k]] = False
                n_slice_list = 0
            rows_since_fold = 0
