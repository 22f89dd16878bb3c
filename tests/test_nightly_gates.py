"""Nightly gates against a baseline run: the unpaired interval numerics against a
brute-force NumPy/SciPy recomputation, the stored state's exact round trip, and real
nightly runs (Prefect flow runs and --no-prefect) with no baseline, a worse model, the
same model, point against interval mode, a pinned baseline date, a baseline with other
classes, and re-runs that keep a breach."""

from __future__ import annotations

import io
import re
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from scipy import stats as sps
from scipy.special import log_softmax

from flows.cli import main
from flows.config import NightlyConfig, build_config
from flows.errors import GateBreach, UsageError
from flows.generate import generate_dump
from flows.pipelines import nightly_flow
from flows.report.state import read_state, state_from_table, state_table
from flows.report.tables import metric_columns, report_parts
from flows.runs.nightly import GATE_TABLE, METRICS_FILE, STATE_FILE, nightly_run, run_folder
from xent_kernels import ClassStats, class_stats_partial
from xent_kernels.stats import STATE_ATTRIBUTES
from xent_kernels.unpaired import UnpairedStats

DAYS = ("2026-11-21", "2026-11-22", "2026-11-23")


# --------------------------------------------------------------------------- numerics


def _rows(rng, n, n_classes, shift):
    logits = rng.normal(size=(n, n_classes)) * 2.0
    labels = rng.integers(0, n_classes, n)
    logits[np.arange(n), labels] += shift  # larger shift: a better model
    return logits, labels, rng.uniform(0.5, 2.0, n), rng.integers(0, 2, n)


def _brute(logits, labels, weights, slices, buckets, n_buckets, cls=None, sl=None, what="ce"):
    """Value, jackknife SE and K' of weighted mean CE (or accuracy) of the rows of
    slice `sl` (and class `cls`), from the delete-one-bucket means, the obvious way."""
    keep = np.ones(len(labels), bool) if sl is None else slices == sl
    if cls is not None:
        keep &= labels == cls
    per_row = -log_softmax(logits, axis=1)[np.arange(len(labels)), labels] if what == "ce" else \
        (logits.argmax(axis=1) == labels).astype(float)
    w, x, b = weights[keep], per_row[keep], buckets[keep]
    value = np.sum(w * x) / np.sum(w)
    present = [k for k in range(n_buckets) if np.any(b == k)]
    theta = np.array([np.sum(w[b != k] * x[b != k]) / np.sum(w[b != k]) for k in present])
    kk = len(present)
    return value, math.sqrt((kk - 1) / kk * np.sum((theta - theta.mean()) ** 2)), kk


