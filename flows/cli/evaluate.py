"""``xent eval`` (a dump into a report folder) and ``xent report`` (a report folder, or a
nightly REPORT_ROOT, into its page)."""

from __future__ import annotations

import argparse
import time

from ..errors import UsageError
from .running import check_output, check_sources, eval_overrides, on_terminal, page_line, pipelines, run_flow


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import EvalConfig, build_config
    from .show import print_report

    config = build_config(EvalConfig, args.config, eval_overrides(args))
    check_sources(config.sources, config.storage_options, list_files=not args.no_prefect)  # before Prefect starts
    check_output(args.out)
    started = time.perf_counter()
    if args.no_prefect:
        from ..engine import Progress
        from ..runs.adhoc import eval_steps

        paths = eval_steps(config, args.out, progress=Progress.auto())[0]
    else:
        eval_flow = pipelines().eval_flow

        paths = run_flow(eval_flow, config, args.out, progress=on_terminal())
    print_report(paths, elapsed=time.perf_counter() - started, storage_options=config.storage_options)
    print(page_line(args.out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.page import HTML_FILE, PAGE_TABLES, render_html
    from ..report.writing import add_file, read_manifest, replace_file
    from .show import read_report_table

    folder = args.path.rstrip("/")
    manifest = read_manifest(folder)
    if manifest is None and _nightly_history(folder):
        return _history_report(folder, args.html)
    if manifest is None:
        raise UsageError(f"{folder}: not a complete report folder (no _manifest.json); give the --out folder of "
                         "xent eval, drift or compare")
    names = {entry["file"].removesuffix(".parquet") for entry in manifest["files"] if entry["file"].endswith(".parquet")}
    shown = [name for name in PAGE_TABLES if name in names]
    if not shown:
        raise UsageError(f"{folder}: the report has none of {', '.join(f'{n}.parquet' for n in PAGE_TABLES)}")
    tables = {name: read_report_table(f"{folder}/{name}.parquet") for name in shown}
    page = render_html(tables, **_nightly_run(tables)).encode()
    written = replace_file(args.html, page) if args.html else add_file(folder, HTML_FILE, page)
    print(f"page: {written}")
    return 0


def _nightly_history(folder: str) -> bool:
    """Whether `folder` is a nightly REPORT_ROOT: it has run_date=... folders."""
    from ..inputs.sources import filesystem

    fs, path = filesystem(folder)
    return bool(fs.glob(f"{path.rstrip('/')}/run_date=*/source=*"))


def _nightly_run(tables: dict) -> dict:
    """For a nightly run's tables folder: its source's history up to this run, read from
    the REPORT_ROOT its ``xent.nightly`` metadata names (if it is there); the page takes
    its title from that metadata."""
    import datetime as dt
    import json

    from ..metadata import NIGHTLY_KEY
    from ..runs.nightly import read_history

    raw = (next(iter(tables.values())).schema.metadata or {}).get(NIGHTLY_KEY)
    if raw is None:
        return {}
    run = json.loads(raw)
    later = (dt.date.fromisoformat(run["run_date"]) + dt.timedelta(days=1)).isoformat()
    return {"history": read_history(run["report_root"], source=run["source"], before=later)}


def _history_report(root: str, html: str | None) -> int:
    """The history page of a nightly REPORT_ROOT, written to `html`, by default to
    TABLES_ROOT/history.html (where each nightly run leaves it; TABLES_ROOT from the
    newest run's ``xent.nightly`` metadata, else the default REPORT_ROOT-tables)."""
    from ..report.page import render_history_html
    from ..report.writing import replace_file
    from ..runs.nightly import HISTORY_PAGE, read_history, tables_root_of

    page = render_history_html(read_history(root), root=root).encode()
    print(f"page: {replace_file(html or f'{tables_root_of(root)}/{HISTORY_PAGE}', page)}")
    return 0
