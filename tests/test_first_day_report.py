"""What reports say about their inputs, on a new user's first dump: scikit-learn
predictions written with plain pandas in four shards of 180 rows.

- a skipped shard whose footer cannot be read has an unknown row count (null, "rows
  unknown"), one whose footer was read keeps its count;
- files without page checksums (pandas' default) are information, not a data problem;
  a checksum that fails is one;
- probabilities read as logits are flagged in the report's metadata (``xent.warnings``)
  and on the page's verdict, for eval, nightly runs and ``xent report``.

Every run is the real CLI in a subprocess on real files; pages are also read in
headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

from flows.metadata import INTEGRITY_KEY

from browser import MISSING, chromium, open_page
from support import read_page_header, run_cli
from doc_blocks import marked_blocks

SHARDS, SHARD_ROWS = 4, 180
WARNING_TEXT = "these look like probabilities: pass --kind probs"
WARNINGS_KEY = b"xent.warnings"  # flows.metadata.WARNINGS_KEY, spelled out: the key is part of the report format


def sklearn_frame() -> pd.DataFrame:
    """720 test rows of a LogisticRegression on load_digits: id, segment, int label and
    probs (a list of float64), as a user writes them."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=SHARDS * SHARD_ROWS, random_state=0)
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    probs = model.predict_proba(x_test)
    return pd.DataFrame({"id": np.arange(len(y_test)), "segment": np.where(np.arange(len(y_test)) % 2, "a", "b"),
                         "label": y_test.astype(np.int64), "probs": list(probs)})


def write_shards(frame: pd.DataFrame, folder: Path, **options) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(SHARDS):
        path = folder / f"part-{i}.parquet"
        frame.iloc[i * SHARD_ROWS:(i + 1) * SHARD_ROWS].to_parquet(path, **options)
        paths.append(path)
    return paths


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_data_byte(path: Path, column: str) -> None:
    """Flip a byte inside the first page of `column`'s first chunk (a file written with
    page checksums): its footer stays readable, its page fails its CRC."""
    group = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema.startswith(column))
    start = min(o for o in (chunk.data_page_offset, chunk.dictionary_page_offset if chunk.has_dictionary_page else None) if o)
    data = bytearray(path.read_bytes())
    header = read_page_header(data, start)
    data[start + header.header_size + header.compressed_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def verdict(page: str) -> str:
    return page.split('<section id="verdict">', 1)[1].split("</section>", 1)[0]


def footer(page: str) -> str:
    return page.split('<footer id="footer">', 1)[1].split("</footer>", 1)[0]


def eval_cli(source: Path, out: Path, *args: str):
    return run_cli(["eval", str(source), "--out", str(out), "--no-prefect", *args], timeout=300)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return sklearn_frame()


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, frame) -> dict[str, Path]:
    """plain: four pandas shards; truncated: the first cut in half; mixed: the third cut
    in half and the second written with checksums and one of its pages flipped."""
    root = tmp_path_factory.mktemp("first-day")
    plain = root / "plain"
    write_shards(frame, plain)
    truncated = root / "truncated"
    shutil.copytree(plain, truncated)
    truncate(truncated / "part-0.parquet")
    mixed = root / "mixed"
    shutil.copytree(plain, mixed)
    truncate(mixed / "part-2.parquet")
    frame.iloc[SHARD_ROWS:2 * SHARD_ROWS].to_parquet(mixed / "part-1.parquet", write_page_checksum=True)
    flip_a_data_byte(mixed / "part-1.parquet", "label")
    return {"plain": plain, "truncated": truncated, "mixed": mixed, "root": root}


# --------------------------------------------------------------------------- item 3: rows of a skipped shard


@pytest.fixture(scope="module")
def truncated_run(dumps):
    out = dumps["root"] / "out-truncated"
    result = eval_cli(dumps["truncated"], out, "--kind", "probs", "--on-bad-shard", "skip")
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.slow
def test_a_truncated_shard_has_unknown_rows_in_the_tables(truncated_run):
    out, _ = truncated_run
    (bad,) = pq.read_table(out / "bad_shards.parquet").to_pylist()
    assert bad["file"].endswith("part-0.parquet") and bad["reason"]
    assert bad["rows"] is None  # its footer could not be read: not 0
    overall = pq.read_table(out / "summary.parquet").to_pylist()[-1]
    assert overall["n_bad_shards"] == 1 and overall["n_skipped"] is None
    assert overall["n"] == (SHARDS - 1) * SHARD_ROWS


