"""The merge laws, written once for every mergeable state type (xent_kernels.mergeable).

``MERGEABLES`` is the table: per type, how to make the state of some rows, its identity,
its exact content (compared bit for bit) and its values (compared to the tolerance the
type declares: each statistic's ``rtol``/``atol`` for the report values, exact for
counts). One Hypothesis strategy draws the rows (two models' float32 or float64 predictions of
one kind with a non-finite row, labels with ignored rows, weights, three slices,
jackknife buckets, an exact-AUC cap across which slices fall, a KL smoothing) and a
random sharding (empty shards too); the tests below hold every type to the same laws,
and a new mergeable type is one more entry in the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax

from flows.engine import BadShard, PieceResult
from flows.monitor.join import JoinResult
from xent_kernels import STATISTIC, ClassStats, class_stats_partial
from xent_kernels.drift import PerSampleKL, per_sample_kl_partial
from xent_kernels.mergeable import Mergeable, merge_states
from xent_kernels.statistics import canonical_rows
from xent_kernels.paired import PairedStats, paired_partial
from xent_kernels.hashing import splitmix64
from xent_kernels.tokens import TokenStats, token_stats_partial

KEYS = [("a",), ("b",), (None,)]
K = 4  # jackknife buckets
N_BINS = 7


@dataclass(frozen=True)
class Rows:
    """Drawn rows: two models' predictions of one kind, and what they share."""

    kind: str
    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    slice_ids: np.ndarray
    buckets: np.ndarray
    ids: np.ndarray  # each row's position among all drawn rows
    exact_auc_max_values: int | None
    smoothing: float | None  # of the per-sample KL

    def take(self, part: slice) -> "Rows":
        arrays = {name: getattr(self, name)[part] for name in ("first", "second", "labels", "weights", "slice_ids",
                                                               "buckets", "ids")}
        return Rows(self.kind, exact_auc_max_values=self.exact_auc_max_values, smoothing=self.smoothing, **arrays)

    @property
    def n_classes(self) -> int:
        return self.first.shape[1]

    def slices(self) -> dict[str, Any]:
        """The slices of these rows alone, as a batch declares them: shards' states have
        different slices."""
        return self.slices_of(np.ones(len(self.slice_ids), dtype=bool))

    def slices_of(self, rows: np.ndarray) -> dict[str, Any]:
        """The slices of the rows where `rows` is True, as ``slices``."""
        present = np.unique(self.slice_ids[rows])
        return dict(slice_ids=np.searchsorted(present, self.slice_ids[rows]), slice_keys=[KEYS[i] for i in present])


def make_rows(n: int, n_classes: int, kind: str, seed: int, scale: float = 3.0, dtype: type = np.float64,
              exact_auc_max_values: int | None = None, smoothing: float | None = None) -> Rows:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(2, n, n_classes))
    log_probs = log_softmax(logits, axis=2)
    preds = {"logits": logits, "log_probs": log_probs, "probs": np.exp(log_probs)}[kind].astype(dtype)
    if kind == "probs" and n:  # a class the second model gives 0: an infinite per-sample KL
        preds[1, 0] = np.eye(n_classes)[0]
    if n > 5:  # a row the kernels skip (counted as non-finite)
        preds[1, 5, 0] = np.nan
    return Rows(kind, preds[0], preds[1], rng.integers(-1, n_classes, n), rng.uniform(0.0, 2.0, n),
                rng.integers(0, len(KEYS), n), rng.integers(0, K, n), np.arange(n), exact_auc_max_values, smoothing)


@st.composite
def rows_and_cuts(draw) -> tuple[Rows, list[int]]:
    n = draw(st.integers(0, 200))
    n_classes = draw(st.sampled_from([2, 3, 10, 40]))
    rows = make_rows(
        n, n_classes, draw(st.sampled_from(["logits", "probs", "log_probs"])), draw(st.integers(0, 2**32 - 1)),
        scale=draw(st.sampled_from([0.1, 3.0, 30.0])), dtype=draw(st.sampled_from([np.float32, np.float64])),
        # exact AUC off, a cap some slices' rows pass, or the default
        exact_auc_max_values=draw(st.sampled_from([0, 40 * (n_classes + 2), None])),
        smoothing=draw(st.sampled_from([None, 1e-4])),
    )
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    return rows, [0, *cuts, n]


# Beyond what the draws reach: 50 classes, 900 rows in three shards.
WIDE = (make_rows(900, 50, "logits", seed=3), [0, 250, 600, 900])


# --------------------------------------------------------------------------- per type: state, identity, content


def _class_stats(rows: Rows) -> ClassStats:
    return class_stats_partial(rows.second, rows.labels, kind=rows.kind, weights=rows.weights, **rows.slices(),
                               reference=rows.first, n_bins=N_BINS, buckets=rows.buckets, n_buckets=K,
                               exact_auc_max_values=rows.exact_auc_max_values)


