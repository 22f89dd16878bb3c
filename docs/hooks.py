"""MkDocs hook: the reference pages, written from the code when the site is built.

A page holds a marker such as ``<!-- xent:generate statistics -->``; the hook replaces it
with Markdown made from the statistics table (``xent_kernels.statistics.STATISTICS``),
the pydantic config models (``flows.config``) or the argument parser
(``flows.cli.commands.build_parser``), so the reference never drifts from the code.
The same functions are called by ``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# A marker stands alone on its line (one quoted in a sentence is left as it is).
MARKER = re.compile(r"^<!-- xent:generate (\w+) -->$", re.M)


def _cell(text: Any) -> str:
    """`text` safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- statistics


def _range(low: float, high: float) -> str:
    if math.isinf(low) and math.isinf(high):
        return ""
    high_text = "∞)" if math.isinf(high) else f"{high:g}]"
    return f"[{low:g}, {high_text}"


def statistics_markdown() -> str:
    """Every column of ``per_class.parquet`` and ``summary.parquet`` (and every
    ``ClassReport`` array), from the statistics table."""
    from flows.drift_statistics import DRIFT_COLUMNS, DRIFT_STATISTICS
    from xent_kernels.statistics import STATISTICS

    better = {1: "higher", -1: "lower", 0: ""}
    rows = []
    for s in STATISTICS:
        tables = [name for name, rule in (("per_class", s.per_class), ("summary", s.per_slice)) if rule is not None]
        units = "nats or bits (`units`)" if s.units == "information" else ("count" if s.role == "count" else "")
        interval = ("DeLong" if s.standard_error else "jackknife") if s.interval else ""
        where = ", ".join(tables) if s.role != "array" else "`ClassReport` array"
        rows.append([f"`{s.name}`", where, s.description, units, interval, _range(*s.clip), better[s.better],
                     "with a reference prediction only" if s.reference_only else ""])
    statistics = _table(["column", "table", "meaning", "units", "interval `_lo`/`_hi`", "range", "better", "note"], rows)
    drift = _table(["metric", "meaning", "units", "rows", "note"], [
        [f"`{s.name}`", s.description, "nats or bits (`units`)" if s.units == "information" else "count",
         "overall" if s.overall_only else "per slice and overall" + (", per class" if s.per_class else ""),
         "; ".join(note for note, applies in (("thresholds apply", s.role == "metric"),
                                              ("with `drift.per_sample` only", s.per_sample)) if applies)]
        for s in DRIFT_STATISTICS])
    columns = _table(["column", "meaning"], [[f"`{name}`", text] for name, (_, text) in DRIFT_COLUMNS.items()])
    return (
        "### Report columns\n\nFrom `xent_kernels.statistics.STATISTICS`: one row per statistic. "
        "A metric with an interval also has the columns `<name>_lo` and `<name>_hi`, clipped to its range.\n\n"
        f"{statistics}\n\n### Drift metrics\n\nFrom `flows.drift_statistics.DRIFT_STATISTICS`, the values "
        "of the `metric` column of `drift.parquet`; thresholds apply to the divergences (see the drift guide for "
        f"their definitions).\n\n{drift}\n\nThe columns of `drift.parquet` after the slice columns:\n\n{columns}\n"
    )


# --------------------------------------------------------------------------- config


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "date": "date",
                "NoneType": "null"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _constraints(field) -> str:
    words = {"Ge": "≥", "Gt": ">", "Le": "≤", "Lt": "<", "MinLen": "length ≥", "MaxLen": "length ≤"}
    parts = []
    for item in field.metadata:
        name = type(item).__name__
        if name in words:
            value = getattr(item, dataclasses.fields(item)[0].name)
            parts.append(f"{words[name]} {value}")
    return ", ".join(parts)


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return f"see {type(value).__name__}" if isinstance(value, BaseModel) else f"`{value!r}`"
    if field.default is PydanticUndefined:
        return "required"
    return "`null`" if field.default is None else f"`{field.default!r}`"


CONFIG_MODELS = (
    ("EvalConfig", "`xent eval` (`configs/adhoc.yaml`); also the reading settings of drift, compare and each "
     "nightly source (`defaults`, `settings`)."),
    ("TokenColumns", "The `tokens:` mapping of any config with `kind: tokens` (language-model token dumps)."),
    ("DriftConfig", "`xent drift` (`configs/drift.yaml`): every EvalConfig key, plus these."),
    ("JoinSettings", "How two dumps' rows are joined: keys of `drift:` and `compare:`."),
    ("DriftSettings", "The `drift:` mapping of a drift or nightly config: the join keys, plus these."),
    ("SliceThresholds", "An entry of `drift.slice_thresholds`."),
    ("CompareConfig", "`xent compare` (`configs/compare.yaml`): every EvalConfig key, plus these."),
    ("CompareSettings", "The `compare:` mapping: the join keys, plus these."),
    ("Gate", "An entry of `gate` (compare and nightly)."),
    ("NightlyConfig", "`xent nightly` and `xent serve` (`configs/nightly.yaml`)."),
    ("NightlySource", "An entry of `sources` in a nightly config."),
    ("Schedule", "The `schedule:` mapping of a nightly config."),
)


def config_markdown() -> str:
    """Every config key with its type, default and description, from the pydantic models."""
    from flows import config

    parts = []
    for name, where in CONFIG_MODELS:
        model: type[BaseModel] = getattr(config, name)
        parents = [base for base in model.__mro__[1:] if isinstance(base, type) and issubclass(base, BaseModel)]
        inherited = set().union(*(base.model_fields for base in parents)) if parents else set()
        doc = " ".join((model.__doc__ or "").split())
        rows = [[f"`{key}`", _type_name(field.annotation), _constraints(field), _default(field), field.description or ""]
                for key, field in model.model_fields.items() if key not in inherited]
        parts.append(f"### {name}\n\n{where} {doc}\n\n" + _table(["key", "type", "limits", "default", "meaning"], rows))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------- command line


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def _options(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.choices:
            value = " | ".join(str(c) for c in action.choices)
        elif action.nargs == 0:
            value = ""
        else:
            value = action.metavar or action.dest.upper()
            value += " ..." if action.nargs in ("+", "*") else ""
        default = "" if action.default in (None, False, argparse.SUPPRESS) or action.required else f"`{action.default}`"
        rows.append([name, value, "required" if action.required else default, action.help or ""])
    return _table(["option", "value", "default", "meaning"], rows)


def cli_markdown() -> str:
    """Every command and option of `xent`, and the exit codes, from the argument parser."""
    from flows.cli.commands import build_parser
    from flows.errors import EXIT_CODES_HELP

    parser = build_parser()
    usage = parser.format_usage().strip().removeprefix("usage: ")
    parts = [f"### xent\n\n{parser.description}\n\n```text\n{usage}\n```\n\n{_options(parser)}"]
    for name, (summary, sub) in _subcommands(parser).items():
        usage = sub.format_usage().strip().removeprefix("usage: ")
        parts.append(f"### xent {name}\n\n{summary}\n\n```text\n{usage}\n```\n\n{_options(sub)}")
    codes = EXIT_CODES_HELP.removeprefix("exit codes: ")
    parts.append("### Exit codes, as `xent --help` lists them\n\n"
                 + "\n".join(f"- {part}" for part in re.split(r", (?=\d )", codes)))
    return "\n\n".join(parts) + "\n"


GENERATORS = {"statistics": statistics_markdown, "config": config_markdown, "cli": cli_markdown}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each ``<!-- xent:generate NAME -->`` marker with its generated Markdown."""

    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_uri}: unknown generated section {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)
