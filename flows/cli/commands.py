"""The ``xent`` command line.

Exit codes: 0 success, 1 data error, 2 usage or config error, 3 threshold breached,
4 infrastructure (cluster, storage, network, disk), 5 internal error.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import (EXIT_CODES_HELP, EXIT_INFRASTRUCTURE, EXIT_INTERNAL, UsageError, XentError, infrastructure_cause,
                      without_credentials)
from ..kinds import KINDS


def _pipelines():
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


def _on_terminal() -> bool:
    """``Progress.auto()`` as the plain bool a flow parameter takes."""
    from ..engine import Progress

    return Progress.auto().enabled


def _add_eval_arguments(parser: argparse.ArgumentParser, sources: bool = True) -> None:
    if sources:
        parser.add_argument("sources", nargs="*", help="Parquet files, folders, globs or fsspec URLs (or 'sources' in --config)")
    parser.add_argument("--out", required=True, help="report folder (written atomically)")
    parser.add_argument("--config", help="YAML file with evaluation settings; flags override it")
    parser.add_argument("--kind", choices=list(KINDS), help="what the prediction numbers are")
    parser.add_argument("--pred-col", help="prediction column, or wide-column prefix such as logit_")
    parser.add_argument("--label-col", help="true-class column (default: label)")
    parser.add_argument("--weight-col", help="optional row-weight column")
    parser.add_argument("--slice-by", help="comma-separated slice columns or hive keys")
    parser.add_argument("--classes", help="class names: comma list, or a file (one per line or a JSON list)")
    parser.add_argument("--units", choices=["nats", "bits"])
    parser.add_argument("--eps", type=float, help="clip the true class's probability to at least EPS (default: exact)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (or $DASK_SCHEDULER_ADDRESS)")
    parser.add_argument("--on-bad-shard", choices=["error", "skip"])
    parser.add_argument("--on-nonfinite", choices=["error", "count"])
    parser.add_argument("--prob-tolerance", type=float, metavar="TOL",
                        help="probs: how far a row's sum may be from 1 (default 1e-4)")
    parser.add_argument("--renormalize", action="store_true", default=None,
                        help="probs: divide each row by its sum (log_probs: subtract its logsumexp)")
    parser.add_argument("--buckets", type=int, metavar="K", help="jackknife buckets for the intervals (default 20; 1: none)")
    parser.add_argument("--level", type=float, help="two-sided confidence level of the intervals (default 0.95)")
    parser.add_argument("--min-slice-size", type=int, metavar="N", help="flag slices of fewer rows small_slice (default 0)")


def _eval_overrides(args: argparse.Namespace) -> dict[str, Any]:
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


def check_sources(sources: list[str], storage_options: dict[str, Any]) -> None:
    """Each source has a known URL scheme and names Parquet files (listing only, no
    file is opened): a missing folder fails here, before Prefect starts."""
    import fsspec

    from ..config import did_you_mean
    from ..inputs.sources import list_inputs

    known = fsspec.available_protocols()
    for source in sources:
        scheme, sep, _ = source.partition("://")
        if sep and scheme not in known:
            raise UsageError(f"{source}: unknown URL scheme '{scheme}://'{did_you_mean(scheme, known)}")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import EvalConfig, build_config
    from .show import print_report

    config = build_config(EvalConfig, args.config, _eval_overrides(args))
    check_sources(config.sources, config.storage_options)  # before Prefect starts
    check_output(args.out)
    started = time.perf_counter()
    if args.no_prefect:
        from ..engine import Progress
        from ..runs.adhoc import eval_steps

        paths = eval_steps(config, args.out, progress=Progress.auto())[0]
    else:
        eval_flow = _pipelines().eval_flow

        paths = run_flow(eval_flow, config, args.out, progress=_on_terminal())
    print_report(paths, elapsed=time.perf_counter() - started, storage_options=config.storage_options)
    print(_page_line(args.out))
    return 0


def _page_line(out: str) -> str:
    """The last line of eval, drift and compare: where the report's page is."""
    from ..report.page import HTML_FILE

    return f"page: {out.rstrip('/')}/{HTML_FILE}"


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


