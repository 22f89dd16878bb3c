"""Plain float64 reference implementations for the xent_kernels test suite.

Everything here is written the obvious way with numpy/scipy, in float64, with no
attempt at speed. Inputs are cast up to float64 first, so a float32 input is
compared against the exact float64 result on the same float32 values.

Nothing here imports xent_kernels.
"""

from __future__ import annotations

import numpy as np
from scipy.special import entr, log_expit, log_softmax, logsumexp, rel_entr, xlog1py, xlogy

LN2 = np.log(2.0)


def _scale(values, base):
    """Convert nats to the requested unit."""
    if base == "e":
        return values
    if base == 2:
        return values / LN2
    raise AssertionError(f"reference: unknown base {base!r}")


def log_q(pred, kind, eps=None):
    """Row-wise log-probabilities of the model distribution, float64, shape (n, C).

    ``eps`` clips the probability from below: log(max(q, eps)).
    """
    pred = np.asarray(pred, dtype=np.float64)
    if kind == "logits":
        out = log_softmax(pred, axis=1) if pred.size else pred.copy()
    elif kind == "probs":
        with np.errstate(divide="ignore"):
            out = np.log(pred)
    elif kind == "log_probs":
        out = pred.copy()
    else:
        raise AssertionError(f"reference: unknown kind {kind!r}")
    if eps is not None:
        out = np.maximum(out, np.log(eps))
    return out


def probs_of(pred, kind):
    """Row-wise probabilities, float64, shape (n, C)."""
    pred = np.asarray(pred, dtype=np.float64)
    if kind == "probs":
        return pred.copy()
    return np.exp(log_q(pred, kind))


def _reduce(per_row, weights, keep, reduction):
    """Apply the spec's reductions. ``keep`` masks rows that count (not ignored)."""
    per_row = np.asarray(per_row, dtype=np.float64)
    n = per_row.shape[0]
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if keep is None:
        keep = np.ones(n, dtype=bool)
    if reduction == "none":
        return np.where(keep, per_row, 0.0)
    wl = w[keep] * per_row[keep]
    total = float(np.sum(wl)) if wl.size else 0.0
    if reduction == "sum":
        return total
    if reduction == "mean":
        denom = float(np.sum(w[keep]))
        if not keep.any():
            return float("nan")
        return total / denom
    raise AssertionError(f"reference: unknown reduction {reduction!r}")


def smooth_hard(labels, n_classes, label_smoothing):
    """(1 - eps) * one_hot + eps / C as a float64 soft target (ignored rows get zeros)."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    target = np.zeros((n, n_classes))
    valid = (labels >= 0) & (labels < n_classes)
    target[np.arange(n)[valid], labels[valid]] = 1.0
    target = (1.0 - label_smoothing) * target + label_smoothing / n_classes
    target[~valid] = 0.0
    return target


def _soft_ce_rows(target, lq):
    """-sum_c t_c log q_c with 0 * log 0 = 0 (and t > 0, q = 0 -> +inf)."""
    with np.errstate(invalid="ignore"):
        terms = np.where(target > 0, target * lq, 0.0)
    return -np.sum(terms, axis=1)


def ce_hard(pred, labels, kind="logits", *, weights=None, ignore_index=-100,
            label_smoothing=0.0, eps=None, reduction="none", base="e"):
    """Cross-entropy with integer class labels.

    Without label smoothing this is -log q[y]; with it, the soft cross-entropy
    against (1 - eps) * one_hot + eps / C. Rows with label == ignore_index count
    for nothing (0.0 under reduction "none").
    """
    pred = np.asarray(pred, dtype=np.float64)
    labels = np.asarray(labels)
    n, n_classes = pred.shape
    keep = labels != ignore_index
    lq = log_q(pred, kind, eps)
    if label_smoothing == 0.0:
        safe = np.where(keep, labels, 0)
        per_row = -lq[np.arange(n), safe] if n else np.zeros(0)
    else:
        target = smooth_hard(np.where(keep, labels, -1), n_classes, label_smoothing)
        per_row = _soft_ce_rows(target, lq)
    per_row = np.where(keep, per_row, 0.0)
    return _scale(_reduce(per_row, weights, keep, reduction), base)


def ce_soft(pred, target, kind="logits", *, weights=None, label_smoothing=0.0,
            eps=None, reduction="none", base="e"):
    """Cross-entropy -sum t log q against soft targets, 0 log 0 = 0."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n_classes = pred.shape[1]
    if label_smoothing:
        target = (1.0 - label_smoothing) * target + label_smoothing / n_classes
    per_row = _soft_ce_rows(target, log_q(pred, kind, eps))
    return _scale(_reduce(per_row, weights, None, reduction), base)


