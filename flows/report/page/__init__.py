"""One self-contained HTML page from the report tables as written.

The page comes from a jinja2 template (``templates/report.html.j2``, autoescaped: a
class named ``<script>`` shows as text; one partial per section under
``templates/sections/``) and its charts are Vega-Lite specs built with altair, drawn in
the browser by vega-embed. The vega-embed bundle (Vega, Vega-Lite and vega-embed,
about 0.9 MB) is inlined from ``vl-convert-python``, which ships it: the page makes no
network request, opens from disk, an object store or a static server. Tables are plain
HTML (readable without JavaScript), sortable by clicking a header.

Each section appears only when its data exists. One module per concern fills the
`Page`: ``evaluation`` (summary, per_class, confusion, bad_shards), ``nightly`` (a
nightly run: changes since the previous run, gates), ``drift`` (drift,
drift_distributions), ``compare`` (compare), ``token_compare`` (compare and
compare_tokens of token dumps), ``history`` (trends over run dates; also
the history page, `render_history_html`), then the footer.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ...metadata import (
    CONFIG_KEY, CREATED_AT_KEY, FINGERPRINT_KEY, INTEGRITY_KEY, INTERVALS_KEY, UNITS_KEY, VERSION_KEY, WARNINGS_KEY,
    decoded_metadata,
)
from ..tables import integrity_line, intervals_line
from . import compare, drift, evaluation, nightly, token_compare, tokens
from . import history as trends
from .common import Page, template, vega_embed_script
from .history import MAX_DATES

__all__ = ["HTML_FILE", "MAX_CLASSES", "MAX_DATES", "PAGE_TABLES", "render_history_html", "render_html", "vega_embed_script"]

HTML_FILE = "report.html"
MAX_CLASSES = 50  # rows of the per-class table and forest plot (the worst CE first)
# The tables a page can show, in the order their metadata is looked for.
PAGE_TABLES = ("summary", "per_class", "confusion", "bad_shards", "drift", "drift_distributions", "compare",
               "compare_tokens", "token_summary", "token_positions", "token_frequency", "per_token")


def render_html(tables: dict[str, pa.Table], *, title: str | None = None, max_classes: int = MAX_CLASSES,
                history: pa.Table | None = None, max_dates: int = MAX_DATES) -> str:
    """The report as one self-contained HTML page.

    Parameters
    ----------
    tables
        The report tables as written (``Report.to_arrow()`` or the Parquet files of a
        report folder): ``summary`` and ``per_class`` with their ``xent.*`` metadata,
        and ``confusion`` and ``bad_shards`` when the report has them; ``drift`` (with
        ``drift_distributions``) for a drift report; ``compare`` for ``xent compare``
        (with ``compare_tokens`` for token dumps); ``token_summary``,
        ``token_positions``, ``token_frequency`` and ``per_token`` for a token report.
    title
        The page title (default: "xent nightly: SOURCE on DATE" for a nightly run, named
        by the tables' ``xent.nightly`` metadata; else "xent report", or "xent token
        report", "xent drift report", "xent compare report" or "xent token compare
        report" for those alone).
    max_classes
        Classes shown in the per-class table and forest plot, the worst mean CE first
        (for a comparison, the largest CE increase); the page says how many are left out.
    history
        For a nightly run: its source's history up to and including this run
        (:func:`flows.runs.nightly.read_history` rows). The cards then show the change
        since the previous run, the gate section its limits, and a history section the
        trends over the latest `max_dates` run dates. The run is named by the tables'
        ``xent.nightly`` metadata, else it is the history's latest date.
    max_dates
        Run dates drawn in the history section, the latest; the page says how many
        earlier ones are left out.

    Returns
    -------
    str
        The HTML page; it loads nothing from the network.
    """
    described = next((tables[name] for name in PAGE_TABLES if name in tables), None)
    if described is None:
        raise ValueError(f"no table to show: expected one of {', '.join(PAGE_TABLES)}, got {', '.join(tables) or 'none'}")
    metadata = decoded_metadata(described)
    tokens_compared = "compare" in tables and token_compare.is_token_compare(tables["compare"])
    default_title = (nightly.title(metadata) or "xent report" if "summary" in tables
                     else nightly.title(metadata) or "xent token report" if "token_summary" in tables
                     else "xent token compare report" if tokens_compared
                     else "xent compare report" if "compare" in tables else "xent drift report")
    page = Page(title=title or default_title, units=metadata.get(UNITS_KEY.decode(), "nats"), metadata=metadata)
    page.warnings = [w for w in metadata.get(WARNINGS_KEY.decode()) or [] if isinstance(w, dict)]  # older: none
    if "summary" in tables:
        evaluation.build(tables, page, max_classes)
        nightly.build(tables, page, history)  # a nightly run's changes and gates, if it is one
    if "drift" in tables:
        drift.build(tables, page, max_classes)
    if tokens_compared:
        token_compare.build(tables, page)
    elif "compare" in tables:
        compare.build(tables, page, max_classes)
    if "token_summary" in tables:
        tokens.build(tables, page)
        nightly.build(tables, page, history)
    if history is not None:
        source, run_date = nightly.run_of(page, history)
        trends.build(page, history, source=source, up_to=run_date, max_dates=max_dates, units=True)
    if "summary" in tables or "compare" in tables or "token_summary" in tables:
        page.subtitle.append(f"cross-entropy in {page.units}")
    page.sections["footer"] = _footer(metadata)
    if not {"summary", "compare", "token_summary"} & set(tables):  # a drift report reads no intervals
        page.sections["footer"].pop("intervals", None)
    return template().render(page=page, vega_script=vega_embed_script())


def render_history_html(history: pa.Table, *, title: str | None = None, root: str | None = None,
                        max_dates: int = MAX_DATES) -> str:
    """The history page: trends of every source and slice over run dates, breached runs
    marked, each source's latest verdict at the top.

    Parameters
    ----------
    history
        :func:`flows.runs.nightly.read_history` of a nightly REPORT_ROOT.
    title
        The page title (default: "xent nightly history").
    root
        The REPORT_ROOT read, named in the footer.
    max_dates
        Run dates drawn, the latest; the page says how many earlier ones are left out.
    """
    page = Page(title=title or "xent nightly history")
    if history.num_rows:
        shown, left_out = trends.window(history, max_dates)
        dates = shown.column("run_date")
        sources = sorted(set(history.column("source").to_pylist()))
        page.subtitle.append(f"{len(sources)} source(s) from {trends.day(pc.min(dates).as_py())} to "
                             f"{trends.day(pc.max(dates).as_py())}"
                             + (f" ({left_out} earlier run date(s) left out)" if left_out else ""))
        trends.latest_verdicts(page, history)
        trends.build(page, history, max_dates=max_dates)
    else:
        page.subtitle.append("no runs yet")
    lines = [f"history: {root}/run_date=*/source=*/metrics.parquet"] if root else []
    page.sections["footer"] = {"lines": lines + ["CE in each run's units (nats unless a source's config says bits)"]}
    return template().render(page=page, vega_script=vega_embed_script())


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
