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

LABELS = {"n": "rows", "ce_mean": "mean CE", "ce_macro": "macro CE", "accuracy": "accuracy", "ece": "ECE",
          "brier": "Brier", "auc": "AUC", "f1_macro": "macro F1", "f1": "F1", "ce_std": "CE std",
          "p_true_mean": "mean p(true)", "entropy_mean": "mean entropy"}


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

    def chart(self, chart_id: str, section: str, spec: dict, title: str = "") -> None:
        self.charts.append({"id": chart_id, "section": section, "title": title, "spec": spec})

    def units_of(self, name: str) -> str:
        """' (nats)' for metrics in the report's units (CE, entropy, divergences), else ''."""
        return f" ({self.units})" if name.startswith(("ce_", "entropy", "kl")) or name.endswith(("_kl", "_js")) else ""


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
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


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


def class_text(index: int, name: str | None) -> str:
    """A class as shown: its index, then its name unless the name is the index (or unknown)."""
    return str(index) if name is None or name == str(index) else f"{index} {name}"


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


def interval_plot(rows: list[dict], *, value: str, lo: str, hi: str, label: str, axis: str, tooltip_title: str,
                  zero_rule: bool = False, color: str | None = None, colors: dict[str, str] | None = None) -> dict:
    """A forest plot: each row's value as a point and its interval as a rule, in the
    order given; with `zero_rule` a dashed line at 0 (for differences); with `color`
    the points are coloured by that field, with `colors` ({value: CSS colour}) fixed."""
    alt = altair()
    values = [{"label": r[label], "value": r[value], "lo": r[lo] if finite(r.get(lo)) else r[value],
               "hi": r[hi] if finite(r.get(hi)) else r[value], "n": r.get("n"),
               **({"color": r[color]} if color else {})} for r in rows if finite(r.get(value))]
    base = alt.Chart(alt.Data(values=values)).encode(y=alt.Y("label:N", sort=None, title=None))
    rule = base.mark_rule().encode(x=alt.X("lo:Q", title=axis), x2="hi:Q")
    tooltip = [alt.Tooltip("label:N", title=tooltip_title), alt.Tooltip("value:Q", format=".4f", title=axis),
               alt.Tooltip("lo:Q", format=".4f"), alt.Tooltip("hi:Q", format=".4f"), alt.Tooltip("n:Q", format=",")]
    point = base.mark_point(filled=True, size=40).encode(x="value:Q", tooltip=tooltip)
    if color:
        scale = alt.Scale(domain=list(colors), range=list(colors.values())) if colors else alt.Undefined
        point = point.encode(color=alt.Color("color:N", title=None, scale=scale))
    layers = [rule, point]
    if zero_rule:
        layers.insert(0, alt.Chart(alt.Data(values=[{"x": 0}])).mark_rule(strokeDash=[4, 4], color="gray")
                      .encode(x="x:Q"))
    return spec(alt.layer(*layers).properties(width=520, height=alt.Step(16)))


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


@functools.cache
def vega_embed_script() -> str:
    """The vega-embed bundle (Vega, Vega-Lite, vega-embed) for altair's Vega-Lite
    version, from vl-convert-python. Building it takes about 3 s, so it is kept in
    ``$XDG_CACHE_HOME/xent`` (default ``~/.cache/xent``) per vl-convert version."""
    import vl_convert

    version = _vega_lite_version()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xent"
    path = cache / f"vega-embed-vl{version}-vlc{vl_convert.__version__}.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    script = vl_convert.javascript_bundle(vl_version=version)
    try:  # a cache that cannot be written only costs the next render 3 s
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(script, encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass
    return script
