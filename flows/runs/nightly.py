"""The nightly evaluation as plain steps, free of Prefect.

``xent nightly --no-prefect`` runs them directly and never imports Prefect; the
xent-nightly flow in ``pipelines`` runs the same steps as tasks.

Each (source, date) ends in one `Outcome`: written, unchanged (skipped, with the stored
verdict), or a data error; a written or unchanged run may also have no reference (its
drift was not checked) or breached thresholds. A data error in one (source, date) does
not stop the others; an infrastructure error stops the run. The run's exit code is the
highest among its outcomes: 0 ok (also "no reference"), 1 data error, 3 breached.

History layout, one folder per run, replaced atomically::

    REPORT_ROOT/run_date=YYYY-MM-DD/source=NAME/metrics.parquet     every metric, one long table
    TABLES_ROOT/run_date=YYYY-MM-DD/source=NAME/per_class.parquet   the wide tables (and summary,
                                                                    drift, bad_shards, gate)
    TABLES_ROOT/run_date=YYYY-MM-DD/source=NAME/state.parquet       the merged state, for later gates
    TABLES_ROOT/run_date=YYYY-MM-DD/source=NAME/report.html         the run's page (in the same atomic write)
    TABLES_ROOT/history.html                                        every run's trends, rewritten by each run

The wide tables and the pages live outside REPORT_ROOT, so ``REPORT_ROOT/**/*.parquet``
is the history (an HTML file there would break directory reads of it: pyarrow and
pandas read every file of the folder as Parquet).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from distributed import Client

from xent_kernels import ClassStats

from ..config import DriftConfig, EvalConfig, NightlyConfig, NightlySource, render_path, sibling_tables_root
from ..engine import Progress, dask_client
from ..errors import (
    EXIT_BREACH, EXIT_DATA, EXIT_OK, DataError, DriftBreach, GateBreach, UsageError, XentError, as_infrastructure_error,
)
from ..inputs.sources import InputFile, filesystem, fingerprint
from ..metadata import CLASSES_KEY, GATE_KEY, HISTORY_KEY, NIGHTLY_KEY, RUN_DIGEST_KEY
from ..monitor.baseline import baseline_rows, comparable, gate_history, gate_table
from ..monitor.compare import describe_breach
from ..monitor.gates import breached_gates
from ..report.page import HTML_FILE, render_history_html, render_html
from ..report.page import nightly as run_page
from ..report.page.history import MAX_DATES, overall_by_date
from ..report.state import STATE_KEY, STATE_TABLE, read_state, state_table
from ..report.tables import METRIC_FIELDS, report_metadata, with_interval
from ..report.writing import replace_file
from . import adhoc
from .drift import compare_on_cluster

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.parquet"
STATE_FILE = f"{STATE_TABLE}.parquet"  # in the tables folder: a later run's gate baseline
GATE_TABLE = "gate"
HISTORY_PAGE = "history.html"  # in the tables root
# Part of every run digest: a history written in an older layout is rewritten, not skipped.
HISTORY_LAYOUT = 4


# --------------------------------------------------------------------------- dates


def parse_date(value: str, what: str) -> dt.date:
    """`value` as a date, strictly YYYY-MM-DD; a UsageError naming `what` otherwise."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise UsageError(f"{what}: {value!r} is not a date (expected YYYY-MM-DD, e.g. 2026-11-23)")


def today(config: NightlyConfig) -> str:
    """Today's date in the schedule's timezone."""
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo(config.schedule.timezone)).date().isoformat()


def run_dates(config: NightlyConfig, first: str | None, last: str | None = None,
              names: tuple[str, str] = ("run_date", "end_date")) -> list[str]:
    """The dates of a run: `first` (default: today) to `last` inclusive, as YYYY-MM-DD.

    Raises
    ------
    UsageError
        A value that is not a YYYY-MM-DD date, or `last` before `first` (`names` name them).
    """
    start = parse_date(first, names[0]) if first else dt.date.fromisoformat(today(config))
    end = parse_date(last, names[1]) if last else start
    if end < start:
        raise UsageError(f"{names[0]} {start} is after {names[1]} {end}: the range is empty")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


