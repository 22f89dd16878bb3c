"""How each (source, date) of a nightly run ended, in words: lines, headline numbers, the
run's error and exit code, and the Markdown summary."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal, Sequence, TextIO

import pyarrow as pa

from ...errors import EXIT_BREACH, EXIT_DATA, EXIT_OK, DataError, DriftBreach, GateBreach, XentError
from ...report.page import nightly as run_page
from ...report.page.history import overall_by_date
from ...report.tables import with_interval
from .gates import GateVerdict
from .history import METRICS_FILE


@dataclass
class Outcome:
    """How one (source, date) of a nightly run ended."""

    source: str
    run_date: str
    status: Literal["written", "unchanged", "data error"]
    folder: str  # REPORT_ROOT/run_date=.../source=...
    tables: str  # the wide tables' folder
    drift: Literal["none", "checked", "no reference"] = "none"
    reference_problem: str | None = None  # why there is no reference
    breaches: list[str] = field(default_factory=list)  # drift thresholds breached
    error: str | None = None
    gate: GateVerdict | None = None  # None: the source has no gates
    page: str | None = None  # the run's report.html, when this run wrote it
    headline: str | None = None  # n, mean CE, accuracy and their change since the previous run

    @property
    def gate_breaches(self) -> list[str]:
        return self.gate.breaches if self.gate else []

    @property
    def exit_code(self) -> int:
        if self.status == "data error":
            return EXIT_DATA
        if self.breaches or self.gate_breaches:
            return EXIT_BREACH
        return EXIT_DATA if self.gate and self.gate.status == "not comparable" else EXIT_OK

    def verdict(self) -> str:
        parts = []
        if self.drift == "no reference":
            parts.append(f"no reference ({self.reference_problem})")
        elif self.drift == "checked":
            parts.append(f"drift: {len(self.breaches)} threshold(s) breached" if self.breaches
                         else "drift within thresholds")
        if self.gate is not None:
            parts.append(self.gate.text())
        return "; ".join(parts)

    def breach_lines(self) -> list[str]:
        """Every breach of the run, one line each: drift thresholds, then gates."""
        return self.breaches + [f"gate against {self.gate.baseline}: {b}" for b in self.gate_breaches]

    def line(self) -> str:
        head = f"{self.source} {self.run_date}: "
        if self.status == "data error":
            return head + f"data error: {self.error}"
        verdict = self.verdict()
        if self.status == "unchanged":
            return head + "unchanged, skipped" + (f"; stored verdict: {verdict}" if verdict else "")
        page = f", page {self.page}" if self.page else ""
        return head + f"written to {self.folder}/{METRICS_FILE} (tables in {self.tables}{page})" + (
            f"; {verdict}" if verdict else "")


def headline(history: pa.Table | None, source: str, run_date: str) -> str | None:
    """A run's headline numbers from the history: n, mean CE and accuracy with their
    intervals (a token run: tokens, perplexity and top-1 accuracy), and their change
    since the previous run of the source."""
    now = overall_by_date(history, source).get(run_date) if history is not None else None
    if not now:
        return None
    value = lambda name: {name: now.get(name, {}).get("value"), f"{name}_lo": now.get(name, {}).get("lo"),  # noqa: E731
                          f"{name}_hi": now.get(name, {}).get("hi")}
    tokens = "perplexity" in now
    count = "tokens" if tokens else "n"
    shown_metrics = ((("perplexity", "perplexity"), ("top1_accuracy", "top-1 accuracy")) if tokens
                     else (("ce_mean", "mean CE"), ("accuracy", "accuracy")))
    parts = [f"{count} {now['n']['value']:,}",
             *(f"{label} {with_interval(value(name), name)}" for name, label in shown_metrics
               if now.get(name, {}).get("value") is not None)]
    since, before = run_page.changes(history, source, run_date)
    if since is not None:
        shown = [f"{label} {change['shown']}" for name, label in shown_metrics
                 if (change := run_page.change(name, now.get(name, {}).get("value"), before.get(name), since))]
        parts.append(f"change since {since}: {', '.join(shown)}")
    return "; ".join(parts)


def print_outcomes(outcomes: Sequence[Outcome], out: TextIO | None = None, page: str | None = None) -> None:
    """One line per (source, date), then one per breached threshold, then the history page."""
    out = out or sys.stdout
    for outcome in outcomes:
        print(outcome.line(), file=out)
    for outcome in outcomes:
        for breach in outcome.breach_lines():
            print(f"BREACH {outcome.source} {outcome.run_date}: {breach}", file=out)
    if page:
        print(f"page: {page}", file=out)


def failure(outcomes: Sequence[Outcome]) -> XentError | None:
    """The error a run with these outcomes ends with (the highest exit code), or None.
    The error carries the outcomes (``error.outcomes``) so that they can be printed."""
    code = max((o.exit_code for o in outcomes), default=EXIT_OK)
    if code == EXIT_OK:
        return None
    breaches = [f"{o.source} {o.run_date}: {b}" for o in outcomes for b in o.breaches]
    gates = [f"{o.source} {o.run_date}: against {o.gate.baseline}: {b}" for o in outcomes for b in o.gate_breaches]
    errors = [f"{o.source} {o.run_date}: {o.error}" for o in outcomes if o.status == "data error"]
    errors += [f"{o.source} {o.run_date}: gate not checked: {o.gate.detail}" for o in outcomes
               if o.status != "data error" and o.gate and o.gate.status == "not comparable"]
    parts = ([f"drift threshold breached: {'; '.join(breaches)}"] if breaches else []) + (
        [f"gate breached: {'; '.join(gates)}"] if gates else []) + (
        [f"data error in {len(errors)} of {len(outcomes)} source-date run(s): {'; '.join(errors)}"] if errors else [])
    kind = DataError if code != EXIT_BREACH else GateBreach if gates else DriftBreach
    error = kind(" | ".join(parts))
    error.outcomes = list(outcomes)
    return error


def summary_markdown(outcomes: Sequence[Outcome], dates: Sequence[str], page: str | None = None) -> str:
    """The run's outcomes as a Markdown list: per (source, date) its line, headline
    numbers and breaches; then the history page."""
    lines = [f"# xent nightly {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else ""), ""]
    for o in outcomes:
        lines.append(f"- {o.line()}" + (f"\n  - {o.headline}" if o.headline else "")
                     + (f"\n  - page: {o.page}" if o.page else "")
                     + "".join(f"\n  - BREACH {b}" for b in o.breach_lines()))
    if page:
        lines += ["", f"History page: {page}"]
    return "\n".join(lines)


def report_outcomes(outcomes: Sequence[Outcome], out: TextIO | None = None, page: str | None = None) -> int:
    """Print the outcomes and the history `page`; raise the run's error (exit 1 or 3)
    if it has one, else return 0. The error's message is short: every breach and
    error was printed above it."""
    print_outcomes(outcomes, out, page)
    error = failure(outcomes)
    if error is not None:
        short = type(error)(failure_summary(outcomes, page))
        short.outcomes = error.outcomes
        raise short
    return EXIT_OK


def failure_summary(outcomes: Sequence[Outcome], page: str | None = None) -> str:
    """``3 breach(es) and 1 data error(s) in 4 source-date run(s), listed above; page: PATH``."""
    breaches = sum(len(o.breach_lines()) for o in outcomes)
    errors = sum(o.status == "data error" for o in outcomes)
    unchecked = sum(o.status != "data error" and o.gate is not None and o.gate.status == "not comparable"
                    for o in outcomes)
    counts = [f"{n} {what}" for n, what in ((breaches, "breach(es)"), (errors, "data error(s)"),
                                              (unchecked, "gate(s) not checked")) if n]
    return f"{' and '.join(counts)} in {len(outcomes)} source-date run(s), listed above" + (f"; page: {page}" if page else "")
