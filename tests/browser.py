"""Report pages in tests: reading a page's sections, cards, tables and chart data back
(`sections`, `card`, `Tables`, `chart_spec`, `chart_data`), the manifest entry of a
written page, and headless Chromium: Debian's ``chromium`` and ``chromium-driver``
driven by selenium. ``python tests/browser.py OUT_DIR`` writes a PNG screenshot of each
page kind (`PAGE_KINDS`) into OUT_DIR.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

# Where the test run leaves its screenshots (not committed: see .gitignore).
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")


# --------------------------------------------------------------------------- reading a page back


def sections(page: str) -> set[str]:
    """The ids of the page's sections and footer."""
    return set(re.findall(r'<(?:section|footer) id="([^"]+)"', page))


def card(page: str, metric: str) -> dict[str, str]:
    """A summary card's data-value, value class, value text and interval text."""
    match = re.search(rf'<div class="card" data-metric="{metric}" data-value="([^"]*)">\s*'
                      r'<div class="label">[^<]*</div>\s*<div class="value ?([^"]*)">([^<]*)</div>\s*'
                      r'<div class="interval">([^<]*)</div>', page)
    assert match, metric
    return dict(zip(("value", "class", "text", "interval"), match.groups()))


def chart_spec(page: str, chart_id: str) -> dict:
    match = re.search(rf'<script type="application/json" data-chart="{chart_id}">(.*?)</script>', page, re.S)
    assert match, chart_id
    return json.loads(match.group(1))


def chart_data(spec: dict) -> list[list[dict]]:
    """Every inline data set of a Vega-Lite spec (layers and concatenations included), in spec order."""
    found = []
    if isinstance(spec, dict):
        if isinstance(spec.get("data"), dict) and "values" in spec["data"]:
            found.append(spec["data"]["values"])
        for key, value in spec.items():
            if key != "data":
                found += chart_data(value)
    elif isinstance(spec, list):
        for item in spec:
            found += chart_data(item)
    return found


class Tables(HTMLParser):
    """Every table with an id: its header (text, data-metric) and its cells (text,
    interval text, data-sort, class), text unescaped; and the text of each ``li.breach``."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, dict] = {}
        self.breaches: list[str] = []
        self._table = self._cell = self._breach = None
        self._in_interval = False
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], {"header": [], "rows": []})
        elif self._table is not None and tag == "tr":
            self._table["rows"].append([])
        elif self._table is not None and tag in ("th", "td"):
            self._cell = {"text": "", "interval": "", "sort": attrs.get("data-sort"),
                          "class": attrs.get("class", ""), "metric": attrs.get("data-metric")}
        elif self._cell is not None and tag == "span" and attrs.get("class") == "interval":
            self._in_interval = True
        elif tag == "li" and "breach" in (attrs.get("class") or ""):
            self._breach = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "span":
            self._in_interval = False
        elif tag in ("th", "td") and self._cell is not None:
            self._cell["text"] = self._cell["text"].strip()
            if tag == "th":
                self._table["header"].append(self._cell)
            else:
                self._table["rows"][-1].append(self._cell)
            self._cell = None
        elif tag == "li" and self._breach is not None:
            self.breaches.append("".join(self._breach).strip())
            self._breach = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["interval" if self._in_interval else "text"] += data
        if self._breach is not None:
            self._breach.append(data)

    def rows(self, table_id: str) -> list[list[dict]]:
        """The body rows of a table (the header row has no cells here)."""
        return [row for row in self.tables[table_id]["rows"] if row]

    def header(self, table_id: str) -> list[dict]:
        return self.tables[table_id]["header"]


def manifest_entry(folder: Path, name: str = "report.html") -> dict:
    """The entry of `name` in ``folder/_manifest.json``."""
    manifest = json.loads((folder / "_manifest.json").read_text())
    return next(e for e in manifest["files"] if e["file"] == name)


def file_entry(path: Path) -> dict:
    """What a manifest entry of the file at `path` should be."""
    data = path.read_bytes()
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# --------------------------------------------------------------------------- headless Chromium


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 900) -> Iterator:
    """A selenium driver for headless Chromium that logs the console and the network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path, charts: int) -> None:
    """Load `path` and wait until its `charts` Vega charts have drawn their SVG."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.absolute().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.querySelectorAll('.chart svg.marks').length") >= charts)


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for (from the DevTools network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


# Horizontal overflow, tables whose last column cannot be reached, chart axis labels
# that overlap or touch (closer than 3 px they read as one number, "0.000.02").
_LAYOUT_SCRIPT = r"""
const problems = [], GAP = 3;  // labels closer than 3 px read as one
const root = document.documentElement, width = root.clientWidth;
if (root.scrollWidth > width) problems.push(`the document is ${root.scrollWidth} px wide in a ${width} px window`);
const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
for (const table of document.querySelectorAll('table')) {
  let box = table.parentElement;
  while (box && box !== document.body && !scrolls(box)) box = box.parentElement;
  const name = table.id || (table.closest('[id]') || {}).id;
  if (!box || box === document.body) {
    if (table.getBoundingClientRect().right > width + 1) problems.push(`table ${name} is cut off at ${width} px with no scroll box`);
    continue;
  }
  box.scrollLeft = box.scrollWidth;
  const last = table.rows[0].cells[table.rows[0].cells.length - 1].getBoundingClientRect();
  const edge = box.getBoundingClientRect();
  if (edge.right > width + 1 || last.right > edge.right + 1 || last.left < edge.left - 1)
    problems.push(`table ${name}: its last column is not reachable by scrolling its box`);
  box.scrollLeft = 0;
}
for (const chart of document.querySelectorAll('.chart')) {
  for (const axis of chart.querySelectorAll('g.role-axis')) {
    const labels = Array.from(axis.querySelectorAll('g.role-axis-label text'))
      .filter(t => Number(getComputedStyle(t).opacity) > 0 && t.getAttribute('opacity') !== '0' && t.textContent)
      .map(t => [t.textContent, t.getBoundingClientRect()]);
    for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) {
      const [a, r] = labels[i], [b, s] = labels[j];
      const x = Math.min(r.right, s.right) - Math.max(r.left, s.left), y = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
      if (x > -GAP && y > -GAP) problems.push(`chart ${chart.id}: axis labels "${a}" and "${b}" overlap`);
    }
  }
}
return problems;
"""


def layout_problems(driver) -> list[str]:
    """What is wrong with the layout of the open page at the window's width: the
    document wider than the window, a table whose last column is neither shown nor
    reachable by scrolling its own box, axis labels of a drawn chart that overlap."""
    return driver.execute_script(_LAYOUT_SCRIPT)


def edge_labels(driver, chart_id: str) -> list[str]:
    """The texts of the marks (not the axes) of a drawn chart that name a non-finite value."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(`#${arguments[0]} g.role-mark text`))"
        ".map(t => t.textContent).filter(t => ['∞', '−∞', 'nan'].includes(t))", chart_id)


