"""xent_kernels.hashing: splitmix64 against published reference outputs; the key and
content hashes against their documented formulas, written in plain Python; join and
jackknife buckets independent of each other."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy import stats as sps

from reference import MASK64, splitmix64_int

from flows.monitor.join import bucket_of
from xent_kernels.hashing import (
    GOLDEN_GAMMA, JACKKNIFE_SEED, content_hash, key_buckets, key_hash, position_keys, splitmix64,
)

# The first outputs of the splitmix64 generator seeded with 0 (the reference C code,
# https://prng.di.unimi.it/splitmix64.c, as quoted in many test suites).
SEED_0 = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_splitmix64_is_the_generators_output_function():
    # The generator adds GOLDEN_GAMMA to its state, then mixes: output k is mix(k * gamma).
    states = np.arange(1, 4, dtype=np.uint64) * np.uint64(GOLDEN_GAMMA)
    assert_array_equal(splitmix64(states), np.array(SEED_0, dtype=np.uint64))
    assert [int(splitmix64(k * GOLDEN_GAMMA % 2**64)) for k in (1, 2, 3)] == SEED_0


def test_splitmix64_leaves_its_input_alone_unless_told_to_mix_in_place():
    x = np.arange(1, 4, dtype=np.uint64) * np.uint64(GOLDEN_GAMMA)
    before = x.copy()
    y = splitmix64(x)
    assert_array_equal(x, before)
    assert splitmix64(x, out=x) is x
    assert_array_equal(x, y)


def test_signed_input_is_taken_modulo_2_64():
    assert int(splitmix64(np.array([-1], dtype=np.int64))[0]) == int(splitmix64(2**64 - 1))


# --------------------------------------------------------------------------- row hashes

MASK = MASK64
mix = splitmix64_int


def test_key_hash_chains_splitmix64_over_the_columns():
    ids = np.array([0, 1, -5, 2**40], dtype=np.int64)
    names = np.array(["a", "é", "a", ""], dtype=object)
    got = key_hash([ids, names], seed=12345)
    for i, (a, b) in enumerate(zip(ids.tolist(), names.tolist())):
        h = mix(12345 ^ (a & MASK))
        h = mix(h ^ zlib.crc32(b.encode()))
        assert int(got[i]) == h
    assert_array_equal(key_buckets([ids], 7), [mix(JACKKNIFE_SEED ^ (a & MASK)) % 7 for a in ids.tolist()])


def test_join_buckets_are_seed_0_and_independent_of_jackknife_buckets():
    ids = np.arange(200_000, dtype=np.int64)
    join = bucket_of([ids], 20)
    assert_array_equal(join[:100], [mix(int(i)) % 20 for i in ids[:100]])
    jack = key_buckets([ids], 20)
    table = np.zeros((20, 20))
    np.add.at(table, (join, jack), 1)
    assert sps.chi2_contingency(table).pvalue > 1e-4  # a 20 x 20 table of about 500 each: no dependence
    assert abs((join == jack).mean() - 1 / 20) < 0.005


@pytest.mark.parametrize("dtype, word", [(np.float32, np.uint32), (np.float64, np.uint64)])
def test_content_hash_is_the_documented_formula(dtype, word):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(500, 7)).astype(dtype)
    labels = rng.integers(-1, 7, 500)
    keys = [mix(JACKKNIFE_SEED + (j + 1) * GOLDEN_GAMMA) for j in range(7)]
    assert_array_equal(position_keys(7), np.array(keys, dtype=np.uint64))
    got = content_hash(pred, labels)
    for i in (0, 1, 250, 499):
        total = 0
        for j, w in enumerate(pred[i].view(word).tolist()):
            x = ((w ^ keys[j]) * 0xFF51AFD7ED558CCD) & MASK
            total = (total + (x ^ (x >> 29))) & MASK
        assert int(got[i]) == mix(mix(JACKKNIFE_SEED ^ (int(labels[i]) & MASK)) ^ total)
    # a row's hash is its own: the same rows in another order hash the same
    order = rng.permutation(500)
    assert_array_equal(content_hash(pred[order], labels[order]), got[order])
    assert_array_equal(content_hash(pred[:, ::1].copy(order="F"), labels), got)
    with pytest.raises(TypeError, match="float32 or float64"):
        content_hash(pred.astype(np.float16), labels)
