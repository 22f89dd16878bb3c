"""``xent drift``: a current dump against a reference."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .running import check_output, check_sources, eval_overrides, on_terminal, page_line, pipelines, run_flow


def cmd_drift(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..config import DriftConfig, build_config, describe_validation_error
    from ..errors import DriftBreach
    from .show import print_drift

    overrides = eval_overrides(args)
    overrides["sources"] = args.current
    overrides["reference"] = args.reference
    config = build_config(DriftConfig, args.config, overrides)
    try:
        if args.id_col:
            config.drift.id_col = args.id_col
        if args.id_cols:
            config.drift.id_cols = args.id_cols
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, "--id-cols")) from None
    try:
        if args.per_sample_smoothing is not None:
            config.drift.per_sample_smoothing = args.per_sample_smoothing
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, "--per-sample-smoothing")) from None
    for sources in (config.reference, config.sources):  # before Prefect starts
        check_sources(sources, config.storage_options, list_files=not args.no_prefect)
    check_output(args.out)
    page = page_line(args.out)
    if args.no_prefect:
        from ..engine import Progress
        from ..monitor.drift import breach_error
        from ..runs.drift import drift_steps

        paths, report = drift_steps(config, args.out, progress=Progress.auto())
        print_drift(paths["drift"], storage_options=config.storage_options)
        print(page)
        error = breach_error(report)
        if error is not None:
            raise error
        return 0
    drift_flow = pipelines().drift_flow

    try:
        paths = run_flow(drift_flow, config, args.out, progress=on_terminal())["paths"]
    except DriftBreach:  # the failed run wrote its report too
        print_drift(f"{args.out.rstrip('/')}/drift.parquet", storage_options=config.storage_options)
        print(page)
        raise
    print_drift(paths["drift"], storage_options=config.storage_options)
    print(page)
    return 0
