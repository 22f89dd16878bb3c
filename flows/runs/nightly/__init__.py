"""The nightly evaluation as plain steps, free of Prefect.

``xent nightly --no-prefect`` runs them directly and never imports Prefect; the
xent-nightly flow in ``pipelines`` runs the same steps as tasks.

Each (source, date) ends in one `Outcome`: written, unchanged (skipped, with the stored
verdict), or a data error; a written or unchanged run may also have no reference (its
drift was not checked) or breached thresholds. A data error in one (source, date) does
not stop the others; an infrastructure error stops the run. The run's exit code is the
highest among its outcomes: 0 ok (also "no reference"), 1 data error, 3 breached.

History layout, one folder per run, replaced atomically::

    REPORT_ROOT/run_date=YYYY-MM-DD/source=NAME/metrics.parquet     every metric, one long table
    TABLES_ROOT/run_date=YYYY-MM-DD/source=NAME/per_class.parquet   the wide tables (and summary,
                                                                    drift, bad_shards, gate)
    TABLES_ROOT/run_date=YYYY-MM-DD/source=NAME/state.parquet       the merged state, for later gates
    TABLES_ROOT/run_date=YYYY-MM-DD/source=NAME/report.html         the run's page (in the same atomic write)
    TABLES_ROOT/history.html                                        every run's trends, rewritten by each run

The wide tables and the pages live outside REPORT_ROOT, so ``REPORT_ROOT/**/*.parquet``
is the history (an HTML file there would break directory reads of it: pyarrow and
pandas read every file of the folder as Parquet).

One module per job: ``dates``, ``history`` (the layout, the long metrics table, reading
it back), ``digest`` (what a run depends on; skipping an unchanged run), ``gates``
(against a baseline run), ``outcomes`` (how each run ended, in words) and ``run`` (the
steps in order). Their public names are imported here.
"""

from .dates import parse_date, run_dates, today
from .digest import HISTORY_LAYOUT, run_digest, stored_breaches
from .gates import GATE_TABLE, STATE_FILE, Baseline, GateVerdict, check_gates, load_baseline
from .history import (
    HISTORY_PAGE, METRICS_FILE, breach_messages, history_page_path, history_table, metrics_table, read_history,
    root_options, run_folder, tables_root_of, with_run, write_history_page,
)
from .outcomes import Outcome, failure, failure_summary, headline, print_outcomes, report_outcomes, summary_markdown
from .run import Steps, nightly_run, nightly_source, reference_paths

__all__ = [
    "GATE_TABLE", "HISTORY_LAYOUT", "HISTORY_PAGE", "METRICS_FILE", "STATE_FILE", "Baseline", "GateVerdict", "Outcome",
    "Steps", "breach_messages", "check_gates", "failure", "failure_summary", "headline", "history_page_path",
    "history_table", "load_baseline", "metrics_table", "nightly_run", "nightly_source", "parse_date", "print_outcomes",
    "read_history", "reference_paths", "report_outcomes", "root_options", "run_dates", "run_digest", "run_folder",
    "stored_breaches", "summary_markdown", "tables_root_of", "today", "with_run", "write_history_page",
]
