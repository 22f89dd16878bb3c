"""The fused per-class statistics for wide predictions (C > NARROW_CLASSES): rows in
fused row passes (``_wide_row``)."""

from __future__ import annotations

import numpy as np

from ._fold import FOLD_ROWS, _fold_cell, _fold_slices
from ._layout import (
    BLK_CE_SQ, BLK_COUNT, BRIER, CE, ENTROPY, HIST_CONF, HIST_CORRECT, HIST_WEIGHT, IGNORED, KL, N_BLK_FIELDS,
    N_HIST_FIELDS, N_ROC_FIELDS, N_ROW_COUNT_FIELDS, NONFINITE, P_TRUE, PREDICTED, ROC_ALL, ROC_POSITIVE, TOP1,
    TOP5, WEIGHT,
)
from ._math import fast_exp, fast_log, from_order_key, order_key
from ._numba import kernel
from ._prepare import BLOCK_ELEMENTS, LOG_PROBS, LOGITS, _all_finite, prepare_block
from ._rows import _kl_row

@kernel
def _wide_row(z, r, y, kind, t, e, base):
    """One row of a wide prediction in two fused, vectorized passes: max and finite
    check, then t, e = exp(t), Σe, Σ e·t and the rank of the true class `y` together.
    Stores t and e at t[base:], e[base:]; `base` is unsigned, as a signed index LLVM
    cannot prove non-negative gets wrapped around and the stores become scatters
    (and row views would cost reference counting per row). Returns (lognorm, inv_sum, conf, ok,
    t_true, e_true, Σ e·t, rank, Σe², predicted): ``prepare_block``'s values, the true
    class's summary, and the predicted class (the first with the top t: where rank is 0).
    The max is taken over integer order keys: float max reductions do not vectorize."""
    n_cols = z.shape[1]
    key = order_key(z[r, 0])
    total = 0.0
    if kind == LOGITS:
        for j in range(n_cols):
            key = max(key, order_key(z[r, j]))
        m = np.float64(from_order_key(key))
        ty = np.float64(z[r, y]) - m
        s = 0.0
        et = 0.0
        e2 = 0.0
        count = 0
        arg = n_cols
        for j in range(n_cols):
            tj = np.float64(z[r, j]) - m
            ej = fast_exp(tj)
            t[base + np.uint64(j)] = tj
            e[base + np.uint64(j)] = ej
            s += ej
            et += ej * tj  # also the finiteness check, as in prepare_block_narrow
            e2 += ej * ej
            count += (tj > ty) | ((tj == ty) & (j < y))
            arg = min(arg, j if tj == 0.0 else n_cols)  # the top has t = 0
        ok = np.isfinite(et)
        if not ok and _all_finite(z, r):  # the spread overflows: see prepare_block_narrow
            ok = True
            et = 0.0
            for j in range(n_cols):
                ej = e[base + np.uint64(j)]
                et += ej * t[base + np.uint64(j)] if ej > 0.0 else 0.0
        inv = 1.0 / s
        return fast_log(s), inv, inv, ok, ty, e[base + np.uint64(y)], et, count, e2, arg
    if kind == LOG_PROBS:
        for j in range(n_cols):
            v = np.float64(z[r, j])
            total += v if v != -np.inf else 0.0
            key = max(key, order_key(z[r, j]))
        m = np.float64(from_order_key(key))
        ok = np.isfinite(total) and m > -np.inf
        ty = np.float64(z[r, y])
        et = 0.0
        e2 = 0.0
        count = 0
        arg = n_cols
        for j in range(n_cols):
            tj = np.float64(z[r, j])
            ej = fast_exp(tj)
            t[base + np.uint64(j)] = tj
            e[base + np.uint64(j)] = ej
            et += ej * tj if ej > 0.0 else 0.0
            e2 += ej * ej
            count += (tj > ty) | ((tj == ty) & (j < y))
            arg = min(arg, j if tj == m else n_cols)
        return 0.0, 1.0, fast_exp(m), ok, ty, e[base + np.uint64(y)], et, count, e2, arg
    negative = 0
    for j in range(n_cols):
        v = np.float64(z[r, j])
        total += v
        negative += v < 0.0
        key = max(key, order_key(z[r, j]))
    m = max(np.float64(from_order_key(key)), 0.0)
    ok = np.isfinite(total) and negative == 0
    ty = fast_log(np.float64(z[r, y]))
    et = 0.0
    e2 = 0.0
    count = 0
    t_top = -np.inf
    for j in range(n_cols):
        ej = np.float64(z[r, j])
        tj = fast_log(ej)
        t[base + np.uint64(j)] = tj
        e[base + np.uint64(j)] = ej
        et += ej * tj if ej > 0.0 else 0.0
        e2 += ej * ej
        count += (tj > ty) | ((tj == ty) & (j < y))
        t_top = max(t_top, tj)
    arg = n_cols
    for j in range(n_cols):
        arg = min(arg, j if t[base + np.uint64(j)] == t_top else n_cols)
    return 0.0, 1.0, m, ok, ty, e[base + np.uint64(y)], et, count, e2, arg


