"""Stateless 64-bit hashing: the splitmix64 mixing function, vectorised over NumPy, and
the row hashes built on it (join buckets, jackknife buckets).

splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014) is a generator whose state advances by ``GOLDEN_GAMMA`` and whose
output is ``splitmix64(state)``. Used as a hash it sends consecutive integers to
well-spread, reproducible 64-bit values: no salt, so every process and every
machine agrees.

A row's hash depends on the row alone (its key values, or its label and prediction
bytes), never on its file or position, so buckets made from it do not depend on how
rows are sharded. Different seeds give independent bucket assignments: the drift
join uses seed 0, the jackknife ``JACKKNIFE_SEED``.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._numba import kernel

__all__ = [
    "GOLDEN_GAMMA", "JACKKNIFE_SEED", "content_buckets", "content_hash", "key_buckets", "key_hash", "position_keys",
    "splitmix64",
]

# The generator's state increment: 2**64 divided by the golden ratio, made odd.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
# The seed of jackknife buckets: any value but the join's 0 ("xent-jk" in ASCII).
JACKKNIFE_SEED = 0x78656E742D6A6B


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


# --------------------------------------------------------------------------- keys


def key_hash(keys: Sequence[np.ndarray], seed: int = 0) -> NDArray[np.uint64]:
    """A 64-bit hash per row of the key columns: ``h = seed``, then for each column
    ``h = splitmix64(h ^ code)``.

    A value's code is the integer itself modulo 2**64 (integer and bool columns), else
    the CRC-32 of its text (``str(value)`` in UTF-8), computed once per distinct value.

    Parameters
    ----------
    keys : sequence of (n,) arrays
        One array per key column, at least one.
    seed : int in [0, 2**64)
        Different seeds give independent hashes.
    """
    h = np.full(len(keys[0]), seed, dtype=np.uint64)
    for values in keys:
        if values.dtype.kind in "iub":
            values = np.ascontiguousarray(values)
            # signed values modulo 2**64: an int64 column's bits as they are, no copy
            code = values.view(np.uint64) if values.dtype == np.int64 else values.astype(np.uint64)
        else:
            distinct, inverse = np.unique(values.astype(str), return_inverse=True)
            crc = np.fromiter((zlib.crc32(v.encode()) for v in distinct), dtype=np.uint64, count=len(distinct))
            code = crc[inverse.reshape(-1)]
        _mix_in(h, code)
    return h


def key_buckets(keys: Sequence[np.ndarray], n_buckets: int, seed: int = JACKKNIFE_SEED) -> NDArray[np.int64]:
    """The jackknife bucket of each row by its key: ``key_hash(keys, seed) % n_buckets``."""
    return buckets_of(key_hash(keys, seed), n_buckets)


def buckets_of(hashes: NDArray[np.uint64], n_buckets: int) -> NDArray[np.int64]:
    """``hashes % n_buckets`` as int64, in one compiled pass (NumPy's uint64 modulo and
    copies cost tens of nanoseconds a row)."""
    out = np.empty(len(hashes), dtype=np.int64)
    _modulo(hashes, np.uint64(n_buckets), out)
    return out


# --------------------------------------------------------------------------- content


def position_keys(n_values: int, seed: int = JACKKNIFE_SEED) -> NDArray[np.uint64]:
    """k_j = splitmix64(seed + (j + 1)·GOLDEN_GAMMA): the splitmix64 generator's first
    `n_values` outputs from `seed`, one per position of a prediction row."""
    with np.errstate(over="ignore"):
        states = np.uint64(seed) + np.arange(1, n_values + 1, dtype=np.uint64) * np.uint64(GOLDEN_GAMMA)
    return splitmix64(states)


_WORD_MUL = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3's 64-bit finalizer constant


@kernel
def _mix(x):
    x ^= x >> np.uint64(30)
    x *= _MUL1
    x ^= x >> np.uint64(27)
    x *= _MUL2
    x ^= x >> np.uint64(31)
    return x


@kernel
def _mix_in(h, code):
    """h = splitmix64(h ^ code), in place: one pass (NumPy's would take ten)."""
    for i in range(h.shape[0]):
        h[i] = _mix(h[i] ^ code[i])


@kernel
def _modulo(hashes, n_buckets, out):
    for i in range(hashes.shape[0]):
        out[i] = np.int64(hashes[i] % n_buckets)


@kernel
def _content_hash_kernel(words, labels, keys, seed, out):
    # The positions' terms are summed, not chained, so the loop has no long dependency
    # chain: about a nanosecond per prediction value.
    n, c = words.shape
    for i in range(n):
        total = np.uint64(0)
        for j in range(c):
            x = (np.uint64(words[i, j]) ^ keys[j]) * _WORD_MUL
            total += x ^ (x >> np.uint64(29))
        out[i] = _mix(_mix(seed ^ np.uint64(labels[i])) ^ total)


def content_hash(pred: np.ndarray, labels: np.ndarray, seed: int = JACKKNIFE_SEED) -> NDArray[np.uint64]:
    """A 64-bit hash per row of its label and prediction bytes.

    With w_j the bit pattern of the row's j-th prediction value (uint32 for float32,
    uint64 for float64, as read), k_j = ``position_keys(C, seed)[j]``, M =
    0xFF51AFD7ED558CCD and all arithmetic modulo 2**64::

        x_j = (w_j ^ k_j) · M
        S   = Σ_j (x_j ^ (x_j >> 29))
        h   = splitmix64(splitmix64(seed ^ label) ^ S)

    the label taken as int64 modulo 2**64.

    Parameters
    ----------
    pred : (n, C) float32 or float64
    labels : (n,) integers
    seed : int in [0, 2**64)
    """
    pred = np.ascontiguousarray(pred)
    if pred.ndim != 2 or pred.dtype not in (np.float32, np.float64):
        raise TypeError(f"pred must be (n, C) float32 or float64, got {pred.dtype} with shape {pred.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (len(pred),):
        raise ValueError(f"labels must have shape ({len(pred)},), got {labels.shape}")
    words = pred.view(np.uint32 if pred.dtype == np.float32 else np.uint64)
    out = np.empty(len(pred), dtype=np.uint64)
    _content_hash_kernel(words, labels, position_keys(pred.shape[1], seed), np.uint64(seed), out)
    return out


def content_buckets(pred: np.ndarray, labels: np.ndarray, n_buckets: int, seed: int = JACKKNIFE_SEED) -> NDArray[np.int64]:
    """The jackknife bucket of each row by its content: ``content_hash(pred, labels, seed) % n_buckets``."""
    return buckets_of(content_hash(pred, labels, seed), n_buckets)
