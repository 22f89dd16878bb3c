"""The Python API: one path from any input to a report, for notebooks and pipelines.

>>> from flows import evaluate, drift, compare
>>> report = evaluate("dumps/2026-11-23/", slice_by=["model"])  # doctest: +SKIP
>>> report.summary                                              # doctest: +SKIP

``evaluate`` takes Parquet paths (files, folders, globs, fsspec URLs), a pyarrow
Table, a pandas DataFrame or a Dask DataFrame; every kind is cut into pieces that
workers reduce through the same reader and kernel, merged in the same tree (see
:mod:`flows.engine`). ``xent eval``, ``xent drift`` and the Prefect flows run through
here too, so a notebook's report is the one the CLI writes. Nothing is written to
disk unless ``write`` is called.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from .config import CompareConfig, DriftConfig, EvalConfig, describe_validation_error
from .engine import Evaluation, Progress, dask_client, evaluate_source
from .engine import evaluate as evaluate_files
from .errors import UsageError, XentError
from .inputs.memory import is_dask_dataframe, is_in_memory
from .inputs.sources import InputFile
from .metadata import decoded_metadata
from .inputs.tokens import TokenSpec
from .kinds import TOKENS
from .report.tables import report_tables, with_interval
from .report.token_tables import token_report_tables
from .report.writing import write_tables_atomically

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from .monitor.drift import DriftReport
    from .monitor.paired import CompareReport

__all__ = [
    "CompareResult", "DriftResult", "Report", "compare", "compare_config", "drift", "drift_config", "evaluate",
    "evaluate_config",
]

Model = TypeVar("Model", bound=BaseModel)


# --------------------------------------------------------------------------- the page


class _Page:
    """``to_html``, the notebook view and ``write`` with ``report.html``, for a result
    whose `tables` the page shows (:func:`flows.report.page.render_html`)."""

    tables: dict[str, pa.Table]

    def _write(self, path: str | os.PathLike, storage_options: dict[str, Any], html: bool) -> dict[str, str]:
        """The tables and, unless `html` is False, the page, all-or-nothing; {table name: path}."""
        from .report.page import HTML_FILE

        files = {HTML_FILE: self.to_html().encode()} if html else None
        paths = write_tables_atomically(self.tables, os.fspath(path), storage_options, files)
        return {name: paths[name] for name in self.tables}

    def to_html(self, **options: Any) -> str:
        """The report as one self-contained HTML page (what ``write`` puts in ``report.html``);
        `options` go to :func:`flows.report.page.render_html`."""
        from .report.page import render_html

        return render_html(self.tables, **options)

    def _repr_html_(self) -> str:
        """The page in a notebook, inside an iframe: its scripts and styles stay its own."""
        from markupsafe import escape

        return (f'<iframe srcdoc="{escape(self.to_html())}" style="width: 100%; height: 900px; border: 0" '
                'sandbox="allow-scripts"></iframe>')


# --------------------------------------------------------------------------- evaluation


class Report(_Page):
    """The report of one evaluation: the tables ``xent eval`` writes, as pandas and Arrow.

    Attributes
    ----------
    evaluation
        The merged statistics, read settings and input fingerprint it was built from.
    tables
        ``{"per_class", "summary"[, "confusion"][, "bad_shards"]}``: pyarrow Tables with their report
        metadata (config, fingerprint, units, classes, version), exactly as written. A token
        dump's (kind tokens): ``{"token_summary", "token_positions", "token_frequency",
        "per_token"[, "bad_shards"]}`` (:mod:`flows.report.token_tables`).
    """

    def __init__(self, evaluation: Evaluation):
        self.evaluation = evaluation
        tokens = isinstance(evaluation.spec, TokenSpec)
        self.tables: dict[str, pa.Table] = (token_report_tables if tokens else report_tables)(evaluation)
        self._frames: dict[str, pd.DataFrame] = {}

    def _frame(self, name: str) -> "pd.DataFrame":
        if name not in self._frames:
            self._frames[name] = self.tables[name].to_pandas()
        return self._frames[name]

    @property
    def is_tokens(self) -> bool:
        """A token dump's report (kind tokens)."""
        return "token_summary" in self.tables

    @property
    def per_class(self) -> "pd.DataFrame":
        """One row per (slice, class), and per class overall (``overall`` True)."""
        if self.is_tokens:
            raise AttributeError("a token report has no per-class table: see summary, positions, frequency, per_token")
        return self._frame("per_class")

    @property
    def summary(self) -> "pd.DataFrame":
        """One row per slice, and the overall row (``overall`` True); a token report's
        ``token_summary``."""
        return self._frame(self._summary_name)

    @property
    def positions(self) -> "pd.DataFrame":
        """Token reports: the token metrics per position bucket, per slice and overall."""
        return self._frame("token_positions")

    @property
    def frequency(self) -> "pd.DataFrame":
        """Token reports: the token metrics per frequency-rank bucket of the target."""
        return self._frame("token_frequency")

    @property
    def per_token(self) -> "pd.DataFrame":
        """Token reports: a row per target id seen."""
        return self._frame("per_token")

    @property
    def _summary_name(self) -> str:
        return "token_summary" if self.is_tokens else "summary"

    @property
    def bad_shards(self) -> "pd.DataFrame | None":
        """The shards left out (with on_bad_shard='skip'): file, reason, rows; else None."""
        return self._frame("bad_shards") if "bad_shards" in self.tables else None

    @property
    def units(self) -> str:
        """'nats' or 'bits': the units of every cross-entropy and entropy column."""
        return self.evaluation.config.units

    @property
    def metadata(self) -> dict[str, Any]:
        """The report metadata, decoded: version, created_at, units, config, fingerprint, classes..."""
        metadata = decoded_metadata(self.tables[self._summary_name])
        return {key.removeprefix("xent."): value for key, value in metadata.items()}

    def to_arrow(self) -> dict[str, pa.Table]:
        """The report tables as pyarrow Tables with their metadata (those ``write`` writes)."""
        return dict(self.tables)

    def write(self, path: str | os.PathLike, storage_options: dict[str, Any] | None = None,
              html: bool = True) -> dict[str, str]:
        """Write the report folder all-or-nothing (``<name>.parquet``, ``report.html``
        unless `html` is False, and ``_manifest.json``); returns {table name: path}.
        `storage_options` default to the evaluation's."""
        options = self.evaluation.config.storage_options if storage_options is None else storage_options
        return self._write(path, options, html)

    def __repr__(self) -> str:
        summary = self.tables[self._summary_name]
        overall = summary.filter(summary.column("overall")).to_pylist()[0]
        spec = self.evaluation.spec
        if self.is_tokens:
            sliced = f", {summary.num_rows - 1} slices by {', '.join(spec.slice_by)}" if spec.slice_by else ""
            return (f"<xent Report: {overall['tokens']:,} tokens{sliced}; perplexity {with_interval(overall, 'perplexity')}, "
                    f"ce_mean {with_interval(overall, 'ce_mean')} {self.units}>")
        sliced = f", {summary.num_rows - 1} slices by {', '.join(spec.slice_by)}" if spec.slice_by else ""
        bad = f", {len(self.evaluation.result.bad_shards)} bad shards" if self.evaluation.result.bad_shards else ""
        return (f"<xent Report: {overall['n']:,} rows, {spec.n_classes} classes{sliced}{bad}; "
                f"ce_mean {with_interval(overall, 'ce_mean')} {self.units}, accuracy {with_interval(overall, 'accuracy')}>")


