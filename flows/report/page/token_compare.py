"""Two language models on the same tokens (``xent compare --kind tokens``: compare.parquet
with its ``scope`` column, and compare_tokens.parquet): the gates' verdict and the join's
counts, cards of the overall differences and of the KL lower bound, forest plots of the
CE difference by position bucket, frequency bucket and slice, the KL lower bound's
percentiles per scope, a per-slice table and the tokens whose CE rose most.

The baseline is the teacher p and the candidate the student q: every KL value here is a
lower bound of KL(baseline‖candidate), computed on the top-k lists
(:mod:`xent_kernels.token_pairs`), and is named so wherever it is shown.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from xent_kernels.token_pair_report import KL_FLOOR, PERCENTILE_ERROR

from ...metadata import COMPARE_KEY, decoded_metadata
from .common import Page, cell, finite, largest_first, number, signed, slice_label, text_cell
from .compare import VERDICT_TEXT, about, forest, gate_verdict, join_verdict, verdict_class, worst_first

CARD_METRICS = ("ce_mean", "perplexity", "bits_per_byte", "top1_accuracy")
KL_PERCENTILES = {"median": "median", "p90": "p90", "p99": "p99", "p999": "p99.9", "max": "max"}
WORST_TOKENS = 20
KL = "KL(baseline‖candidate)"
KL_REVERSE = "KL(candidate‖baseline)"


def is_token_compare(table: pa.Table) -> bool:
    """Whether a ``compare`` table compares token dumps: its ``xent.compare`` metadata says
    so (``"tokens": true``), or, without that metadata, it has the token table's ``scope``."""
    info = decoded_metadata(table).get(COMPARE_KEY.decode())
    if isinstance(info, dict) and "tokens" in info:
        return bool(info["tokens"])
    return "scope" in table.column_names


def label(metric: str, page: Page) -> str:
    """The page's name of a paired token metric, with its units."""
    return {"ce_mean": f"mean CE ({page.units})", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
            "top1_accuracy": "top-1 accuracy"}[metric]


def _present(row: dict, name: str) -> bool:
    """`name` has a value in `row` (an infinite one counts; NaN, as top-1 without top-k lists, does not)."""
    value = row.get(name)
    return value is not None and value == value


def bucket_label(row: dict) -> str:
    """A position bucket as "positions 4-7" ("position 1", the last "positions 4096+"), a
    frequency bucket as "rank 11-100" ("rank 10001+")."""
    first, last = row["bucket_from"], row["bucket_to"]
    span = f"{first}+" if last < 0 else str(first) if first == last else f"{first}-{last}"
    if row["scope"] == "frequency":
        return f"rank {span}"
    return f"position {span}" if first == last else f"positions {span}"


def build(tables: dict[str, pa.Table], page: Page) -> None:
    """Add the token comparison's sections: the verdict (gates, join counts, tokens left
    out), cards, forest plots and tables."""
    table = tables["compare"]
    info = page.metadata.get(COMPARE_KEY.decode())
    info = info if isinstance(info, dict) else {}
    rows = table.to_pylist()
    slice_by = table.column_names[: table.column_names.index("overall")]
    overall = next(r for r in rows if r["overall"] and r["scope"] == "all")
    slices = [r for r in rows if not r["overall"] and r["scope"] == "all"]
    for row in rows:
        row["n"] = row["tokens"]  # the forest plots' tooltip
        row["label"] = slice_label(row, slice_by) if row["scope"] == "all" and not row["overall"] else (
            "all tokens" if row["scope"] == "all" else bucket_label(row))
    buckets = {scope: [r for r in rows if r["overall"] and r["scope"] == scope and r["tokens"]]
               for scope in ("position", "frequency")}
    metrics = [m for m in CARD_METRICS
               if f"{m}_diff" in table.column_names and any(_present(r, f"{m}_diff") for r in rows)]

    gate_verdict(page, info)
    join_verdict(page, info, overall, "tokens")
    _left_out(page, overall)
    page.subtitle.append(f"candidate - baseline on {number(overall['tokens'])} tokens scored by both")
    page.subtitle.append("teacher: baseline, student: candidate")

    kl = bool(overall.get("kl_tokens"))
    section: dict[str, Any] = {
        "cards": _cards(overall, metrics, page),
        "kl_cards": _kl_cards(overall, page) if kl else [],
        "about": {**about(info, page.metadata), "join": info.get("join")},
        "masses": (f"{overall['baseline_known_mass']:.1%}", f"{overall['candidate_known_mass']:.1%}") if kl else None,
        "kl_table": _kl_table([overall, *slices, *buckets["position"], *buckets["frequency"]], page) if kl else None,
        "percentile_error": f"{PERCENTILE_ERROR:.2%}", "kl_floor": f"{KL_FLOOR:g}",
        "per_slice": _slice_table(sorted(slices, key=worst_first), slice_by, metrics, page, kl) if slices else None,
        "worst_tokens": _worst_tokens(tables["compare_tokens"], page) if "compare_tokens" in tables else None,
    }
    page.sections["token_compare"] = section
    axis = f"mean CE candidate - baseline ({page.units})"
    for scope, title in (("position", "position bucket"), ("frequency", "the target's frequency rank")):
        if buckets[scope]:
            chart, named = forest(buckets[scope], axis, scope)
            page.chart(f"token-compare-{scope}", "token_compare", chart,
                       f"Mean CE difference by {title} ({page.units})", named)
    if slices:
        chart, named = forest(sorted(slices, key=worst_first), axis, "slice")
        page.chart("token-compare-slices", "token_compare", chart,
                   f"Mean CE difference per slice ({page.units}), the largest increase first", named)


