"""xent flows: everything that touches the world (Parquet, Dask, Prefect, config, CLI).

The numerics live in :mod:`xent_kernels`; this package reads shards, runs those
kernels on a Dask cluster, and writes reports.

``from flows import evaluate, drift, compare`` is the Python API (:mod:`flows.api`); it is
imported on first use, so ``import flows`` stays cheap.
"""

from .metadata import VERSION as __version__


_API = ("evaluate", "drift", "compare", "Report", "DriftResult", "CompareResult")


def __getattr__(name: str):
    # PEP 562: the API pulls in Dask and pyarrow; only its users pay for them.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
