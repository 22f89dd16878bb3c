"""What the commands share: their flags turned into config overrides, the inputs and
outputs checked before Prefect starts, and a Prefect flow run to its end."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UsageError


def pipelines():
    """:mod:`flows.pipelines`, imported after Prefect's environment is set (Prefect reads it on import)."""
    from ..runtime import prefect_environment

    prefect_environment()
    from .. import pipelines

    return pipelines


def run_flow(flow, *args, **kwargs):
    """Run a Prefect flow to its final state; its error (with its exit code) is raised here.

    One-shot runs turn the flow heartbeat off (it only detects crashed runs of served
    deployments, and costs a second per run) unless the user configured it.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    updates = {} if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # Prefect logs a failed run's traceback; the CLI prints the error once, cleanly,
        # and an unexpected exception still ends in a traceback from here.
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with temporary_settings(updates=updates):
        state = flow(*args, return_state=True, **kwargs)
    return state.result()  # raises the flow's exception (DataError, DriftBreach, ...) if it failed


def on_terminal() -> bool:
    """``Progress.auto()`` as the plain bool a flow parameter takes."""
    from ..engine import Progress

    return Progress.auto().enabled


def eval_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from ..config import read_class_names

    return {
        "sources": getattr(args, "sources", None) or None,
        "kind": args.kind,
        "pred_col": args.pred_col,
        "label_col": args.label_col,
        "weight_col": args.weight_col,
        "slice_by": args.slice_by,
        "classes": read_class_names(args.classes) if args.classes else None,
        "units": args.units,
        "eps": args.eps,
        "scheduler": args.scheduler,
        "on_bad_shard": args.on_bad_shard,
        "on_nonfinite": args.on_nonfinite,
        "prob_tolerance": args.prob_tolerance,
        "renormalize": args.renormalize,
        "n_buckets": args.buckets,
        "interval_level": args.level,
        "min_slice_size": args.min_slice_size,
    }


def check_sources(sources: list[str], storage_options: dict[str, Any], list_files: bool = True) -> None:
    """Each source has a known URL scheme and, with `list_files`, names Parquet files
    (listing only, no file is opened): a missing folder fails here, before Prefect
    starts. Without Prefect the run's own listing fails as fast, so a large bucket is
    not listed twice."""
    import fsspec

    from ..config import did_you_mean
    from ..inputs.sources import list_inputs

    known = fsspec.available_protocols()
    for source in sources:
        scheme, sep, _ = source.partition("://")
        if sep and scheme not in known:
            raise UsageError(f"{source}: unknown URL scheme '{scheme}://'{did_you_mean(scheme, known)}")
    if list_files:
        list_inputs(sources, storage_options)


def check_output(out: str, flag: str = "--out") -> None:
    """A local output folder can be created: the nearest existing folder above it is a
    writable folder (written to, as the report will be). Object stores are not probed."""
    from ..errors import as_infrastructure_error
    from ..inputs.sources import filesystem, is_local

    fs, path = filesystem(out)
    if not is_local(fs):
        return
    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{flag} {out}: is a file, not a folder; give a folder to write the report in")
    existing = next(folder for folder in target.parents if folder.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {out}: cannot create it, {existing} is a file; give a folder path")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise as_infrastructure_error(error, out, "cannot write") or UsageError(
            f"{flag} {out}: cannot write in {existing}: {error.strerror}") from None


def page_line(out: str) -> str:
    """The last line of eval, drift and compare: where the report's page is."""
    from ..report.page import HTML_FILE

    return f"page: {out.rstrip('/')}/{HTML_FILE}"