def test_unpaired_interval_matches_a_brute_force_recomputation():
    rng = np.random.default_rng(7)
    n_classes, level = 3, 0.9
    base = _rows(rng, 1500, n_classes, shift=2.0)
    cand = _rows(rng, 900, n_classes, shift=1.0)
    # The baseline uses 20 buckets; the candidate 13 of which bucket 12 stays empty (K' = 12).
    base_buckets, cand_buckets = rng.integers(0, 20, 1500), rng.integers(0, 12, 900)
    keys = [("a",), ("b",)]

    def state(data, buckets, k):
        logits, labels, weights, slices = data
        return class_stats_partial(logits, labels, weights=weights, slice_ids=slices, slice_keys=keys,
                                   buckets=buckets, n_buckets=k)

    stats = UnpairedStats(state(base, base_buckets, 20), state(cand, cand_buckets, 13))
    report = stats.finalize(level=level)

    def expected(cls, sl, what):
        vb, sb, kb = _brute(*base, base_buckets, 20, cls, sl, what)
        vc, sc, kc = _brute(*cand, cand_buckets, 13, cls, sl, what)
        assert (kb, kc) == (20, 12)
        half = sps.t.ppf((1 + level) / 2, min(kb, kc) - 1) * math.sqrt(sb**2 + sc**2)
        return vc - vb, vc - vb - half, vc - vb + half

    pc_cols = report.per_class
    for i in range(len(pc_cols["slice"])):
        sl, cls = int(pc_cols["slice"][i]), int(pc_cols["class"][i])
        got = [pc_cols[f"ce_mean_diff{s}"][i] for s in ("", "_lo", "_hi")]
        np.testing.assert_allclose(got, expected(cls, sl, "ce"), rtol=1e-9)
    for sl in range(2):
        for metric, what in (("ce_mean", "ce"), ("accuracy", "acc")):
            got = [report.per_slice[f"{metric}_diff{s}"][sl] for s in ("", "_lo", "_hi")]
            np.testing.assert_allclose(got, expected(None, sl, what), rtol=1e-9)
    # Across slices (the overall rows), and the verdict the interval gives.
    overall = stats.collapse_slices().finalize(level=level).per_slice
    want = expected(None, None, "ce")
    np.testing.assert_allclose([overall[f"ce_mean_diff{s}"][0] for s in ("", "_lo", "_hi")], want, rtol=1e-9)
    assert overall["ce_mean_verdict"][0] == "worse" and want[1] > 0
    # AUC's interval is analytic: its state has no bucket axis, so no unpaired interval.
    if "auc_diff" in report.per_class:
        assert np.isfinite(report.per_class["auc_diff"]).all()
        assert np.isnan(report.per_class["auc_diff_lo"]).all() and np.isnan(report.per_class["auc_diff_hi"]).all()
        assert all(v is None for v in report.per_class["auc_verdict"])


def test_unpaired_without_buckets_or_rows_on_one_side_gives_nan_intervals():
    rng = np.random.default_rng(3)
    logits, labels, weights, _ = _rows(rng, 400, 3, 1.0)
    with_buckets = class_stats_partial(logits, labels, buckets=rng.integers(0, 20, 400), n_buckets=20)
    one_bucket = class_stats_partial(logits, labels)
    report = UnpairedStats(one_bucket, with_buckets).finalize()
    assert np.allclose(report.per_slice["ce_mean_diff"], 0.0)
    assert np.isnan(report.per_slice["ce_mean_diff_lo"]).all()
    # A class seen on one side only: present, with a NaN difference (never a breach).
    only_two = class_stats_partial(logits[labels < 2], labels[labels < 2], buckets=np.zeros((labels < 2).sum(), int),
                                   n_buckets=20)
    report = UnpairedStats(only_two, with_buckets).finalize()
    assert list(report.per_class["class"]) == [0, 1, 2]
    assert np.isnan(report.per_class["ce_mean_diff"][2]) and report.per_class["n_baseline"][2] == 0


# --------------------------------------------------------------------------- the stored state


def _parquet_round_trip(table: pa.Table) -> pa.Table:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return pq.read_table(io.BytesIO(sink.getvalue()))


@pytest.mark.parametrize("case", ["sliced", "unsliced", "empty"])
def test_state_table_round_trips_every_array_bit_for_bit(case):
    rng = np.random.default_rng(1)
    logits, labels, weights, slices = _rows(rng, 700, 4, 1.0)
    logits[3, 1] = np.nan  # a non-finite row counted
    if case == "empty":
        stats, slice_by, types = ClassStats.empty(4, n_buckets=20), [], []
    elif case == "unsliced":
        stats = class_stats_partial(logits, labels, weights=weights, buckets=rng.integers(0, 20, 700), n_buckets=20)
        slice_by, types = [], []
    else:  # an int and a nullable string slice column
        keys = [(1, "x"), (2, None)]
        stats = class_stats_partial(logits, labels, weights=weights, slice_ids=slices, slice_keys=keys,
                                    buckets=rng.integers(0, 20, 700), n_buckets=20)
        slice_by, types = ["shard", "region"], [pa.int64(), pa.string()]
    loaded = state_from_table(_parquet_round_trip(state_table(stats, slice_by, types)))
    assert loaded.slice_keys == stats.slice_keys and loaded.options() == stats.options()
    for name in STATE_ATTRIBUTES:
        a, b = getattr(stats, name), getattr(loaded, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), name  # bit for bit, NaN and -0.0 included


