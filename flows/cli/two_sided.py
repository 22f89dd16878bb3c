"""What ``xent drift`` and ``xent compare`` share: a dump against another, checked
before Prefect starts, run with or without it, and printed (on a breach too)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable

from ..errors import EXIT_BREACH, UsageError, XentError
from .running import check_output, check_sources, eval_overrides, on_terminal, page_line, pipelines, run_flow

if TYPE_CHECKING:
    from ..api import TwoSided


def set_option(section: Any, field: str, value: Any, flag: str) -> None:
    """Set `field` of a config section from `flag`'s value, unless the flag was not given
    (or given empty); a value the section refuses is a UsageError naming the flag."""
    from pydantic import ValidationError

    from ..config import describe_validation_error

    if value is None or value == "":
        return
    try:
        setattr(section, field, value)
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, flag)) from None


def run_two_sided(args: argparse.Namespace, kind: TwoSided, set_options: Callable[[Any], None],
                  show: Callable[..., None]) -> int:
    """Run `kind` (:data:`flows.api.DRIFT` or ``COMPARE``) from the command line: the
    config from the flags (`set_options` sets the command's own), both dumps and the
    output checked, the run with or without Prefect, then the main table (`show`) and
    the page line, also when a breach fails the run (exit code 3)."""
    from ..config import build_config

    overrides = eval_overrides(args)
    overrides["sources"] = getattr(args, kind.second)
    overrides[kind.first] = getattr(args, kind.first)
    config = build_config(kind.config_model, args.config, overrides)
    set_options(config)
    for sources in (getattr(config, kind.first), config.sources):  # before Prefect starts
        check_sources(sources, config.storage_options, list_files=not args.no_prefect)
    check_output(args.out)
    page = page_line(args.out)
    table = kind.result.TABLE
    if args.no_prefect:
        from ..engine import Progress
        from ..runs.two_sided import two_sided_steps

        paths, result = two_sided_steps(kind, config, args.out, progress=Progress.auto())
        show(paths[table], storage_options=config.storage_options)
        print(page)
        result.raise_for_breach()
        return 0
    try:
        paths = run_flow(pipelines().TWO_SIDED_FLOWS[kind.name], config, args.out, progress=on_terminal())["paths"]
    except XentError as error:
        if error.exit_code != EXIT_BREACH:
            raise
        # The failed run wrote its report and page too.
        show(f"{args.out.rstrip('/')}/{table}.parquet", storage_options=config.storage_options)
        print(page)
        raise
    show(paths[table], storage_options=config.storage_options)
    print(page)
    return 0