# --------------------------------------------------------------------------- history layout


def run_folder(root: str, run_date: str, source: str) -> str:
    """The folder of one run under `root` (REPORT_ROOT or the tables root)."""
    return f"{root.rstrip('/')}/run_date={run_date}/source={source}"


def metrics_table(tables: dict[str, pa.Table], slice_by: Sequence[str]) -> pa.Table:
    """Every metric of a run in one long table: `scope` (class, slice, drift; gate rows
    are added by the run, see `gate_history`), the run's
    slice columns with their own types, then `METRIC_FIELDS`. Overall rows have
    ``overall = true`` and null slice columns; `lo` and `hi` are the metric's interval
    (null for counts and drift metrics); `breached` is false except for drift metrics
    above their threshold."""
    per_class = tables["per_class"]
    schema = pa.schema([pa.field("scope", pa.string()), *(per_class.schema.field(name) for name in slice_by), *METRIC_FIELDS])
    kept = set(schema.names)

    def piece(table: pa.Table, scope: str, metric: str | None = None) -> pa.Table:
        rows = table.num_rows
        given = {"scope": pa.repeat(scope, rows), "breached": pa.repeat(False, rows)}
        if metric is not None:
            given.update(metric=pa.repeat(metric, rows), value=table.column(metric))
            if f"{metric}_lo" in table.column_names:
                given.update(lo=table.column(f"{metric}_lo"), hi=table.column(f"{metric}_hi"))
        given.update({name: table.column(name) for name in table.column_names if name in kept})
        return pa.table([pa.chunked_array(given[f.name]).cast(f.type) if f.name in given else pa.nulls(rows, f.type)
                         for f in schema], schema=schema)

    def metrics_of(table: pa.Table) -> list[str]:
        bounds = {f"{name}_{end}" for name in table.column_names for end in ("lo", "hi")}
        return [f.name for f in table.schema
                if f.name not in kept and f.name not in bounds and not pa.types.is_list(f.type)
                and not pa.types.is_boolean(f.type)]  # auc_exact: a flag, not a metric

    pieces = [piece(per_class, "class", m) for m in metrics_of(per_class)]
    pieces += [piece(tables["summary"], "slice", m) for m in metrics_of(tables["summary"])]
    if "drift" in tables:  # already long; its kl_mean column repeats `value` on per-class rows
        pieces.append(piece(tables["drift"], "drift"))
    return pa.concat_tables(pieces)


def breach_messages(metrics: pa.Table, slice_by: Sequence[str]) -> list[str]:
    """One line per breached drift threshold in a metrics table (gate lines are in its
    ``xent.gate`` metadata)."""
    messages = []
    for row in metrics.filter(pc.field("breached") & (pc.field("scope") != "gate")).to_pylist():
        key = None if row["overall"] else tuple(row[name] for name in slice_by)
        messages.append(describe_breach({**row, "key": key}, tuple(slice_by)))
    return messages


def history_table(root: str, storage_options: dict[str, Any] | None = None,
                  where: pc.Expression | None = None, files: list[str] | None = None) -> pa.Table:
    """Every run's metrics under REPORT_ROOT in one table, plus `run_date` (date) and
    `source`. Columns are the union over all runs (pyarrow alone takes them from the
    first file), so sources sliced by different columns stack, with nulls. `where`
    keeps the rows it selects (on `run_date` and `source` it skips whole files); `files`
    (paths under the root, as its filesystem names them) are the only files opened."""
    fs, path = filesystem(root, storage_options)
    options = ds.FileSystemFactoryOptions(
        partition_base_dir=path.rstrip("/"),
        partitioning=ds.partitioning(pa.schema([("run_date", pa.date32()), ("source", pa.string())]), flavor="hive"),
        selector_ignore_prefixes=[".", "_"],
    )
    try:
        factory = ds.FileSystemDatasetFactory(
            pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
            files if files is not None else pafs.FileSelector(path.rstrip("/"), recursive=True),
            ds.ParquetFileFormat(), options)
        # Without the first file's metadata: it describes one run, not the history.
        return factory.finish(factory.inspect(fragments=None).remove_metadata()).to_table(filter=where)
    except (OSError, pa.ArrowException) as error:
        if (failure := as_infrastructure_error(error, root, "cannot read")) is not None:
            raise failure from error
        raise DataError(f"{root}: the history holds a file that is not readable Parquet ({error}); move it out of "
                        "REPORT_ROOT, or rerun that date with xent nightly --date, and retry") from None


