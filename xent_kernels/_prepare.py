"""Block preparation: predictions of any kind turned into flat float64 buffers.

The public functions in ``losses.py`` and ``stats.py`` check inputs once and pass
buffers in; the loops here and in the other kernel modules validate nothing and
allocate nothing per row.

``prepare_block`` turns one block of predictions into flat float64 buffers:

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

from ._math import fast_exp, fast_log
from ._numba import kernel

LOGITS, PROBS, LOG_PROBS = 0, 1, 2
KIND_CODES = {"logits": LOGITS, "probs": PROBS, "log_probs": LOG_PROBS}

# Rows per block: about this many predictions, so the buffers stay in L1/L2 cache.
BLOCK_ELEMENTS = 2048


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
def _all_finite(z, r):
    """Whether row r of z holds no NaN or inf."""
    for v in z[r]:
        if not np.isfinite(v):
            return False
    return True
