"""Numba loops. They validate nothing and allocate nothing per row: the public
functions in ``losses.py`` and ``stats.py`` check inputs once and pass buffers in.

Every kernel works on blocks of rows through ``prepare_block``, which turns one block
of predictions into flat float64 buffers:

* ``t[k]``: log-weights; log q_j = t_j - lognorm[i]
  (logits: z - max(z); log_probs: z; probs: log z),
* ``e[k]``: exp(t) (probs: z itself), so q_j = e_j * inv_sum[i],
* ``lognorm[i]``, ``inv_sum[i]``: log and reciprocal of the row's normaliser
  (logits: log Σe and 1/Σe; probs and log_probs are used as given: 0 and 1),
* ``conf[i]``: the largest probability of the row,
* ``ok[i]``: False for rows holding NaN or +inf (or -inf in logits; or a negative probability).

exp, the only real work, then runs over one flat buffer and vectorizes.
"""

from __future__ import annotations

import numpy as np

from ._math import fast_exp, fast_log, from_order_key, order_key
from ._numba import kernel, strict_kernel

LOGITS, PROBS, LOG_PROBS = 0, 1, 2
KIND_CODES = {"logits": LOGITS, "probs": PROBS, "log_probs": LOG_PROBS}

# Rows per block: about this many predictions, so the buffers stay in L1/L2 cache.
BLOCK_ELEMENTS = 2048
# Per-slice sums (marginals, histogram) fold into their compensated totals at least
# this often; plain float64 sums over so few rows lose nothing measurable.
FOLD_ROWS = 256

# Fields of the per-(slice, class) cell, in ClassStats.cell_sum[..., field].
WEIGHT, CE, ENTROPY, P_TRUE, TOP1, TOP5, KL = range(7)
N_CELL_FIELDS = 7
# Fields of the per-(slice, bin) confidence histogram.
HIST_WEIGHT, HIST_CORRECT, HIST_CONF = range(3)
N_HIST_FIELDS = 3
# Per-slice row counts that are not in any cell.
IGNORED, NONFINITE = range(2)


def block_rows(n_classes: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(n_classes, 1))


@kernel
def prepare_block(z, r0, r1, kind, t, e, lognorm, inv_sum, conf, ok):
    n_cols = z.shape[1]
    rows = r1 - r0
    for i in range(rows):
        r = r0 + i
        base = i * n_cols
        if kind == LOGITS:
            m = np.float64(z[r, 0])
            total = 0.0
            for j in range(n_cols):
                v = np.float64(z[r, j])
                total += v
                if v > m:
                    m = v
            # A sum of finite float32/float64 values of this size cannot overflow, so a
            # non-finite total means a NaN or inf in the row.
            ok[i] = np.isfinite(total)
            for j in range(n_cols):
                t[base + j] = np.float64(z[r, j]) - m
        elif kind == LOG_PROBS:
            m = -np.inf
            total = 0.0
            for j in range(n_cols):
                v = np.float64(z[r, j])
                total += v if v != -np.inf else 0.0
                if v > m:
                    m = v
                t[base + j] = v
            ok[i] = np.isfinite(total) and m > -np.inf
            conf[i] = fast_exp(m)
        else:
            m = 0.0
            total = 0.0
            negative = 0
            for j in range(n_cols):
                v = np.float64(z[r, j])
                total += v
                negative += v < 0.0
                if v > m:
                    m = v
                e[base + j] = v
                t[base + j] = fast_log(v)
            ok[i] = np.isfinite(total) and negative == 0
            conf[i] = m
    if kind != PROBS:
        for k in range(rows * n_cols):
            e[k] = fast_exp(t[k])
    if kind == LOGITS:
        for i in range(rows):
            s = 0.0
            base = i * n_cols
            for j in range(n_cols):
                s += e[base + j]
            inv_sum[i] = 1.0 / s
            conf[i] = inv_sum[i]  # the largest e is exp(0) = 1
            lognorm[i] = s  # the log is taken below, over the block, where it vectorizes
        for i in range(rows):
            lognorm[i] = fast_log(lognorm[i])
    else:
        for i in range(rows):
            lognorm[i] = 0.0
            inv_sum[i] = 1.0