def _left_out(page: Page, overall: dict) -> None:
    """Tokens left out of the comparison (a -inf log-prob on either side) and tokens whose
    bound is infinite, as data problems."""
    left_out = overall.get("n_left_out") or 0
    if left_out:
        page.problems.append({"id": "tokens-left-out", "text": f"{left_out:,} joined token(s) with a "
                              "log-probability of -inf on either side, left out of every difference."})
    infinite = overall.get("kl_infinite") or 0
    if infinite:
        page.problems.append({"id": "kl-infinite", "text": f"{infinite:,} token(s) with an infinite {KL} lower bound "
                              "(an id the baseline gives mass and the candidate probability 0): counted, "
                              "left out of the KL lower bound's mean and percentiles."})


def _cards(overall: dict, metrics: list[str], page: Page) -> list[dict[str, Any]]:
    """The tokens compared, then each overall difference: value, interval, verdict and both models' values."""
    cards = [{"metric": "tokens", "label": "tokens compared", "text": number(overall["tokens"]),
              "value": overall["tokens"], "interval": "",
              "detail": f"wins/ties/losses {overall['wins']:,}/{overall['ties']:,}/{overall['losses']:,}"}]
    for name in metrics:
        if not _present(overall, f"{name}_diff"):  # top-1 accuracy without top-k lists
            continue
        shown = cell(overall, f"{name}_diff", text=signed)
        verdict = overall.get(f"{name}_verdict")
        cards.append({
            "metric": name, "label": f"Δ {label(name, page)}", "text": shown["text"],
            "value": repr(overall[f"{name}_diff"]), "interval": shown["interval"] or "no interval",
            "detail": f"{number(overall.get(f'{name}_baseline'))} → {number(overall.get(f'{name}_candidate'))}",
            "verdict": verdict_class(verdict), "verdict_text": VERDICT_TEXT.get(verdict, ""),
        })
    if _present(overall, "target_p_diff"):
        shown = cell(overall, "target_p_diff", text=signed)
        cards.append({"metric": "target_p_diff", "label": "Δ target probability", "text": shown["text"],
                      "value": repr(overall["target_p_diff"]), "interval": shown["interval"],
                      "detail": "mean of q(target) - p(target)"})
    return cards


def _kl_cards(overall: dict, page: Page) -> list[dict[str, Any]]:
    """The KL lower bound's mean (and its percentiles), the mass it sees, its reverse, top-1 agreement."""
    shown = cell(overall, "kl_lower_bound_mean")
    percentiles = ", ".join(f"{text} {number(overall[f'kl_lower_bound_{name}'])}"
                            for name, text in KL_PERCENTILES.items() if name in ("median", "p99", "max"))
    cards = [
        {"metric": "kl_lower_bound_mean", "label": f"{KL} LOWER BOUND, mean ({page.units})", "text": shown["text"],
         "value": repr(overall["kl_lower_bound_mean"]), "interval": shown["interval"],
         "detail": f"{percentiles}; of {overall['kl_tokens']:,} tokens"},
        {"metric": "known_mass", "label": "mass the bound sees",
         "text": f"{overall['baseline_known_mass']:.1%} / {overall['candidate_known_mass']:.1%}",
         "value": repr(overall["baseline_known_mass"]), "interval": "",
         "detail": "of the teacher's (baseline) / the student's (candidate) probability"},
    ]
    if _present(overall, "kl_lower_bound_reverse_mean"):
        shown = cell(overall, "kl_lower_bound_reverse_mean")
        cards.append({"metric": "kl_lower_bound_reverse_mean", "label": f"{KL_REVERSE} LOWER BOUND, mean ({page.units})",
                      "text": shown["text"], "value": repr(overall["kl_lower_bound_reverse_mean"]),
                      "interval": shown["interval"], "detail": "the same bins, the other direction"})
    if _present(overall, "top1_agreement"):
        shown = cell(overall, "top1_agreement")
        cards.append({"metric": "top1_agreement", "label": "top-1 ids agree", "text": shown["text"],
                      "value": repr(overall["top1_agreement"]), "interval": shown["interval"],
                      "detail": f"share of {overall['listed_tokens']:,} tokens with top-k lists"})
    return cards