GLUED = re.compile(r"[a-z)]\.[A-Z0-9(]")  # "per slice.24 rows": two sentences with no space between


def glued_sentences(driver) -> list[str]:
    """Places in the page's visible text where a sentence ends and the next begins with no space."""
    text = driver.execute_script("return document.body.innerText")
    return [text[max(0, m.start() - 30): m.end() + 30] for m in GLUED.finditer(text)]


def digits_dumps(root: Path, trees: int = 10) -> dict[str, Path]:
    """Test predictions of scikit-learn's LogisticRegression and RandomForest (`trees`
    trees) on load_digits, written with pandas in 4 shards each (``id``, ``segment``,
    int ``label``, ``probs`` a list of float64) under root/lr and root/rf. The forest
    gives many classes probability exactly 0, some rows' true class too (with 10 trees:
    classes 3 and 9), so its CE and KL(lr‖rf) are infinite there."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.4, random_state=0)
    models = {"lr": LogisticRegression(max_iter=2000), "rf": RandomForestClassifier(n_estimators=trees, random_state=0)}
    folders = {}
    for name, model in models.items():
        probs = model.fit(x_train, y_train).predict_proba(x_test)
        frame = pd.DataFrame({"id": np.arange(len(y_test)), "segment": np.where(np.arange(len(y_test)) % 2, "odd", "even"),
                              "label": y_test.astype(int), "probs": list(probs)})
        folders[name] = root / name
        folders[name].mkdir(parents=True, exist_ok=True)
        for i, rows in enumerate(np.array_split(np.arange(len(frame)), 4)):
            frame.iloc[rows].to_parquet(folders[name] / f"part-{i}.parquet")
    return folders


def screenshot(driver, path: Path, out: Path) -> None:
    """A full-page PNG of the page at `path`."""
    charts = len(path.read_text(encoding="utf-8").split('data-chart="')) - 1
    open_page(driver, path, charts)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, min(height + 100, 16000))
    driver.save_screenshot(str(out))


def _evaluation_pages(root: Path, client) -> dict[str, str]:
    """Three evaluations: 10 classes by 20 slices, 1,000 classes, data problems with HTML in names."""
    from flows.api import evaluate
    from flows.generate import generate_dump

    ten = generate_dump(root / "c10", rows=40_000, classes=10, shards=2,
                        slices={"model": [f"m{i:02d}" for i in range(20)]}, seed=1)
    wide = generate_dump(root / "c1000", rows=20_000, classes=1000, shards=2, seed=2)
    bad = generate_dump(root / "bad", rows=4_000, classes=4, shards=4, bad_shards={"truncated": 1},
                        slices={"model": ["<b>bold</b>", "a&b"]}, seed=3)
    return {
        "c10-20-slices": evaluate(ten.root, client=client, slice_by=["model"]).to_html(),
        "c1000": evaluate(wide.root, client=client).to_html(),
        "problems-and-html-names": evaluate(
            bad.root, client=client, slice_by=["model"], on_bad_shard="skip",
            classes=["<script>window.xss=1</script>", "a&b", '"quoted"', "plain"]).to_html(),
    }


def compare_dumps(root: Path, slices: list[str], classes: int = 4):
    """A baseline of ids 0..2999 and a drifted candidate (the same labels) of ids
    100..3099, both sliced by ``model`` into `slices`."""
    import numpy as np
    import pyarrow.parquet as pq

    from flows.generate import generate_dump

    common = dict(classes=classes, seed=11, slices={"model": slices})
    baseline = generate_dump(root / "baseline", rows=3000, shards=2, **common)
    candidate = generate_dump(root / "candidate", rows=3100, shards=3, drift=0.4, shuffle=True, **common)
    for path in candidate.files:  # ids 0..99 only in the baseline, 3000..3099 only in the candidate
        table = pq.read_table(path)
        pq.write_table(table.filter(np.asarray(table.column("id")) >= 100), path, write_page_checksum=True)
    return baseline, candidate


COMPARE_GATES = [{"metric": "ce_mean", "max_increase": 0.3}, {"metric": "accuracy", "max_decrease": 0.5}]


def _compare_pages(root: Path, client) -> dict[str, str]:
    """A candidate against a baseline (2 slices, 4 classes, ids on one side only, HTML in
    names) with a breached gate and a passed one."""
    from flows.api import compare

    baseline, candidate = compare_dumps(root, ["<b>bold</b>", "a&b"])
    result = compare(baseline.root, candidate.root, client=client, slice_by=["model"], gate=COMPARE_GATES,
                     classes=["<script>window.xss=1</script>", "a&b", '"quoted"', "plain"])
    return {"compare-gate-breached": result.to_html()}



TOKEN_COMPARE_GATES = [{"metric": "ce_mean", "max_increase": 0.01}, {"metric": "top1_accuracy", "max_decrease": 0.5}]
XSS_TOKEN = "<script>window.xss=3</script>"


def token_compare_dumps(root: Path) -> dict:
    """Two language models' dumps of the same tokens (support.two_token_models: 3,000
    tokens, 25 ids, top-4 lists, sliced by ``source``): the teacher as the baseline
    without the last 100 tokens, the student as the candidate without the first 50. One
    candidate token has a target log-prob of -inf (left out), one lists an id the teacher
    lists too at -800 (its KL bound is infinite). A vocabulary names every fifth id in
    HTML. Returns the folders, the vocabulary, and per token compared (both sides, finite)
    its target, slice and both CEs in nats."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from support import token_side_table, two_token_models, write_token_shards

    m = two_token_models(21, n=3000, vocab=25, k=4, docs=80)
    n = len(m["target"])
    baseline = token_side_table(m, "teacher", np.arange(0, n - 100))
    candidate = token_side_table(m, "student", np.arange(50, n))
    left_out, infinite = 60, 70  # token indices, both joined
    logprob = candidate["target_logprob"].to_numpy().copy()
    logprob[left_out - 50] = -np.inf
    lists = candidate["topk_logprobs"].to_pylist()
    ids, teacher_ids = candidate["topk_ids"][infinite - 50].as_py(), baseline["topk_ids"][infinite].as_py()
    shared = next(j for j, i in enumerate(ids) if i != m["target"][infinite] and i in teacher_ids)
    lists[infinite - 50][shared] = -800.0
    candidate = candidate.set_column(candidate.schema.get_field_index("target_logprob"), "target_logprob", pa.array(logprob))
    candidate = candidate.set_column(candidate.schema.get_field_index("topk_logprobs"), "topk_logprobs",
                                     pa.array(lists, pa.list_(pa.float64())))
    root.mkdir(parents=True, exist_ok=True)
    vocab = root / "vocab.parquet"
    pq.write_table(pa.table({"id": pa.array(range(25), pa.int64()),
                             "token": [XSS_TOKEN if i == 5 else f"<b>{i}</b>" if i % 5 == 0 else f"tok{i}" for i in range(25)]}),
                   vocab)
    compared = np.setdiff1d(np.arange(50, n - 100), [left_out])
    target = m["target"][compared]
    return {"baseline": write_token_shards(baseline, root / "baseline", 2, 0),
            "candidate": write_token_shards(candidate, root / "candidate", 3, 1), "vocab": str(vocab),
            "target": target, "source": np.array(["web", "code"])[m["slice"][compared]],
            "ce_baseline": -m["teacher"][compared, target], "ce_candidate": -m["student"][compared, target]}