def read_history(root: str, storage_options: dict[str, Any] | None = None, source: str | None = None,
                 before: str | None = None, max_dates: int | None = MAX_DATES) -> pa.Table | None:
    """`history_table` of the runs of `source` (default: all) on the latest `max_dates`
    run dates (None: all) before the date `before` (default: all); None when REPORT_ROOT
    does not exist yet. Only those runs' files are read (the dates come from a listing);
    how many earlier dates are left out is in the ``xent.history`` metadata, for the page."""
    fs, path = filesystem(root, storage_options)
    if not fs.exists(path):
        return None
    where = pc.scalar(True)
    if source is not None:
        where &= pc.field("source") == source
    if before is not None:
        where &= pc.field("run_date") < pc.scalar(dt.date.fromisoformat(before))
    # The files of the dates wanted, from a listing: the others are never opened.
    found = {p: m.group(1) for p in fs.glob(f"{path.rstrip('/')}/run_date=*/source={source or '*'}/{METRICS_FILE}")
             if (m := re.search(r"run_date=(\d{4}-\d{2}-\d{2})/", p)) and (before is None or m.group(1) < before)}
    dates = sorted(set(found.values()))
    left_out = max(0, len(dates) - max_dates) if max_dates is not None else 0
    files = sorted(p for p, day in found.items() if day >= dates[left_out]) if dates else None
    history = history_table(root, storage_options, where, files)
    return history.replace_schema_metadata({HISTORY_KEY: json.dumps({"dates_left_out": left_out}).encode()}) \
        if left_out else history


def history_page_path(config: NightlyConfig) -> str:
    """Where each nightly run leaves the history page: TABLES_ROOT/history.html."""
    return f"{config.tables_base.rstrip('/')}/{HISTORY_PAGE}"


def tables_root_of(report_root: str, storage_options: dict[str, Any] | None = None) -> str:
    """The tables root of the nightly history at `report_root`: as its newest run
    recorded it (``xent.nightly`` metadata), else the default REPORT_ROOT-tables."""
    fs, path = filesystem(report_root, storage_options)
    for found in sorted(fs.glob(f"{path.rstrip('/')}/run_date=*/source=*/{METRICS_FILE}"), reverse=True):
        with fs.open(found, "rb") as handle:
            raw = (pq.ParquetFile(handle).schema_arrow.metadata or {}).get(NIGHTLY_KEY)
        if raw is not None:
            return json.loads(raw)["tables_root"].rstrip("/")
    return sibling_tables_root(report_root)


def root_options(config: NightlyConfig) -> dict[str, Any]:
    """The storage options the history roots are written with (the first source's)."""
    # Storage options do not depend on the date: any date renders the source's paths.
    return config.eval_config(config.sources[0], "2000-01-01").storage_options


def write_history_page(config: NightlyConfig) -> str:
    """Render the history page from REPORT_ROOT (its latest `MAX_DATES` run dates) and
    write it whole; returns its path as written (on an object store, with its protocol)."""
    options = root_options(config)
    history = read_history(config.report_root, options)
    page = render_history_html(history if history is not None else pa.table({}), root=config.report_root.rstrip("/"))
    return replace_file(history_page_path(config), page.encode(), options)


