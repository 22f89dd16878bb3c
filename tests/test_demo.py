"""The README's first command: `xent demo` finishes, prints its verdicts and ends with
the path of a report page that shows every section the nightly run has data for."""

from __future__ import annotations

import html as htmllib
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from browser import MISSING, chromium, console_errors, open_page, requested_urls

# Every section of issue 12 that applies to a nightly run with drift and a gate
# (the gate is the run's comparison: against the previous run, not paired).
DEMO_SECTIONS = {"verdict", "summary", "per-class", "per-slice", "forest", "reliability", "confusion", "drift",
                 "gate", "class-changes", "history", "footer"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home"))}  # as on a fresh machine
    done = subprocess.run([sys.executable, "-m", "flows.cli", "demo", "--out", str(out)], capture_output=True,
                          text=True, env=env, timeout=600)
    return done, out


@pytest.mark.slow
def test_the_demo_ends_with_its_page(demo):
    done, out = demo
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1].startswith("page: ")
    page = Path(lines[-1].removeprefix("page: "))
    assert page.is_file() and page.parent.parent.parent == out / "reports-tables"
    html = page.read_text(encoding="utf-8")
    assert DEMO_SECTIONS <= set(re.findall(r'<(?:section|footer) id="([^"]+)"', html))
    # The planted drift and the gate breaches are in the page's verdict, as in the terminal output.
    assert "drift verdict: BREACHED" in done.stdout
    breached = [row for row in pq.read_table(page.parent / "drift.parquet").to_pylist() if row["breached"]]
    gate_lines = [line.split(": ", 1)[1] for line in lines if line.startswith("GATE BREACH")]
    verdict = html[html.index('<section id="verdict">'):html.index("</section>")]
    assert breached and gate_lines
    assert verdict.count('data-kind="drift"') == len(breached)
    assert verdict.count('data-kind="gate"') == len(gate_lines)
    for line in gate_lines:
        assert htmllib.escape(line, quote=False) in verdict
    # Each card shows its change since the previous run.
    assert html.count('class="change') >= 5
    # The language model drifted too (its CE rose 0.3 nats): its own drift table, checked against its kind's thresholds.
    lm_drift = {row["metric"]: row for row in pq.read_table(page.parent.parent / "source=lm" / "drift.parquet").to_pylist()
                if row["overall"]}
    assert lm_drift["ce_shift"]["breached"] and lm_drift["ce_shift"]["threshold"] == 0.1
    assert "kl_per_sample" not in lm_drift and lm_drift["kl_lower_bound_per_token"]["value"] > 0


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")
def test_the_demo_page_draws_in_chromium(demo):
    page = Path(demo[0].stdout.strip().splitlines()[-1].removeprefix("page: "))
    charts = page.read_text(encoding="utf-8").count('data-chart="')
    with chromium() as driver:
        open_page(driver, page, charts)
        assert console_errors(driver) == []
        assert [url for url in requested_urls(driver) if not url.startswith(("file:", "data:", "about:"))] == []
