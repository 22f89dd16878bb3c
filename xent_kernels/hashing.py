"""Stateless 64-bit hashing: the splitmix64 mixing function, vectorised over NumPy.

splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014) is a generator whose state advances by ``GOLDEN_GAMMA`` and whose
output is ``splitmix64(state)``. Used as a hash it sends consecutive integers to
well-spread, reproducible 64-bit values: no salt, so every process and every
machine agrees.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["GOLDEN_GAMMA", "splitmix64"]

# The generator's state increment: 2**64 divided by the golden ratio, made odd.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: ArrayLike, out: NDArray[np.uint64] | None = None) -> NDArray[np.uint64]:
    """The splitmix64 mixing function of each value, in wrapping uint64 arithmetic.

    Parameters
    ----------
    x : array_like of integers
        Python integers in [0, 2**64), or a NumPy integer array (signed values are
        taken modulo 2**64).
    out : numpy.ndarray of uint64, optional
        Where to put the result; may be `x` itself, to mix in place.

    Returns
    -------
    numpy.ndarray of uint64
        The mixed values, shaped like `x` (0-d for a scalar): `out` if given. The k-th
        output of the splitmix64 generator seeded with ``s`` is
        ``splitmix64(s + k * GOLDEN_GAMMA mod 2**64)``, k = 1, 2, ...
    """
    if out is None:
        out = np.array(x, dtype=np.uint64)
    elif out is not x:
        out[...] = x
    out ^= out >> np.uint64(30)
    out *= _MUL1
    out ^= out >> np.uint64(27)
    out *= _MUL2
    out ^= out >> np.uint64(31)
    return out
