"""A token report's section (kind tokens): headline cards, per-slice table, CE by position
bucket and by frequency bucket with intervals, and the worst tokens."""

from __future__ import annotations

import pyarrow as pa

from .common import Page, cell, interval_plot, largest_first, number, slice_label, text_cell

CARD_METRICS = ("perplexity", "ce_mean", "bits_per_byte", "top1_accuracy", "topk_share", "ece")
TABLE_METRICS = ("tokens", "documents", "perplexity", "ce_mean", "doc_perplexity_geometric", "doc_perplexity_arithmetic",
                 "bits_per_byte", "top1_accuracy")
WORST_TOKENS = 20
UNITLESS = {"perplexity", "bits_per_byte", "top1_accuracy", "topk_share", "ece", "tokens", "documents",
            "doc_perplexity_geometric", "doc_perplexity_arithmetic"}


def _label(name: str, page: Page) -> str:
    if name == "bits_per_byte":
        return "bits per byte"
    return name.replace("_", " ") + ("" if name in UNITLESS else f" ({page.units})")


def _shown(rows: list[dict], names) -> list[str]:
    """The metrics some row has a value of (a dump without bytes or top-k has none of those)."""
    return [n for n in names if any(r.get(n) is not None and r[n] == r[n] and r[n] != -1 for r in rows)]


def build(tables: dict[str, pa.Table], page: Page) -> None:
    summary = tables["token_summary"]
    rows = summary.to_pylist()
    slice_by = summary.column_names[: summary.column_names.index("overall")]
    overall = next(r for r in rows if r["overall"])
    left_out = {"bad shards": overall.get("n_bad_shards") or 0, "tokens with an infinite CE": overall["n_nonfinite"],
                "tokens without a target or log-probability": overall["n_ignored"]}
    if any(left_out.values()):
        page.problems.append({"id": "tokens-left-out", "text": "Left out: " + ", ".join(
            f"{count:,} {what}" for what, count in left_out.items() if count) + "."})
    else:
        page.checks.append("No data problems: no bad shards, every token with a target and a finite log-probability.")
    page.subtitle.append(f"{overall['tokens']:,} tokens" + (f" in {overall['documents']:,} documents"
                                                              if (overall.get("documents") or -1) >= 0 else ""))
    cards = [{"metric": "tokens", "label": "tokens", "text": number(overall["tokens"]), "value": overall["tokens"],
              "interval": ""}]
    for name in _shown([overall], CARD_METRICS):
        shown = cell(overall, name)
        cards.append({"metric": name, "label": _label(name, page), "text": shown["text"], "value": repr(overall[name]),
                      "interval": shown["interval"]})
    if overall.get("entropy_lower_bound") == overall.get("entropy_lower_bound"):  # not NaN: top-k lists present
        cards.append({"metric": "entropy_lower_bound", "label": f"entropy, lower bound ({page.units})",
                      "text": cell(overall, "entropy_lower_bound")["text"], "value": repr(overall["entropy_lower_bound"]),
                      "interval": cell(overall, "entropy_lower_bound")["interval"],
                      "detail": "of the top-k plus one tail bin: the true entropy is at least this"})
    page.sections["summary"] = {"cards": cards}
    slices = [r for r in rows if not r["overall"]]
    metrics = _shown(rows, TABLE_METRICS)
    section = {}
    if slices:
        section["per_slice"] = {
            "header": [(c, "text", "") for c in slice_by] + [(_label(m, page), "num", m) for m in metrics],
            "rows": [[text_cell(r[c]) for c in slice_by] + [cell(r, m) for m in metrics] for r in slices],
        }
    positions = [r for r in tables["token_positions"].to_pylist() if r["overall"]]
    for r in positions:
        r["label"] = f"{r['position_from']}-{r['position_to']}" if r["position_to"] >= 0 else f"{r['position_from']}+"
    chart, named = interval_plot(positions, value="ce_mean", lo="ce_mean_lo", hi="ce_mean_hi", label="label",
                                 axis=f"mean CE ({page.units})", tooltip_title="positions")
    page.chart("token-positions", "tokens", chart, f"Mean CE by position bucket ({page.units})", named)
    frequency = [r for r in tables["token_frequency"].to_pylist() if r["tokens"]]
    for r in frequency:
        r["label"] = f"rank {r['rank_from']}-{r['rank_to']}" if r["rank_to"] >= 0 else f"rank {r['rank_from']}+"
    chart, named = interval_plot(frequency, value="ce_mean", lo="ce_mean_lo", hi="ce_mean_hi", label="label",
                                 axis=f"mean CE ({page.units})", tooltip_title="frequency")
    page.chart("token-frequency", "tokens", chart,
               f"Mean CE by the target's frequency rank in this dump ({page.units})", named)
    tokens = tables["per_token"].to_pylist()
    worst = sorted(tokens, key=lambda r: largest_first(r["ce_sum"]))[:WORST_TOKENS]
    named = "token" in tables["per_token"].column_names
    section["worst_tokens"] = {
        "header": [("target id", "num", ""), *([("token", "text", "")] if named else []),
                   ("frequency rank", "num", ""), ("tokens", "num", ""),
                   (f"CE sum ({page.units})", "num", "ce_sum"), (_label("ce_mean", page), "num", "ce_mean"),
                   ("top-1 accuracy", "num", "top1_accuracy")],
        "rows": [[cell(r, "target"), *([text_cell(r["token"])] if named else []), cell(r, "frequency_rank"),
                  cell(r, "tokens"), cell(r, "ce_sum"),
                  cell(r, "ce_mean"), cell(r, "top1_accuracy")] for r in worst],
        "left_out": max(len(tokens) - len(worst), 0),
    }
    page.sections["tokens"] = section
    for r in slices:
        r["label"] = slice_label(r, slice_by)