def ce_soft_xlogy(probs, target):
    """Soft cross-entropy on probabilities via scipy.special.xlogy (independent path)."""
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return -np.sum(xlogy(target, probs), axis=1)


def bce(pred, target, kind="logits", *, weights=None, pos_weight=None, eps=None,
        reduction="none", base="e"):
    """Binary cross-entropy -(pw * t * log s + (1 - t) * log(1 - s))."""
    pred = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    if kind == "logits":
        if eps is None:
            log_s = log_expit(pred)
            log_1ms = log_expit(-pred)
            with np.errstate(invalid="ignore"):
                pos = np.where(t > 0, t * log_s, 0.0)
                neg = np.where(t < 1, (1.0 - t) * log_1ms, 0.0)
            per_row = -(pw * pos + neg)
        else:
            s = np.clip(np.exp(log_expit(pred)), eps, 1.0 - eps)
            per_row = -(pw * xlogy(t, s) + xlog1py(1.0 - t, -s))
    elif kind == "probs":
        s = pred if eps is None else np.clip(pred, eps, 1.0 - eps)
        with np.errstate(divide="ignore"):
            per_row = -(pw * xlogy(t, s) + xlog1py(1.0 - t, -s))
    else:
        raise AssertionError(f"reference: unknown kind {kind!r}")
    return _scale(_reduce(per_row, weights, None, reduction), base)


def kl(p, q, kind="logits", *, reduction="none", base="e"):
    """Row-wise KL(p || q) = sum p log(p / q); p > 0 where q = 0 gives +inf."""
    if kind == "probs":
        p = np.asarray(p, dtype=np.float64)
        q = np.asarray(q, dtype=np.float64)
        per_row = np.sum(rel_entr(p, q), axis=1)
    else:
        lp = log_q(p, kind)
        lq = log_q(q, kind)
        pp = np.exp(lp)
        with np.errstate(invalid="ignore"):
            per_row = np.sum(np.where(pp > 0, pp * (lp - lq), 0.0), axis=1)
    return _scale(_reduce(per_row, None, None, reduction), base)


def js(p, q, kind="logits", *, reduction="none", base="e"):
    """Jensen-Shannon divergence 1/2 KL(p || m) + 1/2 KL(q || m), m = (p + q) / 2."""
    pp = probs_of(p, kind)
    qq = probs_of(q, kind)
    m = 0.5 * (pp + qq)
    per_row = 0.5 * np.sum(rel_entr(pp, m), axis=1) + 0.5 * np.sum(rel_entr(qq, m), axis=1)
    return _scale(_reduce(per_row, None, None, reduction), base)


def entropy(p, kind="logits", *, reduction="none", base="e"):
    """Row-wise Shannon entropy -sum p log p."""
    if kind == "probs":
        per_row = np.sum(entr(np.asarray(p, dtype=np.float64)), axis=1)
    else:
        lp = log_q(p, kind)
        pp = np.exp(lp)
        with np.errstate(invalid="ignore"):
            per_row = -np.sum(np.where(pp > 0, pp * lp, 0.0), axis=1)
    return _scale(_reduce(per_row, None, None, reduction), base)


def log_partition(logits):
    """logsumexp per row, float64 (used to build log_probs inputs)."""
    return logsumexp(np.asarray(logits, dtype=np.float64), axis=1, keepdims=True)