def with_run(history: pa.Table | None, metrics: pa.Table, source: str, run_date: str) -> pa.Table:
    """The earlier `history` of a source with this run's `metrics` appended, as
    `read_history` would read them once written (with its metadata)."""
    rows = metrics.num_rows
    current = metrics.append_column("run_date", pa.array([dt.date.fromisoformat(run_date)] * rows, pa.date32())) \
        .append_column("source", pa.array([source] * rows, pa.string())).replace_schema_metadata(None)
    if history is None or not history.num_rows:
        return current
    return pa.concat_tables([history.replace_schema_metadata(None), current], promote_options="permissive") \
        .replace_schema_metadata(history.schema.metadata)


def headline(history: pa.Table | None, source: str, run_date: str) -> str | None:
    """A run's headline numbers from the history: n, mean CE with its interval,
    accuracy, and their change since the previous run of the source."""
    now = overall_by_date(history, source).get(run_date) if history is not None else None
    if not now:
        return None
    value = lambda name: {name: now.get(name, {}).get("value"), f"{name}_lo": now.get(name, {}).get("lo"),  # noqa: E731
                          f"{name}_hi": now.get(name, {}).get("hi")}
    parts = [f"n {now['n']['value']:,}", f"mean CE {with_interval(value('ce_mean'), 'ce_mean')}",
             f"accuracy {with_interval(value('accuracy'), 'accuracy')}"]
    since, before = run_page.changes(history, source, run_date)
    if since is not None:
        shown = [f"{label} {change['shown']}" for name, label in (("ce_mean", "mean CE"), ("accuracy", "accuracy"))
                 if (change := run_page.change(name, now.get(name, {}).get("value"), before.get(name), since))]
        parts.append(f"change since {since}: {', '.join(shown)}")
    return "; ".join(parts)


def reference_paths(source: NightlySource, run_date: str) -> list[str] | None:
    """The drift reference of `source` on `run_date`: the previous date's paths, fixed
    paths, or None (no drift check)."""
    if source.reference is None:
        return None
    if source.reference == "previous":
        return [render_path(p, dt.date.fromisoformat(run_date) - dt.timedelta(days=1)) for p in source.paths]
    return [render_path(p, run_date) for p in source.reference]


def run_digest(config: EvalConfig, inputs: list[InputFile], reference: list[str] | None,
               reference_inputs: list[InputFile] | None, drift: dict, gate: dict | None = None) -> str:
    """What a run's report depends on: settings, inputs, reference (or its absence), and
    with gates, the gates and the baseline run (its date and digest, or its absence)."""
    payload = {
        "layout": HISTORY_LAYOUT,
        "config": config.model_dump(mode="json"),
        "inputs": fingerprint(inputs)["digest"],
        "reference": fingerprint(reference_inputs)["digest"] if reference_inputs else {"missing": reference},
        "drift": drift,
    }
    if gate is not None:
        payload["gate"] = gate
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stored_breaches(folder: str, digest: str, storage_options: dict[str, Any],
                    slice_by: Sequence[str]) -> "tuple[list[str], GateVerdict | None] | None":
    """The stored verdict (drift breach lines, maybe none, and the gate verdict) when the
    report in `folder` was made from the run `digest` describes; None when there is no
    such report."""
    fs, path = filesystem(f"{folder}/{METRICS_FILE}", storage_options)
    try:
        with fs.open(path, "rb") as handle:
            file = pq.ParquetFile(handle)
            if (file.schema_arrow.metadata or {}).get(RUN_DIGEST_KEY, b"").decode() != digest:
                return None
            metrics = file.read()
    except (FileNotFoundError, pa.ArrowInvalid):  # none yet, or unreadable: it is rewritten
        return None
    gate = (metrics.schema.metadata or {}).get(GATE_KEY)
    return breach_messages(metrics, slice_by), GateVerdict.from_json(gate) if gate else None


# --------------------------------------------------------------------------- gates against a baseline run


