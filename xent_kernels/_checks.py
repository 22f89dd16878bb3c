"""Input checks at the public API boundary: once per call, never inside the loops."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.special import softmax

from ._prepare import KIND_CODES
from ._validate import first_bad_label, first_invalid_row

# Rows of probabilities must sum to 1 (log-probabilities: logsumexp to 0) within this.
# Loose enough for float32 softmax outputs of 32k classes, tight enough to catch
# unnormalised scores passed as probabilities.
SUM_TOLERANCE = 1e-4

_REASONS = {
    1: "a NaN or infinite value",
    2: "a negative probability",
    3: "a sum of {total:.9g}, not 1 (tolerance {tol:g})",
}
_LOG_SUM_REASON = "a logsumexp of {total:.9g}, not 0 (tolerance {tol:g})"


def kind_code(kind: str) -> int:
    try:
        return KIND_CODES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be one of {sorted(KIND_CODES)}, got {kind!r}") from None


def log_base(base) -> float:
    """Divisor that converts nats into the requested unit."""
    if base == "e":
        return 1.0
    if base == 2 or base == "2":
        return math.log(2.0)
    raise ValueError(f"base must be 'e' (nats) or 2 (bits), got {base!r}")


def as_predictions(pred, name: str, *, ndim: int = 2) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got dtype {pred.dtype}")
    if pred.ndim != ndim:
        expected = "(n_rows, n_classes)" if ndim == 2 else "(n_rows,)"
        raise ValueError(f"{name} must have shape {expected}, got shape {pred.shape}")
    if ndim == 2 and pred.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column, got shape {pred.shape}")
    return np.ascontiguousarray(pred)


def check_values(pred: np.ndarray, kind: str, name: str) -> None:
    """Raise ValueError naming the first row that is not a valid `kind` row."""
    row, reason = find_invalid_row(pred, kind)
    if row >= 0:
        raise ValueError(
            f"{name} ({kind}): row {row} has {reason}: {np.array2string(pred[row], threshold=12)}"
        )


def find_invalid_row(pred: np.ndarray, kind: str, tol: float = SUM_TOLERANCE) -> tuple[int, str]:
    """First row of a 2-D prediction array that is not valid for `kind`, with the
    reason in words (a row that does not sum to 1 gives its sum and `tol`); (-1, "")
    when every row is valid."""
    if pred.shape[0] == 0:
        return -1, ""
    row, code = first_invalid_row(pred, kind_code(kind), tol)
    if row < 0:
        return -1, ""
    values = pred[row].astype(np.float64)
    if code == 3 and kind == "log_probs":
        top = values.max()
        return int(row), _LOG_SUM_REASON.format(total=top + np.log(np.sum(np.exp(values - top))), tol=tol)
    return int(row), _REASONS[code].format(total=np.sum(values), tol=tol)


def find_bad_label(labels: np.ndarray, n_classes: int, ignore_index: int | None = None) -> int:
    """First row whose label is neither a class in [0, n_classes) nor `ignore_index`;
    -1 when every label is valid."""
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape[0] == 0:
        return -1
    return int(first_bad_label(labels, n_classes, ignore_index is not None, 0 if ignore_index is None else ignore_index))


def as_labels(labels, n_rows: int, n_classes: int, ignore_index: int | None, name: str = "target") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} class indices must be integers, got dtype {labels.dtype}")
    if labels.shape != (n_rows,):
        raise ValueError(f"{name} must have shape ({n_rows},) to match the predictions, got {labels.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    row = find_bad_label(labels, n_classes, ignore_index)
    if row >= 0:
        allowed = f"[0, {n_classes})" + ("" if ignore_index is None else f" or ignore_index={ignore_index}")
        raise ValueError(f"{name}: row {row} has class {labels[row]}, expected a class in {allowed}")
    return labels


def as_weights(weights, n_rows: int) -> np.ndarray | None:
    if weights is None:
        return None
    weights = np.asarray(weights)
    if weights.dtype.kind not in "iuf":
        raise TypeError(f"weights must be numeric, got dtype {weights.dtype}")
    if weights.shape != (n_rows,):
        raise ValueError(f"weights must have shape ({n_rows},), got {weights.shape}")
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(weights) & (weights >= 0)))
    if bad.size:
        raise ValueError(f"weights: row {bad[0]} is {weights[bad[0]]}, expected a finite value >= 0")
    return weights


def reduce(losses: np.ndarray, weights: np.ndarray | None, keep: np.ndarray | None, reduction: str) -> np.ndarray | float:
    """'none' returns the per-row array; 'sum' Σw·loss; 'mean' Σw·loss / Σw over kept rows."""
    if reduction == "none":
        return losses
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    # np.sum is pairwise: its rounding error grows with log(n), not n.
    if weights is None:  # ignored rows carry loss 0
        total = float(np.sum(losses))
        denominator = float(len(losses) if keep is None else np.count_nonzero(keep))
    else:
        w = weights if keep is None else np.where(keep, weights, 0.0)
        # Zero-weight rows contribute nothing, even when their loss is infinite.
        with np.errstate(invalid="ignore"):
            total = float(np.sum(np.where(w > 0, w * losses, 0.0)))
        denominator = float(np.sum(w))
    if reduction == "sum":
        return total
    return total / denominator if denominator > 0 else math.nan


def counted_rows(pred: np.ndarray, kind: str) -> NDArray[np.bool_]:
    """Rows the statistics kernel counts (others are non-finite): no NaN, no +inf, no
    -inf but in log-probabilities (a probability of 0, not in every class), no negative
    probability."""
    if kind == "log_probs":
        return ~(np.isnan(pred) | (pred == np.inf)).any(axis=1) & (pred > -np.inf).any(axis=1)
    ok = np.isfinite(pred).all(axis=1)
    return ok & (pred >= 0).all(axis=1) if kind == "probs" else ok


def probabilities(pred: np.ndarray, kind: str) -> NDArray[np.float64]:
    """float64 probabilities of rows of `kind` (probabilities as given)."""
    pred = np.asarray(pred, dtype=np.float64)
    if kind == "logits":
        return softmax(pred, axis=1)
    return np.exp(pred) if kind == "log_probs" else pred
