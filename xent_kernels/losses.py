"""Row-wise cross-entropy, KL divergence, Jensen-Shannon divergence and entropy.

NumPy in, NumPy out. Predictions are (n_rows, n_classes) float32 or float64 arrays of
one declared ``kind``:

* ``"logits"``: any finite reals; normalised through a max-shifted log-sum-exp, so
  float32 logits of ±1e4 neither overflow nor lose the true class.
* ``"probs"``: non-negative, rows summing to 1 (within 1e-4); used as given.
* ``"log_probs"``: log-probabilities (-inf allowed), rows with logsumexp 0 (within 1e-4).

Results are exact by default: a true class given probability 0 costs +inf, and
``eps`` clips probabilities from below (q -> max(q, eps)) only when asked. 0·log 0 = 0.
All arithmetic is float64 whatever the input dtype. ``base="e"`` reports nats, ``base=2`` bits.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks as C
from . import _rows as R
from ._narrow import NARROW_CLASSES
from ._prepare import LOGITS, Buffers

Kind = Literal["logits", "probs", "log_probs"]
Reduction = Literal["none", "sum", "mean"]


def _log_eps(eps: float | None) -> float:
    if eps is None:
        return -math.inf
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1) or None, got {eps!r}")
    return math.log(eps)


def cross_entropy(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    kind: Kind = "logits",
    weights: ArrayLike | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    eps: float | None = None,
    reduction: Reduction = "none",
    base: Literal["e", 2] = "e",
) -> NDArray[np.float64] | float:
    """Categorical cross-entropy H(target, pred) = -Σ_j target_j log pred_j, per row.

    Parameters
    ----------
    pred : (n, C) float32 or float64
        Model predictions of the declared `kind`.
    target : (n,) integers or (n, C) floats
        True class indices, or target distributions (soft labels).
    kind : {"logits", "probs", "log_probs"}
    weights : (n,) non-negative floats, optional
    ignore_index : int
        Rows whose class index equals this contribute nothing (loss 0.0 with
        ``reduction="none"``, as in torch). Class indices only.
    label_smoothing : float in [0, 1)
        The target becomes (1 - ε)·target + ε/C.
    eps : float in (0, 1), optional
        Clip probabilities from below before the log; None (default) is exact.
    reduction : {"none", "sum", "mean"}
        "mean" is Σ w·loss / Σ w over rows not ignored; NaN when there are none.
    base : {"e", 2}
        Nats or bits.

    Returns
    -------
    float64 array of shape (n,) for ``reduction="none"``, else a float.
    """
    pred = C.as_predictions(pred, "pred")
    code = C.kind_code(kind)
    C.check_values(pred, kind, "pred")
    n, n_classes = pred.shape
    weights = C.as_weights(weights, n)
    divisor = C.log_base(base)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    log_eps = _log_eps(eps)
    buffers = Buffers(n_classes)
    out = np.empty(n)
    target = np.asarray(target)
    if target.ndim == 2:
        target = C.as_predictions(target, "target")
        if target.shape != pred.shape:
            raise ValueError(f"soft target must have the shape of pred {pred.shape}, got {target.shape}")
        C.check_values(target, "probs", "target")
        keep = None
        R.ce_soft_rows(pred, target, code, label_smoothing, log_eps, buffers.rows, *buffers.args(), out)
    else:
        labels = C.as_labels(target, n, n_classes, ignore_index)
        keep = labels != ignore_index
        if code == LOGITS and n_classes <= NARROW_CLASSES:
            narrow_labels = labels if ignore_index < 0 else np.where(keep, labels, -1)  # the kernel ignores < 0
            R.ce_hard_rows_narrow(pred, narrow_labels, label_smoothing, log_eps, out)
        else:
            R.ce_hard_rows(pred, labels, code, ignore_index, label_smoothing, log_eps, buffers.rows, *buffers.args(), out)
    if divisor != 1.0:
        out /= divisor
    return C.reduce(out, weights, keep, reduction)


def binary_cross_entropy(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    kind: Literal["logits", "probs"] = "logits",
    weights: ArrayLike | None = None,
    pos_weight: float | None = None,
    eps: float | None = None,
    reduction: Reduction = "none",
    base: Literal["e", 2] = "e",
) -> NDArray[np.float64] | float:
    """Binary cross-entropy -(pos_weight·t·log σ + (1 - t)·log(1 - σ)), per row.

    Parameters
    ----------
    pred : (n,) float32 or float64
        Scores: logits (through a stable log-sigmoid) or probabilities of the positive class.
    target : (n,) values in [0, 1]
        Hard {0, 1} or soft targets.
    kind : {"logits", "probs"}
    weights : (n,) non-negative floats, optional
    pos_weight : float, optional
        Weight of the positive term (as torch's ``pos_weight``); default 1.
    eps : float in (0, 1), optional
        Clip probabilities to [eps, 1 - eps]; None (default) is exact.
    reduction, base
        As in :func:`cross_entropy`.
    """
    pred = C.as_predictions(pred, "pred", ndim=1)
    if kind not in ("logits", "probs"):
        raise ValueError(f"kind must be 'logits' or 'probs' for binary cross-entropy, got {kind!r}")
    target = np.asarray(target)
    if target.shape != pred.shape:
        raise ValueError(f"target must have shape {pred.shape} to match pred, got {target.shape}")
    if target.dtype.kind not in "biuf":
        raise TypeError(f"target must be numeric, got dtype {target.dtype}")
    target = np.ascontiguousarray(target, dtype=np.float64)
    bad = np.flatnonzero(~((target >= 0) & (target <= 1)))
    if bad.size:
        raise ValueError(f"target: row {bad[0]} is {target[bad[0]]}, expected a value in [0, 1]")
    finite = np.isfinite(pred) if kind == "logits" else (pred >= 0) & (pred <= 1)
    bad = np.flatnonzero(~finite)
    if bad.size:
        expected = "a finite logit" if kind == "logits" else "a probability in [0, 1]"
        raise ValueError(f"pred ({kind}): row {bad[0]} is {pred[bad[0]]}, expected {expected}")
    weights = C.as_weights(weights, pred.shape[0])
    divisor = C.log_base(base)
    pos = 1.0 if pos_weight is None else float(pos_weight)
    if not (math.isfinite(pos) and pos >= 0):
        raise ValueError(f"pos_weight must be a finite value >= 0, got {pos_weight!r}")
    if eps is not None and not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5) for binary cross-entropy, got {eps!r}")
    out = np.empty(pred.shape[0])
    R.bce_rows(pred, target, kind == "logits", pos, 0.0 if eps is None else float(eps), out)
    if divisor != 1.0:
        out /= divisor
    return C.reduce(out, weights, None, reduction)


def _pair(p: ArrayLike, q: ArrayLike, kind: str) -> tuple[np.ndarray, np.ndarray]:
    p = C.as_predictions(p, "p")
    q = C.as_predictions(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    C.kind_code(kind)
    C.check_values(p, kind, "p")
    C.check_values(q, kind, "q")
    return p, q


def _divergence(rows_kernel, p, q, kind, reduction, base):
    p, q = _pair(p, q, kind)
    divisor = C.log_base(base)
    bp, bq = Buffers(p.shape[1]), Buffers(p.shape[1])
    out = np.empty(p.shape[0])
    rows_kernel(p, q, C.kind_code(kind), bp.rows, *bp.args(), *bq.args(), out)
    if divisor != 1.0:
        out /= divisor
    return C.reduce(out, None, None, reduction)


def kl_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    kind: Kind = "logits",
    reduction: Reduction = "none",
    base: Literal["e", 2] = "e",
) -> NDArray[np.float64] | float:
    """KL(p‖q) = Σ_j p_j (log p_j - log q_j) per row: p the reference, q the model.

    Both arrays are (n, C) of the same `kind`. 0·log 0 = 0; p_j > 0 where q_j = 0
    gives +inf. ``reduction="mean"`` is the plain mean over rows.
    """
    return _divergence(R.kl_rows, p, q, kind, reduction, base)


def js_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    kind: Kind = "logits",
    reduction: Reduction = "none",
    base: Literal["e", 2] = "e",
) -> NDArray[np.float64] | float:
    """Jensen-Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2, per row.

    Symmetric, finite, between 0 and log 2 (1 bit).
    """
    return _divergence(R.js_rows, p, q, kind, reduction, base)


def entropy(
    p: ArrayLike,
    *,
    kind: Kind = "logits",
    reduction: Reduction = "none",
    base: Literal["e", 2] = "e",
) -> NDArray[np.float64] | float:
    """Shannon entropy H(p) = -Σ_j p_j log p_j per row, with 0·log 0 = 0."""
    p = C.as_predictions(p, "p")
    code = C.kind_code(kind)
    C.check_values(p, kind, "p")
    divisor = C.log_base(base)
    buffers = Buffers(p.shape[1])
    out = np.empty(p.shape[0])
    R.entropy_rows(p, code, buffers.rows, *buffers.args(), out)
    if divisor != 1.0:
        out /= divisor
    return C.reduce(out, None, None, reduction)
