"""flows.phases: where an evaluation's time goes (benchmarks/bench_eval.py prints it)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from flows import phases
from flows.config import EvalConfig
from flows.engine import evaluate
from flows.generate import generate_dump


def covered_by_grid(spans: list[tuple[float, float]], step: float = 1e-3) -> float:
    """The union's length, the obvious way: count the grid cells any span covers."""
    cells = set()
    for start, end in spans:
        cells.update(range(round(start / step), round(end / step)))
    return len(cells) * step


spans = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 300)).map(lambda s: (s[0] / 1000, (s[0] + s[1]) / 1000)),
                 max_size=30)


@given(st.lists(spans, min_size=1, max_size=3))
def test_summed_and_wall_time_of_pooled_processes(processes):
    summary = phases.summarize(*({"kernel": spans} for spans in processes))
    pooled = [span for spans in processes for span in spans]
    if not pooled:
        assert summary == {"kernel": (0.0, 0.0)}
        return
    summed, wall = summary["kernel"]
    assert np.isclose(summed, sum(end - start for start, end in pooled))
    assert np.isclose(wall, covered_by_grid(pooled), atol=1e-9)
    assert wall <= summed + 1e-12


def test_off_unless_recording():
    with phases.phase("kernel"):
        pass
    assert phases.stop() == {}


def test_workers_record_every_phase_of_an_evaluation(tmp_path, client):
    dump = generate_dump(tmp_path / "dump", rows=20_000, classes=5, shards=2, seed=0)
    client.run(phases.record)
    try:
        evaluate(EvalConfig(sources=[str(tmp_path / "dump")]), client)
    finally:
        recorded = list(client.run(phases.stop).values())
    summary = phases.summarize(*recorded)
    assert set(phases.PHASES) <= set(summary), summary
    batches = sum(len(r.get("kernel", [])) for r in recorded)
    assert batches >= len(dump.files)  # a batch at least per shard
    for summed, wall in summary.values():
        assert 0 < wall <= summed + 1e-9