def _paired(rows: Rows) -> PairedStats:
    return paired_partial(rows.first, rows.second, rows.labels, kind=rows.kind, weights=rows.weights,
                          **rows.slices(), n_bins=N_BINS, buckets=rows.buckets, n_buckets=K,
                          exact_auc_max_values=rows.exact_auc_max_values)


def _per_sample_kl(rows: Rows) -> PerSampleKL:
    return per_sample_kl_partial(rows.first, rows.second, rows.labels, kind=rows.kind, **rows.slices(),
                                 smoothing=rows.smoothing)


def _piece_result(rows: Rows) -> PieceResult:
    """A piece's result whose other fields add up over shards: a bad shard named by each
    ignored row, a probability-like file named by each slice of its rows."""
    bad = tuple(BadShard(f"row-{i:04d}", "ignored", 1) for i in rows.ids[rows.labels < 0])
    files = tuple(sorted({f"slice-{s}" for s in rows.slice_ids}))
    return PieceResult(_class_stats(rows), bad, len(rows.labels), files)


def _join_result(rows: Rows) -> JoinResult:
    """A join's result whose counts add up over shards: rows with a label matched,
    ignored ones on the first side only, those of slice 0 also on the second only."""
    return JoinResult(_per_sample_kl(rows), int((rows.labels >= 0).sum()), int((rows.labels < 0).sum()),
                      int((rows.slice_ids == 0).sum()))


def _class_stats_bits(state: ClassStats) -> dict[str, Any]:
    out: dict[str, Any] = {"slice_keys": state.slice_keys, **state._arrays()}
    # A multiset: a state keeps its AUC rows in merge order, and finalize sorts them.
    out["auc_rows"] = [None if rows is None else canonical_rows(rows).tobytes() for rows in state.auc_rows]
    return out


def _class_stats_values(state: ClassStats) -> dict[str, tuple[np.ndarray, float, float]]:
    """Every report column and array of the state's report, with its statistic's tolerance;
    exact for the columns that count rows."""
    report = state.finalize()
    out = {}
    for scope in ("per_class", "per_slice"):
        for column, values in getattr(report, scope).items():
            statistic = STATISTIC.get(column.removesuffix("_lo").removesuffix("_hi"))
            rtol, atol = (statistic.rtol, statistic.atol) if statistic is not None else (0.0, 0.0)
            out[f"{scope}.{column}"] = (values, rtol, atol)
    for name in ("predicted_marginal", "confidence_hist", "confusion_n", "confusion_weight", "auc_exact"):
        statistic = STATISTIC.get(name)
        out[name] = (getattr(report, name), statistic.rtol if statistic else 0.0, statistic.atol if statistic else 0.0)
    return out


def _per_sample_kl_values(state: PerSampleKL) -> dict[str, tuple[np.ndarray, float, float]]:
    return {**_class_stats_values(state.stats), "infinite": (state.infinite_counts(KEYS), 0.0, 0.0)}


def _counts_bits(counts: dict) -> dict[str, Any]:
    return {repr(key): value for key, value in sorted(counts.items(), key=repr)}


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}.{name}": value for name, value in values.items()}


@dataclass(frozen=True)
class MergeCase:
    """How the generic tests make and compare one mergeable type's states."""

    type: type
    state: Callable[[Rows], Any]  # the state of some rows
    empty: Callable[[Rows], Any]  # the identity, for states of these rows' shape
    bits: Callable[[Any], dict[str, Any]]  # the state's whole content, compared exactly
    values: Callable[[Any], dict[str, tuple[np.ndarray, float, float]]]  # (value, rtol, atol) after merges

    @property
    def name(self) -> str:
        return self.type.__name__