def token_compare(dumps: dict, client, **options):
    """flows.compare of `token_compare_dumps` with its vocabulary, -inf counted, `options` added."""
    from flows.api import compare

    return compare(dumps["baseline"], dumps["candidate"], client=client, kind="tokens", on_nonfinite="count",
                   tokens={"vocab": dumps["vocab"]}, **options)


def _token_compare_pages(root: Path, client) -> dict[str, str]:
    """Two language models on the same tokens, sliced, a breached gate and a passed one."""
    dumps = token_compare_dumps(root)
    result = token_compare(dumps, client, slice_by=["source"], gate=TOKEN_COMPARE_GATES)
    return {"token-compare-gate-breached": result.to_html()}


def _drift_pages(root: Path, client) -> dict[str, str]:
    """A drifted dump against its reference: 5 classes by 2 slices (one named in HTML), a breached threshold."""
    from flows.api import drift
    from flows.generate import generate_dump

    common = dict(classes=5, slices={"model": ["a", "<b>bold</b>"]}, seed=7)
    reference = generate_dump(root / "ref", rows=3000, shards=2, **common)
    current = generate_dump(root / "cur", rows=2500, shards=2, shuffle=True, drift=1.0, **common)
    result = drift(reference.root, current.root, client=client, slice_by=["model"],
                   drift={"thresholds": {"kl_per_sample": 0.05, "marginal_js": 1.0}})
    return {"drift-breached": result.to_html()}


