"""Kernels called from many Python threads at once give exactly the serial results.

Dask's threaded workers run kernels side by side (``nogil=True``), so no kernel may
keep state between calls. As numbagg's ``test_multithreading.py``: compile every public
path first, then run them from a thread pool on different inputs and compare with
serial results bit for bit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy.special import log_softmax

from xent_kernels import (
    ClassStats,
    binary_cross_entropy,
    class_stats_partial,
    cross_entropy,
    entropy,
    find_invalid_row,
    js_divergence,
    kl_divergence,
)

KEYS = [("a",), ("b",), ("c",)]


def make_case(seed: int, n_classes: int, kind: str):
    rng = np.random.default_rng([seed, n_classes])
    n = 1500 if n_classes <= 32 else 150
    logits = rng.normal(scale=3.0, size=(n, n_classes)).astype(np.float32)
    pred = {"logits": logits, "log_probs": log_softmax(logits, axis=1), "probs": np.exp(log_softmax(logits, axis=1))}[kind]
    labels = rng.integers(-1, n_classes, n)
    return {
        "pred": pred, "kind": kind, "labels": labels, "weights": rng.uniform(0, 2, n),
        "slice_ids": rng.integers(0, 3, n), "other": np.roll(pred, 1, axis=0), "binary": rng.normal(size=n),
    }


def run_all(case) -> dict[str, np.ndarray]:
    """Every public kernel path on one case: class statistics (with slices, weights and
    a reference), and the losses."""
    pred, kind, labels = case["pred"], case["kind"], case["labels"]
    stats = class_stats_partial(
        pred, labels, kind=kind, weights=case["weights"], slice_ids=case["slice_ids"], slice_keys=KEYS,
        reference=case["other"],
    )
    plain = class_stats_partial(pred, labels, kind=kind, eps=1e-3)
    out = {f"stats.{name}": array for name, array in stats._arrays().items()}
    out.update({f"plain.{name}": array for name, array in plain._arrays().items()})
    out["merged.cell_sum"] = ClassStats.merge(stats.collapse_slices(), stats.slice(1, ())).cell_sum
    out["cross_entropy"] = cross_entropy(pred, labels, kind=kind, ignore_index=-1)
    out["cross_entropy_smoothed"] = cross_entropy(pred, labels, kind=kind, ignore_index=-1, label_smoothing=0.1)
    soft = np.exp(log_softmax(np.asarray(case["other"], np.float64), axis=1)) if kind != "probs" else case["other"]
    out["cross_entropy_soft"] = cross_entropy(pred, soft, kind=kind)
    out["kl"] = kl_divergence(pred, case["other"], kind=kind)
    out["js"] = js_divergence(pred, case["other"], kind=kind)
    out["entropy"] = entropy(pred, kind=kind)
    out["bce"] = binary_cross_entropy(case["binary"], case["weights"] / 2)
    bad = pred.copy()
    bad[len(bad) // 2, 0] = np.nan
    out["invalid_row"] = np.array([find_invalid_row(pred, kind)[0], find_invalid_row(bad, kind)[0]])
    return out


CASES = [make_case(seed, n_classes, kind)
         for seed in range(4) for n_classes in (3, 10, 50) for kind in ("logits", "probs", "log_probs")]


@pytest.mark.parametrize("workers", [4, pytest.param(8, marks=pytest.mark.slow)])
def test_threads_give_the_serial_results(workers):
    serial = [run_all(case) for case in CASES]  # also compiles every path first
    order = list(range(len(CASES))) * 3
    np.random.default_rng(workers).shuffle(order)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda i: (i, run_all(CASES[i])), order))
    for i, threaded in results:
        assert threaded.keys() == serial[i].keys()
        for name, value in threaded.items():
            assert np.array_equal(value, serial[i][name], equal_nan=True), (i, name)