# --------------------------------------------------------------------------- nightly runs


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def make_day(folder: Path, day: str, seed: int, drift: float = 0.0, classes: int = 3, name: str = "prod") -> None:
    generate_dump(folder / "dumps" / name / f"date={day}", rows=3000, classes=classes, shards=2,
                  slices={"model": ["a", "b"]}, seed=seed, drift=drift, overwrite=True)


def make_same_model_days(folder: Path, days=DAYS[:2], drift: float = 0.0) -> None:
    """Different rows of one model on each day: one dump's shards split over the days
    (a different seed would change the class mix too)."""
    dump = generate_dump(folder / f"whole-{drift}", rows=3000 * len(days), classes=3, shards=2 * len(days),
                         slices={"model": ["a", "b"]}, seed=1, drift=drift)
    for i, day in enumerate(days):
        target = folder / "dumps" / "prod" / f"date={day}"
        target.mkdir(parents=True)
        for file in dump.files[2 * i: 2 * i + 2]:
            Path(file).rename(target / Path(file).name)


def gate_config(folder: Path, gate, baseline=None, sources=("prod",), **top) -> Path:
    config = {
        "report_root": str(folder / "reports"),
        "sources": [{"name": name, "paths": [str(folder / "dumps" / name / "date={date}")]} for name in sources],
        "defaults": {"slice_by": ["model"]},
        "gate": gate,
        **({"baseline": baseline} if baseline else {}),
        **top,
    }
    return write_yaml(folder / "nightly.yaml", config)


def tables_folder(folder: Path, day: str, name: str = "prod") -> Path:
    return Path(run_folder(str(folder / "reports-tables"), day, name))


def breach_lines(capsys) -> tuple[list[str], list[str]]:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines.pop().startswith("page: ")  # the history page, last
    return [l for l in lines if not l.startswith("BREACH")], [l for l in lines if l.startswith("BREACH")]