@pytest.mark.slow
def test_a_truncated_shard_says_rows_unknown_on_the_terminal_and_the_page(truncated_run):
    out, result = truncated_run
    assert "1 bad shard skipped (rows unknown): see " in result.stdout, result.stdout
    assert "0 rows" not in result.stdout
    shown = verdict((out / "report.html").read_text())
    assert "1 bad shard skipped (rows unknown)" in shown and "0 rows" not in shown
    assert re.search(r"part-0\.parquet</td><td class=\"text\">[^<]+</td><td class=\"text\">unknown</td>", shown), shown


@pytest.mark.slow
def test_a_shard_with_a_readable_footer_keeps_its_rows_and_a_partial_total_is_a_lower_bound(dumps):
    out = dumps["root"] / "out-mixed"
    result = eval_cli(dumps["mixed"], out, "--kind", "probs", "--on-bad-shard", "skip")
    assert result.returncode == 0, result.stderr
    bad = {Path(r["file"]).name: r for r in pq.read_table(out / "bad_shards.parquet").to_pylist()}
    assert bad["part-1.parquet"]["rows"] == SHARD_ROWS and "page checksum mismatch" in bad["part-1.parquet"]["reason"]
    assert bad["part-2.parquet"]["rows"] is None
    assert pq.read_table(out / "summary.parquet").to_pylist()[-1]["n_skipped"] is None
    line = f"2 bad shards skipped (at least {SHARD_ROWS} rows; rows of 1 unknown)"
    assert line in result.stdout, result.stdout
    shown = verdict((out / "report.html").read_text())
    assert line in shown
    # A checksum that fails is a data problem; files without checksums are not.
    assert "without page checksums" not in shown and "problem-checksums" not in shown


# --------------------------------------------------------------------------- page checksums are information


@pytest.fixture(scope="module")
def plain_run(dumps):
    out = dumps["root"] / "out-plain"
    result = eval_cli(dumps["plain"], out, "--kind", "probs", "--slice-by", "segment")
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.slow
def test_a_pandas_dump_is_not_a_data_problem_for_its_checksums(plain_run, frame):
    out, result = plain_run
    page = (out / "report.html").read_text()
    shown = verdict(page)
    assert "data problem(s)" not in shown and "checksums" not in shown, shown
    assert "No data problems: no bad shards, no non-finite rows." in shown
    assert (f"inputs: {SHARDS} files, 0 with page checksums verified; {SHARDS} without (pandas&#39; and pyarrow&#39;s "
            "default; write_page_checksum=True adds them)") in footer(page)
    integrity = json.loads(pq.read_schema(out / "summary.parquet").metadata[INTEGRITY_KEY])
    assert integrity == {"files": SHARDS, "page_checksums_verified": 0, "without_page_checksums": SHARDS}
    assert f"{SHARDS} without (pandas' and pyarrow's default" in result.stdout
    assert "checksum" not in result.stderr and "bit flips" not in result.stdout
    # The numbers are sklearn's.
    overall = pq.read_table(out / "summary.parquet").to_pylist()[-1]
    probs = np.stack(frame["probs"].to_numpy())
    assert overall["ce_mean"] == pytest.approx(log_loss(frame["label"], probs, labels=range(10)), rel=1e-12)


@pytest.mark.slow
def test_the_readme_shows_how_to_write_shards_with_checksums(tmp_path, monkeypatch):
    blocks = [body for _, body in marked_blocks("CHECKSUMS", "python")]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    files = sorted((tmp_path / "dump").glob("*.parquet"))
    assert len(files) == 2
    out = tmp_path / "out"
    result = eval_cli(tmp_path / "dump", out, "--kind", "probs")
    assert result.returncode == 0, result.stderr
    assert "inputs: 2 files, 2 with page checksums verified\n" in result.stdout  # as the README says
    integrity = json.loads(pq.read_schema(out / "summary.parquet").metadata[INTEGRITY_KEY])
    assert integrity == {"files": 2, "page_checksums_verified": 2, "without_page_checksums": 0}
    assert "every input file&#39;s page checksums verified" in verdict((out / "report.html").read_text())


