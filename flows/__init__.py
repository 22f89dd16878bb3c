"""xent flows: everything that touches the world (Parquet, Dask, Prefect, config, CLI).

The numerics live in :mod:`xent_kernels`; this package reads shards, runs those
kernels on a Dask cluster, and writes reports.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xent")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