CE_GATE = {"metric": "ce_mean", "max_increase": 0.01, "mode": "interval"}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_worse_model_breaches_and_a_rerun_cannot_hide_it(tmp_path, capsys):
    """Day 1: no baseline, passes. Day 2: a clearly worse model for prod (exit 3, naming
    source, slice, class, value and interval), while canary (a model no worse) is written and
    passes. The stored state finalizes to the written report exactly."""
    for name in ("prod", "canary"):
        make_day(tmp_path, DAYS[0], seed=1, name=name)
    make_day(tmp_path, DAYS[1], seed=2, drift=3.0, name="prod")
    make_day(tmp_path, DAYS[1], seed=2, name="canary")  # other rows, lower CE
    config_path = gate_config(tmp_path, CE_GATE, sources=("prod", "canary"))

    assert main(["nightly", "--config", str(config_path), "--date", DAYS[0]]) == 0
    lines, breaches = breach_lines(capsys)
    assert not breaches and all("gate: no baseline (no earlier run of" in line for line in lines), lines

    assert main(["nightly", "--config", str(config_path), "--date", DAYS[1]]) == 3
    lines, breaches = breach_lines(capsys)
    assert lines[0].startswith(f"prod {DAYS[1]}: written to ") and lines[0].endswith("breached"), lines
    assert lines[1].startswith(f"canary {DAYS[1]}: written to ") and lines[1].endswith(f"gates passed against {DAYS[0]}")
    assert breaches and all(line.startswith(f"BREACH prod {DAYS[1]}: gate against {DAYS[0]}: ce_mean max_increase 0.01 "
                                            "(interval): ") for line in breaches)
    overall = [l for l in breaches if ": overall, all classes: candidate - baseline = +" in l]
    assert len(overall) == 1 and "the whole interval lies above +0.01" in overall[0]
    assert any(": model=a, class " in line for line in breaches)

    # gate.parquet and the history agree with the lines; every interval lies above the limit.
    gate = pq.read_table(tables_folder(tmp_path, DAYS[1]) / f"{GATE_TABLE}.parquet").to_pylist()
    above = [r for r in gate if r["ce_mean_diff_lo"] > 0.01]
    assert len(above) == len(breaches)
    for row in above:
        assert any(f"{row['ce_mean_diff']:+.6g} [{row['ce_mean_diff_lo']:+.6g}, {row['ce_mean_diff_hi']:+.6g}]" in line
                   for line in breaches)
    metrics = pq.read_table(tmp_path / "reports" / f"run_date={DAYS[1]}" / "source=prod" / METRICS_FILE)
    gate_rows = metrics.filter(pc.field("scope") == "gate")
    assert set(gate_rows.column("metric").to_pylist()) == {"ce_mean_diff"}
    assert sum(gate_rows.column("breached").to_pylist()) == len(breaches)
    assert set(gate_rows.column("threshold").to_pylist()) == {0.01}

    # A re-run with the same inputs and baseline is skipped, with the stored verdict.
    state = nightly_flow(str(config_path), DAYS[1], return_state=True)
    assert state.is_failed() and "gate breached" in state.message
    with pytest.raises(GateBreach):
        state.result()
    assert main(["nightly", "--config", str(config_path), "--date", DAYS[1], "--no-prefect"]) == 3
    lines, again = breach_lines(capsys)
    assert lines[0] == f"prod {DAYS[1]}: unchanged, skipped; stored verdict: gate against {DAYS[0]}: {len(breaches)} breached"
    assert again == breaches

    # The stored state finalizes to the report written beside it, exactly.
    for day in DAYS[:2]:
        folder = tables_folder(tmp_path, day)
        stats, _ = read_state(str(folder))
        written = pq.read_table(folder / "per_class.parquet")
        columns = metric_columns("class")
        finalized = [part.finalize(level=0.95).per_class for part, _ in report_parts(stats, ("model",))]
        for name in columns:
            got = np.concatenate([np.asarray(p[name], dtype=float) for p in finalized])
            want = written.column(name).to_numpy(zero_copy_only=False).astype(float)
            assert np.array_equal(got, want, equal_nan=True), name


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_same_model_passes_in_interval_mode_point_mode_flags_every_increase(tmp_path, capsys):
    make_same_model_days(tmp_path)
    config_path = gate_config(tmp_path, [CE_GATE, {"metric": "accuracy", "max_decrease": 0.0}])
    state = nightly_flow(str(config_path), DAYS[0], DAYS[1], return_state=True)
    assert state.is_completed(), state.message
    assert [o.gate.status for o in state.result()] == ["no baseline", "passed"]
    rows = pq.read_table(tables_folder(tmp_path, DAYS[1]) / f"{GATE_TABLE}.parquet").to_pylist()
    (overall,) = [r for r in rows if r["overall"] and r["class"] is None]
    assert overall["ce_mean_diff_lo"] < 0 < overall["ce_mean_diff_hi"] and overall["n"] == overall["n_baseline"] == 3000

    # Point mode, no increase allowed: every row whose CE rose breaches, whatever its interval.
    gate_config(tmp_path, {"metric": "ce_mean", "max_increase": 0.0, "mode": "point"})
    assert main(["nightly", "--config", str(config_path), "--date", DAYS[1], "--no-prefect"]) == 3
    lines, breaches = breach_lines(capsys)
    assert lines[0].startswith(f"prod {DAYS[1]}: written to ")  # the gates changed: not skipped
    risen = [r for r in rows if r["ce_mean_diff"] > 0]
    assert risen and len(breaches) == len(risen)
    assert all("(point): " in line and "the difference is above +0" in line for line in breaches)


