"""``xent compare``: a candidate model against a baseline on the same rows."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .running import check_output, check_sources, eval_overrides, on_terminal, page_line, pipelines, run_flow


def cmd_compare(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..config import CompareConfig, build_config, describe_validation_error
    from ..errors import GateBreach
    from .show import print_compare

    overrides = eval_overrides(args)
    overrides["sources"] = args.candidate
    overrides["baseline"] = args.baseline
    config = build_config(CompareConfig, args.config, overrides)
    try:
        if args.id_cols:
            config.compare.id_cols = args.id_cols
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, "--id-cols")) from None
    for sources in (config.baseline, config.sources):  # before Prefect starts
        check_sources(sources, config.storage_options, list_files=not args.no_prefect)
    check_output(args.out)
    page = page_line(args.out)
    if args.no_prefect:
        from ..engine import Progress
        from ..runs.compare import compare_steps

        paths, result = compare_steps(config, args.out, progress=Progress.auto())
        print_compare(paths["compare"], storage_options=config.storage_options)
        print(page)
        result.raise_for_breach()
        return 0
    try:
        paths = run_flow(pipelines().compare_flow, config, args.out, progress=on_terminal())["paths"]
    except GateBreach:  # the failed run wrote its report and page too
        print_compare(f"{args.out.rstrip('/')}/compare.parquet", storage_options=config.storage_options)
        print(page)
        raise
    print_compare(paths["compare"], storage_options=config.storage_options)
    print(page)
    return 0