def evaluate(source: Any, *, client: "Client | None" = None, progress: bool | Progress = False, **options: Any) -> Report:
    """Evaluate predictions into a per-class and per-slice cross-entropy report.

    Parameters
    ----------
    source
        Parquet file(s), folder(s), glob(s) or fsspec URL(s) (a str, a path, or a list
        of them); or a pyarrow Table, a pandas DataFrame or a Dask DataFrame with the
        columns a shard would have.
    client
        A ``distributed.Client`` to run on. Default: for a Dask DataFrame, the current
        client if there is one; otherwise a cluster is started for this call and
        stopped after it (``scheduler`` option, else $DASK_SCHEDULER_ADDRESS, else a
        LocalCluster).
    progress
        True (or a ``Progress``) draws a progress bar.
    **options
        ``EvalConfig`` settings: kind, pred_col, label_col, weight_col, slice_by,
        classes, n_classes, units, eps, on_bad_shard, on_nonfinite, storage_options...

    Returns
    -------
    Report

    Raises
    ------
    UsageError
        An unknown or invalid option (the message names it), or `sources` given as one.
    DataError
        Bad data; the message names the file (or ``<pandas.DataFrame>``, ``<dask
        partition 3>``), the column and the row.
    """
    return evaluate_config(validated(EvalConfig, options, "evaluate()", ("sources",)), source, client=client,
                           progress=progress)


