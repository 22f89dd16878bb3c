"""Validation loops: the first invalid row or label, for errors that name it."""

from __future__ import annotations

import numpy as np

from ._math import fast_exp, fast_log
from ._numba import kernel
from ._prepare import LOGITS, PROBS


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
def first_bad_label(labels, n_classes, has_ignore, ignore_index):
    for r in range(labels.shape[0]):
        y = labels[r]
        if (y < 0 or y >= n_classes) and not (has_ignore and y == ignore_index):
            return r
    return -1
