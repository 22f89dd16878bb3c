"""Prefect flows for the uses: ad-hoc evaluation, nightly evaluation into a history of
reports, drift monitoring against a reference, and a candidate against a baseline.

Each flow run owns one Dask cluster (a LocalCluster, or an existing scheduler from
the config or $DASK_SCHEDULER_ADDRESS) and hands its client to the tasks; Prefect's
Dask task runner is not used because it starts a Prefect server per worker when
there is no server. Prefect itself needs no server: without PREFECT_API_URL it
runs against a temporary local one.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed

from xent_kernels import class_columns

from .api import COMPARE, DRIFT, TwoSided, TwoSidedResult
from .config import CompareConfig, DriftConfig, EvalConfig, NightlyConfig, build_config
from .engine import Progress
from .errors import InfrastructureError, XentError, infrastructure_cause, without_credentials
from .inputs.sources import InputFile, dump_label, fingerprint
from .monitor.drift import DriftReport
from .report.tables import with_interval
from .report.token_tables import TOKEN_HEADLINE
from .report.text import compare_view, token_compare_view
from .runs import adhoc, nightly, two_sided


def _transient(task, task_run, state) -> bool:
    """Retry network hiccups, not data errors (a missing column stays missing) nor a
    full or read-only disk."""
    try:
        state.result()
    except InfrastructureError as error:
        return error.transient
    except XentError:
        return False
    except Exception as error:
        cause = infrastructure_cause(error)
        return cause is None or cause[1]
    return False


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _transient}


# --------------------------------------------------------------------------- tasks


find_inputs = task(cache_policy=NONE, **IO_RETRIES)(adhoc.find_inputs)
evaluate_on_cluster = task(cache_policy=NONE)(adhoc.evaluate_on_cluster)
write_report = task(cache_policy=NONE, **IO_RETRIES)(adhoc.write_report)
write_tables = task(cache_policy=NONE, **IO_RETRIES)(adhoc.write_tables)
drift_on_cluster = task(cache_policy=NONE, name="drift_on_cluster")(DRIFT.on_cluster)
compare_on_cluster = task(cache_policy=NONE, name="compare_on_cluster")(COMPARE.on_cluster)


@task(cache_policy=NONE)
def publish_artifact(key: str, rows: list[dict], description: str) -> None:
    """Attach a table to the flow run in Prefect's UI."""
    create_table_artifact(key=key, table=rows, description=without_credentials(description))


# --------------------------------------------------------------------------- helpers


def _artifact_key(*parts: str) -> str:
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")[:100]


def _eval_run_name() -> str:
    """eval-<the dump's folder name>."""
    return f"eval-{dump_label(flow_run.parameters['config'].sources)}"


def _dump_artifact_key(kind: str, sources: list[str], inputs: list[InputFile]) -> str:
    """xent-<kind>-<the dump's folder name>-<digest of its files>: two dumps never share
    a key, whatever their shard names."""
    return _artifact_key(f"xent-{kind}", dump_label(sources)[:60], fingerprint(inputs)["digest"][:8])


def _class_rows(per_class: pa.Table) -> list[dict]:
    """The overall per-class rows, headline metrics with their interval as the terminal shows them."""
    metrics = class_columns(headline=True)
    rows = [r for r in per_class.to_pylist() if r["overall"]]
    return [{**{k: row[k] for k in ("class", "class_name", "n")}, **{m: with_interval(row, m, digits=6) for m in metrics}}
            for row in rows]


def _report_rows(tables: dict[str, pa.Table]) -> tuple[list[dict], str]:
    """A report's artifact rows and what they are: per class, or a token report's per slice."""
    if "token_summary" in tables:
        return _token_rows(tables["token_summary"]), "Token report: perplexity, cross-entropy"
    return _class_rows(tables["per_class"]), "Per-class cross-entropy"


