"""Per-row losses: cross-entropy (hard and soft labels), entropy, KL, JS, binary CE."""

from __future__ import annotations

import numpy as np

from ._layout import _LOGN, _ROW_SUM_LOG_Q, _T0, _TY, NARROW_ROWS
from ._math import fast_log
from ._narrow import _ix, narrow_scratch_size, prepare_block_narrow
from ._numba import kernel
from ._prepare import LOGITS, prepare_block

@kernel
def _xlogy_sum(e, t, base, n_cols):
    """Σ_j e_j t_j over one row, with 0 * log 0 = 0."""
    acc = 0.0
    for j in range(n_cols):
        ej = e[base + j]
        acc += ej * t[base + j] if ej > 0.0 else 0.0
    return acc


@kernel
def ce_hard_rows(z, labels, kind, ignore_index, smoothing, log_eps, block, t, e, lognorm, inv_sum, conf, ok, out):
    n, n_cols = z.shape
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        prepare_block(z, r0, r1, kind, t, e, lognorm, inv_sum, conf, ok)
        for i in range(r1 - r0):
            y = labels[r0 + i]
            if y == ignore_index:
                out[r0 + i] = 0.0
                continue
            base = i * n_cols
            loss = -max(t[base + y] - lognorm[i], log_eps)
            if smoothing > 0.0:
                mean_log_q = 0.0
                for j in range(n_cols):
                    mean_log_q += max(t[base + j] - lognorm[i], log_eps)
                loss = (1.0 - smoothing) * loss - smoothing * (mean_log_q / n_cols)
            out[r0 + i] = loss


@kernel
def ce_soft_rows(z, target, kind, smoothing, log_eps, block, t, e, lognorm, inv_sum, conf, ok, out):
    n, n_cols = z.shape
    uniform = smoothing / n_cols
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        prepare_block(z, r0, r1, kind, t, e, lognorm, inv_sum, conf, ok)
        for i in range(r1 - r0):
            base = i * n_cols
            acc = 0.0
            for j in range(n_cols):
                p = (1.0 - smoothing) * np.float64(target[r0 + i, j]) + uniform
                acc += p * max(t[base + j] - lognorm[i], log_eps) if p > 0.0 else 0.0
            out[r0 + i] = -acc


@kernel
def entropy_rows(z, kind, block, t, e, lognorm, inv_sum, conf, ok, out):
    n, n_cols = z.shape
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        prepare_block(z, r0, r1, kind, t, e, lognorm, inv_sum, conf, ok)
        for i in range(r1 - r0):
            out[r0 + i] = lognorm[i] - inv_sum[i] * _xlogy_sum(e, t, i * n_cols, n_cols)


@kernel
def _kl_row(tp, ep, lognorm_p, inv_sum_p, tq, lognorm_q, base, n_cols):
    """KL(p‖q) of one prepared row: Σ p_j (log p_j - log q_j), with 0 * log 0 = 0."""
    acc = 0.0
    for j in range(n_cols):
        ej = ep[base + j]
        acc += ej * (tp[base + j] - tq[base + j]) if ej > 0.0 else 0.0
    return inv_sum_p * acc - lognorm_p + lognorm_q


@kernel
def kl_rows(p, q, kind, block, tp, ep, lp, sp, cp, okp, tq, eq, lq, sq, cq, okq, out):
    n, n_cols = p.shape
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        prepare_block(p, r0, r1, kind, tp, ep, lp, sp, cp, okp)
        prepare_block(q, r0, r1, kind, tq, eq, lq, sq, cq, okq)
        for i in range(r1 - r0):
            out[r0 + i] = _kl_row(tp, ep, lp[i], sp[i], tq, lq[i], i * n_cols, n_cols)


@kernel
def js_rows(p, q, kind, block, tp, ep, lp, sp, cp, okp, tq, eq, lq, sq, cq, okq, out):
    n, n_cols = p.shape
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        prepare_block(p, r0, r1, kind, tp, ep, lp, sp, cp, okp)
        prepare_block(q, r0, r1, kind, tq, eq, lq, sq, cq, okq)
        for i in range(r1 - r0):
            base = i * n_cols
            acc = 0.0
            for j in range(n_cols):
                pj = ep[base + j] * sp[i]
                qj = eq[base + j] * sq[i]
                # All three logs from the same probabilities: p = q gives exactly 0.
                log_m = fast_log(0.5 * (pj + qj))
                if pj > 0.0:
                    acc += pj * (fast_log(pj) - log_m)
                if qj > 0.0:
                    acc += qj * (fast_log(qj) - log_m)
            out[r0 + i] = 0.5 * acc


@kernel
def bce_rows(x, target, from_logits, pos_weight, eps, out):
    for r in range(x.shape[0]):
        v = np.float64(x[r])
        y = np.float64(target[r])
        if from_logits:
            # log σ(v) = -softplus(-v), log(1 - σ(v)) = -softplus(v)
            softplus_pos = max(v, 0.0) + np.log1p(np.exp(-abs(v)))
            log_p = v - softplus_pos
            log_not_p = -softplus_pos
            if eps > 0.0:
                log_p = min(max(log_p, np.log(eps)), np.log1p(-eps))
                log_not_p = min(max(log_not_p, np.log(eps)), np.log1p(-eps))
        else:
            p = min(max(v, eps), 1.0 - eps)
            log_p = np.log(p)
            log_not_p = np.log1p(-p)
        loss = 0.0
        if y > 0.0:
            loss -= pos_weight * y * log_p
        if y < 1.0:
            loss -= (1.0 - y) * log_not_p
        out[r] = loss


@kernel
def ce_hard_rows_narrow(z, labels, smoothing, log_eps, out):
    """``ce_hard_rows`` for logits with at most NARROW_CLASSES classes, column-major as
    in the fused kernel. Rows with a negative label are ignored: loss 0."""
    n, C = z.shape
    NR = NARROW_ROWS
    W = np.zeros(narrow_scratch_size(C))
    for r0 in range(0, n, NR):
        rows = min(n, r0 + NR) - r0
        prepare_block_narrow(z, labels, r0, rows, LOGITS, W, False, smoothing > 0.0)
        if smoothing > 0.0:
            for i in range(rows):
                W[_ROW_SUM_LOG_Q * NR + i] = 0.0
            for j in range(C):
                for i in range(rows):
                    W[_ROW_SUM_LOG_Q * NR + i] += max(W[_ix(_T0, j, i)] - W[_LOGN * NR + i], log_eps)
        for i in range(rows):
            r = np.uint64(r0) + np.uint64(i)
            loss = -max(W[_TY * NR + i] - W[_LOGN * NR + i], log_eps)
            if smoothing > 0.0:
                loss = (1.0 - smoothing) * loss - smoothing * (W[_ROW_SUM_LOG_Q * NR + i] / C)
            out[r] = 0.0 if labels[r] < 0 else loss
