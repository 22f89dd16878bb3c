"""How the arrays of two partial states combine: the merge step of ``ClassStats``.

Each state array (:mod:`xent_kernels.state_layout`) names its rule: ``sum`` (exact,
integers), ``compensated`` (a float64 sum and its TwoSum compensation term) or
``chan_m2`` (Chan's formula for Σw(CE - mean)², from the cells' sums). Every rule is
symmetric in its two arguments, so merge is commutative bit for bit.
"""

from __future__ import annotations

import numpy as np

from .state_layout import StateArray
from .statistics import CELL_FIELDS


def two_sum(sum_a, comp_a, sum_b, comp_b):
    """Elementwise compensated addition of (sum, compensation) pairs."""
    total = sum_a + sum_b
    with np.errstate(invalid="ignore"):
        back = total - sum_a
        error = (sum_a - (total - back)) + (sum_b - back)
    # an infinite sum has no rounding error to carry (and inf - inf is NaN)
    return total, comp_a + comp_b + np.where(np.isfinite(total), error, 0.0)


def _chan_m2(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> np.ndarray:
    """Σw(CE - mean)² of the union of two cells (Chan et al.), from their sums."""
    weight, ce = CELL_FIELDS.index("weight"), CELL_FIELDS.index("ce")
    wx = x["cell_sum"][..., weight] + x["cell_comp"][..., weight]
    wy = y["cell_sum"][..., weight] + y["cell_comp"][..., weight]
    cx = x["cell_sum"][..., ce] + x["cell_comp"][..., ce]
    cy = y["cell_sum"][..., ce] + y["cell_comp"][..., ce]
    both = (wx > 0) & (wy > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(both, cy / wy - cx / wx, 0.0)
        between = np.where(both, delta * delta * (wx * wy) / (wx + wy), 0.0)  # symmetric in x, y
    return x["ce_m2"] + y["ce_m2"] + between


def merge_array(array: StateArray, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One state array of the merge of two states, given both states' (aligned)
    arrays by attribute name. Symmetric in x and y."""
    if array.merge == "sum":
        (name,) = array.attributes
        return {name: x[name] + y[name]}
    if array.merge == "compensated":
        total, comp = array.attributes
        return dict(zip(array.attributes, two_sum(x[total], x[comp], y[total], y[comp])))
    if array.merge == "chan_m2":
        (name,) = array.attributes
        return {name: _chan_m2(x, y)}
    raise AssertionError(f"unknown merge rule {array.merge!r}")