def _token_rows(summary: pa.Table) -> list[dict]:
    """A token report's rows per slice (the overall row last): the terminal's headline."""
    slice_by = summary.column_names[: summary.column_names.index("overall")]
    return [{"slice": "(all)" if row["overall"] else ",".join(f"{c}={row[c]}" for c in slice_by),
             **{m: with_interval(row, m, digits=6) if f"{m}_lo" in row else row[m] for m in TOKEN_HEADLINE}}
            for row in summary.to_pylist()]


def _drift_rows(report: DriftReport) -> list[dict]:
    """The artifact's rows: each value over all classes, its slice in words."""
    return [
        {"slice": value.key.where(report.slice_by, ","), "metric": value.key.column,
         "value": round(value.value, 6), "threshold": value.threshold, "breached": value.breached}
        for value in report.values
        if value.key.cls is None
    ]


def _two_sided_run_name(kind: TwoSided):
    """The run name of `kind`'s flow: xent-<kind> <the dump's folder name> vs <the other dump's>."""

    def run_name() -> str:
        config = kind.config_model.model_validate(flow_run.parameters["config"])
        return f"xent-{kind.name} {dump_label(config.sources)} vs {dump_label(getattr(config, kind.first))}"

    return run_name


def _two_sided_end(result: TwoSidedResult, paths: dict[str, str], what: str) -> Any:
    """The flow's return: the paths, or a failed state naming every breach, each logged as `what`: <breach>."""
    error = result.breach_error()
    if error is None:
        return {"paths": paths, "breaches": []}
    logger = get_run_logger()
    for message in result.breaches:
        logger.warning("%s: %s", what, message)
    return Failed(message=str(error), data=error)


# --------------------------------------------------------------------------- ad hoc


@flow(name="xent-eval", flow_run_name=_eval_run_name, log_prints=False)
def eval_flow(config: EvalConfig, out: str, progress: bool = False) -> dict[str, str]:
    """Evaluate a prediction dump into per-class and per-slice reports under `out`
    (`progress`: draw a progress bar on the terminal)."""
    paths, tables, inputs = adhoc.eval_steps(config, out, (find_inputs, evaluate_on_cluster, write_report),
                                             Progress(progress))
    rows, title = _report_rows(tables)
    publish_artifact(_dump_artifact_key("eval", config.sources, inputs), rows,
                     f"{title} ({config.units}) of {len(inputs)} shards; report in {out}")
    return paths


# --------------------------------------------------------------------------- drift


@flow(name="xent-drift", flow_run_name=_two_sided_run_name(DRIFT), log_prints=False)
def drift_flow(config: DriftConfig, out: str, progress: bool = False) -> Any:
    """Compare the current dump with the reference; a breached threshold fails the run."""
    paths, result = two_sided.two_sided_steps(DRIFT, config, out, (drift_on_cluster, write_report), Progress(progress))
    # One artifact key per current dump (its name and content digest): runs on other
    # dumps never replace this one's latest table.
    key = _dump_artifact_key("drift", config.sources, result.report.current.inputs)
    publish_artifact(key, _drift_rows(result.report),
                     f"Drift ({config.units}) of {config.sources} against {config.reference}")
    return _two_sided_end(result, paths, "drift")


# --------------------------------------------------------------------------- compare


