"""Validated run configuration: pydantic models loaded from YAML, overridden by flags.

A bad config fails here, before any data is read, naming the file and the key.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import math
import re
import string
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .errors import ConfigError, UsageError, without_credentials
from .kinds import KINDS, TOKENS
from .metadata import HISTORY_COLUMNS
from .drift_statistics import DRIFT_METRICS


Kind = Literal[(*KINDS, TOKENS)]  # type: ignore[valid-type]  # Literal["logits", "probs", "log_probs", "tokens"]
DEFAULT_PRED_COL = {kind: columns.list_column for kind, columns in KINDS.items()}
WIDE_PREFIX = {kind: columns.wide_prefix for kind, columns in KINDS.items()}
BINARY_COL = {kind: columns.binary_column for kind, columns in KINDS.items()}


SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")
NOT_SECRETS = ("tokens",)  # xent's own settings whose names hold such a word (kind tokens' columns)


def _secret(name: Any) -> bool:
    name = str(name).lower()
    return name not in NOT_SECRETS and any(word in name for word in SECRET_WORDS)


def redacted(value: Any) -> Any:
    """`value` with every entry whose name suggests a credential replaced by '***', and
    the user:password@ of every URL removed."""
    if isinstance(value, dict):
        return {k: "***" if _secret(k) and v is not None else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return without_credentials(value) if isinstance(value, str) else value


Units = Literal["nats", "bits"]


def log_base(units: Units) -> Literal["e", 2]:
    """The kernels' ``base`` argument for a report in `units`."""
    return 2 if units == "bits" else "e"


def nats_per_unit(units: Units) -> float:
    """One unit in nats: 1, or ln 2 for bits (divergences are computed in nats)."""
    return math.log(2) if units == "bits" else 1.0


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenColumns(StrictModel):
    """Language-model token dumps (kind: tokens): the column names and the token report's settings.
    A dump has a row per scored token, or a row per document with list columns of the same names."""

    doc_cols: list[str] = Field(default_factory=lambda: ["doc_id"], description="The document key (one or more columns).")
    position_col: str = Field("position", description="Token rows: the token's 0-based position in its document.")
    target_col: str = "target"
    target_logprob_col: str = Field("target_logprob", description="The target's log-probability over the full vocabulary.")
    topk_ids_col: str = Field("topk_ids", description="Optional top-k token ids (a list per token).")
    topk_logprobs_col: str = Field("topk_logprobs", description="Optional top-k log-probabilities, as long as topk_ids.")
    target_bytes_col: str = Field("target_bytes", description="Optional UTF-8 bytes of each target token's text.")
    first_position_col: str = Field("first_position", description="Documents: the first listed token's position (default 0).")
    n_bytes_col: str = Field("n_bytes", description="Documents: optional UTF-8 bytes of the text (bits per byte).")
    n_words_col: str = Field("n_words", description="Documents: optional word count (lm-eval's: whitespace split).")
    topk: int | None = Field(
        None, ge=1, description="The dumps' k: a target counts inside the top-k when its rank is at most k. Unset: "
        "when it is listed (vLLM lists the target always, so declare k there); the schema metadata key xent.topk "
        "sets it too.",
    )
    vocab_size: int | None = Field(None, ge=1, description="Target ids must be below it (checked when set).")
    vocab: str | None = Field(
        None, description="A Parquet file of the vocabulary (columns id, token), such as the _vocab.parquet of "
        "xent convert openai: per_token.parquet then names each target's text.",
    )
    counts: str | None = Field(
        None, description="A Parquet file of token counts (columns id, count) that ranks the targets for the frequency "
        "buckets, e.g. from the training corpus; none = the dump's own counts.",
    )
    position_edges: list[int] = Field(
        default_factory=lambda: [0, *(2**i for i in range(21))],
        description="Lower edges of the position buckets (0, 1, 2-3, 4-7, ... by default); must start at 0.",
    )

    @field_validator("position_edges")
    @classmethod
    def _edges_rise_from_zero(cls, value):
        if not value or value[0] != 0 or any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("position_edges must start at 0 and rise")
        return value