def _token_stats(rows: Rows) -> TokenStats:
    """The rows as scored tokens: the true class the target (an ignored row's class 0),
    its log-probability under the second model, each row's top-3 as its list."""
    log_probs = log_softmax(rows.second.astype(np.float64), axis=1)
    target = np.maximum(rows.labels, 0)
    keep = np.isfinite(log_probs).all(axis=1)
    k = min(3, rows.n_classes)
    top = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    state, bad, column, reason = token_stats_partial(
        target[keep], log_probs[keep, target[keep]], **rows.take(slice(None)).slices_of(keep),
        positions=rows.ids[keep] % 37, buckets=rows.buckets[keep], n_buckets=K, n_bins=N_BINS,
        topk_offsets=np.arange(0, k * keep.sum() + 1, k), topk_ids=top[keep].reshape(-1),
        topk_logprobs=np.take_along_axis(log_probs, top, axis=1)[keep].reshape(-1),
        doc_hashes=splitmix64(rows.ids[keep] // 4),  # documents of four rows, across shards
        source=f"rows-{rows.ids[0] // 8}" if len(rows.ids) else "")  # a file's name: shards near the start share it
    assert bad == -1, (bad, column, reason)
    return state


def _token_bits(state: TokenStats) -> dict[str, Any]:
    names = ("cells", "cells_comp", "ece", "ece_comp", "text_counts", "nonfinite", "ignored", "token_sums", "token_rank1",
             "token_listed", "token_top1")
    documents = {f"documents.{name}": getattr(state.documents, name)
                 for name in ("slice", "hash", "n", "ce", "ce_comp", "tokens", "first", "last", "first_source",
                              "last_source", "sources")}
    return {"keys": state.slice_keys, **{name: getattr(state, name) for name in names}, **documents}


def _token_values(state: TokenStats) -> dict[str, tuple[np.ndarray, float, float]]:
    report = state.finalize()
    return {f"{table}.{name}": (np.asarray(values), 1e-12, 1e-15) for table in ("summary", "positions", "frequency",
                                                                             "per_token")
            for name, values in getattr(report, table).items()}


MERGEABLES = [
    MergeCase(
        ClassStats, _class_stats,
        lambda rows: ClassStats.empty(rows.n_classes, **_class_stats(rows.take(slice(0, 0))).options()),
        _class_stats_bits, _class_stats_values,
    ),
    MergeCase(
        PairedStats, _paired,
        lambda rows: PairedStats.empty(rows.n_classes, n_bins=N_BINS, n_buckets=K,
                                       exact_auc_max_values=rows.exact_auc_max_values),
        lambda s: {**_prefixed("baseline", _class_stats_bits(s.baseline)),
                   **_prefixed("candidate", _class_stats_bits(s.candidate)), **_counts_bits(s.outcomes)},
        lambda s: _paired_values(s),
    ),
    MergeCase(
        PerSampleKL, _per_sample_kl,
        lambda rows: PerSampleKL.empty(rows.n_classes),
        lambda s: {**_class_stats_bits(s.stats), **_counts_bits(s.infinite)},
        lambda s: _per_sample_kl_values(s),
    ),
    MergeCase(
        PieceResult, _piece_result,
        lambda rows: PieceResult(ClassStats.empty(rows.n_classes, **_class_stats(rows.take(slice(0, 0))).options())),
        lambda r: {**_class_stats_bits(r.stats), "bad": r.bad_shards, "rows": r.rows_read, "probs": r.probability_like},
        lambda r: {**_class_stats_values(r.stats), "rows": (np.array(r.rows_read), 0.0, 0.0),
                   "bad": (np.array([(b.url, b.reason, b.rows) for b in r.bad_shards], object), 0.0, 0.0),
                   "probs": (np.array(r.probability_like, object), 0.0, 0.0)},
    ),
    MergeCase(
        TokenStats, _token_stats,
        lambda rows: TokenStats.empty(n_buckets=K, n_bins=N_BINS),
        _token_bits, _token_values,
    ),
    MergeCase(
        JoinResult, _join_result,
        lambda rows: JoinResult.empty(PerSampleKL, n_classes=rows.n_classes),
        lambda r: {**_class_stats_bits(r.stats.stats), **_counts_bits(r.stats.infinite),
                   "counts": (r.matched, r.only_first, r.only_second)},
        lambda r: {**_per_sample_kl_values(r.stats),
                   "counts": (np.array([r.matched, r.only_first, r.only_second]), 0.0, 0.0)},
    ),
]


def _paired_values(state: PairedStats) -> dict[str, tuple[np.ndarray, float, float]]:
    """Both sides' report values, and the paired report's outcome counts (exact)."""
    report = state.finalize()
    out = {**_prefixed("baseline", _class_stats_values(state.baseline)),
           **_prefixed("candidate", _class_stats_values(state.candidate))}
    for scope in ("per_class", "per_slice"):
        for column in ("n", "wins", "ties", "losses"):
            out[f"paired.{scope}.{column}"] = (getattr(report, scope)[column], 0.0, 0.0)
    return out


def assert_same_bits(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], np.ndarray):
            assert a[name].dtype == b[name].dtype, name
            assert_array_equal(a[name], b[name], err_msg=name, strict=True)
        else:
            assert a[name] == b[name], name