def compare_markdown(tables: dict[str, pa.Table], config: CompareConfig, breaches: list[str]) -> str:
    """The compare artifact: the terminal's short table, the gates' verdict and every breach."""
    tokens = "scope" in tables["compare"].column_names
    header, cells = (token_compare_view if tokens else compare_view)(tables["compare"])
    about = (f"; the KL lower bound is of KL(baseline‖candidate), from the top-k lists, in {config.units}" if tokens
             else "")
    lines = [f"# {dump_label(config.sources)} against {dump_label(config.baseline)}", "",
             f"Candidate - baseline with {config.interval_level:.0%} paired intervals; cross-entropy in {config.units}"
             f"{about}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    gates = ", ".join(g.metric for g in config.gate)
    lines += ["", f"**Gates**: {'none set' if not config.gate else ('BREACHED' if breaches else 'passed') + f' ({gates})'}"]
    lines += [f"- {message}" for message in breaches]
    return "\n".join(lines)


@flow(name="xent-compare", flow_run_name=_two_sided_run_name(COMPARE), log_prints=False)
def compare_flow(config: CompareConfig, out: str, progress: bool = False) -> Any:
    """Compare the candidate dump with the baseline on the same rows; a breached gate fails the run."""
    paths, result = two_sided.two_sided_steps(COMPARE, config, out, (compare_on_cluster, write_report),
                                              Progress(progress))
    key = _dump_artifact_key("compare", config.sources, result.report.candidate.inputs)
    create_markdown_artifact(key=key, markdown=compare_markdown(result.tables, config, result.breaches),
                             description=f"{config.sources} against {config.baseline}")
    return _two_sided_end(result, paths, "gate")


TWO_SIDED_FLOWS = {DRIFT.name: drift_flow, COMPARE.name: compare_flow}  # the CLI runs a kind's flow by its name


# --------------------------------------------------------------------------- nightly


stored_breaches = task(cache_policy=NONE, **IO_RETRIES)(nightly.stored_breaches)
load_baseline = task(cache_policy=NONE, **IO_RETRIES)(nightly.load_baseline)
read_history = task(cache_policy=NONE, **IO_RETRIES)(nightly.read_history)
write_history_page = task(cache_policy=NONE, **IO_RETRIES)(nightly.write_history_page)


def _publish_run(outcome: nightly.Outcome, tables: dict[str, pa.Table], config: EvalConfig) -> None:
    rows, title = _report_rows(tables)
    publish_artifact(_artifact_key("xent-nightly", outcome.source, outcome.run_date), rows,
                     f"{outcome.source} on {outcome.run_date}: {title.lower()} ({config.units}); "
                     f"history in {outcome.folder}; page {outcome.page}")


NIGHTLY_STEPS = nightly.Steps(find_inputs=find_inputs, stored_breaches=stored_breaches, load_baseline=load_baseline,
                              evaluate=evaluate_on_cluster, drift=drift_on_cluster, write_tables=write_tables,
                              read_history=read_history, write_history_page=write_history_page, publish=_publish_run)


def _nightly_run_name() -> str:
    """nightly-2026-11-23, or nightly-2026-11-01-to-2026-11-23 for a backfill."""
    parameters = flow_run.parameters
    try:
        first = parameters.get("run_date") or nightly.today(build_config(NightlyConfig, parameters["config_path"]))
    except XentError:  # the flow itself reports the bad config
        return "nightly"
    last = parameters.get("end_date")
    return f"nightly-{first}" + (f"-to-{last}" if last and last != first else "")


@flow(name="xent-nightly", flow_run_name=_nightly_run_name, log_prints=False)
def nightly_flow(config_path: str, run_date: str | None = None, end_date: str | None = None,
                 progress: bool = False) -> Any:
    """Evaluate every source for `run_date` (default: today in the schedule's timezone),
    or for each date from `run_date` to `end_date` inclusive (a backfill). A data error
    or a breach in one (source, date) does not stop the others; the run then fails
    with the highest exit code among them."""
    config = build_config(NightlyConfig, config_path)
    dates = nightly.run_dates(config, run_date, end_date)
    outcomes, page = nightly.nightly_run(config, dates, NIGHTLY_STEPS, Progress(progress))
    logger = get_run_logger()
    for outcome in outcomes:
        if outcome.exit_code:
            logger.warning("%s", outcome.line() + "".join(f"; BREACH {b}" for b in outcome.breach_lines()))
    key = _artifact_key("xent-nightly-summary", dates[0], *(["to", dates[-1]] if len(dates) > 1 else []))
    create_markdown_artifact(key=key, markdown=nightly.summary_markdown(outcomes, dates, page))
    error = nightly.failure(outcomes)
    if error is not None:
        return Failed(message=str(error), data=error)
    return Completed(message=f"{len(outcomes)} source-date report(s) up to date", data=outcomes)