def cmd_drift(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..config import DriftConfig, build_config, describe_validation_error
    from ..errors import DriftBreach
    from .show import print_drift

    overrides = _eval_overrides(args)
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
        check_sources(sources, config.storage_options)
    check_output(args.out)
    page = _page_line(args.out)
    if args.no_prefect:
        from ..engine import Progress
        from ..monitor.compare import breach_error
        from ..runs.drift import drift_steps

        paths, report = drift_steps(config, args.out, progress=Progress.auto())
        print_drift(paths["drift"], storage_options=config.storage_options)
        print(page)
        error = breach_error(report)
        if error is not None:
            raise error
        return 0
    drift_flow = _pipelines().drift_flow

    try:
        paths = run_flow(drift_flow, config, args.out, progress=_on_terminal())["paths"]
    except DriftBreach:  # the failed run wrote its report too
        print_drift(f"{args.out.rstrip('/')}/drift.parquet", storage_options=config.storage_options)
        print(page)
        raise
    print_drift(paths["drift"], storage_options=config.storage_options)
    print(page)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..config import CompareConfig, build_config, describe_validation_error
    from ..errors import GateBreach
    from .show import print_compare

    overrides = _eval_overrides(args)
    overrides["sources"] = args.candidate
    overrides["baseline"] = args.baseline
    config = build_config(CompareConfig, args.config, overrides)
    try:
        if args.id_cols:
            config.compare.id_cols = args.id_cols
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, "--id-cols")) from None
    for sources in (config.baseline, config.sources):  # before Prefect starts
        check_sources(sources, config.storage_options)
    check_output(args.out)
    page = _page_line(args.out)
    if args.no_prefect:
        from ..engine import Progress
        from ..runs.compare import compare_steps

        paths, result = compare_steps(config, args.out, progress=Progress.auto())
        print_compare(paths["compare"], storage_options=config.storage_options)
        print(page)
        result.raise_for_breach()
        return 0
    try:
        paths = run_flow(_pipelines().compare_flow, config, args.out, progress=_on_terminal())["paths"]
    except GateBreach:  # the failed run wrote its report and page too
        print_compare(f"{args.out.rstrip('/')}/compare.parquet", storage_options=config.storage_options)
        print(page)
        raise
    print_compare(paths["compare"], storage_options=config.storage_options)
    print(page)
    return 0


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
    nightly_flow = _pipelines().nightly_flow

    try:
        outcomes = run_flow(nightly_flow, os.path.abspath(args.config), dates[0], dates[-1] if len(dates) > 1 else None,
                            progress=_on_terminal())
    except XentError as error:
        if getattr(error, "outcomes", None) is None:
            raise
        outcomes = error.outcomes
    return report_outcomes(outcomes, page=history_page_path(config))  # where the flow wrote it


def cmd_serve(args: argparse.Namespace) -> int:
    from ..config import NightlyConfig, build_config

    nightly_flow = _pipelines().nightly_flow
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


def cmd_generate(args: argparse.Namespace) -> int:
    from ..generate.dump import generate_dump

    def name_values(items: list[str] | None) -> dict[str, list[str]] | None:
        pairs = [item.partition("=") for item in items or []]
        return {name: values.split(",") for name, _, values in pairs} or None

    dump = generate_dump(
        args.out,
        rows=args.rows,
        classes=args.classes,
        shards=args.shards,
        layout=args.layout,
        kind=args.kind,
        dtype=args.dtype,
        slices=name_values(args.slice),
        hive=name_values(args.hive),
        weights=args.weights,
        drift=args.drift,
        seed=args.seed,
        shuffle=args.shuffle,
        bad_shards={k: int(v) for k, v in (item.split("=") for item in args.bad or [])} or None,
        overwrite=args.overwrite,
    )
    print(f"wrote {dump.rows:,} rows in {len(dump.files)} files under {dump.root}")
    return 0


