"""Counter-based random streams: every value is a hash of ``(seed, id, stream)``.

So the row with a given id is the same whatever else a dump holds, and shards can be
generated one at a time, in any order.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from xent_kernels.hashing import GOLDEN_GAMMA, splitmix64

MASK64 = (1 << 64) - 1


def mix_int(x: int) -> int:
    """splitmix64 of a Python int, taken modulo 2**64 first."""
    return int(splitmix64(x & MASK64))


def stream_key(seed: int, stream: str) -> int:
    """A 64-bit key for one named random stream of one seed."""
    return mix_int(mix_int(seed) + zlib.crc32(stream.encode()) * GOLDEN_GAMMA)


def bits(ids: np.ndarray, key: int, width: int = 1) -> np.ndarray:
    """64 random bits per (id, j) for j < width: splitmix64 output number id*width+j."""
    z = ids.astype(np.uint64)[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)
    z *= np.uint64(GOLDEN_GAMMA)
    z += np.uint64(key)
    return splitmix64(z, out=z)


def uniform(ids: np.ndarray, key: int) -> np.ndarray:
    """One float64 uniform in [0, 1) per id (53 random bits)."""
    return (bits(ids, key)[:, 0] >> np.uint64(11)).astype(np.float64) * 2.0**-53


def normals(ids: np.ndarray, key: int, width: int) -> np.ndarray:
    """Standard normals, shape (len(ids), width), by Box-Muller on 32-bit halves."""
    half = (width + 1) // 2
    h = bits(ids, key, half)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32  # in (0, 1): log is finite
    theta = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * (2.0 * math.pi * 2.0**-32)
    del h
    r = np.sqrt(-2.0 * np.log(u1))
    out = np.empty((len(ids), 2 * half))
    np.multiply(r, np.cos(theta), out=out[:, :half])
    np.multiply(r, np.sin(theta), out=out[:, half:])
    return out[:, :width]


def permute(pos: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A keyed pseudo-random bijection of [0, n) applied to positions ``pos``.

    A 6-round Feistel network on the smallest even bit width covering n, with cycle
    walking for values that land in [n, 2**bits).
    """
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [stream_key(seed, f"shuffle/{r}") for r in range(6)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for key in keys:
            f = right * np.uint64(GOLDEN_GAMMA) + np.uint64(key)
            left, right = right, left ^ (splitmix64(f, out=f) & mask)
        return (left << np.uint64(half)) | right

    out = feistel(pos.astype(np.uint64))
    todo = np.flatnonzero(out >= np.uint64(n))
    while todo.size:  # expected < 4 rounds: the domain is less than 4n
        out[todo] = feistel(out[todo])
        todo = todo[out[todo] >= np.uint64(n)]
    return out.astype(np.int64)