class Buffers:
    """Scratch buffers for ``prepare_block`` sized for one block of ``n_classes``."""

    def __init__(self, n_classes: int):
        rows = block_rows(n_classes)
        self.rows = rows
        self.t = np.empty(rows * n_classes)
        self.e = np.empty(rows * n_classes)
        self.lognorm = np.empty(rows)
        self.inv_sum = np.empty(rows)
        self.conf = np.empty(rows)
        self.ok = np.empty(rows, dtype=np.bool_)

    def args(self):
        return self.t, self.e, self.lognorm, self.inv_sum, self.conf, self.ok


@kernel
def _xlogy_sum(e, t, base, n_cols):
    """Σ_j e_j t_j over one row, with 0 * log 0 = 0."""
    acc = 0.0
    for j in range(n_cols):
        ej = e[base + j]
        acc += ej * t[base + j] if ej > 0.0 else 0.0
    return acc


# --------------------------------------------------------------------------- per-row losses


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


# --------------------------------------------------------------------------- validation


@kernel
def first_invalid_row(z, kind, tol):
    """(row, reason) of the first invalid row, or (-1, 0). Reasons: 1 non-finite value,
    2 negative probability, 3 row does not sum to 1 (log_probs: logsumexp not 0)."""
    n, n_cols = z.shape
    for r in range(n):
        if kind == LOGITS:
            total = 0.0
            for j in range(n_cols):
                total += np.float64(z[r, j])
            if not np.isfinite(total):
                return r, 1
        elif kind == PROBS:
            total = 0.0
            negative = 0
            for j in range(n_cols):
                v = np.float64(z[r, j])
                total += v
                negative += v < 0.0
            if not np.isfinite(total):
                return r, 1
            if negative:
                return r, 2
            if abs(total - 1.0) > tol:
                return r, 3
        else:
            m = -np.inf
            bad = 0
            for j in range(n_cols):
                v = np.float64(z[r, j])
                bad += not (v < np.inf)  # NaN or +inf
                if v > m:
                    m = v
            if bad or m == -np.inf:
                return r, 1
            s = 0.0
            for j in range(n_cols):
                s += fast_exp(np.float64(z[r, j]) - m)
            if abs(m + fast_log(s)) > tol:
                return r, 3
    return -1, 0


@kernel
def first_bad_label(labels, n_classes, ignore_index):
    for r in range(labels.shape[0]):
        y = labels[r]
        if y != ignore_index and (y < 0 or y >= n_classes):
            return r
    return -1


# --------------------------------------------------------------------------- per-class statistics


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


# Predictions with at most this many classes use column-major ("narrow") blocks.
NARROW_CLASSES = 32
# Rows per narrow block. A compile-time constant: it is the stride between the rows of
# the narrow scratch, so every offset below is a constant multiple plus the row index.
NARROW_ROWS = 128
# Narrow per-cell sums fold into their compensated totals every this many rows (and at
# the end): the fold costs a few hundred cycles per touched cell, too much per block.
NARROW_FOLD_ROWS = 1024

# The narrow scratch W is one flat float64 array of NARROW_ROWS-long rows: first these
# per-row values, then the C rows of T (log-weights), then the C rows of E = exp(T):
# W[row * NARROW_ROWS + i]. One allocation with offsets fixed per loop means LLVM sees a
# single base pointer and vectorizes loops over several rows without runtime alias checks.
_TOP, _TOT, _LOGN, _INV, _CONF, _OK, _TY, _PTRUE, _ET, _RANK, _Y, _KL, _SCALE = range(13)
_N_ROW_FIELDS = 13
_T0 = _N_ROW_FIELDS * NARROW_ROWS


@kernel
def narrow_scratch_size(n_classes):
    return (_N_ROW_FIELDS + 2 * n_classes) * NARROW_ROWS


@kernel
def _ix(row0, j, i):
    """W index row0 + j * NARROW_ROWS + i, unsigned: LLVM cannot prove a signed j * 128
    non-negative, so Numba's wraparound test stays in the loop and blocks vectorizing."""
    return np.uint64(row0) + np.uint64(j) * np.uint64(NARROW_ROWS) + np.uint64(i)


