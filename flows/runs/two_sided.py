"""A run of a dump against another (``xent drift``, ``xent compare``) as plain steps,
free of Prefect.

``xent drift --no-prefect`` and ``xent compare --no-prefect`` run them directly; the
xent-drift and xent-compare flows in ``flows.pipelines`` run the same steps as tasks.
Each kind is a :class:`flows.api.TwoSided` declaration (:data:`flows.api.DRIFT`,
:data:`flows.api.COMPARE`) and measures through the Python API.
"""

from __future__ import annotations

from typing import Callable

from ..api import TwoSided, TwoSidedResult
from ..engine import Progress, dask_client
from .adhoc import write_report

Steps = tuple[Callable, Callable]  # measure on the cluster, write; or their Prefect tasks


def two_sided_steps(kind: TwoSided, config, out: str, steps: Steps | None = None,
                    progress: Progress | None = None) -> tuple[dict[str, str], TwoSidedResult]:
    """Measure `config`'s dump against the other dump of `kind` and write the result's
    tables under `out`, breached or not; returns (paths, result). Raising for a breach
    is the caller's: ``result.raise_for_breach()``. `steps` default to
    ``(kind.on_cluster, write_report)``."""
    kind.check_dumps(config)  # before a cluster starts
    run, write = steps or (kind.on_cluster, write_report)
    with dask_client(config.scheduler) as client:
        result = run(config, client, progress)
    return write(result, out), result
