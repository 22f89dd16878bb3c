"""One self-contained HTML page from the report tables as written.

The page comes from a jinja2 template (``templates/report.html.j2``, autoescaped: a
class named ``<script>`` shows as text; one partial per section under
``templates/sections/``) and its charts are Vega-Lite specs built with altair, drawn in
the browser by vega-embed. The vega-embed bundle (Vega, Vega-Lite and vega-embed,
about 0.9 MB) is inlined from ``vl-convert-python``, which ships it: the page makes no
network request, opens from disk, an object store or a static server. Tables are plain
HTML (readable without JavaScript), sortable by clicking a header.

Each section appears only when its data exists. One module per concern fills the
`Page`: ``evaluation`` (summary, per_class, confusion, bad_shards), ``drift`` (drift,
drift_distributions), ``compare`` (compare), then the footer.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from ...metadata import CONFIG_KEY, CREATED_AT_KEY, FINGERPRINT_KEY, INTEGRITY_KEY, INTERVALS_KEY, UNITS_KEY, VERSION_KEY
from ..tables import integrity_line, intervals_line
from . import compare, drift, evaluation
from .common import Page, decoded_metadata, template, vega_embed_script

__all__ = ["HTML_FILE", "MAX_CLASSES", "PAGE_TABLES", "render_html", "vega_embed_script"]

HTML_FILE = "report.html"
MAX_CLASSES = 50  # rows of the per-class table and forest plot (the worst CE first)
# The tables a page can show, in the order their metadata is looked for.
PAGE_TABLES = ("summary", "per_class", "confusion", "bad_shards", "drift", "drift_distributions", "compare")


def render_html(tables: dict[str, pa.Table], *, title: str | None = None, max_classes: int = MAX_CLASSES) -> str:
    """The report as one self-contained HTML page.

    Parameters
    ----------
    tables
        The report tables as written (``Report.to_arrow()`` or the Parquet files of a
        report folder): ``summary`` and ``per_class`` with their ``xent.*`` metadata,
        and ``confusion`` and ``bad_shards`` when the report has them; ``drift`` (with
        ``drift_distributions``) for a drift report; ``compare`` for ``xent compare``.
    title
        The page title (default: "xent report"; "xent drift report" or "xent compare
        report" for those alone).
    max_classes
        Classes shown in the per-class table and forest plot, the worst mean CE first
        (for a comparison, the largest CE increase); the page says how many are left out.

    Returns
    -------
    str
        The HTML page; it loads nothing from the network.
    """
    described = next((tables[name] for name in PAGE_TABLES if name in tables), None)
    if described is None:
        raise ValueError(f"no table to show: expected one of {', '.join(PAGE_TABLES)}, got {', '.join(tables) or 'none'}")
    metadata = decoded_metadata(described)
    default_title = ("xent report" if "summary" in tables else "xent compare report" if "compare" in tables
                     else "xent drift report")
    page = Page(title=title or default_title, units=metadata.get(UNITS_KEY.decode(), "nats"), metadata=metadata)
    if "summary" in tables:
        evaluation.build(tables, page, max_classes)
    if "drift" in tables:
        drift.build(tables, page, max_classes)
    if "compare" in tables:
        compare.build(tables, page, max_classes)
    if "summary" in tables or "compare" in tables:
        page.subtitle.append(f"cross-entropy in {page.units}")
    page.sections["footer"] = _footer(metadata)
    if "summary" not in tables and "compare" not in tables:  # a drift report reads no intervals
        page.sections["footer"].pop("intervals", None)
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