@kernel
def prepare_block_narrow(z, labels, r0, rows, kind, W, summarize):
    """``prepare_block`` and ``_summarize_wide`` for narrow predictions, column-major
    into the scratch W (see _TOP...): with a handful of classes per row, row-wise loops
    are all loop overhead; column-major, every per-row reduction is a vertical vector
    operation across rows. For logits the exp pass also accumulates Σe, Σe·t and the
    rank of the true class, so each element is loaded once after the transpose.
    `summarize` False (a reference prediction) skips t_true and rank."""
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
        # Σ e·t is also the row's finiteness check: every term is finite when the row
        # is, and NaN when it holds NaN or ±inf (t = NaN, or e = 0 with t = -inf; and
        # fast_exp(NaN) = 0). The `summarize` test is loop-invariant: timed as fast as two copies.
        for j in range(C):
            fj = np.float64(j)
            for i in range(rows):
                tj = W[_ix(_T0, j, i)] - W[_TOP * NR + i]
                ej = fast_exp(tj)
                W[_ix(_T0, j, i)] = tj
                W[_ix(E0, j, i)] = ej
                W[_TOT * NR + i] += ej
                W[_ET * NR + i] += ej * tj
                if summarize:
                    ty = W[_TY * NR + i]
                    above = (tj > ty) | ((tj == ty) & (fj < W[_Y * NR + i]))
                    W[_RANK * NR + i] += 1.0 if above else 0.0
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
                if W[_OK * NR + i] == 0.0 and _all_finite(z, np.uint64(r0) + np.uint64(i)):
                    et = 0.0
                    for j in range(C):
                        ej = W[_ix(E0, j, i)]
                        et += ej * W[_ix(_T0, j, i)] if ej > 0.0 else 0.0
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
def ce_hard_rows_narrow(z, labels, smoothing, log_eps, out):
    """``ce_hard_rows`` for logits with at most NARROW_CLASSES classes, column-major as
    in the fused kernel. Rows with a negative label are ignored: loss 0."""
    n, C = z.shape
    NR = NARROW_ROWS
    W = np.zeros(narrow_scratch_size(C))
    for r0 in range(0, n, NR):
        rows = min(n, r0 + NR) - r0
        prepare_block_narrow(z, labels, r0, rows, LOGITS, W, False)
        if smoothing > 0.0:
            for i in range(rows):
                W[_SCALE * NR + i] = 0.0  # Σ_j log q_j
            for j in range(C):
                for i in range(rows):
                    W[_SCALE * NR + i] += max(W[_ix(_T0, j, i)] - W[_LOGN * NR + i], log_eps)
        for i in range(rows):
            r = np.uint64(r0) + np.uint64(i)
            loss = -max(W[_TY * NR + i] - W[_LOGN * NR + i], log_eps)
            if smoothing > 0.0:
                loss = (1.0 - smoothing) * loss - smoothing * (W[_SCALE * NR + i] / C)
            out[r] = 0.0 if labels[r] < 0 else loss


@kernel
def _summarize_narrow(W, C, rows):
    """t_true, Σ e·t (0·log 0 = 0) and the rank of the true class (ties toward
    the lower class index) from the T and E rows of W."""
    NR = NARROW_ROWS
    E0 = _T0 + C * NR
    for i in range(rows):
        y = np.uint64(W[_Y * NR + i])
        W[_TY * NR + i] = W[_ix(_T0, y, i)]
        W[_ET * NR + i] = 0.0
        W[_RANK * NR + i] = 0.0
    for j in range(C):
        fj = np.float64(j)
        for i in range(rows):
            tj = W[_ix(_T0, j, i)]
            ej = W[_ix(E0, j, i)]
            W[_ET * NR + i] += ej * tj if ej > 0.0 else 0.0
            ty = W[_TY * NR + i]
            above = (tj > ty) | ((tj == ty) & (fj < W[_Y * NR + i]))
            W[_RANK * NR + i] += 1.0 if above else 0.0


@kernel
def _summarize_wide(t, e, labels, r0, rows, n_cols, t_true, e_true, et, rank):
    for i in range(rows):
        base = i * n_cols
        y = max(labels[np.uint64(r0) + np.uint64(i)], 0)
        ty = t[base + y]
        t_true[i] = ty
        e_true[i] = e[base + y]
        et[i] = _xlogy_sum(e, t, base, n_cols)
        count = 0
        for j in range(n_cols):
            tj = t[base + j]
            count += (tj > ty) | ((tj == ty) & (j < y))
        rank[i] = count


@kernel
def _all_finite(z, r):
    for v in z[r]:
        if not np.isfinite(v):
            return False
    return True