@kernel
def _axpy(acc, acc_base, a, x, x_base, n):
    """acc[acc_base + j] += a * x[x_base + j] for j < n; unsigned offsets (see _wide_row)."""
    for j in range(n):
        k = np.uint64(j)
        acc[acc_base + k] += a * x[x_base + k]


@kernel
def _class_stats_wide(
    z, labels, weights, slice_ids, bucket_ids, ref, kind, ref_kind, n_bins, max_ce,
    has_weights, has_slices, has_buckets, has_ref, n_slices, n_buckets, n_thresholds, has_confusion,
    flat_counts, flat_sum, flat_comp, flat_m2, flat_msum, flat_mcomp, flat_hsum, flat_hcomp, row_counts,
    conf_n, conf_w, roc,
):
    """``class_stats_kernel`` for C > NARROW_CLASSES: rows in fused row passes (``_wide_row``)."""
    n, n_cols = z.shape
    K = n_buckets
    T = n_thresholds
    min_p_true = np.exp(-max_ce)  # 0 without eps
    block = max(1, BLOCK_ELEMENTS // n_cols)
    t = np.empty(block * n_cols)
    e = np.empty(block * n_cols)
    rt = np.empty(block * n_cols if has_ref else 0)
    re = np.empty(block * n_cols if has_ref else 0)
    lognorm = np.empty(block)
    inv_sum = np.empty(block)
    conf = np.empty(block)
    ok = np.empty(block, dtype=np.bool_)
    rlognorm = np.zeros(block)
    rinv_sum = np.zeros(block)
    rconf = np.empty(block)
    rok = np.ones(block, dtype=np.bool_)
    t_true = np.empty(block)
    e_true = np.empty(block)
    et = np.empty(block)
    rank = np.empty(block, dtype=np.int64)
    e2 = np.empty(block)
    predicted = np.empty(block, dtype=np.int64)
    kl = np.zeros(block)
    scale = np.empty(block)
    slice_of_row = np.zeros(block, dtype=np.int64)

    n_cells = n_slices * K * n_cols
    blk = np.zeros((n_cells, N_BLK_FIELDS))  # layout in _layout.py
    flat_blk = blk.reshape(-1)
    shift = np.zeros(n_cells)
    stamp = np.zeros(n_cells, dtype=np.int64)  # the block in which the cell was last touched
    touched = np.empty(2 * block, dtype=np.int64)  # true and predicted cells of the block's rows
    s_marg = np.zeros((n_slices, n_cols))
    flat_marg = s_marg.reshape(-1)
    s_hist = np.zeros((n_slices * K, n_bins, N_HIST_FIELDS))
    slice_touched = np.zeros(n_slices, dtype=np.bool_)
    slice_list = np.empty(n_slices, dtype=np.int64)
    n_slice_list = 0
    rows_since_fold = 0
    epoch = 0

    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        rows = r1 - r0
        epoch += 1
        for i in range(rows):
            (lognorm[i], inv_sum[i], conf[i], ok[i], t_true[i], e_true[i], et[i], rank[i], e2[i],
             predicted[i]) = _wide_row(z, r0 + i, max(labels[r0 + i], 0), kind, t, e, np.uint64(i * n_cols))
        if has_ref:
            prepare_block(ref, r0, r1, ref_kind, rt, re, rlognorm, rinv_sum, rconf, rok)
            for i in range(rows):
                kl[i] = _kl_row(rt, re, rlognorm[i], rinv_sum[i], t, lognorm[i], i * n_cols, n_cols)

        n_touched = 0
        for i in range(rows):
            r = r0 + i
            y = labels[r]
            sl = slice_ids[r] if has_slices else 0
            slice_of_row[i] = sl
            scale[i] = 0.0
            if y < 0:
                row_counts[sl * N_ROW_COUNT_FIELDS + IGNORED] += 1
                continue
            if not (ok[i] and rok[i]):
                row_counts[sl * N_ROW_COUNT_FIELDS + NONFINITE] += 1
                continue
            w = np.float64(weights[r]) if has_weights else 1.0
            scale[i] = w * inv_sum[i]
            ce = min(lognorm[i] - t_true[i], max_ce)  # eps: q_true -> max(q_true, eps)
            group = sl * K + (bucket_ids[r] if has_buckets else 0)
            cell = group * n_cols + y
            # Inline, not _touch/_shift_of: calls with array arguments cost more than the work.
            if stamp[cell] != epoch:
                stamp[cell] = epoch
                touched[n_touched] = cell
                n_touched += 1
                shift[cell] = ce if np.isfinite(ce) else 0.0
            elif shift[cell] != shift[cell]:  # touched only as a predicted class so far
                shift[cell] = ce if np.isfinite(ce) else 0.0
            k = shift[cell]
            if has_confusion:
                q = (sl * n_cols + y) * n_cols + predicted[i]
                conf_n[q] += 1
                conf_w[q] += w
            if w == 0.0:  # counted, contributes nothing (and 0 * inf must not make a NaN)
                blk[cell, BLK_COUNT] += 1.0
                continue
            d = ce - k
            correct = w if rank[i] < 1 else 0.0
            q_true = e_true[i] * inv_sum[i]
            blk[cell, WEIGHT] += w
            blk[cell, CE] += w * d
            blk[cell, BLK_CE_SQ] += w * d * d
            blk[cell, ENTROPY] += w * (lognorm[i] - inv_sum[i] * et[i])
            blk[cell, P_TRUE] += w * max(q_true, min_p_true)
            blk[cell, TOP1] += correct
            blk[cell, TOP5] += w if rank[i] < 5 else 0.0
            blk[cell, KL] += w * kl[i]
            # Σ_j (q_j - y_j)² = Σ q² - 2 q_y + 1
            blk[cell, BRIER] += w * (e2[i] * inv_sum[i] * inv_sum[i] - 2.0 * q_true + 1.0)
            blk[cell, BLK_COUNT] += 1.0
            pcell = group * n_cols + predicted[i]
            if stamp[pcell] != epoch:
                stamp[pcell] = epoch
                touched[n_touched] = pcell
                n_touched += 1
                shift[pcell] = np.nan
            blk[pcell, PREDICTED] += w
            b = min(int(conf[i] * n_bins), n_bins - 1)
            s_hist[group, b, HIST_WEIGHT] += w
            s_hist[group, b, HIST_CORRECT] += correct
            s_hist[group, b, HIST_CONF] += w * conf[i]
            if T:
                base = (sl * n_cols) * T
                for j in range(n_cols):
                    bj = min(int(e[i * n_cols + j] * inv_sum[i] * T), T - 1)
                    roc[((base + j * T) + bj) * N_ROC_FIELDS + ROC_ALL] += w
                by = min(int(e[i * n_cols + y] * inv_sum[i] * T), T - 1)
                roc[((base + y * T) + by) * N_ROC_FIELDS + ROC_POSITIVE] += w
            if not slice_touched[sl]:
                slice_touched[sl] = True
                slice_list[n_slice_list] = sl
                n_slice_list += 1

        for i in range(rows):
            if scale[i] > 0.0:
                _axpy(flat_marg, np.uint64(slice_of_row[i] * n_cols), scale[i], e, np.uint64(i * n_cols), n_cols)

        for k in range(n_touched):
            cell = touched[k]
            _fold_cell(flat_blk, cell * N_BLK_FIELDS, shift[cell], cell, flat_counts, flat_sum, flat_comp, flat_m2)

        rows_since_fold += rows
        if rows_since_fold >= FOLD_ROWS * K or r1 == n:
            _fold_slices(
                slice_list, n_slice_list, n_cols, K, n_bins, flat_marg, s_hist.reshape(-1),
                flat_msum, flat_mcomp, flat_hsum, flat_hcomp,
            )
            for k in range(n_slice_list):
                slice_touched[slice_list[k]] = False
            n_slice_list = 0
            rows_since_fold = 0
