"""What every section of the page shares: the `Page` it fills, number formatting,
table cells, altair, the template and the inlined vega-embed bundle."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from xent_kernels import STATISTIC, STATISTICS

from ...drift_statistics import DRIFT_STATISTIC, DRIFT_STATISTICS
from ..text import class_text

LABELS = {s.name: s.label for s in (*STATISTICS, *DRIFT_STATISTICS) if s.label}  # page names by column


def in_information_units(name: str) -> bool:
    """Whether the statistic or drift statistic `name` is in the report's units (nats or bits)."""
    declared = STATISTIC.get(name) or DRIFT_STATISTIC.get(name)
    return declared is not None and declared.units == "information"


@dataclass
class Page:
    """What the template draws: each builder adds its sections, charts and breaches."""

    title: str
    units: str = "nats"
    metadata: dict[str, Any] = field(default_factory=dict)
    subtitle: list[str] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)  # data problems: {id, text[, header, rows]}
    breaches: list[dict[str, Any]] = field(default_factory=list)  # failed thresholds and gates: {kind, text}
    checks: list[str] = field(default_factory=list)  # what was checked and passed, one line each
    warnings: list[dict[str, Any]] = field(default_factory=list)  # the report's xent.warnings: {id, text, ...}
    sections: dict[str, Any] = field(default_factory=dict)  # section id -> its template data
    charts: list[dict[str, Any]] = field(default_factory=list)

    def chart(self, chart_id: str, section: str, spec: dict, title: str = "", nonfinite: list[str] | None = None) -> None:
        """Add a chart; `nonfinite` names what it draws at an axis edge (`nonfinite_rows`)."""
        self.charts.append({"id": chart_id, "section": section, "title": title, "spec": spec,
                            "nonfinite": nonfinite_note(nonfinite or [])})

    def units_of(self, name: str) -> str:
        """' (nats)' for metrics in the report's units (CE, entropy, divergences), else ''."""
        return f" ({self.units})" if in_information_units(name) else ""


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else nonfinite_text(value)
    return str(value)


def nonfinite_text(value: float) -> str:
    """How a non-finite value is shown everywhere: ``∞``, ``−∞`` or ``nan``."""
    return "nan" if math.isnan(value) else "∞" if value > 0 else "−∞"


def largest_first(value: Any) -> float:
    """Sort key: the largest value first (∞ before every finite value), NaN and None last."""
    if isinstance(value, (int, float)) and not math.isnan(value):
        return -value
    return math.inf


def signed(value: Any, digits: int = 4) -> str:
    return f"{value:+.{digits}f}" if finite(value) else number(value, digits)


def cell(row: dict, name: str, lo: str | None = None, hi: str | None = None, text=number) -> dict[str, Any]:
    """A table cell: its text, its interval text and its sort key. The interval is
    ``<name>_lo``/``<name>_hi`` unless other columns are named."""
    value, low, high = row.get(name), row.get(lo or f"{name}_lo"), row.get(hi or f"{name}_hi")
    interval = f"[{text(low)}, {text(high)}]" if finite(low) and finite(high) else ""
    sort = value if finite(value) else ("" if value is None or isinstance(value, float) else str(value))
    return {"text": text(value), "interval": interval, "sort": sort}


def text_cell(value: Any) -> dict[str, Any]:
    return {"text": number(value), "interval": "", "sort": "" if value is None else str(value)}


def class_label(row: dict, number_column: str = "class", name: str = "class_name") -> str:
    return class_text(row[number_column], row[name])


def slice_label(row: dict, slice_by: list[str]) -> str:
    return ", ".join(f"{column}={row[column]}" for column in slice_by)


# --------------------------------------------------------------------------- charts


@functools.cache
def altair():
    import altair as alt

    return alt


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as None: JSON has no NaN, and ``JSON.parse`` fails on it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def spec(chart) -> dict:
    return json_safe(chart.to_dict())


MAX_NAMED = 12  # non-finite values named under a chart; the note counts the rest
EDGE_COLOR = "#b71c1c"


def nonfinite_rows(rows: list[dict], value: str, name) -> tuple[list[dict], list[str]]:
    """`rows` ready for a chart whose `value` may be inf or NaN (JSON has neither): each
    non-finite value becomes None with its text in ``nonfinite`` (drawn by `edge_marks`),
    rows without a value are left out; and "NAME (∞)" for each non-finite row, `name(row)`
    naming it, for the note under the chart."""
    out, named = [], []
    for row in rows:
        v = row.get(value)
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            row = {**row, value: None, "nonfinite": nonfinite_text(v)}
            named.append(f"{name(row)} ({row['nonfinite']})")
        out.append(row)
    return out, named


def nonfinite_note(named: list[str]) -> str:
    if not named:
        return ""
    more = f" and {len(named) - MAX_NAMED} more" if len(named) > MAX_NAMED else ""
    return f"Not finite, drawn at the axis edge: {', '.join(named[:MAX_NAMED])}{more}."