@dataclass
class GateVerdict:
    """How a run's gates against its baseline run ended."""

    status: Literal["no baseline", "passed", "breached", "not comparable"]
    baseline: str | None = None  # the baseline's run date
    detail: str = ""  # why there is no baseline, or why it is not comparable
    breaches: list[str] = field(default_factory=list)  # one line per breached (gate, row)

    def text(self) -> str:
        against = f" against {self.baseline}" if self.baseline else ""
        if self.status == "breached":
            return f"gate{against}: {len(self.breaches)} breached"
        if self.status == "passed":
            return f"gates passed{against}"
        return f"gate: {self.status} ({self.detail})"

    def to_json(self) -> bytes:
        return json.dumps({"status": self.status, "baseline": self.baseline, "detail": self.detail,
                           "breaches": self.breaches}).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "GateVerdict":
        return cls(**json.loads(raw))


@dataclass
class Baseline:
    """The baseline run of a source's gates: its date and stored state, or why there is none."""

    run_date: str | None
    detail: str = ""
    stats: ClassStats | None = None
    metadata: dict[bytes, bytes] = field(default_factory=dict)  # the state file's schema metadata

    @property
    def digest(self) -> str | None:
        return self.metadata[RUN_DIGEST_KEY].decode() if RUN_DIGEST_KEY in self.metadata else None


def load_baseline(config: NightlyConfig, source: NightlySource, run_date: str,
                  storage_options: dict[str, Any]) -> Baseline:
    """The state of the run `source`'s gates compare `run_date` with: the pinned date's,
    or ('previous') the latest earlier run date of the source with a stored state."""
    _, setting = config.gates(source)
    if setting == run_date:
        return Baseline(None, f"this run is the pinned baseline {setting}")
    if setting == "previous":
        fs, root = filesystem(config.tables_base, storage_options)
        found = fs.glob(f"{root.rstrip('/')}/run_date=*/source={source.name}/{STATE_FILE}")
        dates = sorted({m.group(1) for p in found if (m := re.search(r"run_date=(\d{4}-\d{2}-\d{2})/", p))})
        earlier = [day for day in dates if day < run_date]
        if not earlier:
            return Baseline(None, f"no earlier run of {source.name} with a stored {STATE_FILE} "
                                  f"under {config.tables_base}")
        setting = earlier[-1]
    folder = run_folder(config.tables_base, setting, source.name)
    try:
        stats, metadata = read_state(folder, storage_options)
    except FileNotFoundError:
        return Baseline(None, f"no stored state {folder}/{STATE_FILE}; run that date first")
    except pa.ArrowInvalid as error:
        raise DataError(f"{folder}/{STATE_FILE}: unreadable ({error}); re-run xent nightly for {setting}") from None
    return Baseline(setting, stats=stats, metadata=metadata)


def check_gates(gates: list, baseline: Baseline, stats: ClassStats, spec, config: EvalConfig
                ) -> tuple[GateVerdict, list[dict]]:
    """The gate verdict of a run's merged `stats` against `baseline`, and the rows of
    gate.parquet (none without a comparable baseline)."""
    if baseline.stats is None:
        return GateVerdict("no baseline", None, baseline.detail), []
    names = list(spec.class_names) if spec.class_names else [str(i) for i in range(spec.n_classes)]
    stored = json.loads(baseline.metadata[STATE_KEY])
    problem = comparable(baseline.stats, stats,
                         json.loads(baseline.metadata[CLASSES_KEY]) if CLASSES_KEY in baseline.metadata else None,
                         names, stored["slice_by"], spec.slice_by)
    if problem:
        return GateVerdict("not comparable", baseline.run_date,
                           f"baseline run {baseline.run_date}: {problem}; set `baseline:` to a run date "
                           "made with this run's classes and slices"), []
    rows = baseline_rows(baseline.stats, stats, tuple(spec.slice_by), names, config.units, config.interval_level,
                         config.min_slice_size)
    lines = breached_gates(gates, rows, spec.slice_by)
    return GateVerdict("breached" if lines else "passed", baseline.run_date, "", lines), rows


