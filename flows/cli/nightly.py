"""``xent nightly`` (a date or a range of dates into the history) and ``xent serve``
(the nightly flow on its schedule)."""

from __future__ import annotations

import argparse
import os

from ..errors import UsageError, XentError
from .running import check_output, on_terminal, pipelines, run_flow


def cmd_nightly(args: argparse.Namespace) -> int:
    from ..config import NightlyConfig, build_config
    from ..runs.nightly import history_page_path, nightly_run, report_outcomes, run_dates

    config = build_config(NightlyConfig, args.config)  # a bad config or date fails before Prefect starts
    if args.date and (args.start or args.end):
        raise UsageError("give either --date or --from/--to, not both")
    if bool(args.start) != bool(args.end):
        raise UsageError("a backfill needs both --from and --to")
    flags = ("--from", "--to") if args.start else ("--date", "--to")
    dates = run_dates(config, args.date or args.start, args.end, flags)  # exit 2 naming the flag and the value
    check_output(config.report_root, "report_root")  # each source's dump is checked per date, as an outcome
    check_output(config.tables_base, "tables_root")
    if args.no_prefect:
        from ..engine import Progress

        outcomes, page = nightly_run(config, dates, progress=Progress.auto())
        return report_outcomes(outcomes, page=page)
    nightly_flow = pipelines().nightly_flow

    try:
        outcomes = run_flow(nightly_flow, os.path.abspath(args.config), dates[0], dates[-1] if len(dates) > 1 else None,
                            progress=on_terminal())
    except XentError as error:
        if getattr(error, "outcomes", None) is None:
            raise
        outcomes = error.outcomes
    return report_outcomes(outcomes, page=history_page_path(config))  # where the flow wrote it


def cmd_serve(args: argparse.Namespace) -> int:
    from ..config import NightlyConfig, build_config

    nightly_flow = pipelines().nightly_flow
    from prefect.schedules import Cron

    config = build_config(NightlyConfig, args.config)
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError("xent serve schedules runs on a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    nightly_flow.serve(
        name=config.deployment_name,
        schedules=[Cron(config.schedule.cron, timezone=config.schedule.timezone)],
        parameters={"config_path": os.path.abspath(args.config)},
        pause_on_shutdown=False,
    )
    return 0
