"""A new user's first day, the statistics: interval bounds clipped to each metric's range
(as the README says, on the page and in comparisons), drift's per-sample smoothing and
its count of infinite rows, and the AUC card's binning bound. Real Parquet shards written
with pandas, the real CLI, a real LocalCluster; numbers against numpy/scipy/sklearn."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from xent_kernels import STATISTICS

README = Path(__file__).resolve().parent.parent / "README.md"


def write_pandas_shards(frame: pd.DataFrame, folder: Path, shards: int = 4) -> str:
    """`frame` as `shards` Parquet files written with plain pandas, as a user does."""
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), shards)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet", index=False)
    return str(folder)


def finite(value) -> bool:
    return value is not None and math.isfinite(value)


def on(client) -> list[str]:
    """CLI flags that run on the module's LocalCluster (one cluster start per module)."""
    return ["--scheduler", client.scheduler.address]


def probs_frame(probs: np.ndarray, labels: np.ndarray, segment: np.ndarray | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({"id": np.arange(len(labels)), "label": labels.astype(np.int64),
                          "probs": list(probs.astype(np.float64))})
    if segment is not None:
        frame["segment"] = segment
    return frame


# --------------------------------------------------------------------------- intervals


def _intervals_paragraph() -> str:
    text = README.read_text()
    start = text.index("**Intervals.**")
    return text[start:text.index("\n\n", start)]


def test_readme_states_each_metrics_clip_range_as_the_table_has_it():
    """The README's Intervals paragraph says bounds are clipped, and lists each interval
    metric's range exactly as its ``Statistic.clip``."""
    paragraph = " ".join(_intervals_paragraph().split())
    assert "not clipped" not in paragraph
    ranges = re.search(r"The ranges: (.*?)\.", paragraph)
    assert ranges, "the Intervals paragraph names no ranges"
    documented = {}
    for part in ranges.group(1).split(";"):
        match = re.fullmatch(r"\s*\[(\S+), (\S+?)[\])]: (.*)", part)
        assert match, part
        low, high = (math.inf if x == "∞" else float(x) for x in match.group(1, 2))
        for name in re.findall(r"`(\w+)`", match.group(3)):
            documented[name] = (low, high)
    assert documented == {s.name: tuple(map(float, s.clip)) for s in STATISTICS if s.interval}


def test_accuracy_near_one_has_its_upper_bound_clipped_at_one(client, tmp_path, capsys):
    """Two wrong rows in 200: the t-interval reaches past 1, the report's bound is 1.0
    exactly, the lower bound keeps the half-width (the interval is symmetric before
    clipping) and the terminal and the page say the bounds are clipped."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = np.full((200, 3), 0.1)
    probs[np.arange(200), labels] = 0.8
    probs[:2] = np.roll(probs[:2], 1, axis=1)  # two rows predict the wrong class
    source = write_pandas_shards(probs_frame(probs, labels), tmp_path / "dump")
    out = tmp_path / "out"
    assert main(["eval", source, "--out", str(out), "--kind", "probs", "--no-prefect", *on(client)]) == 0
    printed = capsys.readouterr().out
    overall = pq.read_table(out / "summary.parquet").to_pylist()[-1]
    assert overall["accuracy"] == pytest.approx(0.99)
    assert overall["accuracy_hi"] == 1.0
    unclipped_hi = 2 * overall["accuracy"] - overall["accuracy_lo"]
    assert unclipped_hi > 1.0
    assert "bounds clipped to each metric's range" in printed
    assert "bounds clipped to each metric's range" in html.unescape((out / "report.html").read_text())


def test_compare_clips_a_difference_to_its_own_range(client, tmp_path):
    """An accuracy difference lies in [-1, 1]: a candidate right on every row against a
    baseline right on 3 of 100 has a paired t-interval past 1, reported as 1.0."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 100)
    right = np.eye(2)[labels] * 0.8 + 0.1
    wrong = right[:, ::-1].copy()
    wrong[:3] = right[:3]
    base = write_pandas_shards(probs_frame(wrong, labels), tmp_path / "base", 2)
    cand = write_pandas_shards(probs_frame(right, labels), tmp_path / "cand", 2)
    out = tmp_path / "cmp"
    assert main(["compare", "--baseline", base, "--candidate", cand, "--out", str(out), "--kind", "probs",
                 "--no-prefect", *on(client)]) == 0
    rows = pq.read_table(out / "compare.parquet").to_pylist()
    overall = next(r for r in rows if r["overall"] and r["class"] is None)
    assert overall["accuracy_diff"] == pytest.approx(0.97)
    assert 2 * overall["accuracy_diff"] - overall["accuracy_diff_lo"] > 1.0  # the unclipped bound
    assert overall["accuracy_diff_hi"] == 1.0
    for row in rows:
        for statistic in STATISTICS:
            if statistic.interval and finite(row.get(f"{statistic.name}_diff_lo")):
                low, high = statistic.clip
                assert low - high <= row[f"{statistic.name}_diff_lo"] <= row[f"{statistic.name}_diff_hi"] <= high - low