@kernel
def _wide_row(z, r, y, kind, t, e, base):
    """One row of a wide prediction in two fused, vectorized passes: max and finite
    check, then t, e = exp(t), Σe, Σ e·t and the rank of the true class `y` together.
    Stores t and e at t[base:], e[base:]; `base` is unsigned, as a signed index LLVM
    cannot prove non-negative gets wrapped around and the stores become scatters
    (and row views would cost reference counting per row). Returns (lognorm, inv_sum, conf, ok,
    t_true, e_true, Σ e·t, rank), as ``prepare_block`` and ``_summarize_wide`` would.
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
        count = 0
        for j in range(n_cols):
            tj = np.float64(z[r, j]) - m
            ej = fast_exp(tj)
            t[base + np.uint64(j)] = tj
            e[base + np.uint64(j)] = ej
            s += ej
            et += ej * tj  # also the finiteness check, as in prepare_block_narrow
            count += (tj > ty) | ((tj == ty) & (j < y))
        ok = np.isfinite(et)
        if not ok and _all_finite(z, r):  # the spread overflows: see prepare_block_narrow
            ok = True
            et = 0.0
            for j in range(n_cols):
                ej = e[base + np.uint64(j)]
                et += ej * t[base + np.uint64(j)] if ej > 0.0 else 0.0
        inv = 1.0 / s
        return fast_log(s), inv, inv, ok, ty, e[base + np.uint64(y)], et, count
    if kind == LOG_PROBS:
        for j in range(n_cols):
            v = np.float64(z[r, j])
            total += v if v != -np.inf else 0.0
            key = max(key, order_key(z[r, j]))
        m = np.float64(from_order_key(key))
        ok = np.isfinite(total) and m > -np.inf
        ty = np.float64(z[r, y])
        et = 0.0
        count = 0
        for j in range(n_cols):
            tj = np.float64(z[r, j])
            ej = fast_exp(tj)
            t[base + np.uint64(j)] = tj
            e[base + np.uint64(j)] = ej
            et += ej * tj if ej > 0.0 else 0.0
            count += (tj > ty) | ((tj == ty) & (j < y))
        return 0.0, 1.0, fast_exp(m), ok, ty, e[base + np.uint64(y)], et, count
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
    count = 0
    for j in range(n_cols):
        ej = np.float64(z[r, j])
        tj = fast_log(ej)
        t[base + np.uint64(j)] = tj
        e[base + np.uint64(j)] = ej
        et += ej * tj if ej > 0.0 else 0.0
        count += (tj > ty) | ((tj == ty) & (j < y))
    return 0.0, 1.0, m, ok, ty, e[base + np.uint64(y)], et, count


@kernel
def _axpy(acc, acc_base, a, x, x_base, n):
    """acc[acc_base + j] += a * x[x_base + j] for j < n; unsigned offsets (see _wide_row)."""
    for j in range(n):
        k = np.uint64(j)
        acc[acc_base + k] += a * x[x_base + k]


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


@kernel
def _fold_cell(blk, f, shift_c, cell, flat_counts, flat_sum, flat_comp, flat_m2):
    """Fold one cell's block sums blk[f:f + 9] (W, Σw(ce-K), Σw(ce-K)², entropy, p_true,
    top1, top5, kl, count; K = shift_c) into the running state: Chan's formula for the
    CE spread, TwoSum for the sums. Zeroes blk[f:f + 9]."""
    w_blk = blk[f]
    ce_blk = blk[f + 1] + shift_c * w_blk
    f0 = cell * N_CELL_FIELDS
    w_old = flat_sum[f0 + WEIGHT] + flat_comp[f0 + WEIGHT]
    if w_blk > 0.0:
        m2_blk = blk[f + 2] - blk[f + 1] * blk[f + 1] / w_blk
        if not np.isfinite(ce_blk):
            m2_blk = np.nan  # the spread of values that include inf is undefined
        elif m2_blk < 0.0:
            m2_blk = 0.0  # rounding
        if w_old > 0.0:
            ce_old = flat_sum[f0 + CE] + flat_comp[f0 + CE]
            delta = ce_blk / w_blk - ce_old / w_old
            m2_blk += delta * delta * w_old * w_blk / (w_old + w_blk)
        flat_m2[cell] += m2_blk
    flat_counts[cell] += np.int64(blk[f + 8])
    _add_compensated(flat_sum, flat_comp, f0 + WEIGHT, w_blk)
    _add_compensated(flat_sum, flat_comp, f0 + CE, ce_blk)
    _add_compensated(flat_sum, flat_comp, f0 + ENTROPY, blk[f + 3])
    _add_compensated(flat_sum, flat_comp, f0 + P_TRUE, blk[f + 4])
    _add_compensated(flat_sum, flat_comp, f0 + TOP1, blk[f + 5])
    _add_compensated(flat_sum, flat_comp, f0 + TOP5, blk[f + 6])
    _add_compensated(flat_sum, flat_comp, f0 + KL, blk[f + 7])
    for k in range(9):
        blk[f + k] = 0.0


# Blocks of predictions with at most this many classes, all rows in one slice, sum
# each cell with one vectorized pass over the block per class instead of scattering
# row by row (C passes per block: measured to break even with the scatter near C = 6-8).
NARROW_VERTICAL_CLASSES = 6


@kernel
def _cells_vertical(W, C, rows, sl, epoch, stamp, touched, n_touched, shift, blk):
    """The cell sums of one block whose rows are all in slice `sl`: per class, masked
    sums over the block's rows (W prepared as in ``_class_stats_narrow``). The shift
    of a cell first touched in this epoch is the CE of its first row, as the scatter
    would take it. Returns the new n_touched."""
    NR = NARROW_ROWS
    for j in range(C):
        cell = np.uint64(sl * C + j)
        fc = np.float64(sl * C + j)
        if stamp[cell] != epoch:
            first = -1
            for i in range(rows):
                if (W[_OK * NR + i] != 0.0) & (W[_Y * NR + i] == fc):
                    first = i
                    break
            if first < 0:
                continue  # no row of this class in the block
            stamp[cell] = epoch
            touched[n_touched] = cell
            n_touched += 1
            ce = W[_TY * NR + first]
            # a true class given probability 0 has CE = inf: shifting by it would give NaN
            shift[cell] = ce if np.isfinite(ce) else 0.0
        k = shift[cell]
        count = 0.0
        sw = 0.0
        swd = 0.0
        swdd = 0.0
        s3 = 0.0
        s4 = 0.0
        s5 = 0.0
        s6 = 0.0
        s7 = 0.0
        for i in range(rows):
            hit = (W[_OK * NR + i] != 0.0) & (W[_Y * NR + i] == fc)
            count += 1.0 if hit else 0.0
            w = W[_TOP * NR + i]
            # rows of weight 0 count but add nothing (0 * inf must not make a NaN)
            use = hit & (w != 0.0)
            d = W[_TY * NR + i] - k
            wd = w * d
            sw += w if use else 0.0
            swd += wd if use else 0.0
            swdd += wd * d if use else 0.0
            s3 += W[_ET * NR + i] if use else 0.0
            s4 += W[_PTRUE * NR + i] if use else 0.0
            s5 += W[_RANK * NR + i] if use else 0.0
            s6 += W[_TOT * NR + i] if use else 0.0
            s7 += W[_KL * NR + i] if use else 0.0
        f = cell * np.uint64(9)
        blk[f] += sw
        blk[f + np.uint64(1)] += swd
        blk[f + np.uint64(2)] += swdd
        blk[f + np.uint64(3)] += s3
        blk[f + np.uint64(4)] += s4
        blk[f + np.uint64(5)] += s5
        blk[f + np.uint64(6)] += s6
        blk[f + np.uint64(7)] += s7
        blk[f + np.uint64(8)] += count
    return n_touched


@kernel
def _fold_slices(slice_list, n_slice_list, n_cols, n_bins, s_marg, s_hist, msum, mcomp, hsum, hcomp):
    """Fold the touched slices' plain marginal and histogram sums (flat arrays) into
    their compensated totals, and zero them."""
    for k in range(n_slice_list):
        sl = slice_list[k]
        for j in range(sl * n_cols, (sl + 1) * n_cols):
            _add_compensated(msum, mcomp, j, s_marg[j])
            s_marg[j] = 0.0
        for q in range(sl * n_bins * N_HIST_FIELDS, (sl + 1) * n_bins * N_HIST_FIELDS):
            _add_compensated(hsum, hcomp, q, s_hist[q])
            s_hist[q] = 0.0


@kernel
def _class_stats_narrow(
    z, labels, weights, slice_ids, ref, kind, ref_kind, n_bins, max_ce, has_weights, has_slices, has_ref,
    n_slices, flat_counts, flat_sum, flat_comp, flat_m2, flat_msum, flat_mcomp, flat_hsum, flat_hcomp, row_counts,
):
    """``class_stats_kernel`` for C <= NARROW_CLASSES. Blocks of NARROW_ROWS rows are
    prepared column-major into one scratch (``prepare_block_narrow``); the scatter loop
    then only reads per-row values and adds them into the per-cell sums (blk, 9 fields a
    cell, contiguous) and the per-slice histogram. Cells fold every NARROW_FOLD_ROWS rows,
    with CE shifted by the first value each cell saw since its last fold."""
    n, C = z.shape
    NR = NARROW_ROWS
    W = np.zeros(narrow_scratch_size(C))
    WR = np.zeros(narrow_scratch_size(C) if has_ref else 0)

    n_cells = n_slices * C
    blk = np.zeros(n_cells * 9)
    shift = np.zeros(n_cells)
    stamp = np.zeros(n_cells, dtype=np.int64)  # the fold epoch in which the cell was last touched
    touched = np.empty(n_cells, dtype=np.int64)
    n_touched = 0
    epoch = 1
    s_marg = np.zeros(n_slices * C)
    s_hist = np.zeros(n_slices * n_bins * N_HIST_FIELDS)
    slice_touched = np.zeros(n_slices, dtype=np.bool_)
    slice_list = np.empty(n_slices, dtype=np.int64)
    n_slice_list = 0
    if not has_slices:
        slice_touched[0] = True
        slice_list[0] = 0
        n_slice_list = 1
    rows_since_fold = 0
    rows_since_cell_fold = 0

    for r0 in range(0, n, NR):
        r1 = min(n, r0 + NR)
        rows = r1 - r0
        prepare_block_narrow(z, labels, r0, rows, kind, W, True)
        if has_ref:
            prepare_block_narrow(ref, labels, r0, rows, ref_kind, WR, False)
            _kl_narrow(WR, W, C, rows)

        # Per row, in loops that vectorize: whether it counts (_OK), its cell (_Y), weight
        # (_TOP), marginal scale (_SCALE, 0 for rows that do not count) and histogram
        # offset (_LOGN); then the weighted values the scatter adds (CE into _TY, w·entropy
        # into _ET, w·p_true into _PTRUE, w·top1 into _RANK, w·top5 into _TOT, w·kl into
        # _KL, w·conf into _CONF). The scatter loop then reads W only and does pure adds.
        # Values of rows that do not count (or weigh 0) are never read.
        n_skipped = 0
        for i in range(rows):
            r = np.uint64(r0) + np.uint64(i)
            y = labels[r]
            valid = (y >= 0) & (W[_OK * NR + i] != 0.0)
            w = np.float64(weights[r]) if has_weights else 1.0
            sl = slice_ids[r] if has_slices else 0
            conf = W[_CONF * NR + i] if valid else 0.0
            b = min(int(conf * n_bins), n_bins - 1)
            W[_SCALE * NR + i] = w * W[_INV * NR + i] if valid else 0.0
            W[_OK * NR + i] = 1.0 if valid else 0.0
            W[_Y * NR + i] = np.float64(sl * C + max(y, 0))
            W[_TOP * NR + i] = w
            lognorm = W[_LOGN * NR + i]
            W[_TY * NR + i] = min(lognorm - W[_TY * NR + i], max_ce)  # eps: q_true -> max(q_true, eps)
            W[_ET * NR + i] = w * (lognorm - W[_INV * NR + i] * W[_ET * NR + i])
            W[_LOGN * NR + i] = np.float64((sl * n_bins + b) * N_HIST_FIELDS)
            n_skipped += not valid
        for i in range(rows):
            w = W[_TOP * NR + i]
            rank = W[_RANK * NR + i]
            W[_PTRUE * NR + i] = w * fast_exp(-W[_TY * NR + i])  # p_true = exp(-CE)
            W[_RANK * NR + i] = w if rank < 1.0 else 0.0
            W[_TOT * NR + i] = w if rank < 5.0 else 0.0
            W[_CONF * NR + i] = w * W[_CONF * NR + i]
        if has_ref:
            for i in range(rows):
                W[_KL * NR + i] *= W[_TOP * NR + i]
        if n_skipped:
            for i in range(rows):
                sl = slice_ids[np.uint64(r0) + np.uint64(i)] if has_slices else 0
                if labels[np.uint64(r0) + np.uint64(i)] < 0:
                    row_counts[sl, IGNORED] += 1
                elif W[_OK * NR + i] == 0.0:
                    row_counts[sl, NONFINITE] += 1

        vertical = C <= NARROW_VERTICAL_CLASSES
        sl0 = slice_ids[r0] if has_slices else 0
        if vertical and has_slices:
            for i in range(rows):
                vertical &= slice_ids[np.uint64(r0) + np.uint64(i)] == sl0
        if vertical:
            n_touched = _cells_vertical(W, C, rows, sl0, epoch, stamp, touched, n_touched, shift, blk)
        for i in range(rows if not vertical else 0):
            if W[_OK * NR + i] == 0.0:
                continue
            cell = np.uint64(W[_Y * NR + i])
            ce = W[_TY * NR + i]
            if stamp[cell] != epoch:
                stamp[cell] = epoch
                touched[n_touched] = cell
                n_touched += 1
                # a true class given probability 0 has CE = inf: shifting by it would give NaN
                shift[cell] = ce if np.isfinite(ce) else 0.0
            f = cell * np.uint64(9)
            blk[f + np.uint64(8)] += 1.0
            w = W[_TOP * NR + i]
            if w == 0.0:  # counted, contributes nothing (and 0 * inf must not make a NaN)
                continue
            wd = w * (ce - shift[cell])
            blk[f] += w
            blk[f + np.uint64(1)] += wd
            blk[f + np.uint64(2)] += wd * (ce - shift[cell])
            blk[f + np.uint64(3)] += W[_ET * NR + i]
            blk[f + np.uint64(4)] += W[_PTRUE * NR + i]
            blk[f + np.uint64(5)] += W[_RANK * NR + i]
            blk[f + np.uint64(6)] += W[_TOT * NR + i]
            if has_ref:
                blk[f + np.uint64(7)] += W[_KL * NR + i]
            h = np.uint64(W[_LOGN * NR + i])
            s_hist[h + np.uint64(HIST_WEIGHT)] += w
            s_hist[h + np.uint64(HIST_CORRECT)] += W[_RANK * NR + i]
            s_hist[h + np.uint64(HIST_CONF)] += W[_CONF * NR + i]
        for i in range(rows if vertical else 0):
            w = W[_TOP * NR + i]
            if (W[_OK * NR + i] != 0.0) & (w != 0.0):
                h = np.uint64(W[_LOGN * NR + i])
                s_hist[h + np.uint64(HIST_WEIGHT)] += w
                s_hist[h + np.uint64(HIST_CORRECT)] += W[_RANK * NR + i]
                s_hist[h + np.uint64(HIST_CONF)] += W[_CONF * NR + i]
        if has_slices:
            for i in range(rows):
                if (W[_OK * NR + i] != 0.0) & (W[_TOP * NR + i] != 0.0):
                    sl = slice_ids[np.uint64(r0) + np.uint64(i)]
                    if not slice_touched[sl]:
                        slice_touched[sl] = True
                        slice_list[n_slice_list] = sl
                        n_slice_list += 1

        _marginal_narrow(W, C, rows, slice_ids, r0, has_slices, s_marg)

        rows_since_cell_fold += rows
        if rows_since_cell_fold >= NARROW_FOLD_ROWS or r1 == n:
            for k in range(n_touched):
                cell = touched[k]
                _fold_cell(blk, cell * 9, shift[cell], cell, flat_counts, flat_sum, flat_comp, flat_m2)
            n_touched = 0
            epoch += 1
            rows_since_cell_fold = 0

        rows_since_fold += rows
        if rows_since_fold >= FOLD_ROWS or r1 == n:
            _fold_slices(slice_list, n_slice_list, C, n_bins, s_marg, s_hist, flat_msum, flat_mcomp, flat_hsum, flat_hcomp)
            if has_slices:
                for k in range(n_slice_list):
                    slice_touched[slice_list[k]] = False
                n_slice_list = 0
            rows_since_fold = 0


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


@kernel
def _class_stats_wide(
    z, labels, weights, slice_ids, ref, kind, ref_kind, n_bins, max_ce, has_weights, has_slices, has_ref,
    n_slices, flat_counts, flat_sum, flat_comp, flat_m2, flat_msum, flat_mcomp, flat_hsum, flat_hcomp, row_counts,
):
    """``class_stats_kernel`` for C > NARROW_CLASSES: rows in fused row passes (``_wide_row``)."""
    n, n_cols = z.shape
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
    kl = np.zeros(block)
    scale = np.empty(block)
    slice_of_row = np.zeros(block, dtype=np.int64)

    n_cells = n_slices * n_cols
    blk = np.zeros((n_cells, 9))  # W, Σw(ce-K), Σw(ce-K)², entropy, p_true, top1, top5, kl, count
    flat_blk = blk.reshape(-1)
    shift = np.zeros(n_cells)
    touched = np.empty(block, dtype=np.int64)
    s_marg = np.zeros((n_slices, n_cols))
    flat_marg = s_marg.reshape(-1)
    s_hist = np.zeros((n_slices, n_bins, N_HIST_FIELDS))
    slice_touched = np.zeros(n_slices, dtype=np.bool_)
    slice_list = np.empty(n_slices, dtype=np.int64)
    n_slice_list = 0
    rows_since_fold = 0

    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        rows = r1 - r0
        for i in range(rows):
            (lognorm[i], inv_sum[i], conf[i], ok[i], t_true[i], e_true[i], et[i], rank[i]) = _wide_row(
                z, r0 + i, max(labels[r0 + i], 0), kind, t, e, np.uint64(i * n_cols)
            )
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
                row_counts[sl, IGNORED] += 1
                continue
            if not (ok[i] and rok[i]):
                row_counts[sl, NONFINITE] += 1
                continue
            w = np.float64(weights[r]) if has_weights else 1.0
            scale[i] = w * inv_sum[i]
            ce = min(lognorm[i] - t_true[i], max_ce)  # eps: q_true -> max(q_true, eps)
            cell = sl * n_cols + y
            if blk[cell, 8] == 0.0:
                touched[n_touched] = cell
                n_touched += 1
                # a true class given probability 0 has CE = inf: shifting by it would give NaN
                shift[cell] = ce if np.isfinite(ce) else 0.0
            if w == 0.0:  # counted, contributes nothing (and 0 * inf must not make a NaN)
                blk[cell, 8] += 1.0
                continue
            d = ce - shift[cell]
            correct = w if rank[i] < 1 else 0.0
            blk[cell, 0] += w
            blk[cell, 1] += w * d
            blk[cell, 2] += w * d * d
            blk[cell, 3] += w * (lognorm[i] - inv_sum[i] * et[i])
            blk[cell, 4] += w * max(e_true[i] * inv_sum[i], min_p_true)
            blk[cell, 5] += correct
            blk[cell, 6] += w if rank[i] < 5 else 0.0
            blk[cell, 7] += w * kl[i]
            blk[cell, 8] += 1.0
            b = min(int(conf[i] * n_bins), n_bins - 1)
            s_hist[sl, b, HIST_WEIGHT] += w
            s_hist[sl, b, HIST_CORRECT] += correct
            s_hist[sl, b, HIST_CONF] += w * conf[i]
            if not slice_touched[sl]:
                slice_touched[sl] = True
                slice_list[n_slice_list] = sl
                n_slice_list += 1

        for i in range(rows):
            if scale[i] > 0.0:
                _axpy(flat_marg, np.uint64(slice_of_row[i] * n_cols), scale[i], e, np.uint64(i * n_cols), n_cols)

        for k in range(n_touched):
            cell = touched[k]
            _fold_cell(flat_blk, cell * 9, shift[cell], cell, flat_counts, flat_sum, flat_comp, flat_m2)

        rows_since_fold += rows
        if rows_since_fold >= FOLD_ROWS or r1 == n:
            _fold_slices(
                slice_list, n_slice_list, n_cols, n_bins, flat_marg, s_hist.reshape(-1),
                flat_msum, flat_mcomp, flat_hsum, flat_hcomp,
            )
            for k in range(n_slice_list):
                slice_touched[slice_list[k]] = False
            n_slice_list = 0
            rows_since_fold = 0
