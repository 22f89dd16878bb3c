"""xent_kernels.hashing: splitmix64 against published reference outputs."""

from __future__ import annotations

import numpy as np
from numpy.testing import assert_array_equal

from xent_kernels.hashing import GOLDEN_GAMMA, splitmix64

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
