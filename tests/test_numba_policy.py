"""The house rules of xent_kernels: pure numerics, one Numba policy, a cache that works."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import xent_kernels
from xent_kernels import _numba

PACKAGE = Path(xent_kernels.__file__).resolve().parent


def run_python(code: str, env_extra: dict[str, str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XENT_CACHE_DIR", "NUMBA_CACHE_DIR")}
    env.update(env_extra)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_kernels_import_no_dask_prefect_or_pyarrow(tmp_path):
    out = run_python(
        """
        import sys, xent_kernels
        print(sorted(m for m in ("dask", "distributed", "prefect", "pyarrow") if m in sys.modules))
        """,
        {"PYTHONPATH": str(PACKAGE.parent)},
        tmp_path,
    )
    assert out.strip() == "[]"


def test_fastmath_policy_keeps_nan_and_inf_meaningful():
    assert not _numba.FASTMATH & {"nnan", "ninf", "fast", "nsz"}

    @njit(fastmath=set(_numba.FASTMATH))
    def first_nonfinite_row(z):
        for r in range(z.shape[0]):
            total = 0.0
            for j in range(z.shape[1]):
                total += z[r, j]
            if not np.isfinite(total):
                return r
        return -1

    z = np.zeros((3, 2))
    z[1, 0] = np.nan
    assert first_nonfinite_row(z) == 1
    z[1, 0] = 0.0
    z[2, 1] = -np.inf
    assert first_nonfinite_row(z) == 2


@pytest.mark.slow
def test_cache_works_from_a_read_only_install(tmp_path):
    """A copy of the package in a read-only folder compiles once into the cache
    folder and loads from it in a second process."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "xent_kernels", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [site, *site.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    cache = tmp_path / "cache"
    code = """
        import importlib, pkgutil
        import numpy as np, xent_kernels
        from xent_kernels import _numba
        assert xent_kernels.__file__.startswith(%r), xent_kernels.__file__
        xent_kernels.cross_entropy(np.zeros((2, 3)), np.array([0, 1]))
        xent_kernels.class_stats_partial(np.zeros((2, 3)), np.array([0, 1]))
        print(_numba.CACHE_DIR)
        modules = [importlib.import_module("xent_kernels." + m.name) for m in pkgutil.iter_modules(xent_kernels.__path__)]
        kernels = {id(f): f for m in modules for f in vars(m).values() if hasattr(f, "stats")}
        print(len(kernels), sum(sum(f.stats.cache_hits.values()) for f in kernels.values()))
    """ % str(site)
    try:
        first = run_python(code, {"PYTHONPATH": str(site), "XENT_CACHE_DIR": str(cache)}, tmp_path).split()
        second = run_python(code, {"PYTHONPATH": str(site), "XENT_CACHE_DIR": str(cache)}, tmp_path).split()
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert first[0] == second[0] and first[0].startswith(str(cache))
    assert any(Path(first[0]).rglob("*.nbi")), "nothing was written to the cache folder"
    assert int(first[1]) >= 20, first  # every kernel module was seen
    assert int(first[2]) == 0 and int(second[2]) >= 2, (first, second)


def test_cache_folder_changes_with_the_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("XENT_CACHE_DIR", str(tmp_path))
    before = _numba._choose_cache_dir()
    assert before.startswith(str(tmp_path)) and before.endswith(_numba._source_hash())
