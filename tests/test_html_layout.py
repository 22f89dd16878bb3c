"""Every page kind in headless Chromium, from a new user's dumps: scikit-learn's
LogisticRegression and RandomForest on load_digits, written with pandas, through the
commands a user types. The forest gives classes probability exactly 0, so CE and
per-sample KL are infinite for some classes: every chart marks those values at its axis
edge and names them under the chart. At 1280 and 800 px nothing overflows the window
without a scroll box, every table's last column can be scrolled to, and no chart's axis
labels overlap; sentences are never glued together."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.special import rel_entr

from flows.cli.commands import main
from flows.config import NightlyConfig
from flows.runs.nightly import history_page_path, nightly_run, run_folder

from browser import (
    MISSING, SCREENSHOTS, chromium, console_errors, digits_dumps, edge_labels, glued_sentences, layout_problems,
    open_page,
)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(MISSING is not None and not os.environ.get("CI"), reason=f"headless browser test {MISSING}")]

DAYS = ("2026-11-22", "2026-11-23")
WIDTHS = (1280, 800)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, client) -> dict[str, Path]:
    """{page kind: its report.html}, each written by the command a user runs."""
    root = tmp_path_factory.mktemp("digits")
    dumps = digits_dumps(root / "dumps")
    common = ["--kind", "probs", "--slice-by", "segment", "--scheduler", client.scheduler.address, "--no-prefect"]
    out = root / "out"
    assert main(["eval", str(dumps["rf"]), "--out", str(out / "eval"), *common]) == 0
    assert main(["drift", "--reference", str(dumps["lr"]), "--current", str(dumps["rf"]),
                 "--out", str(out / "drift"), *common]) == 0
    assert main(["compare", "--baseline", str(dumps["lr"]), "--candidate", str(dumps["rf"]),
                 "--out", str(out / "compare"), *common]) == 0
    # With 50 trees every true class keeps some probability: finite CE, the trial's compare page.
    finite = digits_dumps(root / "dumps-50-trees", trees=50)
    assert main(["eval", str(finite["rf"]), "--out", str(out / "eval-50"), *common]) == 0
    assert main(["compare", "--baseline", str(finite["lr"]), "--candidate", str(finite["rf"]),
                 "--out", str(out / "compare-50"), *common]) == 0
    # Nightly: the logistic regression's dump on the first date, the forest's on the second.
    for day, model in zip(DAYS, ("lr", "rf")):
        shutil.copytree(dumps[model], root / "digits" / f"date={day}")
    config = NightlyConfig.model_validate({
        "report_root": str(root / "reports"), "scheduler": client.scheduler.address,
        "sources": [{"name": "digits", "paths": [str(root / "digits" / "date={date}")], "reference": "previous"}],
        "defaults": {"kind": "probs", "slice_by": ["segment"]}, "gate": {"metric": "ce_mean", "max_increase": 0.01},
        "drift": {"per_sample": True, "id_col": "id"},
    })
    nightly_run(config, list(DAYS))
    return {"evaluation": out / "eval" / "report.html", "drift": out / "drift" / "report.html",
            "compare": out / "compare" / "report.html", "evaluation-50-trees": out / "eval-50" / "report.html",
            "compare-50-trees": out / "compare-50" / "report.html",
            "nightly-run": Path(run_folder(config.tables_base, DAYS[1], "digits")) / "report.html",
            "nightly-history": Path(history_page_path(config))}


def charts_of(path: Path) -> int:
    return path.read_text(encoding="utf-8").count('data-chart="')


@pytest.mark.slow
def test_infinite_values_are_marked_and_named_on_every_chart(pages):
    """The classes whose CE or KL is infinite (checked with numpy on the dumps' rows) get
    an ∞ mark at the axis edge of each chart that draws them, and a note naming them."""
    drift = {r["class"]: r["value"] for r in pq.read_table(pages["drift"].parent / "drift.parquet").to_pylist()
             if r["class"] is not None and r["overall"] and r["metric"] == "kl_per_sample"}
    per_class = {r["class"]: r["ce_mean"] for r in pq.read_table(pages["evaluation"].parent / "per_class.parquet").to_pylist()
                 if r["overall"]}
    dumps = pages["drift"].parents[2] / "dumps"
    lr, rf = (pq.read_table(dumps / name).to_pandas().sort_values("id") for name in ("lr", "rf"))
    p, q, label = np.stack(lr["probs"]), np.stack(rf["probs"]), rf["label"].to_numpy()
    kl = rel_entr(p, q).sum(axis=1)
    ce = -np.log(q[np.arange(len(label)), label])
    infinite_kl = {c for c in range(10) if np.isinf(kl[label == c]).any()}
    infinite_ce = {c for c in range(10) if np.isinf(ce[label == c]).any()}
    assert infinite_ce == {3, 9} and infinite_kl, (infinite_ce, infinite_kl)  # the forest: KL infinite for every class
    assert {c for c, v in drift.items() if math.isinf(v)} == infinite_kl
    assert {c for c, v in per_class.items() if math.isinf(v)} == infinite_ce

    expected = {  # page kind: {chart id: the ∞ marks it shows}
        "evaluation": {"forest-classes": len(infinite_ce), "forest-slices": 2},
        "drift": {"drift-kl-classes": len(infinite_kl)},
        "compare": {"compare-forest-classes": len(infinite_ce), "compare-forest-slices": 2},
        # history: mean CE and per-sample KL of the second run, overall and per slice
        "nightly-run": {"forest-classes": len(infinite_ce), "forest-slices": 2, "history-chart": 3 + 3},
        "nightly-history": {"history-chart": 3 + 3},
    }
    from selenium.webdriver.common.by import By

    with chromium(1280, 900) as driver:
        for kind, charts in expected.items():
            open_page(driver, pages[kind], charts_of(pages[kind]))
            assert console_errors(driver) == [], kind
            for chart_id, count in charts.items():
                assert edge_labels(driver, chart_id) == ["∞"] * count, (kind, chart_id)
                note = driver.find_element(By.ID, f"{chart_id}-nonfinite")
                assert note.is_displayed() and "∞" in note.text, (kind, chart_id)
            if kind == "drift":
                named = driver.find_element(By.ID, "drift-kl-classes-nonfinite").text
                assert all(f"{c} (∞)" in named for c in infinite_kl), named
            if kind in ("evaluation", "nightly-run"):
                named = driver.find_element(By.ID, "forest-classes-nonfinite").text
                assert "3 (∞)" in named and "9 (∞)" in named, named
                ce = driver.find_element(By.CSS_SELECTOR, '.card[data-metric="ce_mean"] .value')
                assert ce.text == "∞", kind


@pytest.mark.slow
def test_no_sentence_is_glued_to_the_next(pages):
    """"…all classes per slice.24 per-class rows…" (the gate section) and the like on every page."""
    with chromium(1280, 900) as driver:
        for kind, path in pages.items():
            open_page(driver, path, charts_of(path))
            assert glued_sentences(driver) == [], kind


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_its_window(pages, width):
    """No horizontal overflow of the document, every table's last column reachable by
    scrolling its own box, no overlapping axis labels; a screenshot of each page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium(width, 900) as driver:
        for kind, path in pages.items():
            open_page(driver, path, charts_of(path))
            assert layout_problems(driver) == [], (kind, width)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(height + 100, 16000))
            driver.save_screenshot(str(SCREENSHOTS / f"digits-{kind}-{width}.png"))
