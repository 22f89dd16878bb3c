"""The one place that configures Numba for xent.

Policy
------
* ``nogil=True`` always: Dask's threaded workers run kernels side by side.
* fastmath limited to flags that keep NaN and inf meaningful. ``nnan``/``ninf`` are
  never set: ``log(0) = -inf`` and the NaN checks must keep working. ``nsz`` is left
  out too: together with ``reassoc`` it lets LLVM drop the NaN check on a summed row
  (seen with Numba 0.68 / LLVM 22; tests/test_numba_policy.py guards it).
* No ``parallel=True``: Dask provides parallelism, and Numba's threading layer is
  not safe to call from several Python threads at once.
* On-disk cache in ``$XENT_CACHE_DIR`` (else ``$NUMBA_CACHE_DIR``, else the user's
  cache folder, else the temp folder: the first writable one), in a subfolder named
  by a hash of this package's sources. Numba only notices edits to the file that
  holds a function, not to the helpers it calls from other files; the hash folder
  makes any edit a clean recompile. It also works when the package is installed
  read-only, and Dask workers on the same install find the same folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numba
from numba import njit

FASTMATH = frozenset({"arcp", "contract", "afn", "reassoc"})

_PACKAGE_DIR = Path(__file__).resolve().parent


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _source_hash() -> str:
    digest = hashlib.sha256(numba.__version__.encode())
    for source in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _choose_cache_dir() -> str | None:
    user = os.environ.get("XENT_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    candidates = [Path(user)] if user else []
    candidates += [Path(xdg) / "xent", Path(tempfile.gettempdir()) / f"xent-cache-{uid}"]
    for base in candidates:
        folder = base / f"numba-{_source_hash()}"
        if _writable(folder):
            return str(folder)
    return None  # nothing writable: Numba compiles in memory every time


CACHE_DIR = _choose_cache_dir()
if CACHE_DIR is not None:
    # Numba reads this when each function is decorated. It is process-wide, so other
    # cached Numba code in the same process also caches here.
    numba.config.CACHE_DIR = CACHE_DIR


def kernel(func=None, **overrides):
    """``numba.njit`` with xent's policy: nogil, cached, NaN/inf-preserving fastmath."""
    options = {
        "nogil": True,
        "cache": CACHE_DIR is not None,
        "fastmath": set(FASTMATH),
        "error_model": "numpy",
    }
    options.update(overrides)
    if func is None:
        return njit(**options)
    return njit(**options)(func)


def strict_kernel(func):
    """A kernel whose rounding is part of its correctness (compensated sums, range
    reductions), which reassociation would break. Only FMA contraction is allowed:
    it rounds once instead of twice."""
    return kernel(func, fastmath={"contract"})
