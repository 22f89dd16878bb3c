"""A nightly run: each source for each date evaluated, checked for drift and against its
gates, and written into the history (or skipped when unchanged)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import pyarrow as pa
from distributed import Client

from ...api import DRIFT
from ...config import DriftConfig, EvalConfig, NightlyConfig, NightlySource, render_path
from ...drift_statistics import drift_metrics
from ...engine import Progress, dask_client
from ...errors import DataError
from ...inputs.sources import InputFile
from ...kinds import TOKENS
from ...metadata import GATE_KEY, NIGHTLY_KEY, RUN_DIGEST_KEY
from ...monitor.baseline import gate_history
from ...report.page import HTML_FILE, render_html
from ...report.page.history import MAX_DATES
from ...report.state import STATE_TABLE, state_table
from ...report.metric_values import long_table
from ...report.tables import report_metadata
from .. import adhoc
from .digest import run_digest, stored_breaches
from .gates import GATE_TABLE, Baseline, GateVerdict, check_gates, load_baseline
from .history import (
    METRICS_FILE, breach_messages, metrics_table, read_history, root_options, run_folder, with_run, write_history_page,
)
from .outcomes import Outcome, headline

logger = logging.getLogger("flows.runs.nightly")


def reference_paths(source: NightlySource, run_date: str) -> list[str] | None:
    """The drift reference of `source` on `run_date`: the previous date's paths, fixed
    paths, or None (no drift check)."""
    if source.reference is None:
        return None
    if source.reference == "previous":
        return [render_path(p, dt.date.fromisoformat(run_date) - dt.timedelta(days=1)) for p in source.paths]
    return [render_path(p, run_date) for p in source.reference]


@dataclass(frozen=True)
class Steps:
    """The I/O and cluster steps of a nightly run: plain functions, or their Prefect tasks."""

    find_inputs: Callable[[EvalConfig], list[InputFile]] = adhoc.find_inputs
    stored_breaches: Callable[..., tuple[list[str], GateVerdict | None] | None] = stored_breaches
    load_baseline: Callable[..., Baseline] = load_baseline
    evaluate: Callable = adhoc.evaluate_on_cluster
    drift: Callable = DRIFT.on_cluster  # (drift config, client, progress) -> flows.api.DriftResult
    write_tables: Callable[..., dict[str, str]] = adhoc.write_tables
    read_history: Callable[..., pa.Table | None] = read_history
    write_history_page: Callable[[NightlyConfig], str] = write_history_page
    publish: Callable[[Outcome, dict[str, pa.Table], EvalConfig], None] | None = None  # after a run is written


def drift_settings(config: NightlyConfig, eval_config: EvalConfig) -> dict:
    """The config's drift settings for a source, with the thresholds of its kind only
    (one nightly may hold classifier and token sources)."""
    known = drift_metrics(eval_config.kind == TOKENS)
    settings = config.drift.model_dump()
    settings["thresholds"] = {name: value for name, value in settings["thresholds"].items() if name in known}
    settings["slice_thresholds"] = [
        {**override, "thresholds": {name: value for name, value in override["thresholds"].items() if name in known}}
        for override in settings["slice_thresholds"]]
    return settings


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
                {**eval_config.model_dump(), "reference": reference, "drift": drift_settings(config, eval_config)}
            )
            tables.update(steps.drift(drift_config, client, progress).tables)
        metrics = metrics_table(tables, slice_by)
        metadata = {**report_metadata(report.evaluation), RUN_DIGEST_KEY: digest.encode()}
        stats, spec = report.evaluation.result.stats, report.evaluation.spec
        if not report.is_tokens:  # a token state is not stored yet (#20); token sources have no gates
            tables[STATE_TABLE] = state_table(stats, spec.slice_by, spec.slice_types, metadata)
        run = {NIGHTLY_KEY: json.dumps({"source": source.name, "run_date": run_date, "report_root": config.report_root,
                                        "tables_root": config.tables_base, "drift": outcome.drift,
                                        "reference_problem": outcome.reference_problem}).encode()}
        metadata.update(run)
        if gates:
            outcome.gate, gate = check_gates(gates, baseline, stats, spec, eval_config)
            metadata[GATE_KEY] = run[GATE_KEY] = outcome.gate.to_json()
            if gate is not None:
                tables[GATE_TABLE] = gate.replace_schema_metadata(metadata)
                history = gate_history(gates, gate, spec.slice_by)
                metrics = pa.concat_tables([metrics, long_table(history, metrics.schema, spec.slice_by, spec.names(),
                                                                {"scope": "gate"})])
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