def assert_same_values(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, (value, rtol, atol) in a.items():
        other = b[name][0]
        if value.dtype.kind in "biu" or value.dtype == object:
            assert_array_equal(value, other, err_msg=name)
        else:
            assert_allclose(value, other, rtol=rtol, atol=atol, err_msg=name)


def shard_states(case: MergeCase, rows: Rows, cuts: list[int]) -> list:
    return [case.state(rows.take(slice(a, b))) for a, b in zip(cuts[:-1], cuts[1:])]


CASES = pytest.mark.parametrize("case", MERGEABLES, ids=lambda case: case.name)


# --------------------------------------------------------------------------- the laws


def test_the_table_holds_every_mergeable_type():
    import flows.engine.pieces
    import flows.monitor.join
    import xent_kernels.drift
    import xent_kernels.paired
    import xent_kernels.stats
    import xent_kernels.tokens

    declared = {value for module in (xent_kernels.stats, xent_kernels.paired, xent_kernels.drift, xent_kernels.tokens,
                                     flows.engine.pieces, flows.monitor.join)
                for value in vars(module).values()
                if isinstance(value, type) and value.__module__ == module.__name__ and issubclass(value, Mergeable)}
    assert declared == {case.type for case in MERGEABLES}


def commutative(case: MergeCase, rows: Rows) -> None:
    third = len(rows.labels) // 3
    a, b = case.state(rows.take(slice(0, third))), case.state(rows.take(slice(third, None)))
    assert isinstance(a, Mergeable)
    assert_same_bits(case.bits(case.type.merge(a, b)), case.bits(case.type.merge(b, a)))
    assert_same_bits(case.bits(merge_states(a, b)), case.bits(case.type.merge(a, b)))


def identity(case: MergeCase, rows: Rows) -> None:
    state, empty = case.state(rows), case.empty(rows)
    for merged in (case.type.merge(state, empty), case.type.merge(empty, state), case.type.merge(empty, state, empty)):
        assert_same_bits(case.bits(merged), case.bits(state))
    assert_same_bits(case.bits(case.type.merge(empty, empty)), case.bits(empty))
    assert_same_bits(case.bits(case.type.merge(state)), case.bits(state))


def associative(case: MergeCase, rows: Rows) -> None:
    n = len(rows.labels)
    a, b, c = (case.state(rows.take(part)) for part in (slice(0, n // 4), slice(n // 4, n // 2), slice(n // 2, None)))
    merge = case.type.merge
    left, right = case.values(merge(merge(a, b), c)), case.values(merge(a, merge(b, c)))
    assert_same_values(left, right)
    assert_same_values(case.values(merge(a, b, c)), left)
    # n-ary merge is the left fold of binary merges, to the bit
    assert_same_bits(case.bits(merge(a, b, c)), case.bits(merge(merge(a, b), c)))


def shards_give_the_whole(case: MergeCase, rows: Rows, cuts: list[int], random: Random, fan_in: int) -> None:
    parts = shard_states(case, rows, cuts)
    random.shuffle(parts)
    while len(parts) > 1:  # a random tree: merge up to fan_in neighbours at a random place
        i = random.randrange(len(parts) - 1)
        parts[i : i + fan_in] = [merge_states(*parts[i : i + fan_in])]
    merged = case.type.merge(parts[0], case.empty(rows))  # the engine merges with the identity too
    assert_same_values(case.values(merged), case.values(case.state(rows)))


@CASES
def test_the_laws_on_fixed_rows(case):
    """Every law once on fixed rows (the fast loop); the drawn ones below are slow."""
    rows = make_rows(300, 10, "logits", seed=1, exact_auc_max_values=60 * 12)
    commutative(case, rows)
    identity(case, rows)
    associative(case, rows)
    shards_give_the_whole(case, rows, [0, 0, 70, 200, 300], Random(1), 2)


@pytest.mark.slow
@CASES
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=rows_and_cuts())
@example(data=WIDE)
def test_merge_is_commutative_bit_for_bit(case, data):
    commutative(case, data[0])


@pytest.mark.slow
@CASES
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=rows_and_cuts())
@example(data=WIDE)
def test_empty_is_the_identity(case, data):
    identity(case, data[0])


@pytest.mark.slow
@CASES
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=rows_and_cuts())
@example(data=WIDE)
def test_merge_is_associative_and_n_ary(case, data):
    associative(case, data[0])


@pytest.mark.slow
@CASES
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=rows_and_cuts(), random=st.randoms(use_true_random=False), fan_in=st.integers(2, 4))
@example(data=WIDE, random=Random(0), fan_in=2)
def test_merging_shards_gives_the_state_of_the_whole(case, data, random, fan_in):
    shards_give_the_whole(case, *data, random, fan_in)


def test_merge_needs_a_state_and_one_type():
    with pytest.raises(ValueError, match="at least one"):
        merge_states()
    with pytest.raises(ValueError, match="at least one"):
        ClassStats.merge()
    with pytest.raises(TypeError, match="different types"):
        merge_states(ClassStats.empty(3), PerSampleKL.empty(3))
