"""Drift: the per-sample join on key columns (several models scoring the same ids),
units, the verdict and breaches on stdout, the Prefect-free path, and the flow's
artifact keys and run names, against an obvious numpy/scipy computation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from numpy.testing import assert_allclose
from scipy.special import log_softmax, rel_entr

from conftest import child_env
from flows.cli import main
from flows.config import DRIFT_METRICS, DriftConfig
from flows.drift import drift_steps
from flows.errors import DataError
from flows.generate import generate_dump, load_arrays

MODELS = ("a", "b", "c")
CLASSES = 4


# --------------------------------------------------------------------------- the CLI: --no-prefect


def drift_dumps(tmp_path, drift=1.0):
    common = dict(classes=5, slices={"model": ["a", "b"]}, seed=7)
    reference = generate_dump(tmp_path / "ref", rows=3000, shards=3, **common)
    current = generate_dump(tmp_path / "cur", rows=2500, shards=2, shuffle=True, drift=drift, **common)
    return reference, current


def test_no_prefect_never_imports_it(tmp_path):
    """`xent drift --no-prefect` runs the same steps without importing Prefect at all."""
    reference, current = drift_dumps(tmp_path)
    args = ["drift", "--reference", reference.root, "--current", current.root, "--slice-by", "model",
            "--out", str(tmp_path / "out"), "--no-prefect", "--units", "bits"]
    code = (
        "import sys; from flows import cli; "
        f"code = cli.main({args!r}); "
        "print(code, sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env=child_env(DASK_SCHEDULER_ADDRESS=None), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout
    table = pq.read_table(tmp_path / "out" / "drift.parquet")
    assert table.schema.metadata[b"xent.units"] == b"bits"
    assert "kl_per_sample" in table.column("metric").to_pylist()


