"""The drift table (flows.drift_statistics) against what a drift run writes: every metric
drift.parquet holds is declared, every declared one is there, in the rows, units and
threshold role the table says; and drift.parquet has the declared columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from flows.config import DriftConfig
from flows.drift_statistics import DRIFT_COLUMNS, DRIFT_METRICS, DRIFT_STATISTIC, DRIFT_STATISTICS
from flows.generate import generate_dump
from flows.monitor.drift import drift_table, measure_drift


@pytest.fixture(scope="module")
def tables(client, tmp_path_factory):
    """drift.parquet as rows, in nats and in bits (thresholds on every divergence), and
    without per-sample KL."""
    folder = tmp_path_factory.mktemp("drift-statistics")
    common = dict(classes=4, slices={"model": ["a", "b"]}, seed=5)
    reference = generate_dump(folder / "ref", rows=1200, shards=2, **common)
    current = generate_dump(folder / "cur", rows=1000, shards=2, shuffle=True, drift=0.5, **common)

    def run(units: str, per_sample: bool = True) -> list[dict]:
        config = DriftConfig(sources=[current.root], reference=[reference.root], slice_by=["model"], units=units,
                             drift={"per_sample": per_sample, "thresholds": dict.fromkeys(DRIFT_METRICS, 1e9)})
        return drift_table(measure_drift(config, client)).to_pylist()

    return {"nats": run("nats"), "bits": run("bits"), "no per-sample": run("nats", per_sample=False)}


def test_every_metric_written_is_declared_and_the_columns_are_the_declared_ones(tables):
    written = {row["metric"] for rows in tables.values() for row in rows}
    assert sorted(written - set(DRIFT_STATISTIC)) == []
    assert list(tables["nats"][0])[1:] == list(DRIFT_COLUMNS)  # after the one slice column, model


@pytest.mark.parametrize("statistic", DRIFT_STATISTICS, ids=lambda s: s.name)
def test_each_declared_metric_is_written_as_declared(tables, statistic):
    nats, bits = ([row for row in tables[units] if row["metric"] == statistic.name] for units in ("nats", "bits"))
    assert nats, f"{statistic.name} is declared but not written"
    overall, slices = [r for r in nats if r["overall"]], [r for r in nats if not r["overall"]]
    assert len([r for r in overall if r["class"] is None]) == 1
    assert bool(slices) == (not statistic.overall_only)
    assert any(r["class"] is not None for r in nats) == statistic.per_class
    # Units: information is divided by ln 2 in bits, counts are not.
    divisor = math.log(2) if statistic.units == "information" else 1.0
    assert_allclose([r["value"] for r in bits], np.array([r["value"] for r in nats]) / divisor, rtol=1e-12)
    # Thresholds apply to metrics (all-classes rows), never to counts.
    checked = [r["threshold"] is not None for r in nats if r["class"] is None]
    assert all(checked) if statistic.role == "metric" else not any(checked)
    without = [row for row in tables["no per-sample"] if row["metric"] == statistic.name]
    assert bool(without) == (not statistic.per_sample)
