"""The drift table (flows.drift_statistics) against what a drift run writes: every metric
drift.parquet holds is declared, every declared one is there, in the rows, units and
threshold role the table says; and drift.parquet has the declared columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from flows.config import DriftConfig
from flows.drift_statistics import DRIFT_COLUMNS, DRIFT_STATISTICS, drift_metrics
from flows.generate import generate_dump, generate_token_dump
from flows.monitor.drift import drift_table, measure_drift


@pytest.fixture(scope="module")
def tables(client, tmp_path_factory):
    """drift.parquet as rows, per kind of dump (classifier predictions, token dumps), in
    nats and in bits (thresholds on every divergence of the kind), and without per-sample KL."""
    folder = tmp_path_factory.mktemp("drift-statistics")
    common = dict(classes=4, slices={"model": ["a", "b"]}, seed=5)
    reference = generate_dump(folder / "ref", rows=1200, shards=2, **common)
    current = generate_dump(folder / "cur", rows=1000, shards=2, shuffle=True, drift=0.5, **common)
    tokens = dict(tokens=6000, vocab_size=500, topk=4, slices={"model": ["a", "b"]}, seed=5)
    token_reference = generate_token_dump(folder / "token-ref", shards=2, **tokens)
    token_current = generate_token_dump(folder / "token-cur", shards=3, shift=0.2, **tokens)

    def run(kind: str, units: str, per_sample: bool = True) -> list[dict]:
        dumps = (token_current, token_reference) if kind == "tokens" else (current, reference)
        options = {"kind": "tokens"} if kind == "tokens" else {}
        config = DriftConfig(sources=[dumps[0].root], reference=[dumps[1].root], slice_by=["model"], units=units,
                             drift={"per_sample": per_sample, "min_bucket_tokens": 1,
                                    "thresholds": dict.fromkeys(drift_metrics(kind == "tokens"), 1e9)}, **options)
        return drift_table(measure_drift(config, client)).to_pylist()

    return {kind: {"nats": run(kind, "nats"), "bits": run(kind, "bits"), "no per-sample": run(kind, "nats", False)}
            for kind in ("classifier", "tokens")}


@pytest.mark.parametrize("kind", ["classifier", "tokens"])
def test_every_metric_written_is_declared_and_the_columns_are_the_declared_ones(tables, kind):
    written = {row["metric"] for rows in tables[kind].values() for row in rows}
    assert sorted(written - set(drift_metrics(kind == "tokens")) - {s.name for s in DRIFT_STATISTICS if s.role == "count"}) == []
    assert list(tables[kind]["nats"][0])[1:] == list(DRIFT_COLUMNS)  # after the one slice column, model


@pytest.mark.parametrize(("statistic", "kind"), [(s, kind) for s in DRIFT_STATISTICS for kind in ("classifier", "tokens")
                                                 if s.kinds in (kind, "any")], ids=lambda v: getattr(v, "name", v))
def test_each_declared_metric_is_written_as_declared(tables, statistic, kind):
    tables = tables[kind]
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
