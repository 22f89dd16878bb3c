"""Validated run configuration: pydantic models loaded from YAML, overridden by flags.

A bad config fails here, before any data is read, naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UsageError

Kind = Literal["logits", "probs", "log_probs"]
DEFAULT_PRED_COL: dict[str, str] = {"logits": "logits", "probs": "probs", "log_probs": "log_probs"}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    id_col: str = Field("id", description="Row id, used to join dumps for per-sample drift.")
    slice_by: list[str] = Field(default_factory=list, description="Columns (or hive folder keys) to slice by.")
    classes: list[str] | None = Field(None, description="Class names in index order.")
    n_classes: int | None = Field(None, ge=2, description="Class count, when no class list is given.")
    units: Literal["nats", "bits"] = "nats"
    scheduler: str | None = Field(None, description="Address of an existing Dask scheduler.")
    on_bad_shard: Literal["error", "skip"] = "error"
    on_nonfinite: Literal["error", "count"] = Field(
        "error", description="NaN/inf predictions: fail, or count the rows and leave them out."
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. S3 endpoint.")
    n_bins: int = Field(15, ge=1, le=1000, description="Confidence histogram bins (ECE).")
    task_rows: int = Field(4_000_000, ge=1, description="Rows per Dask task, for files split by row group.")
    batch_logits: int = Field(8_000_000, ge=1, description="Prediction values read at a time within a task.")
    split_every: int = Field(8, ge=2, description="Fan-in of the tree reduction.")

    @field_validator("slice_by", mode="before")
    @classmethod
    def _split_commas(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


Model = TypeVar("Model", bound=BaseModel)


def describe_validation_error(error: ValidationError, where: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{where}: key '{key}': {item['msg']}")
    return "\n".join(lines)


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
        raise UsageError(describe_validation_error(error, where)) from None


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