DEMO_DATES = ("2026-11-22", "2026-11-23")


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from ..config import NightlyConfig, build_config
    from ..generate.dump import generate_dump
    from ..report.page import HTML_FILE
    from ..runs.nightly import run_folder
    from .show import print_drift, print_report

    nightly_flow = _pipelines().nightly_flow

    out = Path(args.out).absolute() if args.out else Path(tempfile.mkdtemp(prefix="xent-demo-"))
    print(f"demo folder: {out}")
    started = time.perf_counter()
    baseline, today = DEMO_DATES
    # Yesterday's dump is the baseline; today's holds the same ids, reshuffled into
    # other shards, from a model that has drifted.
    common = dict(rows=200_000, classes=10, slices={"model": ["a", "b"]}, seed=1, overwrite=True)
    generate_dump(out / "dumps" / f"date={baseline}", shards=8, **common)
    generate_dump(out / "dumps" / f"date={today}", shards=6, drift=0.5, shuffle=True, **common)
    config = {
        "report_root": str(out / "reports"),
        "sources": [{"name": "demo", "paths": [str(out / "dumps" / "date={date}")], "reference": [str(out / "dumps" / f"date={baseline}")]}],
        "defaults": {"slice_by": ["model"], "units": "nats"},
        "drift": {"thresholds": {"kl_per_sample": 0.05, "marginal_js": 0.005, "confidence_psi": 0.1}},
        # Each run against the previous one: a breach where accuracy surely fell by more than 0.1.
        "gate": [{"metric": "accuracy", "max_decrease": 0.1}],
        "baseline": "previous",
    }
    config_path = out / "nightly.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"nightly evaluation of {baseline} and {today} with drift monitoring and gates against the previous run "
          f"(config: {config_path})")
    try:
        outcomes = run_flow(nightly_flow, str(config_path), baseline, today)
    except XentError as error:
        if error.exit_code != 3:
            raise
        outcomes = error.outcomes
    tables = Path(run_folder(build_config(NightlyConfig, config_path).tables_base, today, "demo"))
    print_report({"per_class": str(tables / "per_class.parquet"), "summary": str(tables / "summary.parquet")})
    print_drift(str(tables / "drift.parquet"))
    for outcome in outcomes:  # the drift breaches are listed above; the gates' here
        print(outcome.line())
        for breach in outcome.gate_breaches:
            print(f"GATE BREACH against {outcome.gate.baseline}: {breach}")
    print(f"history: {out / 'reports'} (one read of reports/**/*.parquet gives every metric of every run)")
    breached = [o for o in outcomes if o.breach_lines()]
    verdict = f"{sum(len(o.breach_lines()) for o in breached)} breach(es), as planted" if breached else "no breach"
    print(f"demo finished in {time.perf_counter() - started:.1f} s; {verdict}")
    print(f"page: {tables / HTML_FILE}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xent", description="Exact cross-entropy reports for classifier predictions.", epilog=EXIT_CODES_HELP
    )
    parser.add_argument("--version", action="version", version=f"xent {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate a prediction dump into per-class and per-slice reports")
    _add_eval_arguments(p)
    p.add_argument("--no-prefect", action="store_true",
                   help="run the same steps without Prefect (no temporary server: fastest for small ad-hoc dumps)")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("report", help="render a report folder as one self-contained HTML page")
    p.add_argument("path", help="a report folder (the --out of xent eval), or a nightly REPORT_ROOT (its history page)")
    p.add_argument("--html", metavar="FILE", help="where to write the page (default: PATH/report.html, listed in its "
                   "manifest; for a REPORT_ROOT, TABLES_ROOT/history.html)")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("drift", help="compare a current dump with a reference: per-sample KL, marginal and confidence drift")
    p.add_argument("--reference", nargs="+", required=True, help="the reference dump")
    p.add_argument("--current", nargs="+", required=True, help="the current dump")
    p.add_argument("--id-col", help="row id column; the per-sample join key is it plus the slice columns (default: id)")
    p.add_argument("--id-cols", metavar="COL[,COL...]",
                   help="the whole per-sample join key, e.g. model,id (columns or hive folder keys)")
    p.add_argument("--per-sample-smoothing", type=float, metavar="EPS",
                   help="smooth both sides' probabilities, (q + EPS) / (1 + C·EPS), before per-sample KL "
                   "(default: exact; a probability of 0 makes a row's KL infinite)")
    _add_eval_arguments(p, sources=False)
    p.add_argument("--no-prefect", action="store_true", help="run the same steps without Prefect (no run history, no artifact)")
    p.set_defaults(handler=cmd_drift)

    p = sub.add_parser("compare", help="compare a candidate model with a baseline on the same rows: paired "
                       "differences with intervals, wins/ties/losses, verdicts and gates (exit 3 on a breach)")
    p.add_argument("--baseline", nargs="+", required=True, help="the baseline dump")
    p.add_argument("--candidate", nargs="+", required=True, help="the candidate dump (the same rows, by key)")
    p.add_argument("--id-cols", metavar="COL[,COL...]",
                   help="the join key, e.g. model,id (default: id plus the slice columns)")
    _add_eval_arguments(p, sources=False)
    p.add_argument("--no-prefect", action="store_true", help="run the same steps without Prefect (no run history, no artifact)")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("nightly", help="evaluate each configured source for a date (or a range) into the report history")
    p.add_argument("--config", required=True, help="nightly YAML config (see configs/nightly.yaml)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today in the schedule's timezone)")
    p.add_argument("--from", dest="start", help="backfill from this date (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", help="backfill to this date, inclusive")
    p.add_argument("--no-prefect", action="store_true",
                   help="run the same steps without Prefect (no run history, no artifacts, no temporary server)")
    p.set_defaults(handler=cmd_nightly)

    p = sub.add_parser("serve", help="serve the nightly flow on its cron schedule (needs PREFECT_API_URL)")
    p.add_argument("--config", required=True, help="nightly YAML config")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("generate", help="write a synthetic sharded prediction dump")
    p.add_argument("out", help="folder to write")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--layout", choices=["fixed_size_list", "list", "wide", "binary"], default="fixed_size_list")
    p.add_argument("--kind", choices=list(KINDS), default="logits")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--slice", action="append", metavar="NAME=V1,V2", help="a slice column and its values")
    p.add_argument("--hive", action="append", metavar="NAME=V1,V2", help="hive folder key and its values")
    p.add_argument("--weights", action="store_true", help="add a weight column")
    p.add_argument("--drift", type=float, default=0.0, help="how far predictions move from the seed's baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", action="store_true", help="permute rows across shards")
    p.add_argument("--bad", action="append", metavar="KIND=COUNT", help="make COUNT shards bad: truncated, nan, ...")
    p.add_argument("--overwrite", action="store_true", help="replace Parquet files already in the folder")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("demo", help="generate a dump, evaluate it on a local cluster, print the report")
    p.add_argument("--out", help="folder for dumps and reports (default: a new temporary folder)")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _WithoutCredentials) for f in handler.filters):
            handler.addFilter(_WithoutCredentials())
    # Prefect's per-run INFO lines would bury the report; -v brings them back.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
    from ..report.writing import committed

    committed.clear()  # what this command writes, not an earlier call in the same process
    try:
        return args.handler(args)
    except XentError as error:
        _print_error(str(error), args.verbose, getattr(error, "problems", None))
        return error.exit_code
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        if args.command in ("eval", "drift", "compare") and out in committed:
            print(f"xent: interrupted, but the report was written in full: {out}", file=sys.stderr)
            return 0
        written = f" (written in full before it: {', '.join(committed)})" if committed else ""
        print(f"xent: interrupted{written}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure ends in one line and an exit code
        cause = infrastructure_cause(error)  # not named where it happened: the cause alone
        if cause is not None:
            _print_error(cause[0], args.verbose)
            return EXIT_INFRASTRUCTURE
        _print_error(f"internal error: {type(error).__name__}: {error} (a bug in xent; rerun with --verbose for the traceback)",
                     args.verbose)
        return EXIT_INTERNAL


class _WithoutCredentials(logging.Filter):
    """Log lines name sources without the user:password@ of their URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = without_credentials(message), ()
        return True


def _print_error(message: str, verbose: bool, problems: list[str] | None = None) -> None:
    """One line on stderr (one per problem of a config); the traceback too with --verbose."""
    if verbose:
        import traceback

        from ..runtime import cluster_log_path

        traceback.print_exc()
        if cluster_log_path().exists():
            print(f"cluster log: {cluster_log_path()}", file=sys.stderr)
    for line in problems or [message]:
        one_line = without_credentials(" ".join(part.strip() for part in line.splitlines() if part.strip()))
        print(f"xent: error: {one_line}", file=sys.stderr)


def _version() -> str:
    from ..metadata import VERSION

    return VERSION


def entry_point() -> None:
    """The `xent` command: `main`, then a process exit that skips native teardown.

    pyarrow can abort the process after all work is done, while its thread pools are
    torn down at exit ("terminate called without an active exception", SIGABRT;
    apache/arrow#34314; seen twice in this project's test runs). The report is
    already written by then, but the exit code would say otherwise. So atexit handlers
    (Prefect's temporary server, logging) run here, and the process ends with os._exit.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