def class_report(pred, labels, kind="logits", *, weights=None, slice_ids=None, n_slices=1,
                 reference=None, reference_kind=None, n_bins=15, eps=None):
    """Per-(slice, class) and per-slice statistics, the obvious way. `eps` clips the
    true class's probability from below (CE and p_true only).

    Rows with label < 0 are ignored; rows with a non-finite value are skipped.
    Returns (cells, slices): dicts keyed by (slice, class) and by slice.
    """
    pred = np.asarray(pred, dtype=np.float64)
    n, n_classes = pred.shape
    labels = np.asarray(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    sl = np.zeros(n, dtype=np.int64) if slice_ids is None else np.asarray(slice_ids)
    with np.errstate(all="ignore"):
        lq = log_q(pred, kind)
        q = probs_of(pred, kind)
    finite = np.isfinite(pred).all(axis=1) if kind == "logits" else ~np.isnan(lq).any(axis=1)
    if kind == "probs":
        finite &= (pred >= 0).all(axis=1) & np.isfinite(pred).all(axis=1)
    if reference is not None:
        rkind = reference_kind or kind
        reference = np.asarray(reference, dtype=np.float64)
        with np.errstate(all="ignore"):
            rq = probs_of(reference, rkind)
            kl_rows = rel_entr(rq, q).sum(axis=1)
        finite &= np.isfinite(reference).all(axis=1) if rkind == "logits" else True
    kept = (labels >= 0) & finite
    safe_labels = np.where(labels >= 0, labels, 0)
    rows = np.arange(n)
    ce = -lq[rows, safe_labels] if eps is None else -np.maximum(lq[rows, safe_labels], np.log(eps))
    with np.errstate(all="ignore"):
        ent = entr(q).sum(axis=1)
    p_true = q[rows, safe_labels] if eps is None else np.maximum(q[rows, safe_labels], eps)
    # rank of the true class, ties broken toward the lower index (np.argmax's rule)
    order = np.argsort(-q, axis=1, kind="stable")
    rank = np.argmax(order == safe_labels[:, None], axis=1)
    conf = q.max(axis=1)
    cells, slices = {}, {}
    for s in range(n_slices):
        in_slice = kept & (sl == s)
        ws = w[in_slice]
        hist_w = np.zeros(n_bins)
        hist_c = np.zeros(n_bins)
        hist_conf = np.zeros(n_bins)
        bins = np.minimum((conf[in_slice] * n_bins).astype(int), n_bins - 1)
        np.add.at(hist_w, bins, ws)
        np.add.at(hist_c, bins, ws * (rank[in_slice] == 0))
        np.add.at(hist_conf, bins, ws * conf[in_slice])
        W = ws.sum()
        class_means = []
        for c in range(n_classes):
            m = in_slice & (labels == c)
            if not m.any():
                continue
            wc = w[m]
            Wc = wc.sum()
            mean = np.sum(wc * ce[m]) / Wc
            cell = {
                "n": int(m.sum()),
                "weight": Wc,
                "ce_mean": mean,
                "ce_std": np.sqrt(np.sum(wc * (ce[m] - mean) ** 2) / Wc),
                "accuracy": np.sum(wc * (rank[m] == 0)) / Wc,
                "top5_accuracy": np.sum(wc * (rank[m] < 5)) / Wc if n_classes > 5 else np.nan,
                "p_true_mean": np.sum(wc * p_true[m]) / Wc,
                "entropy_mean": np.sum(wc * ent[m]) / Wc,
            }
            if reference is not None:
                cell["kl_mean"] = np.sum(wc * kl_rows[m]) / Wc
            cells[(s, c)] = cell
            class_means.append(mean)
        slices[s] = {
            "n": int(in_slice.sum()),
            "weight": W,
            "ce_mean": np.sum(ws * ce[in_slice]) / W if W > 0 else np.nan,
            "ce_macro": np.mean(class_means) if class_means else np.nan,
            "accuracy": np.sum(ws * (rank[in_slice] == 0)) / W if W > 0 else np.nan,
            "entropy_mean": np.sum(ws * ent[in_slice]) / W if W > 0 else np.nan,
            "ece": np.abs(hist_c - hist_conf).sum() / W if W > 0 else np.nan,
            "n_ignored": int(((labels < 0) & (sl == s)).sum()),
            "n_nonfinite": int(((labels >= 0) & ~finite & (sl == s)).sum()),
            "marginal": (ws[:, None] * q[in_slice]).sum(axis=0) / W if W > 0 else np.full(n_classes, np.nan),
        }
    return cells, slices


class ReportRows:
    """The per-row float64 values behind the per-class report, computed the obvious way.

    Attributes (arrays over rows): ``ce`` (-log q of the true class, clipped at -log eps),
    ``p_true`` (clipped at eps), ``entropy``, ``rank`` (of the true class, ties toward
    the lower index), ``conf`` (top probability), ``kl`` (KL(reference‖q), NaN without a
    reference), ``q`` (n, C), ``w``, ``slice``, ``label``; masks ``kept`` (rows in the
    report), ``ignored`` (label < 0), ``nonfinite`` (not ignored, skipped for a NaN or inf).
    """

    def __init__(self, pred, labels, kind="logits", *, weights=None, slice_ids=None,
                 reference=None, reference_kind=None, eps=None):
        pred = np.asarray(pred, dtype=np.float64)
        n, self.n_classes = pred.shape
        self.label = np.asarray(labels)
        self.w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        self.slice = np.zeros(n, dtype=np.int64) if slice_ids is None else np.asarray(slice_ids)
        with np.errstate(all="ignore"):
            lq = log_q(pred, kind)
            self.q = probs_of(pred, kind)
        finite = np.isfinite(pred).all(axis=1) if kind == "logits" else ~np.isnan(lq).any(axis=1)
        if kind == "probs":
            finite &= (pred >= 0).all(axis=1) & np.isfinite(pred).all(axis=1)
        self.kl = np.full(n, np.nan)
        if reference is not None:
            rkind = reference_kind or kind
            reference = np.asarray(reference, dtype=np.float64)
            with np.errstate(all="ignore"):
                self.kl = rel_entr(probs_of(reference, rkind), self.q).sum(axis=1)
            finite &= np.isfinite(reference).all(axis=1)
        self.ignored = self.label < 0
        self.nonfinite = ~self.ignored & ~finite
        self.kept = ~self.ignored & finite
        rows = np.arange(n)
        safe = np.where(self.ignored, 0, self.label)
        log_true = lq[rows, safe] if eps is None else np.maximum(lq[rows, safe], np.log(eps))
        self.ce = -log_true
        self.p_true = self.q[rows, safe] if eps is None else np.maximum(self.q[rows, safe], eps)
        with np.errstate(all="ignore"):
            self.entropy = entr(self.q).sum(axis=1)
        order = np.argsort(-self.q, axis=1, kind="stable")
        self.rank = np.argmax(order == safe[:, None], axis=1)
        self.conf = self.q.max(axis=1)

    def weighted_mean(self, x, mask):
        """Σw·x / Σw over the rows of `mask` (NaN for zero weight)."""
        total = self.w[mask].sum()
        return np.sum(self.w[mask] * x[mask]) / total if total > 0 else np.nan


MASK64 = 2**64 - 1


def splitmix64_int(x: int) -> int:
    """splitmix64's mixing function on a Python int, written from the reference C code
    (Steele et al.; prng.di.unimi.it/splitmix64.c)."""
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def delong(scores, positive, weights=None):
    """AUC and DeLong's (1988) standard error of `scores` for the `positive` rows,
    pair by pair: ψ = 1 for a positive above a negative, ½ for a tie (midranks). With
    `weights`, each row counts as that many rows (frequency weights: the sums P and N of
    the positives' and negatives' weights replace their counts)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    x, y = scores[positive], scores[~positive]
    wx, wy = weights[positive], weights[~positive]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    p, n = wx.sum(), wy.sum()
    v10 = psi @ wy / n  # per positive: the weighted share of negatives below it
    v01 = wx @ psi / p  # per negative: the weighted share of positives above it
    auc = wx @ v10 / p
    s10 = wx @ (v10 - auc) ** 2 / (p - 1.0)
    s01 = wy @ (v01 - auc) ** 2 / (n - 1.0)
    with np.errstate(invalid="ignore"):  # weights summing below 1: no SE (NaN), as xent gives
        return auc, np.sqrt(s10 / p + s01 / n)