def evaluate_config(config: EvalConfig, source: Any = None, *, client: "Client | None" = None,
                    progress: bool | Progress = False, inputs: list[InputFile] | None = None) -> Report:
    """``evaluate`` from a validated config. `source` None: the config's ``sources``
    (already listed as `inputs`, if given)."""
    progress = Progress.of(progress)
    paths = config.sources if source is None else _paths(source)
    if paths is not None:
        config = config if source is None else config.model_copy(update={"sources": paths})
        with _cluster(client, config.scheduler) as running:
            return Report(evaluate_files(config, running, progress, inputs))
    if is_in_memory(source):
        with _cluster(client, config.scheduler, current=is_dask_dataframe(source)) as running:
            return Report(evaluate_source(config, running, source, progress))
    raise UsageError(
        f"cannot evaluate a {type(source).__module__}.{type(source).__name__}: give Parquet path(s), folder(s), "
        "glob(s) or URL(s), a pyarrow Table, a pandas DataFrame or a Dask DataFrame"
    )


# --------------------------------------------------------------------------- two-sided runs


class TwoSidedResult(_Page, ABC):
    """What a result of a dump against another (drift, compare) holds: the report, its
    config and the tables written; each kind builds them and says what a breach is."""

    TABLE: ClassVar[str]  # the table `table` shows, and the terminal prints

    def __init__(self, report: Any, config: BaseModel):
        self.report = report
        self.config = config
        self.tables: dict[str, pa.Table] = self._tables(report, config)
        self._frame: pd.DataFrame | None = None

    @staticmethod
    @abstractmethod
    def _tables(report: Any, config: Any) -> dict[str, pa.Table]:
        """The tables written, with their report metadata."""

    @staticmethod
    @abstractmethod
    def _measure(config: Any, client: "Client", progress: Progress, first: Any, second: Any) -> Any:
        """The report of both sides: the other dump (`first`) and the config's ``sources``
        (`second`), each in-memory data or None for its paths."""

    @property
    def table(self) -> "pd.DataFrame":
        """The main table (``drift`` or ``compare``) as pandas."""
        if self._frame is None:
            self._frame = self.tables[self.TABLE].to_pandas()
        return self._frame

    @property
    @abstractmethod
    def breaches(self) -> list[str]:
        """Each breach, described in one line."""

    @property
    def units(self) -> str:
        """'nats' or 'bits': the units of every divergence and cross-entropy column."""
        return self.config.units

    @abstractmethod
    def breach_error(self) -> "XentError | None":
        """The error a breach ends the run with (exit code 3), naming every breach; None without one."""

    def raise_for_breach(self) -> None:
        """Raise ``breach_error()`` (``DriftBreach`` or ``GateBreach``, exit code 3 in the
        CLI) naming every breach, if any."""
        error = self.breach_error()
        if error is not None:
            raise error

    def to_arrow(self) -> dict[str, pa.Table]:
        """The tables as pyarrow Tables with their metadata (those ``write`` writes)."""
        return dict(self.tables)

    def write(self, path: str | os.PathLike, storage_options: dict[str, Any] | None = None,
              html: bool = True) -> dict[str, str]:
        """Write the tables (``<name>.parquet``), ``report.html`` unless `html` is False,
        and ``_manifest.json`` under `path` all-or-nothing; returns {table name: path}.
        `storage_options` default to the config's."""
        options = self.config.storage_options if storage_options is None else storage_options
        return self._write(path, options, html)