# --------------------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """How one (source, date) of a nightly run ended."""

    source: str
    run_date: str
    status: Literal["written", "unchanged", "data error"]
    folder: str  # REPORT_ROOT/run_date=.../source=...
    tables: str  # the wide tables' folder
    drift: Literal["none", "checked", "no reference"] = "none"
    reference_problem: str | None = None  # why there is no reference
    breaches: list[str] = field(default_factory=list)  # drift thresholds breached
    error: str | None = None
    gate: GateVerdict | None = None  # None: the source has no gates
    page: str | None = None  # the run's report.html, when this run wrote it
    headline: str | None = None  # n, mean CE, accuracy and their change since the previous run

    @property
    def gate_breaches(self) -> list[str]:
        return self.gate.breaches if self.gate else []

    @property
    def exit_code(self) -> int:
        if self.status == "data error":
            return EXIT_DATA
        if self.breaches or self.gate_breaches:
            return EXIT_BREACH
        return EXIT_DATA if self.gate and self.gate.status == "not comparable" else EXIT_OK

    def verdict(self) -> str:
        parts = []
        if self.drift == "no reference":
            parts.append(f"no reference ({self.reference_problem})")
        elif self.drift == "checked":
            parts.append(f"drift: {len(self.breaches)} threshold(s) breached" if self.breaches
                         else "drift within thresholds")
        if self.gate is not None:
            parts.append(self.gate.text())
        return "; ".join(parts)

    def breach_lines(self) -> list[str]:
        """Every breach of the run, one line each: drift thresholds, then gates."""
        return self.breaches + [f"gate against {self.gate.baseline}: {b}" for b in self.gate_breaches]

    def line(self) -> str:
        head = f"{self.source} {self.run_date}: "
        if self.status == "data error":
            return head + f"data error: {self.error}"
        verdict = self.verdict()
        if self.status == "unchanged":
            return head + "unchanged, skipped" + (f"; stored verdict: {verdict}" if verdict else "")
        page = f", page {self.page}" if self.page else ""
        return head + f"written to {self.folder}/{METRICS_FILE} (tables in {self.tables}{page})" + (
            f"; {verdict}" if verdict else "")


def print_outcomes(outcomes: Sequence[Outcome], out: TextIO | None = None, page: str | None = None) -> None:
    """One line per (source, date), then one per breached threshold, then the history page."""
    out = out or sys.stdout
    for outcome in outcomes:
        print(outcome.line(), file=out)
    for outcome in outcomes:
        for breach in outcome.breach_lines():
            print(f"BREACH {outcome.source} {outcome.run_date}: {breach}", file=out)
    if page:
        print(f"page: {page}", file=out)


def failure(outcomes: Sequence[Outcome]) -> XentError | None:
    """The error a run with these outcomes ends with (the highest exit code), or None.
    The error carries the outcomes (``error.outcomes``) so that they can be printed."""
    code = max((o.exit_code for o in outcomes), default=EXIT_OK)
    if code == EXIT_OK:
        return None
    breaches = [f"{o.source} {o.run_date}: {b}" for o in outcomes for b in o.breaches]
    gates = [f"{o.source} {o.run_date}: against {o.gate.baseline}: {b}" for o in outcomes for b in o.gate_breaches]
    errors = [f"{o.source} {o.run_date}: {o.error}" for o in outcomes if o.status == "data error"]
    errors += [f"{o.source} {o.run_date}: gate not checked: {o.gate.detail}" for o in outcomes
               if o.status != "data error" and o.gate and o.gate.status == "not comparable"]
    parts = ([f"drift threshold breached: {'; '.join(breaches)}"] if breaches else []) + (
        [f"gate breached: {'; '.join(gates)}"] if gates else []) + (
        [f"data error in {len(errors)} of {len(outcomes)} source-date run(s): {'; '.join(errors)}"] if errors else [])
    kind = DataError if code != EXIT_BREACH else GateBreach if gates else DriftBreach
    error = kind(" | ".join(parts))
    error.outcomes = list(outcomes)
    return error