# --------------------------------------------------------------------------- probabilities read as logits


def probability_warning(metadata: dict) -> dict:
    (warning,) = [w for w in json.loads(metadata[WARNINGS_KEY]) if w["id"] == "probability_like"]
    return warning


@pytest.fixture(scope="module")
def logits_run(dumps):
    out = dumps["root"] / "out-as-logits"
    result = eval_cli(dumps["plain"], out, "--pred-col", "probs")  # the default kind: logits
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.slow
def test_probabilities_read_as_logits_are_flagged_in_metadata_and_on_the_page(logits_run, dumps):
    out, result = logits_run
    assert "look like probabilities" in result.stderr
    for name in ("summary", "per_class"):
        warning = probability_warning(pq.read_schema(out / f"{name}.parquet").metadata)
        assert WARNING_TEXT in warning["text"] and str(dumps["plain"] / "part-0.parquet") in warning["text"]
        assert warning["files"] == [str(dumps["plain"] / f"part-{i}.parquet") for i in range(SHARDS)]
    shown = verdict((out / "report.html").read_text())
    assert 'id="warning-probability_like"' in shown and WARNING_TEXT in shown


@pytest.mark.slow
def test_xent_report_redraws_the_warning_from_the_tables(logits_run, tmp_path):
    out, _ = logits_run
    html = tmp_path / "again.html"
    result = run_cli(["report", str(out), "--html", str(html)])
    assert result.returncode == 0, result.stderr
    assert WARNING_TEXT in verdict(html.read_text())


@pytest.mark.slow
def test_a_report_read_with_the_right_kind_has_no_warning(plain_run):
    out, _ = plain_run
    metadata = pq.read_schema(out / "summary.parquet").metadata
    assert json.loads(metadata[WARNINGS_KEY]) == []
    assert "look like probabilities" not in (out / "report.html").read_text()


@pytest.mark.slow
def test_a_nightly_run_flags_probabilities_read_as_logits(dumps, tmp_path):
    shutil.copytree(dumps["plain"], tmp_path / "dumps" / "date=2026-01-02")
    config = {"report_root": str(tmp_path / "reports"),
              "sources": [{"name": "lr", "paths": [str(tmp_path / "dumps" / "date={date}")]}],
              "defaults": {"pred_col": "probs"}}
    (tmp_path / "nightly.yaml").write_text(yaml.safe_dump(config))
    result = run_cli(["nightly", "--config", str(tmp_path / "nightly.yaml"), "--date", "2026-01-02", "--no-prefect"], timeout=300)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "reports-tables" / "run_date=2026-01-02" / "source=lr"
    assert WARNING_TEXT in probability_warning(pq.read_schema(run / "summary.parquet").metadata)["text"]
    assert WARNING_TEXT in verdict((run / "report.html").read_text())


# --------------------------------------------------------------------------- as a person sees the pages


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_the_pages_read_right_in_chromium(truncated_run, plain_run, logits_run):
    with chromium(1280, 900) as driver:
        def text_of(out: Path, selector: str) -> str:
            page = out / "report.html"
            open_page(driver, page, len(page.read_text().split('data-chart="')) - 1)
            return driver.execute_script(f"return document.querySelector('{selector}').innerText")

        assert "1 bad shard skipped (rows unknown)" in text_of(truncated_run[0], "#verdict")
        plain = text_of(plain_run[0], "#verdict")
        assert "No data problems" in plain and "checksums" not in plain and "data problem(s)" not in plain
        assert f"{SHARDS} without (pandas' and pyarrow's default" in text_of(plain_run[0], "#footer")
        shown = text_of(logits_run[0], "#verdict")
        assert WARNING_TEXT in shown
        assert driver.execute_script(
            "return getComputedStyle(document.querySelector('#warning-probability_like')).display") != "none"