def _kl_table(rows: list[dict], page: Page) -> dict[str, Any]:
    """The KL lower bound per scope: all tokens, each slice, each position and frequency bucket."""
    rows = [r for r in rows if r.get("kl_tokens")]
    units = f" ({page.units})"
    header = [("scope", "text", ""), ("tokens with a bound", "num", "kl_tokens"),
              ("mean" + units, "num", "kl_lower_bound_mean"),
              *((text + units, "num", f"kl_lower_bound_{name}") for name, text in KL_PERCENTILES.items()),
              ("baseline mass seen", "num", "baseline_known_mass"), ("candidate mass seen", "num", "candidate_known_mass"),
              ("infinite", "num", "kl_infinite")]
    body = [[text_cell(r["label"]), cell(r, "kl_tokens"), cell(r, "kl_lower_bound_mean"),
             *(cell(r, f"kl_lower_bound_{name}") for name in KL_PERCENTILES),
             cell(r, "baseline_known_mass"), cell(r, "candidate_known_mass"), cell(r, "kl_infinite")] for r in rows]
    return {"header": header, "rows": body}


def _slice_table(rows: list[dict], slice_by: list[str], metrics: list[str], page: Page, kl: bool) -> dict[str, Any]:
    """Each slice's tokens, wins/ties/losses, CE verdict, both models' mean CE, every
    difference with its interval coloured by its verdict, and the KL lower bound's mean."""
    units = f" ({page.units})"
    header = [*((c, "text", "") for c in slice_by), ("tokens", "num", "tokens"), ("wins", "num", "wins"),
              ("ties", "num", "ties"), ("losses", "num", "losses"), ("verdict", "text", "verdict"),
              ("mean CE baseline" + units, "num", "ce_mean_baseline"),
              ("mean CE candidate" + units, "num", "ce_mean_candidate"),
              *((f"Δ {label(m, page)}", "num", f"{m}_diff") for m in metrics)]
    if kl:
        header.append((f"{KL} lower bound, mean" + units, "num", "kl_lower_bound_mean"))
    body = []
    for row in rows:
        verdict = row.get("verdict")
        cells = [*(text_cell(row[c]) for c in slice_by), cell(row, "tokens"), cell(row, "wins"), cell(row, "ties"),
                 cell(row, "losses"), {**text_cell(VERDICT_TEXT.get(verdict, verdict)), "class": verdict_class(verdict)},
                 cell(row, "ce_mean_baseline"), cell(row, "ce_mean_candidate")]
        cells += [{**cell(row, f"{m}_diff", text=signed), "class": verdict_class(row.get(f"{m}_verdict"))}
                  for m in metrics]
        if kl:
            cells.append(cell(row, "kl_lower_bound_mean"))
        body.append(cells)
    return {"header": header, "rows": body}


def _worst_tokens(table: pa.Table, page: Page) -> dict[str, Any]:
    """The WORST_TOKENS target ids with the largest total CE increase (compare_tokens.parquet's first rows)."""
    tokens = table.to_pylist()
    worst = sorted(tokens, key=lambda r: largest_first(r["ce_sum_diff"]))[:WORST_TOKENS]
    named = "token" in table.column_names
    units = f" ({page.units})"
    header = [("target id", "num", ""), *([("token", "text", "")] if named else []),
              ("frequency rank", "num", "frequency_rank"), ("tokens", "num", "tokens"),
              ("mean CE baseline" + units, "num", "ce_mean_baseline"),
              ("mean CE candidate" + units, "num", "ce_mean_candidate"),
              ("Δ mean CE" + units, "num", "ce_mean_diff"), ("total CE increase" + units, "num", "ce_sum_diff")]
    body = [[{"text": str(r["target"]), "interval": "", "sort": r["target"]},  # an id: no thousands separator
             *([text_cell(r["token"])] if named else []), cell(r, "frequency_rank"), cell(r, "tokens"), cell(r, "ce_mean_baseline"), cell(r, "ce_mean_candidate"),
             {**cell(r, "ce_mean_diff", text=signed), "class": _interval_verdict(r, "ce_mean_diff")},
             cell(r, "ce_sum_diff", text=signed)] for r in worst]
    return {"header": header, "rows": body, "left_out": len(tokens) - len(worst)}


def _interval_verdict(row: dict, name: str) -> str:
    """'worse' when a CE difference's interval lies above 0, 'better' below it, else ''."""
    low, high = row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if not (finite(low) and finite(high)):
        return ""
    return "worse" if low > 0 else "better" if high < 0 else ""