@pytest.mark.slow
def test_pinned_baseline_date_against_previous(tmp_path, capsys):
    """Day 1 good, days 2 and 3 the same worse model: against the previous run day 3
    passes; against day 1 pinned, days 2 and 3 breach and day 1 is the baseline itself."""
    make_day(tmp_path, DAYS[0], seed=1)
    make_same_model_days(tmp_path, DAYS[1:], drift=3.0)
    config = build_config(NightlyConfig, gate_config(tmp_path, CE_GATE))
    outcomes = nightly_run(config, list(DAYS))[0]
    assert [(o.gate.status, o.gate.baseline) for o in outcomes] == [
        ("no baseline", None), ("breached", DAYS[0]), ("passed", DAYS[1])]

    config = build_config(NightlyConfig, gate_config(tmp_path, CE_GATE, baseline=DAYS[0]))
    assert str(config.baseline) == DAYS[0]
    outcomes = nightly_run(config, list(DAYS))[0]
    assert [(o.status, o.gate.status, o.gate.baseline) for o in outcomes] == [
        ("written", "no baseline", None), ("written", "breached", DAYS[0]), ("written", "breached", DAYS[0])]
    assert outcomes[0].gate.detail == f"this run is the pinned baseline {DAYS[0]}"
    # A per-source setting wins over the global one.
    data = yaml.safe_load((tmp_path / "nightly.yaml").read_text())
    data["sources"][0].update(baseline="previous", gate=[{"metric": "ce_mean", "max_increase": 5.0}])
    config = build_config(NightlyConfig, write_yaml(tmp_path / "nightly.yaml", data))
    (outcome,) = nightly_run(config, [DAYS[2]])[0]
    assert (outcome.gate.status, outcome.gate.baseline) == ("passed", DAYS[1])
    # A pinned date without a stored state: no baseline, said so.
    config = build_config(NightlyConfig, gate_config(tmp_path, CE_GATE, baseline="2026-11-01"))
    (outcome,) = nightly_run(config, [DAYS[2]])[0]
    assert outcome.gate.status == "no baseline" and outcome.exit_code == 0
    assert outcome.gate.detail.startswith("no stored state ") and STATE_FILE in outcome.gate.detail


@pytest.mark.slow
def test_a_baseline_with_other_classes_is_reported_not_compared(tmp_path, capsys):
    make_day(tmp_path, DAYS[0], seed=1, classes=3)
    make_day(tmp_path, DAYS[1], seed=2, classes=4)
    config_path = gate_config(tmp_path, CE_GATE)
    assert main(["nightly", "--config", str(config_path), "--from", DAYS[0], "--to", DAYS[1], "--no-prefect"]) == 1
    lines, _ = breach_lines(capsys)
    assert lines[1].startswith(f"prod {DAYS[1]}: written to ")
    assert lines[1].endswith(f"gate: not comparable (baseline run {DAYS[0]}: it has 3 classes, this run 4; set "
                             "`baseline:` to a run date made with this run's classes and slices)")
    assert (tables_folder(tmp_path, DAYS[1]) / STATE_FILE).exists()
    assert not (tables_folder(tmp_path, DAYS[1]) / f"{GATE_TABLE}.parquet").exists()


@pytest.mark.parametrize("top, expected", [
    ({"gate": {"metric": "nope", "max_increase": 0.1}}, "key 'gate.0.metric': unknown gate metric 'nope'"),
    ({"baseline": "yesterday"}, "key 'baseline"),
    ({"sources": [{"name": "prod", "paths": ["x"], "gate": {"metric": "ce_mean"}}]},
     "key 'sources.0.gate.0': a gate needs exactly one of max_increase or max_decrease"),
])
def test_bad_gate_settings_are_config_errors_naming_the_key(tmp_path, top, expected):
    config = {"report_root": str(tmp_path / "reports"), "sources": [{"name": "prod", "paths": ["x"]}], **top}
    path = write_yaml(tmp_path / "bad.yaml", config)
    with pytest.raises(UsageError, match=re.escape(expected)):
        build_config(NightlyConfig, path)
