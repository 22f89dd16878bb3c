"""``xent warmup``: compile every kernel specialisation into Numba's cache and build the
page bundle, so that the first command on a fresh machine, container or Dask worker
compiles nothing.

Run it where the cache will be read: in the image build of the machines or workers
(``RUN xent warmup``), or once into a folder the workers share (``XENT_CACHE_DIR``).
Numba keys its cache by the CPU it compiled for: machines of another CPU model compile
again, into the same folder, beside the first (docs/guides/clusters.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InfrastructureError

if TYPE_CHECKING:
    from distributed import Client

# Small dumps whose evaluation, drift and comparison, with slices and weights and
# without, compile what the commands can need. Kernels specialise on dtypes and on how
# arrays reach them (a read-only view of Arrow's buffers for fixed_size_list, a copy for
# list and wide columns, an empty array for a column not given); the statistics take
# the narrow path up to 32 classes, the wide one above. The kind is an argument of the
# compiled code; the other kinds are evaluated once per dtype all the same.
DUMPS = [
    *({"layout": layout, "dtype": dtype, "classes": classes}
      for dtype in ("float32", "float64")
      for layout in ("fixed_size_list", "list", "wide")
      for classes in (5, 40)),
    *({"layout": "binary", "kind": "probs", "dtype": dtype, "classes": 2} for dtype in ("float32", "float64")),
]
KIND_DUMPS = [{"layout": "fixed_size_list", "kind": kind, "dtype": dtype, "classes": 5}
              for kind in ("probs", "log_probs") for dtype in ("float32", "float64")]


def cmd_warmup(args: argparse.Namespace) -> int:
    from xent_kernels import _numba

    from ..engine import dask_client
    from ..report.page.common import vega_embed_path, vega_embed_script

    if _numba.CACHE_DIR is None:
        raise InfrastructureError(
            "no writable folder for Numba's cache (tried $XENT_CACHE_DIR, $NUMBA_CACHE_DIR, the user's cache "
            "folder and the temp folder): set XENT_CACHE_DIR to a writable folder"
        )
    # Compile here, into this machine's cache, whatever cluster the environment names.
    os.environ.pop("DASK_SCHEDULER_ADDRESS", None)
    started = time.perf_counter()
    vega_embed_script()
    print(f"page bundle: {vega_embed_path()}")
    cache = Path(_numba.CACHE_DIR)
    before = _compiled(cache)
    with tempfile.TemporaryDirectory(prefix="xent-warmup-") as folder, dask_client(None) as client:
        for i, dump in enumerate(DUMPS):
            _run_all(Path(folder) / f"d{i}", dump, client, two_sided=True)
        for i, dump in enumerate(KIND_DUMPS):
            _run_all(Path(folder) / f"k{i}", dump, client, two_sided=False)
    print(f"kernels: {_compiled(cache) - before} specialisations compiled, {_compiled(cache)} in {cache}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _compiled(cache: Path) -> int:
    """How many compiled specialisations the cache folder holds (one data file each)."""
    return sum(1 for _ in cache.rglob("*.nbc"))


def _run_all(folder: Path, dump: dict, client: Client, two_sided: bool) -> None:
    """Generate a small reference and current dump like `dump`, then evaluate the reference
    and (`two_sided`) measure drift and compare the two, with slices and weights and
    without, and render each page, as the commands do."""
    from .. import api
    from ..generate.dump import generate_dump

    options = {**dump, "rows": 600, "shards": 2, "slices": {"region": ["eu", "us"]}, "weights": True, "seed": 1}
    generated = generate_dump(folder / "ref", **options)
    generate_dump(folder / "cur", **options, drift=0.3)
    reference, current = str(folder / "ref"), str(folder / "cur")
    columns = {"kind": generated.kind, "pred_col": generated.pred_column}
    for extra in ({"slice_by": ["region"], "weight_col": "weight"}, {}):
        results = [api.evaluate(reference, client=client, **columns, **extra)]
        if two_sided:
            results.append(api.drift(reference, current, client=client, **columns, **extra))
            results.append(api.compare(reference, current, client=client, **columns, **extra))
        for result in results:
            result.to_html()