class DriftResult(TwoSidedResult):
    """Drift of a current dump against a reference: the table ``xent drift`` writes.

    Attributes
    ----------
    report
        Every metric row and both evaluations (``report.reference``, ``report.current``).
    tables
        ``{"drift", "drift_distributions"}``: pyarrow Tables with their report metadata,
        exactly as written; ``table`` is ``drift``, one row per (slice, metric[, class]):
        value, threshold, breached.
    """

    TABLE = "drift"

    @staticmethod
    def _tables(report: "DriftReport", config: DriftConfig) -> dict[str, pa.Table]:
        from .monitor.drift import drift_tables

        return drift_tables(report, config)

    @staticmethod
    def _measure(config: DriftConfig, client: "Client", progress: Progress, first: Any, second: Any) -> "DriftReport":
        from .monitor.drift import measure_drift

        return measure_drift(config, client, progress, reference=first, current=second)

    @property
    def breaches(self) -> list[str]:
        """Each breached threshold, described: metric, value, threshold and slice."""
        from .report.text import describe_breach

        return [describe_breach(row, self.report.slice_by) for row in self.report.breaches]

    def breach_error(self) -> "XentError | None":
        """``DriftBreach`` naming every breached threshold; None without one."""
        from .monitor.drift import breach_error

        return breach_error(self.report)

    def __repr__(self) -> str:
        overall = {v.key.metric: v.value for v in self.report.values if v.key.overall and v.key.cls is None}
        shown = ", ".join(f"{name} {overall[name]:.4g}" for name in ("kl_per_sample", "marginal_js", "confidence_psi")
                          if name in overall)
        verdict = f"{len(self.report.breaches)} breaches" if self.report.breaches else "no breach"
        return f"<xent DriftResult: {shown} ({self.units}); {verdict}>"


class CompareResult(TwoSidedResult):
    """A candidate against a baseline on the same rows: the table ``xent compare`` writes.

    Attributes
    ----------
    report
        The rows, join counts, breaches and both evaluations (``report.baseline``, ``report.candidate``).
    tables
        ``{"compare": pyarrow Table}`` with its report metadata, exactly as written; ``table``
        is it, one row per slice and per (slice, class), and the same across slices (``overall``).
    """

    TABLE = "compare"

    @staticmethod
    def _tables(report: "CompareReport", config: CompareConfig) -> dict[str, pa.Table]:
        from .monitor.paired import compare_tables
        from .monitor.token_compare import TokenCompareReport, token_compare_tables

        if isinstance(report, TokenCompareReport):
            return token_compare_tables(report, config)
        return compare_tables(report, config)

    @staticmethod
    def _measure(config: CompareConfig, client: "Client", progress: Progress, first: Any,
                 second: Any) -> "CompareReport":
        from .monitor.paired import compare_models
        from .monitor.token_compare import compare_token_models

        measure = compare_token_models if config.kind == TOKENS else compare_models
        return measure(config, client, progress, baseline=first, candidate=second)

    @property
    def breaches(self) -> list[str]:
        """Each breached (gate, row), described: gate, slice, class, difference and interval."""
        return list(self.report.breaches)

    def breach_error(self) -> "XentError | None":
        """``GateBreach`` naming every breached (gate, row); None without one."""
        from .monitor.gates import gate_error

        return gate_error(self.report.breaches)

    def __repr__(self) -> str:
        row = self.report.overall_row
        verdict = f"{len(self.report.breaches)} gate breaches" if self.report.breaches else "no gate breached"
        return (f"<xent CompareResult: {row['n_matched']:,} rows joined; ce_mean candidate - baseline "
                f"{row['ce_mean_diff']:+.4g} [{row['ce_mean_diff_lo']:+.4g}, {row['ce_mean_diff_hi']:+.4g}] "
                f"{self.units}: {row['verdict']}; {verdict}>")