class EvalConfig(StrictModel):
    """Everything an evaluation needs to know about its input and its report."""

    sources: list[str] = Field(default_factory=list, description="Files, folders, globs or fsspec URLs.")
    kind: Kind = Field("logits", description="What the prediction numbers are; never guessed.")
    pred_col: str | None = Field(
        None,
        description="Prediction column: a list column, a float column (binary model), or the "
        "prefix of wide columns (`logit_` for logit_0 ... logit_{C-1}). Default: the kind's name "
        "(logits, probs, log_probs), else wide columns logit_/prob_/log_prob_, else a float column logit/prob.",
    )
    label_col: str = Field("label", description="True class: integer index or class name; null = ignored row.")
    ignore_index: int | None = Field(None, description="A label value that marks ignored rows (e.g. -100), besides null.")
    weight_col: str | None = Field(None, description="Optional non-negative row weights.")
    id_col: str = Field(
        "id", description="Row id: picks each row's jackknife bucket when the dump has it, and joins dumps for drift.",
    )
    slice_by: list[str] = Field(default_factory=list, description="Columns (or hive folder keys) to slice by.")
    classes: list[str] | None = Field(None, description="Class names in index order.")
    n_classes: int | None = Field(None, ge=2, description="Class count, when no class list is given.")
    units: Units = "nats"
    eps: float | None = Field(
        None, gt=0, lt=1, description="Clip the true class's probability to at least eps (CE <= -log eps); none = exact."
    )
    scheduler: str | None = Field(None, description="Address of an existing Dask scheduler.")
    on_bad_shard: Literal["error", "skip"] = "error"
    prob_tolerance: float | None = Field(
        None, gt=0, lt=1, description="probs: how far a row's sum may be from 1 (log_probs: its logsumexp from 0); "
        "none = 1e-4 (xent_kernels.SUM_TOLERANCE).",
    )
    renormalize: bool = Field(
        False, description="probs: divide each row by its sum (log_probs: subtract its logsumexp) before the checks; "
        "recorded in the report's xent.layout metadata.",
    )
    on_nonfinite: Literal["error", "count"] = Field(
        "error", description="NaN/inf predictions: fail, or count the rows and leave them out."
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. S3 endpoint.")
    n_bins: int = Field(15, ge=1, le=1000, description="Confidence histogram bins (ECE).")
    task_rows: int = Field(4_000_000, ge=1, description="Rows per Dask task, for files split by row group.")
    batch_logits: int = Field(8_000_000, ge=1, description="Prediction values read at a time within a task.")
    split_every: int = Field(8, ge=2, description="Fan-in of the tree reduction.")
    n_buckets: int = Field(
        20, ge=1, le=1000, description="Jackknife buckets K for the <metric>_lo/_hi intervals; 1 = no intervals (NaN).",
    )
    interval_level: float = Field(0.95, gt=0, lt=1, description="Two-sided confidence level of the intervals.")
    max_confusion_classes: int = Field(
        256, ge=0, description="Keep the confusion matrix (confusion.parquet) up to this many classes; 0 = never.",
    )
    max_auc_classes: int = Field(64, ge=0, description="Compute ROC AUC up to this many classes; 0 = never.")
    auc_thresholds: int = Field(
        1000, ge=10, le=100_000, description="Bins of the predicted probability for ROC AUC (error bound in the report).",
    )
    exact_auc_max_values: int = Field(
        196_608, ge=0, description="Exact ROC AUC (sklearn's) for a slice whose rows × (classes + 2) are at most this "
        "(1.5 MiB of float64 a slice); larger slices are binned (auc_thresholds); 0 = always binned.",
    )
    min_slice_size: int = Field(
        0, ge=0, description="Slices with fewer rows are reported with small_slice = true (gates skip them).",
    )
    tokens: TokenColumns = Field(default_factory=TokenColumns, description="kind: tokens only: the token columns.")
    stall_timeout: float = Field(
        600, ge=1, description="Seconds without any Dask task finishing before the run fails (exit 4) naming the "
        "cause (workers paused at their memory limit, or gone); must exceed the longest task.",
    )

    @field_validator("slice_by", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _renormalize_needs_probabilities(self):
        if self.renormalize and self.kind == "logits":
            raise ValueError("renormalize applies to kind probs or log_probs; logits need no normalising")
        if self.kind == TOKENS and (self.weight_col or self.renormalize or self.eps is not None):
            given = [key for key, value in (("weight_col", self.weight_col), ("renormalize", self.renormalize),
                                            ("eps", self.eps is not None)) if value]
            raise ValueError(f"kind tokens does not take {', '.join(given)}: every scored token counts once, "
                             "exactly as its log-probability says")
        return self

    def bucket_columns(self) -> tuple[str, ...]:
        """The key columns whose hash picks a row's jackknife bucket, when the dump has
        them all: ``id_col`` (a drift config's ``drift.id_cols`` instead, when set)."""
        drift = getattr(self, "drift", None)
        if drift is not None and drift.id_cols:
            return tuple(drift.id_cols)
        return (self.id_col,)

    @model_serializer(mode="wrap", when_used="json")
    def _json_without_credentials(self, to_dict):
        """The JSON form (Prefect's stored flow-run parameters, report metadata) never holds
        credentials; the config object itself keeps them for reading."""
        return redacted(to_dict(self))


Model = TypeVar("Model", bound=BaseModel)


def did_you_mean(word: str, known) -> str:
    """``; did you mean 'sources'?`` when `word` is close to one of `known`, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class ConfigProblems(ValueError):
    """Problems found by a model validator, one line each, with the keys they concern."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``list[Gate] | None`` -> [Gate])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the model found by following `loc` from `model` (list indexes
    and pydantic's union tags are passed over); [] when `loc` leads to no model."""
    models = [model] if model else []
    for part in loc:
        fields = [m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields]
        if fields:
            models = [found for field in fields for found in _models(field.annotation)]
    return sorted({name for m in models for name in m.model_fields})


def _problem(item: dict, model: type[BaseModel] | None) -> str:
    """One pydantic error item in words; an unknown key close to a known one at its
    level gets a "did you mean"."""
    loc = item["loc"]
    if item["type"] == "extra_forbidden":
        known = _keys_at(model, loc[:-1])
        return "unknown key" + (did_you_mean(loc[-1], known) or (f"; known keys here: {', '.join(known)}" if known else ""))
    if item["type"] == "missing":
        return "missing: this key is required"
    return item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validation_problems(error: ValidationError, where: str, model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem, each naming `where` and the key."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigProblems):
            lines += [f"{where}: {problem}" for problem in cause.problems]
        else:
            lines.append(f"{where}: key '{key}': {_problem(item, model)}" if key else f"{where}: {_problem(item, model)}")
    return list(dict.fromkeys(lines))


def describe_validation_error(error: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    return "\n".join(validation_problems(error, where, model))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping safely (no tags that construct objects)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise UsageError(f"cannot read config {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of keys at the top level, found {type(data).__name__}")
    return data


def build_config(model: type[Model], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Model:
    """The config file's values, then non-None `overrides`, validated as `model`."""
    data = read_yaml(path) if path else {}
    where = str(path) if path else "command line"
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(validation_problems(error, where, model)) from None


def read_class_names(value: str) -> list[str]:
    """Class names from a comma list, or from a file (one per line, or a JSON list)."""
    path = Path(value)
    if path.is_file():
        text = path.read_text()
        if text.lstrip().startswith("["):
            names = json.loads(text)
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = [part.strip() for part in value.split(",") if part.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"--classes needs at least two distinct class names, got {names!r}")
    return [str(name) for name in names]


class SliceThresholds(StrictModel):
    """Thresholds that apply to one slice, e.g. ``{slice: {model: b}, thresholds: {marginal_js: 0.02}}``."""

    slice: dict[str, Any]
    thresholds: dict[str, float]

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value):
        return _check_metrics(value)


def _check_metrics(value: dict[str, float]) -> dict[str, float]:
    from .drift_statistics import drift_metrics

    unknown = sorted(set(value) - set(DRIFT_METRICS))
    if unknown:
        hints = "".join(did_you_mean(name, DRIFT_METRICS) for name in unknown)
        raise ValueError(f"unknown drift metric(s) {unknown}; known: {list(drift_metrics(tokens=False))}, and for "
                         f"token dumps {list(drift_metrics(tokens=True))}{hints}")
    return value


class JoinSettings(StrictModel):
    """How two dumps' rows are joined on key columns (drift's per-sample KL, ``xent compare``)."""

    id_col: str = Field("id", description="Row id column; with the slice columns, the default join key.")
    id_cols: list[str] | None = Field(
        None,
        min_length=1,
        description="Columns (or hive folder keys) that identify a row in both dumps: the per-sample join key. "
        "Default: id_col plus the slice columns, so several models scoring the same ids join model with model.",
    )
    bucket_rows: int = Field(2_000_000, ge=1, description="Rows per join bucket: bounds worker memory.")
    scratch_dir: str | None = Field(None, description="Where join buckets spill (shared by all workers).")

    @field_validator("id_cols", mode="before")
    @classmethod
    def _split_id_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("id_cols")
    @classmethod
    def _distinct_id_cols(cls, value):
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"key columns must be distinct, got {value}")
        return value

    def join_key(self, slice_by: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """The columns rows are joined on: `id_cols`, else `id_col` and the slice columns."""
        if self.id_cols:
            return tuple(self.id_cols)
        return tuple(dict.fromkeys([self.id_col, *slice_by]))


class DriftSettings(JoinSettings):
    """How to compare a dump with its reference, and when to raise the alarm."""

    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Metric -> largest allowed value, in the run's units."
    )
    slice_thresholds: list[SliceThresholds] = Field(default_factory=list)
    confidence_bins: int = Field(10, ge=2, le=100, description="Confidence bins, at reference quantiles.")
    smoothing: float = Field(1e-4, gt=0, lt=1, description="Added to every bin's share before KL/JS/PSI.")
    per_sample: bool = Field(True, description="Join rows on the key columns for per-sample KL.")
    per_sample_smoothing: float | None = Field(
        None, gt=0, lt=1, description="eps: both sides' probabilities become (q + eps) / (1 + C·eps) before "
        "per-sample KL. Default: exact (a class with probability 0 where the reference has mass makes a row infinite).",
    )
    min_bucket_tokens: int = Field(
        1000, ge=1, description="Token dumps: a position or frequency bucket counts in the largest CE increase when "
        "both sides hold at least this many of its tokens.",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_metrics(cls, value):
        return _check_metrics(value)


def _drift_metrics_of_the_kind(config: "DriftConfig") -> "DriftConfig":
    from .drift_statistics import drift_metrics

    tokens = config.kind == TOKENS
    known = drift_metrics(tokens)
    settings = config.drift
    for where, thresholds in (("drift.thresholds", settings.thresholds),
                              *((f"drift.slice_thresholds[{i}]", o.thresholds)
                                for i, o in enumerate(settings.slice_thresholds))):
        other = sorted(set(thresholds) - set(known))
        if other:
            kind = "token dumps" if tokens else "classifier predictions"
            raise ValueError(f"{where}: {other} not measured on {kind}; its drift metrics are {list(known)}")
    return config


class DriftConfig(EvalConfig):
    """`xent drift`: the reading settings of EvalConfig for both dumps, plus drift settings."""

    reference: list[str] = Field(default_factory=list, description="The reference dump (baseline).")
    drift: DriftSettings = Field(default_factory=DriftSettings)

    @model_validator(mode="after")
    def _thresholds_of_the_kind(self):
        return _drift_metrics_of_the_kind(self)


class Gate(StrictModel):
    """A limit on how much worse the candidate may be than the baseline (``xent compare``):
    ``{metric: ce_mean, max_increase: 0.01, mode: interval}``. Exactly one of
    `max_increase` / `max_decrease`, in the run's units for information metrics."""

    metric: str = Field(description="An interval metric of the report (ce_mean, accuracy, ece, ...; token dumps: "
                        "ce_mean, perplexity, bits_per_byte, top1_accuracy).")
    max_increase: float | None = Field(None, ge=0, description="Largest allowed candidate - baseline.")
    max_decrease: float | None = Field(None, ge=0, description="Largest allowed baseline - candidate.")
    mode: Literal["interval", "point"] = Field(
        "interval", description="interval: breached only when the whole interval lies past the limit; "
        "point: when the difference itself does.",
    )

    @field_validator("metric")
    @classmethod
    def _interval_metric(cls, value):
        from xent_kernels import STATISTICS
        from xent_kernels.token_pair_report import PAIRED_TOKEN_METRICS

        known = list(dict.fromkeys([*(s.name for s in STATISTICS if s.interval), *PAIRED_TOKEN_METRICS]))
        if value not in known:
            raise ValueError(f"unknown gate metric {value!r}; metrics with intervals: {known}{did_you_mean(value, known)}")
        return value

    @model_validator(mode="after")
    def _one_limit(self):
        if (self.max_increase is None) == (self.max_decrease is None):
            raise ValueError("a gate needs exactly one of max_increase or max_decrease")
        return self


class CompareSettings(JoinSettings):
    """How ``xent compare`` pairs the candidate's rows with the baseline's."""

    tie_tolerance: float = Field(
        0.0, ge=0, description="Per-row CE differences at most this (in the run's units) are ties; 0: exact equality.",
    )


class CompareConfig(EvalConfig):
    """`xent compare`: the reading settings of EvalConfig for both dumps (``sources`` is
    the candidate; ``n_buckets`` and ``interval_level`` set the paired intervals), the
    join settings and the gates."""

    baseline: list[str] = Field(default_factory=list, description="The baseline dump.")
    compare: CompareSettings = Field(default_factory=CompareSettings)

    gate: list[Gate] = Field(default_factory=list, description="A gate, or a list of them.")

    @model_validator(mode="after")
    def _gates_of_the_kind(self):
        from xent_kernels.token_pair_report import PAIRED_TOKEN_METRICS

        if self.kind != TOKENS:
            return self
        for gate in self.gate:
            if gate.metric not in PAIRED_TOKEN_METRICS:
                raise ValueError(f"kind tokens: gate metric {gate.metric!r} is not a token metric; token comparisons "
                                 f"gate {list(PAIRED_TOKEN_METRICS)}{did_you_mean(gate.metric, list(PAIRED_TOKEN_METRICS))}")
        return self

    @field_validator("gate", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, dict) else value


class Schedule(StrictModel):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # croniter is the parser Prefect vendors for its cron schedules; importing Prefect
        # here would cost a second and defeat `xent nightly --no-prefect`.
        from croniter import croniter

        if not croniter.is_valid(value) or any(part.lower() in ("r", "h") for part in value.split()):
            raise ValueError(f"invalid cron string {value!r} (expected 5 fields, e.g. '0 2 * * *')")
        return value


# strftime directives that describe a date (no time of day, no locale-dependent forms).
_DATE_FORMAT = re.compile(r"(?:%[YyGmdjbBaAuwUWV%]|[^%{}])+")
TEMPLATE_HELP = "the only field is {date} (YYYY-MM-DD), optionally with a date format such as {date:%Y/%m/%d}"


def check_path_template(template: str) -> str:
    """`template` if its only replacement fields are ``{date}`` or ``{date:<strftime>}``.

    Raises
    ------
    ValueError
        Any other field, attribute or index access (``{date.year}``), a conversion
        (``{date!r}``), a format spec that is not a date format, or unbalanced braces.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"path template {template!r}: {error} (write a literal brace as {{{{ or }}}})") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name != "date" or conversion is not None or (spec and not (_DATE_FORMAT.fullmatch(spec) and "%" in spec)):
            raise ValueError(f"path template {template!r}: field {field} is not allowed; {TEMPLATE_HELP}")
    return template


def render_path(template: str, run_date: str | dt.date) -> str:
    """`template` (checked by `check_path_template`) for `run_date`: ``{date}`` is
    YYYY-MM-DD and ``{date:%Y/%m/%d}`` formats the date."""
    day = run_date if isinstance(run_date, dt.date) else dt.date.fromisoformat(run_date)
    return template.format(date=day)


class NightlySource(StrictModel):
    """One dump evaluated every night. `paths` (and `reference` paths) may carry ``{date}``
    (YYYY-MM-DD) or ``{date:<strftime format>}``, nothing else."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    paths: list[str] = Field(min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict, description="EvalConfig keys for this source.")
    reference: Literal["previous"] | list[str] | None = Field(
        None, description="Drift reference: 'previous' (the previous date's dump) or fixed paths; none = no drift."
    )
    gate: list[Gate] | None = Field(None, description="Gates against the baseline run; none = the config's `gate`.")
    baseline: Literal["previous"] | dt.date | None = Field(
        None, description="The gates' baseline run: 'previous' or a run date; none = the config's `baseline`.",
    )

    @field_validator("gate", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, dict) else value

    @field_validator("paths")
    @classmethod
    def _path_templates(cls, value: list[str]) -> list[str]:
        return [check_path_template(path) for path in value]

    @field_validator("reference")
    @classmethod
    def _reference_templates(cls, value):
        return [check_path_template(path) for path in value] if isinstance(value, list) else value


def sibling_tables_root(report_root: str) -> str:
    protocol, sep, path = report_root.rpartition("://")
    path = path.rstrip("/")
    if not path or (sep and "/" not in path):
        raise ValueError(f"report_root {report_root!r} is a bucket or file-system root: set tables_root explicitly")
    return f"{protocol}{sep}{path}-tables"


class NightlyConfig(StrictModel):
    report_root: str = Field(description="History: REPORT_ROOT/run_date=D/source=S/metrics.parquet.")
    tables_root: str | None = Field(
        None, description="Wide tables per run: TABLES_ROOT/run_date=D/source=S/*.parquet. Default: REPORT_ROOT-tables."
    )
    sources: list[NightlySource] = Field(min_length=1)
    schedule: Schedule = Field(default_factory=Schedule)
    defaults: dict[str, Any] = Field(default_factory=dict, description="EvalConfig keys for every source.")
    drift: DriftSettings = Field(default_factory=DriftSettings)
    scheduler: str | None = None
    deployment_name: str = "xent-nightly"
    gate: list[Gate] = Field(default_factory=list, description="Gates of every source against its baseline run.")
    baseline: Literal["previous"] | dt.date = Field(
        "previous", description="The gates' baseline: 'previous' (the latest earlier run of the source with a stored "
        "state) or a run date YYYY-MM-DD.",
    )

    @field_validator("gate", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        return [value] if isinstance(value, dict) else value

    def gates(self, source: NightlySource) -> tuple[list[Gate], str]:
        """The gates of `source` and their baseline ('previous' or a YYYY-MM-DD date)."""
        baseline = self.baseline if source.baseline is None else source.baseline
        return (self.gate if source.gate is None else source.gate), str(baseline)

    @property
    def tables_base(self) -> str:
        """Where the wide tables go: `tables_root`, else REPORT_ROOT's sibling REPORT_ROOT-tables."""
        return self.tables_root or sibling_tables_root(self.report_root)

    def eval_config(self, source: NightlySource, run_date: str | dt.date) -> EvalConfig:
        """The evaluation settings of `source` on `run_date`."""
        data = {**self.defaults, **source.settings, "sources": [render_path(p, run_date) for p in source.paths]}
        data.setdefault("scheduler", self.scheduler)
        return EvalConfig.model_validate(data)

    @model_validator(mode="after")
    def _sources_make_valid_evaluations(self):
        # Fail at load time, not at 2 a.m.: every source's settings must form an EvalConfig
        # whose slice columns do not collide with the history's own columns.
        problems = []
        for i, source in enumerate(self.sources):
            try:
                config = self.eval_config(source, "2000-01-01")
            except ValidationError as error:
                problems += self._settings_problems(i, source, error)
                continue
            clashes = sorted(set(config.slice_by) & set(HISTORY_COLUMNS))
            if clashes:
                problems.append(f"sources.{i} ({source.name}): slice_by {clashes} would clash with the history's "
                                f"own columns {list(HISTORY_COLUMNS)}; rename the slice column(s)")
            if config.kind == TOKENS and self.gates(source)[0]:
                # a gate compares with the baseline run's stored state, which token runs do not store yet (#20):
                # say so now, not at 2 a.m.
                problems.append(f"sources.{i} ({source.name}): kind tokens has no nightly gate yet (a token run's "
                                "state is not stored for a later run to compare with); remove it for this source, or "
                                "gate with xent compare --kind tokens")
        if problems:
            raise ConfigProblems(list(dict.fromkeys(problems)))
        return self

    def _settings_problems(self, i: int, source: NightlySource, error: ValidationError) -> list[str]:
        """`error` of source `i`'s evaluation settings, each naming the key where it was
        written: ``sources.0.settings.kind``, else ``defaults.kind``."""
        lines = []
        for item in error.errors():
            loc = item["loc"]
            top = loc[0] if loc else None
            at = ("defaults" if top in self.defaults and top not in source.settings
                  else f"sources.{i}.paths" if top == "sources" else f"sources.{i}.settings")
            key = ".".join(str(part) for part in (loc[1:] if top == "sources" else loc))
            where = f"key '{at}.{key}'" if key else f"key '{at}'"
            lines.append(f"{where}{'' if at == 'defaults' else f' ({source.name})'}: {_problem(item, EvalConfig)}")
        return lines

    @model_validator(mode="after")
    def _tables_outside_history(self):
        # A `**/*.parquet` read of REPORT_ROOT must find metrics.parquet files only.
        tables, history = self.tables_base.rstrip("/") + "/", self.report_root.rstrip("/") + "/"
        if tables.startswith(history) or history.startswith(tables):
            raise ValueError(f"tables_root {self.tables_base!r} and report_root {self.report_root!r} must not "
                             "contain one another (a read of the history would pick up the wide tables)")
        return self

    @field_validator("sources")
    @classmethod
    def _distinct_names(cls, value):
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be distinct, got {names}")
        return value