def summary_markdown(outcomes: Sequence[Outcome], dates: Sequence[str], page: str | None = None) -> str:
    """The run's outcomes as a Markdown list: per (source, date) its line, headline
    numbers and breaches; then the history page."""
    lines = [f"# xent nightly {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else ""), ""]
    for o in outcomes:
        lines.append(f"- {o.line()}" + (f"\n  - {o.headline}" if o.headline else "")
                     + (f"\n  - page: {o.page}" if o.page else "")
                     + "".join(f"\n  - BREACH {b}" for b in o.breach_lines()))
    if page:
        lines += ["", f"History page: {page}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class Steps:
    """The I/O and cluster steps of a nightly run: plain functions, or their Prefect tasks."""

    find_inputs: Callable[[EvalConfig], list[InputFile]] = adhoc.find_inputs
    stored_breaches: Callable[..., tuple[list[str], GateVerdict | None] | None] = stored_breaches
    load_baseline: Callable[..., Baseline] = load_baseline
    evaluate: Callable = adhoc.evaluate_on_cluster
    compare: Callable = compare_on_cluster  # (drift config, client, progress) -> flows.api.DriftResult
    write_tables: Callable[..., dict[str, str]] = adhoc.write_tables
    read_history: Callable[..., pa.Table | None] = read_history
    write_history_page: Callable[[NightlyConfig], str] = write_history_page
    publish: Callable[[Outcome, dict[str, pa.Table], EvalConfig], None] | None = None  # after a run is written


def nightly_source(config: NightlyConfig, source: NightlySource, run_date: str, client: Client,
                   steps: Steps = Steps(), progress: Progress | None = None) -> Outcome:
    """Evaluate one source for one date into the history, or skip it when the inputs,
    the reference and the settings are those of the report already there. A data error
    becomes the outcome; any other error propagates."""
    eval_config = config.eval_config(source, run_date)
    outcome = Outcome(source.name, run_date, "written", run_folder(config.report_root, run_date, source.name),
                      run_folder(config.tables_base, run_date, source.name))
    options, slice_by = eval_config.storage_options, eval_config.slice_by
    try:
        inputs = steps.find_inputs(eval_config)
        reference, reference_inputs = reference_paths(source, run_date), None
        if reference:
            try:
                reference_inputs = steps.find_inputs(eval_config.model_copy(update={"sources": reference}))
                outcome.drift = "checked"
            except DataError as error:
                outcome.drift, outcome.reference_problem = "no reference", str(error)
        gates, setting = config.gates(source)
        baseline, gate_digest = None, None
        if gates:
            baseline = steps.load_baseline(config, source, run_date, options)
            gate_digest = {"gates": [g.model_dump(mode="json") for g in gates], "baseline": setting,
                           "baseline_run": baseline.run_date, "baseline_digest": baseline.digest}
        digest = run_digest(eval_config, inputs, reference, reference_inputs, config.drift.model_dump(mode="json"),
                            gate_digest)
        stored = steps.stored_breaches(outcome.folder, digest, options, slice_by)
        if stored is not None:
            return replace(outcome, status="unchanged", breaches=stored[0], gate=stored[1])
        report = steps.evaluate(eval_config, inputs, client, progress)
        tables = dict(report.tables)
        if reference_inputs:
            drift_config = DriftConfig.model_validate(
                {**eval_config.model_dump(), "reference": reference, "drift": config.drift.model_dump()}
            )
            tables.update(steps.compare(drift_config, client, progress).tables)
        metrics = metrics_table(tables, slice_by)
        metadata = {**report_metadata(report.evaluation), RUN_DIGEST_KEY: digest.encode()}
        stats, spec = report.evaluation.result.stats, report.evaluation.spec
        tables[STATE_TABLE] = state_table(stats, spec.slice_by, spec.slice_types, metadata)
        run = {NIGHTLY_KEY: json.dumps({"source": source.name, "run_date": run_date, "report_root": config.report_root,
                                        "tables_root": config.tables_base, "drift": outcome.drift,
                                        "reference_problem": outcome.reference_problem}).encode()}
        metadata.update(run)
        if gates:
            outcome.gate, rows = check_gates(gates, baseline, stats, spec, eval_config)
            metadata[GATE_KEY] = run[GATE_KEY] = outcome.gate.to_json()
            if rows:
                tables[GATE_TABLE] = gate_table(rows, spec.slice_by, spec.slice_types).replace_schema_metadata(metadata)
                history = [{**row, "scope": "gate"} for row in gate_history(gates, rows, spec.slice_by)]
                metrics = pa.concat_tables([metrics, pa.Table.from_pylist(history, schema=metrics.schema)])
        metrics = metrics.replace_schema_metadata(metadata)
        # The report tables name their run (and its gate verdict): its page, and `xent report` on the folder, read it.
        for name in set(tables) - {STATE_TABLE, GATE_TABLE}:
            tables[name] = tables[name].replace_schema_metadata({**(tables[name].schema.metadata or {}), **run})
        # The window the page draws: this run and the latest earlier run dates.
        earlier = steps.read_history(config.report_root, options, source.name, run_date, MAX_DATES - 1)
        page = render_html(tables, history=with_run(earlier, metrics, source.name, run_date))
        # The tables first: metrics.parquet carries the digest, so a crash in between is redone.
        written = steps.write_tables(tables, outcome.tables, options, files={HTML_FILE: page.encode()})
        outcome.page = written[HTML_FILE]
        steps.write_tables({METRICS_FILE.removesuffix(".parquet"): metrics}, outcome.folder, options)
        outcome.breaches = breach_messages(metrics, slice_by)
        if steps.publish is not None:
            steps.publish(outcome, tables, eval_config)
        return outcome
    except DataError as error:
        return replace(outcome, status="data error", error=str(error), breaches=[])


def nightly_run(config: NightlyConfig, dates: Sequence[str], steps: Steps = Steps(),
                progress: Progress | None = None) -> tuple[list[Outcome], str]:
    """Every source for every date, on one Dask cluster; one outcome each, with its
    headline numbers; and the history page's path as written."""
    with dask_client(config.scheduler) as client:
        outcomes = []
        for day in dates:
            for source in config.sources:
                outcomes.append(nightly_source(config, source, day, client, steps, progress))
                logger.info("%s", outcomes[-1].line())
    page = steps.write_history_page(config)
    logger.info("history page: %s", page)
    options = root_options(config)
    for outcome in outcomes:
        if outcome.status != "data error":  # the run and the one before it
            later = (dt.date.fromisoformat(outcome.run_date) + dt.timedelta(days=1)).isoformat()
            history = steps.read_history(config.report_root, options, outcome.source, later, 2)
            outcome.headline = headline(history, outcome.source, outcome.run_date)
    return outcomes, page


def nightly_steps(config: NightlyConfig, dates: Sequence[str], steps: Steps = Steps(),
                  progress: Progress | None = None) -> list[Outcome]:
    """`nightly_run`'s outcomes."""
    return nightly_run(config, dates, steps, progress)[0]


def report_outcomes(outcomes: Sequence[Outcome], out: TextIO | None = None, page: str | None = None) -> int:
    """Print the outcomes and the history `page`; raise the run's error (exit 1 or 3)
    if it has one, else return 0. The error's message is short: every breach and
    error was printed above it."""
    print_outcomes(outcomes, out, page)
    error = failure(outcomes)
    if error is not None:
        short = type(error)(failure_summary(outcomes, page))
        short.outcomes = error.outcomes
        raise short
    return EXIT_OK


def failure_summary(outcomes: Sequence[Outcome], page: str | None = None) -> str:
    """``3 breach(es) and 1 data error(s) in 4 source-date run(s), listed above; page: PATH``."""
    breaches = sum(len(o.breach_lines()) for o in outcomes)
    errors = sum(o.status == "data error" for o in outcomes)
    unchecked = sum(o.status != "data error" and o.gate is not None and o.gate.status == "not comparable"
                    for o in outcomes)
    counts = [f"{n} {what}" for n, what in ((breaches, "breach(es)"), (errors, "data error(s)"),
                                              (unchecked, "gate(s) not checked")) if n]
    return f"{' and '.join(counts)} in {len(outcomes)} source-date run(s), listed above" + (f"; page: {page}" if page else "")