@dataclass(frozen=True)
class TwoSided:
    """A kind of run of the dump in ``sources`` against another dump: what the API, the
    plain steps (:mod:`flows.runs.two_sided`), the flows and the CLI read of it. A new
    kind is one more declaration and its result class."""

    name: str  # the command (xent drift), the function (drift()), the flow (xent-drift)
    config_model: type[BaseModel]
    first: str  # the other dump, first side of the join: its name, config field and CLI flag (--reference)
    second: str  # the dump in ``sources``, second side of the join: its name and CLI flag (--current)
    result: type[TwoSidedResult]

    def check_dumps(self, config: Any, first: Any = None, second: Any = None) -> None:
        """Both dumps are given: as in-memory data (`first`, `second`) or in `config`."""
        for side, field, data in ((self.first, self.first, first), (self.second, "sources", second)):
            if data is None and not getattr(config, field):
                raise UsageError(f"no {side} dump given (--{side} or '{field}' in the config)")

    def on_cluster(self, config: Any, client: "Client", progress: Progress | None = None) -> TwoSidedResult:
        """The result of `config`'s two dumps on `client` (a step of the plain runs and of the flows)."""
        return _measured(self, config, client=client, progress=progress or False)


DRIFT = TwoSided("drift", DriftConfig, "reference", "current", DriftResult)
COMPARE = TwoSided("compare", CompareConfig, "baseline", "candidate", CompareResult)


def drift(reference: Any, current: Any, *, client: "Client | None" = None, progress: bool | Progress = False,
          **options: Any) -> DriftResult:
    """Compare a current dump with a reference: per-sample KL on joined rows, and KL,
    JS and PSI of the predicted marginals and of the confidence histograms.

    Parameters
    ----------
    reference, current
        Each, independently, any source ``evaluate`` takes: Parquet file(s), folder(s),
        glob(s) or fsspec URL(s), a pyarrow Table, a pandas DataFrame or a Dask
        DataFrame. The result is the one the same rows give as Parquet files.
    client, progress
        As for ``evaluate`` (a Dask DataFrame on either side runs on the current
        client, if any, when `client` is not given).
    **options
        ``DriftConfig`` settings: the reading settings of ``evaluate`` and
        ``drift={"thresholds": {...}, "id_cols": [...], ...}``.

    Returns
    -------
    DriftResult
        ``raise_for_breach()`` raises ``DriftBreach`` when a threshold is exceeded.

    Raises
    ------
    UsageError
        An unknown or invalid option, or a side that is no source ``evaluate`` takes.
    DataError
        Bad data, as for ``evaluate``; or join key columns missing, of different types
        on the two sides, or not unique.
    """
    return _two_sided(DRIFT, reference, current, client, progress, options)


def drift_config(config: DriftConfig, *, client: "Client | None" = None, progress: bool | Progress = False,
                 reference: Any = None, current: Any = None) -> DriftResult:
    """``drift`` from a validated config (current dump in ``sources``, and ``reference``);
    `reference` or `current`, when given, is that side's in-memory data instead."""
    return _measured(DRIFT, config, client=client, progress=progress, first=reference, second=current)


def compare(baseline: Any, candidate: Any, *, client: "Client | None" = None, progress: bool | Progress = False,
            **options: Any) -> CompareResult:
    """Compare a candidate model's predictions with a baseline's on the same rows
    (joined on key columns): paired differences of every interval metric with their
    jackknife intervals, per-row CE wins/ties/losses, verdicts and gates.

    Parameters
    ----------
    baseline, candidate
        Each any source ``evaluate`` takes (Parquet paths, a pyarrow Table, a pandas or
        a Dask DataFrame).
    client, progress
        As for ``evaluate``.
    **options
        ``CompareConfig`` settings: the reading settings of ``evaluate``,
        ``compare={"id_cols": [...], "tie_tolerance": 0}``, ``n_buckets=20``, ``interval_level=0.95``
        and ``gate={"metric": "ce_mean", "max_increase": 0.01}`` (or a list of gates).

    Returns
    -------
    CompareResult
        ``raise_for_breach()`` raises ``GateBreach`` when a gate is breached.

    Raises
    ------
    UsageError, DataError
        As for ``drift``; also a DataError when a joined row's label differs between the dumps.
    """
    return _two_sided(COMPARE, baseline, candidate, client, progress, options)