def _nightly_pages(root: Path, client) -> dict[str, str]:
    """Two nightly dates of two sources with drift and a gate (on the given cluster):
    the second run's page and the history page."""
    from flows.config import NightlyConfig
    from flows.generate import generate_dump
    from flows.runs.nightly import history_page_path, nightly_run, run_folder

    days = ("2026-11-22", "2026-11-23")
    for i, day in enumerate(days):
        for name in ("prod", "canary"):
            generate_dump(root / name / f"date={day}", rows=3000, classes=3, shards=2,
                          slices={"model": ["<b>bold</b>", "a&b"]}, seed=i + 1, drift=1.5 * i if name == "prod" else 0.0)
    config = NightlyConfig.model_validate({
        "report_root": str(root / "reports"), "scheduler": client.scheduler.address,
        "sources": [{"name": n, "paths": [str(root / n / "date={date}")], "reference": "previous"} for n in ("prod", "canary")],
        "defaults": {"slice_by": ["model"]}, "gate": {"metric": "ce_mean", "max_increase": 0.01},
        "drift": {"per_sample": True, "id_col": "id", "thresholds": {"marginal_js": 0.01}},
    })
    nightly_run(config, list(days))
    run = Path(run_folder(config.tables_base, days[1], "prod")) / "report.html"
    return {"nightly-run": run.read_text(encoding="utf-8"),
            "nightly-history": Path(history_page_path(config)).read_text(encoding="utf-8")}


# Each page kind: a function of (scratch folder, Dask client) giving {name: page}.
PAGE_KINDS = [_evaluation_pages, _drift_pages, _compare_pages, _token_compare_pages, _nightly_pages]


def write_screenshots(out: Path) -> list[Path]:
    """Render every page kind from small dumps and write a PNG of each into `out`."""
    import tempfile

    from flows.engine import dask_client

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, dask_client(None) as client:
        root = Path(tmp)
        pages: dict[str, str] = {}
        for kind in PAGE_KINDS:
            folder = root / kind.__name__.strip("_")
            folder.mkdir()
            pages.update(kind(folder, client))
        written = []
        with chromium() as driver:
            for name, html in pages.items():
                page = root / f"{name}.html"
                page.write_text(html, encoding="utf-8")
                target = out / f"{name}.png"
                screenshot(driver, page, target)
                written.append(target)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/browser.py OUT_DIR")
    if MISSING:
        sys.exit(f"tests/browser.py {MISSING}")
    for png in write_screenshots(Path(sys.argv[1])):
        print(png)
