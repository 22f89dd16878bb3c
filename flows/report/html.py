"""One self-contained HTML page from the report tables as written.

The page comes from a jinja2 template (``templates/report.html.j2``, autoescaped: a
class named ``<script>`` shows as text) and its charts are Vega-Lite specs built with
altair, drawn in the browser by vega-embed. The vega-embed bundle (Vega, Vega-Lite and
vega-embed, about 0.9 MB) is inlined from ``vl-convert-python``, which ships it: the
page makes no network request, opens from disk, an object store or a static server.
Tables are plain HTML (readable without JavaScript), sortable by clicking a header.

Each section appears only when its data exists: data problems and verdict, summary
cards, per-class and per-slice tables, forest plots, reliability diagram, confusion
matrix, footer (config, fingerprint, version, units, creation time).
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import jinja2
import pyarrow as pa

from xent_kernels import class_columns
from xent_kernels import slice_columns as slice_metrics

from ..metadata import (
    CONFIG_KEY, CREATED_AT_KEY, FINGERPRINT_KEY, INTEGRITY_KEY, INTERVALS_KEY, UNITS_KEY, VERSION_KEY,
)
from .tables import integrity_line, intervals_line

HTML_FILE = "report.html"
MAX_CLASSES = 50  # rows of the per-class table and forest plot (the worst CE first)
MAX_CONFUSION_CLASSES = 30  # rows and columns of the confusion heat map
TOP_CONFUSIONS = 10
CARD_METRICS = ("ce_mean", "accuracy", "ece", "brier", "auc", "f1_macro")
LABELS = {"n": "rows", "ce_mean": "mean CE", "ce_macro": "macro CE", "accuracy": "accuracy", "ece": "ECE",
          "brier": "Brier", "auc": "AUC", "f1_macro": "macro F1", "f1": "F1", "ce_std": "CE std",
          "p_true_mean": "mean p(true)", "entropy_mean": "mean entropy"}


def _decoded_metadata(table: pa.Table) -> dict[str, Any]:
    """The ``xent.*`` schema metadata of `table`, JSON values decoded."""
    decoded = {}
    for key, value in (table.schema.metadata or {}).items():
        if key.startswith(b"xent."):
            try:
                decoded[key.decode()] = json.loads(value)
            except ValueError:
                decoded[key.decode()] = value.decode()
    return decoded


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _cell(row: dict, name: str) -> dict[str, Any]:
    """A table cell: its text, its interval text and its sort key."""
    value, lo, hi = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")
    interval = f"[{_number(lo)}, {_number(hi)}]" if _finite(lo) and _finite(hi) else ""
    sort = value if _finite(value) else ("" if value is None or isinstance(value, float) else str(value))
    return {"text": _number(value), "interval": interval, "sort": sort}


def _class_label(row: dict, number: str = "class", name: str = "class_name") -> str:
    return str(row[number]) if row[name] == str(row[number]) else f"{row[number]} {row[name]}"


def _slice_label(row: dict, slice_by: list[str]) -> str:
    return ", ".join(f"{column}={row[column]}" for column in slice_by)


# --------------------------------------------------------------------------- charts


@functools.cache
def _altair():
    import altair as alt

    return alt


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float as None: JSON has no NaN, and ``JSON.parse`` fails on it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _spec(chart) -> dict:
    return _json_safe(chart.to_dict())


def _forest(rows: list[dict], label: str, units: str, title: str) -> dict:
    """CE with its interval per row (class or slice), the worst first."""
    alt = _altair()
    data = alt.Data(values=[{"label": r[label], "ce": r["ce_mean"],
                             "lo": r["ce_mean_lo"] if _finite(r.get("ce_mean_lo")) else r["ce_mean"],
                             "hi": r["ce_mean_hi"] if _finite(r.get("ce_mean_hi")) else r["ce_mean"],
                             "n": r["n"]} for r in rows if _finite(r["ce_mean"])])
    y = alt.Y("label:N", sort=None, title=None)
    base = alt.Chart(data).encode(y=y)
    rule = base.mark_rule().encode(x=alt.X("lo:Q", title=f"mean CE ({units})"), x2="hi:Q")
    point = base.mark_point(filled=True, size=40).encode(
        x="ce:Q", tooltip=[alt.Tooltip("label:N", title=title), alt.Tooltip("ce:Q", format=".4f"),
                           alt.Tooltip("lo:Q", format=".4f"), alt.Tooltip("hi:Q", format=".4f"),
                           alt.Tooltip("n:Q", format=",")])
    return _spec((rule + point).properties(width=520, height=alt.Step(16)))


def _reliability(overall: dict) -> dict:
    """Accuracy against mean confidence per bin, the diagonal, and the weight per bin."""
    alt = _altair()
    weights = overall["confidence_hist"]
    bins = len(weights)
    accuracy = overall.get("confidence_hist_accuracy")
    confidence = overall.get("confidence_hist_confidence")
    total = sum(weights) or 1.0
    rows = [{"lo": i / bins, "hi": (i + 1) / bins, "share": w / total, "weight": w,
             "accuracy": accuracy[i] if accuracy else None, "confidence": confidence[i] if confidence else None}
            for i, w in enumerate(weights)]
    data = alt.Data(values=rows)
    bars = alt.Chart(data).mark_rect(opacity=0.6, stroke="white").encode(
        x=alt.X("lo:Q", title="confidence (top probability)", scale=alt.Scale(domain=[0, 1])), x2="hi:Q",
        y=alt.Y("share:Q", title="share of weight"), y2=alt.datum(0),
        tooltip=[alt.Tooltip("lo:Q", title="from"), alt.Tooltip("hi:Q", title="to"),
                 alt.Tooltip("weight:Q", format=",.2f"), alt.Tooltip("share:Q", format=".3f")],
    ).properties(width=360, height=110)
    if not accuracy:
        return _spec(bars)
    diagonal = alt.Chart(alt.Data(values=[{"x": 0, "y": 0}, {"x": 1, "y": 1}])).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
    points = [r for r in rows if r["weight"] > 0 and r["accuracy"] is not None and math.isfinite(r["accuracy"])]
    curve = alt.Chart(alt.Data(values=points)).mark_line(point=True).encode(
        x=alt.X("confidence:Q", title="mean confidence", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("weight:Q", format=",.2f")])
    return _spec(alt.vconcat((diagonal + curve).properties(width=360, height=300), bars))


def _confusion(cells: list[dict], shown: list[str], units_note: str) -> dict:
    alt = _altair()
    data = alt.Data(values=cells)
    base = alt.Chart(data).encode(
        x=alt.X("predicted:N", sort=shown, title="predicted class"),
        y=alt.Y("true:N", sort=shown, title="true class"))
    heat = base.mark_rect().encode(
        color=alt.Color("share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title=units_note),
        tooltip=[alt.Tooltip("true:N"), alt.Tooltip("predicted:N"), alt.Tooltip("share:Q", format=".4f"),
                 alt.Tooltip("n:Q", format=",")])
    size = max(300, min(24 * len(shown), 720))
    return _spec(heat.properties(width=size, height=size))


# --------------------------------------------------------------------------- page data


def _problems(overall: dict, metadata: dict, bad_shards: pa.Table | None, summary_rows: list[dict],
              slice_by: list[str]) -> list[dict]:
    """Data problems, each as a headline and optional detail rows."""
    problems = []
    if overall.get("n_bad_shards"):
        rows = bad_shards.to_pylist() if bad_shards is not None else []
        problems.append({"id": "bad-shards",
                         "text": f"{overall['n_bad_shards']} bad shard(s) skipped ({overall.get('n_skipped') or 0:,} rows)",
                         "rows": [[r["file"], r["reason"], _number(r["rows"])] for r in rows],
                         "header": ["file", "reason", "rows"]})
    if overall.get("n_nonfinite"):
        problems.append({"id": "nonfinite", "text": f"{overall['n_nonfinite']:,} row(s) with non-finite predictions "
                         "were counted and left out"})
    integrity = metadata.get(INTEGRITY_KEY.decode())
    if isinstance(integrity, dict) and integrity.get("page_checksums_verified", 0) < integrity.get("files", 0):
        missing = integrity["files"] - integrity["page_checksums_verified"]
        problems.append({"id": "checksums", "text": f"{missing} of {integrity['files']} input file(s) without page "
                         "checksums: bit flips in them cannot be detected"})
    small = [_slice_label(r, slice_by) for r in summary_rows if not r["overall"] and r.get("small_slice")]
    if small:
        problems.append({"id": "small-slices", "text": f"{len(small)} small slice(s): {', '.join(small)}"})
    return problems


def render_html(tables: dict[str, pa.Table], *, title: str | None = None, max_classes: int = MAX_CLASSES) -> str:
    """The report as one self-contained HTML page.

    Parameters
    ----------
    tables
        The report tables as written (``Report.to_arrow()`` or the Parquet files of a
        report folder): ``summary`` and ``per_class`` with their ``xent.*`` metadata,
        and ``confusion`` and ``bad_shards`` when the report has them.
    title
        The page title (default: "xent report").
    max_classes
        Classes shown in the per-class table and forest plot, the worst mean CE first;
        the page says how many are left out.

    Returns
    -------
    str
        The HTML page; it loads nothing from the network.
    """
    summary = tables["summary"]
    metadata = _decoded_metadata(summary)
    units = metadata.get(UNITS_KEY.decode(), "nats")
    summary_rows = summary.to_pylist()
    columns = summary.column_names
    slice_by = columns[: columns.index("overall")]  # slice key columns come first
    overall = next(r for r in summary_rows if r["overall"])
    slices = [r for r in summary_rows if not r["overall"]]

    def units_of(name: str) -> str:
        return f" ({units})" if name.startswith(("ce_", "entropy")) else ""

    cards = [{"metric": "n", "label": "rows", "text": _number(overall["n"]), "value": overall["n"], "interval": ""}]
    for name in CARD_METRICS:
        if name in overall and _finite(overall[name]):
            cell = _cell(overall, name)
            cards.append({"metric": name, "label": LABELS.get(name, name) + units_of(name), "text": cell["text"],
                          "value": repr(overall[name]), "interval": cell["interval"]})

    page: dict[str, Any] = {"title": title or "xent report", "units": units, "cards": cards, "charts": []}
    page["problems"] = _problems(overall, metadata, tables.get("bad_shards"), summary_rows, slice_by)

    per_class = tables.get("per_class")
    class_rows = [r for r in per_class.to_pylist() if r["overall"]] if per_class is not None else []
    page["n_classes"] = len(class_rows)
    for row in class_rows:
        row["label"] = _class_label(row)
    worst = sorted(class_rows, key=lambda r: -r["ce_mean"] if _finite(r["ce_mean"]) else math.inf)[:max_classes]
    if class_rows:
        metrics = [c for c in class_columns(headline=True) if c in per_class.column_names]
        page["class_table"] = {
            "header": [("class", "num", ""), ("name", "text", ""), ("n", "num", "")]
                      + [(LABELS.get(m, m) + units_of(m), "num", m) for m in metrics],
            "rows": [[{"text": str(r["class"]), "sort": r["class"], "interval": ""},
                      {"text": r["class_name"], "sort": r["class_name"], "interval": ""}, _cell(r, "n")]
                     + [_cell(r, m) for m in metrics] for r in worst],
            "left_out": len(class_rows) - len(worst),
        }
        page["charts"].append({"id": "forest-classes", "section": "forest",
                               "title": f"Mean CE per class ({units}), the worst {len(worst)}",
                               "spec": _forest(worst, "label", units, "class")})
    if slices:
        metrics = [c for c in slice_metrics(headline=True) if c in columns]
        page["slice_table"] = {
            "header": [(c, "text", "") for c in slice_by] + [("n", "num", "")]
                      + [(LABELS.get(m, m) + units_of(m), "num", m) for m in metrics],
            "rows": [[{"text": _number(r[c]), "sort": str(r[c]), "interval": ""} for c in slice_by] + [_cell(r, "n")]
                     + [_cell(r, m) for m in metrics] for r in slices],
        }
        for row in slices:
            row["label"] = _slice_label(row, slice_by)
        ranked = sorted(slices, key=lambda r: -r["ce_mean"] if _finite(r["ce_mean"]) else math.inf)
        page["charts"].append({"id": "forest-slices", "section": "forest",
                               "title": f"Mean CE per slice ({units})", "spec": _forest(ranked, "label", units, "slice")})
    if overall.get("confidence_hist") and sum(overall["confidence_hist"]) > 0:
        page["reliability"] = {"has_accuracy": bool(overall.get("confidence_hist_accuracy")),
                               "ece": _cell(overall, "ece") if "ece" in overall else None}
        page["charts"].append({"id": "reliability-chart", "section": "reliability", "title": "",
                               "spec": _reliability(overall)})
    confusion = tables.get("confusion")
    if confusion is not None and confusion.num_rows and class_rows:
        page["confusion"] = _confusion_section(confusion, class_rows, worst)
        page["charts"].append({"id": "confusion-chart", "section": "confusion", "title": "",
                               "spec": page["confusion"].pop("spec")})
    page["footer"] = _footer(metadata)
    return _template().render(page=page, vega_script=vega_embed_script())


def _confusion_section(confusion: pa.Table, class_rows: list[dict], worst: list[dict]) -> dict[str, Any]:
    cells = [r for r in confusion.to_pylist() if r["overall"]]
    labels = {r["class"]: r["label"] for r in class_rows}
    for cell in cells:
        for side in ("true", "predicted"):
            labels.setdefault(cell[side], _class_label(cell, side, f"{side}_name"))
    totals: dict[int, float] = {}
    for cell in cells:
        totals[cell["true"]] = totals.get(cell["true"], 0.0) + cell["weight"]
    shown_ids = [r["class"] for r in (class_rows if len(class_rows) <= MAX_CONFUSION_CLASSES else worst)]
    shown_ids = sorted(shown_ids[:MAX_CONFUSION_CLASSES])
    shown = set(shown_ids)
    heat = [{"true": labels[c["true"]], "predicted": labels[c["predicted"]], "n": c["n"],
             "share": c["weight"] / totals[c["true"]] if totals[c["true"]] else 0.0}
            for c in cells if c["true"] in shown and c["predicted"] in shown]
    off = sorted((c for c in cells if c["true"] != c["predicted"]), key=lambda c: -c["weight"])[:TOP_CONFUSIONS]
    top = [{"true": labels[c["true"]], "predicted": labels[c["predicted"]], "n": _number(c["n"]),
            "weight": _number(c["weight"]),
            "share": _number(c["weight"] / totals[c["true"]] if totals[c["true"]] else math.nan)} for c in off]
    return {"spec": _confusion(heat, [labels[c] for c in shown_ids], "share of the true class"),
            "shown": len(shown_ids), "total": len(class_rows), "top": top}


def _footer(metadata: dict[str, Any]) -> dict[str, Any]:

    footer: dict[str, Any] = {
        "version": metadata.get(VERSION_KEY.decode()), "created_at": metadata.get(CREATED_AT_KEY.decode()),
        "units": metadata.get(UNITS_KEY.decode()),
    }
    intervals = metadata.get(INTERVALS_KEY.decode())
    if isinstance(intervals, dict):
        footer["intervals"] = intervals_line(intervals)
    integrity = metadata.get(INTEGRITY_KEY.decode())
    if isinstance(integrity, dict):
        footer["integrity"] = integrity_line(integrity)
    fingerprint = metadata.get(FINGERPRINT_KEY.decode())
    if fingerprint is not None:
        footer["fingerprint"] = json.dumps(fingerprint, indent=1, sort_keys=True)
        if isinstance(fingerprint, dict):
            footer["digest"] = fingerprint.get("digest")
            footer["n_files"] = fingerprint.get("n_files")
    config = metadata.get(CONFIG_KEY.decode())
    if config is not None:
        footer["config"] = json.dumps(config, indent=1, sort_keys=True)
    return footer


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("flows.report", "templates"), autoescape=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    return environment.get_template("report.html.j2")


def _vega_lite_version() -> str:
    return _altair().SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]


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