def compare_config(config: CompareConfig, *, client: "Client | None" = None, progress: bool | Progress = False,
                   baseline: Any = None, candidate: Any = None) -> CompareResult:
    """``compare`` from a validated config (candidate dump in ``sources``, and ``baseline``);
    `baseline` or `candidate`, when given, is that side's in-memory data instead."""
    return _measured(COMPARE, config, client=client, progress=progress, first=baseline, second=candidate)


def _two_sided(kind: TwoSided, first: Any, second: Any, client: "Client | None", progress: bool | Progress,
               options: dict[str, Any]) -> Any:
    """``drift()`` or ``compare()``: `options` validated, each side's paths put in the
    config or its in-memory data passed on."""
    where = f"{kind.name}()"
    config = validated(kind.config_model, options, where, ("sources", kind.first))
    paths, in_memory = {}, {}
    for side, source in ((kind.first, first), (kind.second, second)):
        paths[side] = _paths(source)
        if paths[side] is None and not is_in_memory(source):
            raise UsageError(f"{where}: {side} is a {type(source).__module__}.{type(source).__name__}; give Parquet "
                             "path(s), folder(s), glob(s) or URL(s), a pyarrow Table, a pandas DataFrame or a Dask DataFrame")
        in_memory[side] = None if paths[side] is not None else source
    config = config.model_copy(update={"sources": paths[kind.second] or [], kind.first: paths[kind.first] or []})
    return _measured(kind, config, client=client, progress=progress, first=in_memory[kind.first],
                    second=in_memory[kind.second])


def _measured(kind: TwoSided, config: Any, *, client: "Client | None" = None, progress: bool | Progress = False,
             first: Any = None, second: Any = None) -> Any:
    """The `kind` result of `config`: the other dump (`first`) against the config's
    ``sources`` (`second`), each in-memory data or None for its paths."""
    kind.check_dumps(config, first, second)
    dask_side = is_dask_dataframe(first) or is_dask_dataframe(second)
    with _cluster(client, config.scheduler, current=dask_side) as running:
        return kind.result(kind.result._measure(config, running, Progress.of(progress), first, second), config)


# --------------------------------------------------------------------------- helpers


def validated(model: type[Model], options: dict[str, Any], where: str, forbidden: Sequence[str] = ()) -> Model:
    """`options` as a `model`; an unknown or invalid one is a UsageError naming it."""
    for name in forbidden:
        if name in options:
            raise UsageError(f"{where}: '{name}' is not an option here: pass the data as the positional argument(s)")
    try:
        return model.model_validate(options)
    except ValidationError as error:
        raise UsageError(describe_validation_error(error, where)) from None


def _paths(source: Any) -> list[str] | None:
    """`source` as a list of paths or URLs, or None when it is not made of paths."""
    if isinstance(source, (str, os.PathLike)):
        return [os.fspath(source)]
    if isinstance(source, (list, tuple)) and all(isinstance(item, (str, os.PathLike)) for item in source):
        return [os.fspath(item) for item in source]
    return None


@contextmanager
def _cluster(client: "Client | None", scheduler: str | None, current: bool = False) -> Iterator["Client"]:
    """`client`; else, with `current`, the current distributed client if any; else a
    cluster for this call (``dask_client``), stopped after it."""
    if client is None and current:
        from distributed import get_client

        try:
            client = get_client()
        except ValueError:  # no current client
            client = None
    if client is not None:
        yield client
        return
    with dask_client(scheduler) as started:
        yield started