def edge_marks(rows: list[dict], axis: str, **encoding) -> list:
    """Layers (inheriting the chart's data) that draw each row's non-finite value (its
    ``nonfinite`` text from `nonfinite_rows`) at the edge of the value `axis` ("x" or
    "y"): ∞ at the high end, −∞ and nan at the low end, as a red triangle and its text.
    `encoding` places the row on the other axis (and its tooltip)."""
    alt = altair()
    layers = []
    for text in sorted({r["nonfinite"] for r in rows if "nonfinite" in r}):
        high = text == "∞"
        if axis == "x":
            position = {"x": alt.value("width" if high else 0)}
            shape, offset = ("triangle-right", {"dx": -9, "align": "right"}) if high else (
                "triangle-left", {"dx": 9, "align": "left"})
        else:
            position = {"y": alt.value(0 if high else "height")}
            shape, offset = ("triangle-up", {"dy": 11, "baseline": "top"}) if high else (
                "triangle-down", {"dy": -11, "baseline": "bottom"})
        base = alt.Chart().transform_filter(alt.datum.nonfinite == text).encode(**position, **encoding)
        layers += [base.mark_point(shape=shape, filled=True, size=70, color=EDGE_COLOR, opacity=1),
                   base.mark_text(text=text, color=EDGE_COLOR, fontWeight="bold", fontSize=13, **offset)]
    return layers


def value_axis(title: str):
    """A quantitative axis whose labels never run together (at most about one per 60 px)."""
    alt = altair()
    return alt.Axis(title=title, labelOverlap=True, labelSeparation=6, labelFlush=True,
                    tickCount={"expr": "ceil(width / 60)"})


def interval_plot(rows: list[dict], *, value: str, lo: str, hi: str, label: str, axis: str, tooltip_title: str,
                  zero_rule: bool = False, color: str | None = None,
                  colors: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    """A forest plot: each row's value as a point and its interval as a rule, in the
    order given; with `zero_rule` a dashed line at 0 (for differences); with `color`
    the points are coloured by that field, with `colors` ({value: CSS colour}) fixed.
    Returns the spec and the note's names of the rows whose value is not finite."""
    alt = altair()
    values = [{"label": r[label], "value": r[value], "lo": r[lo] if finite(r.get(lo)) else r[value],
               "hi": r[hi] if finite(r.get(hi)) else r[value], "n": r.get("n"),
               **({"color": r[color]} if color else {})} for r in rows]
    values, named = nonfinite_rows(values, "value", lambda r: f"{tooltip_title} {r['label']}")
    for row in values:
        if "nonfinite" in row:
            row["lo"] = row["hi"] = None
    y = alt.Y("label:N", sort=[r["label"] for r in values], title=None)  # non-finite rows in their place too
    base = alt.Chart().encode(y=y)
    rule = base.mark_rule().encode(x=alt.X("lo:Q", axis=value_axis(axis)), x2="hi:Q")
    tooltip = [alt.Tooltip("label:N", title=tooltip_title), alt.Tooltip("value:Q", format=".4f", title=axis),
               alt.Tooltip("lo:Q", format=".4f"), alt.Tooltip("hi:Q", format=".4f"), alt.Tooltip("n:Q", format=",")]
    point = base.mark_point(filled=True, size=40).encode(x="value:Q", tooltip=tooltip)
    if color:
        scale = alt.Scale(domain=list(colors), range=list(colors.values())) if colors else alt.Undefined
        point = point.encode(color=alt.Color("color:N", title=None, scale=scale))
    layers = [rule, point, *edge_marks(values, "x", y=y, tooltip=[alt.Tooltip("label:N", title=tooltip_title),
                                                                  alt.Tooltip("nonfinite:N", title=axis)])]
    if zero_rule:
        layers.insert(0, alt.Chart(alt.Data(values=[{"x": 0}])).mark_rule(strokeDash=[4, 4], color="gray")
                      .encode(x="x:Q"))
    chart = alt.layer(*layers, data=alt.Data(values=values)).properties(width=520, height=alt.Step(16))
    return spec(chart), named


# --------------------------------------------------------------------------- template and bundle


@functools.cache
def template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flows.report.page", "templates"), autoescape=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2")


def _vega_lite_version() -> str:
    return altair().SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]


def vega_embed_path() -> Path:
    """Where the vega-embed bundle is kept: ``$XDG_CACHE_HOME/xent`` (default
    ``~/.cache/xent``), one file per Vega-Lite and vl-convert version."""
    import vl_convert

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xent"
    return cache / f"vega-embed-vl{_vega_lite_version()}-vlc{vl_convert.__version__}.js"


@functools.cache
def vega_embed_script() -> str:
    """The vega-embed bundle (Vega, Vega-Lite, vega-embed) for altair's Vega-Lite
    version, from vl-convert-python. Building it takes about 2 s, so it is kept at
    `vega_embed_path` (``xent warmup`` builds it ahead)."""
    import vl_convert

    path = vega_embed_path()
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    script = vl_convert.javascript_bundle(vl_version=_vega_lite_version())
    try:  # a cache that cannot be written only costs the next render 2 s
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(script, encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass
    return script
