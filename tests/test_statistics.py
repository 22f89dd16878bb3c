"""Generic tests driven by the table of statistics (``xent_kernels.STATISTICS``).

``REFERENCES`` maps every statistic to a float64 reference written the obvious way
(over ``reference.ReportRows``), as numbagg's ``COMPARISONS`` does; a statistic added
to the table without a reference fails ``test_every_statistic_has_a_reference``. Each
test below runs for every statistic: against its reference at its tolerance, units and
intervals. The merge laws and independence of sharding hold every statistic to its
tolerance in tests/test_merge_laws.py, with every mergeable type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

import reference as ref
from xent_kernels import INFORMATION_COLUMNS, STATISTICS, ClassStats, class_columns, class_stats_partial, summary_columns

KEYS = [("a",), ("b",), ("c",)]
N_BINS = 15


@dataclass(frozen=True)
class Ref:
    """per_class(rows, mask of the cell's rows); per_slice(rows, slice index)."""

    per_class: Callable | None = None
    per_slice: Callable | None = None


def _in_slice(r: ref.ReportRows, s: int) -> np.ndarray:
    return r.kept & (r.slice == s)


def _mean(value: Callable) -> Ref:
    """The weighted mean of a per-row value, per cell and per slice."""
    return Ref(
        per_class=lambda r, m: r.weighted_mean(value(r), m),
        per_slice=lambda r, s: r.weighted_mean(value(r), _in_slice(r, s)),
    )


def _ce_std(r, m):
    mean = r.weighted_mean(r.ce, m)
    return math.sqrt(r.weighted_mean((r.ce - mean) ** 2, m))


def _ce_macro(r, s):
    means = [
        r.weighted_mean(r.ce, _in_slice(r, s) & (r.label == c))
        for c in range(r.n_classes)
        if r.w[_in_slice(r, s) & (r.label == c)].sum() > 0
    ]
    return np.mean(means) if means else np.nan


def _hist(r, s):
    m = _in_slice(r, s)
    bins = np.minimum((r.conf[m] * N_BINS).astype(int), N_BINS - 1)
    out = np.zeros((N_BINS, 3))
    np.add.at(out[:, 0], bins, r.w[m])
    np.add.at(out[:, 1], bins, r.w[m] * (r.rank[m] == 0))
    np.add.at(out[:, 2], bins, r.w[m] * r.conf[m])
    return out


def _ece(r, s):
    hist = _hist(r, s)
    total = r.w[_in_slice(r, s)].sum()
    return np.abs(hist[:, 1] - hist[:, 2]).sum() / total if total > 0 else np.nan


def _marginal(r, s):
    m = _in_slice(r, s)
    total = r.w[m].sum()
    return (r.w[m, None] * r.q[m]).sum(axis=0) / total if total > 0 else np.full(r.n_classes, np.nan)


def _top5(r):
    return (r.rank < 5).astype(float) if r.n_classes > 5 else np.full(len(r.rank), np.nan)


def _brier(r):
    """Σ_j (q_j - y_j)², halved for binary models (sklearn's scale_by_half="auto")."""
    onehot = np.eye(r.n_classes)[np.where(r.label < 0, 0, r.label)]
    return ((r.q - onehot) ** 2).sum(axis=1) * (0.5 if r.n_classes == 2 else 1.0)


def _slice_rows(r, s):
    """sklearn's inputs for the kept rows of slice s: true, predicted, weights."""
    m = _in_slice(r, s)
    return r.label[m], np.argmax(r.q[m], axis=1), r.w[m]  # argmax: ties toward the lower index


def _cell(r, m):
    """The (slice, class) of a cell's row mask."""
    return r.slice[m][0], r.label[m][0]


def _rate(index: int) -> Ref:
    """Per class: sklearn's precision (0), recall (1) or F1 (2) of the cell's class in its slice."""

    def per_class(r, m):
        s, c = _cell(r, m)
        true, predicted, w = _slice_rows(r, s)
        return precision_recall_fscore_support(true, predicted, labels=[c], sample_weight=w, zero_division=0)[index][0]

    return Ref(per_class=per_class)


def _averaged(index: int, average: str) -> Ref:
    def per_slice(r, s):
        true, predicted, w = _slice_rows(r, s)
        if not len(true):
            return np.nan
        return precision_recall_fscore_support(true, predicted, average=average, sample_weight=w, zero_division=0)[index]

    return Ref(per_slice=per_slice)


def _confusion(weighted: bool):
    def per_slice(r, s):
        true, predicted, w = _slice_rows(r, s)
        return confusion_matrix(true, predicted, labels=range(r.n_classes), sample_weight=w if weighted else None)

    return Ref(per_slice=per_slice)


def _roc(r, mask, c, thresholds=None):
    """Class c's one-vs-rest AUC and its error bound, the obvious way: every (positive,
    negative) pair over the bins, pairs in the same bin as 1/2; exact (every distinct
    score its own bin, bound 0) without `thresholds`, as slices within the exact-AUC cap."""
    if thresholds is None:
        scores = r.q[mask, c]
        is_pos = r.label[mask] == c
        if not is_pos.any() or is_pos.all():
            return np.nan, np.nan
        return ref.delong(scores, is_pos, r.w[mask])[0], 0.0
    bins = np.minimum((r.q[mask, c] * thresholds).astype(int), thresholds - 1)
    is_pos = r.label[mask] == c
    pos = np.bincount(bins[is_pos], weights=r.w[mask][is_pos], minlength=thresholds)
    neg = np.bincount(bins[~is_pos], weights=r.w[mask][~is_pos], minlength=thresholds)
    if pos.sum() == 0 or neg.sum() == 0:
        return np.nan, np.nan
    wins = np.subtract.outer(np.arange(thresholds), np.arange(thresholds))  # positive bin - negative bin
    score = np.where(wins > 0, 1.0, np.where(wins == 0, 0.5, 0.0))
    pairs = np.outer(pos, neg)
    return (pairs * score).sum() / pairs.sum(), 0.5 * np.trace(pairs) / pairs.sum()


def _roc_ref(part: int, thresholds: int | None = None) -> Ref:
    def per_class(r, m):
        s, c = _cell(r, m)
        return _roc(r, _in_slice(r, s), c, thresholds)[part]

    def per_slice(r, s):
        if r.n_classes == 2:
            return _roc(r, _in_slice(r, s), 1, thresholds)[part]
        values = [_roc(r, _in_slice(r, s), c, thresholds)[part] for c in range(r.n_classes)]
        return np.nanmean(values) if np.isfinite(values).any() else np.nan

    return Ref(per_class=per_class, per_slice=per_slice)


REFERENCES: dict[str, Ref] = {
    "n": Ref(per_class=lambda r, m: m.sum(), per_slice=lambda r, s: _in_slice(r, s).sum()),
    "weight": Ref(per_class=lambda r, m: r.w[m].sum(), per_slice=lambda r, s: r.w[_in_slice(r, s)].sum()),
    "ce_mean": _mean(lambda r: r.ce),
    "ce_std": Ref(per_class=_ce_std),
    "ce_macro": Ref(per_slice=_ce_macro),
    "accuracy": _mean(lambda r: (r.rank == 0).astype(float)),
    "top5_accuracy": _mean(_top5),
    "p_true_mean": _mean(lambda r: r.p_true),
    "entropy_mean": _mean(lambda r: r.entropy),
    "ece": Ref(per_slice=_ece),
    "brier": _mean(_brier),
    "precision": _rate(0),
    "recall": _rate(1),
    "f1": _rate(2),
    **{f"{name}_{average}": _averaged(index, average)
       for index, name in enumerate(("precision", "recall", "f1")) for average in ("macro", "weighted")},
    "auc": _roc_ref(0),
    "auc_error_bound": _roc_ref(1),
    "n_ignored": Ref(per_slice=lambda r, s: (r.ignored & (r.slice == s)).sum()),
    "n_nonfinite": Ref(per_slice=lambda r, s: (r.nonfinite & (r.slice == s)).sum()),
    "kl_mean": _mean(lambda r: r.kl),
    "predicted_marginal": Ref(per_slice=_marginal),
    "confidence_hist": Ref(per_slice=_hist),
    "confusion_n": _confusion(weighted=False),
    "confusion_weight": _confusion(weighted=True),
}

IDS = [s.name for s in STATISTICS]


def make_inputs(kind: str, n_classes: int, n: int, seed: int):
    """Predictions of `kind` with ignored rows and a NaN row, weights, three slices and
    a reference prediction."""
    rng = np.random.default_rng([seed, n_classes])
    logits = rng.normal(scale=3.0, size=(n, n_classes))
    pred = {"logits": logits, "log_probs": log_softmax(logits, axis=1), "probs": np.exp(log_softmax(logits, axis=1))}[kind]
    labels = rng.integers(0, n_classes, n)
    labels[::17] = -1
    pred[5, 0] = np.nan
    inputs = dict(
        pred=pred, labels=labels, kind=kind, weights=rng.uniform(0.0, 2.0, n),
        slice_ids=rng.integers(0, len(KEYS), n), reference=np.roll(pred, 1, axis=0),
    )
    inputs["reference"][3] = pred[3]  # KL exactly 0 on one row
    return inputs


def partial(inputs, rows=slice(None), **options):
    per_row = {k: v[rows] for k, v in inputs.items() if isinstance(v, np.ndarray)}
    return class_stats_partial(kind=inputs["kind"], slice_keys=KEYS, n_bins=N_BINS, **per_row, **options)


def columns(report, statistic) -> dict[str, np.ndarray]:
    """The report's values of one statistic, by level."""
    if statistic.role == "array":
        return {"array": getattr(report, statistic.name)}
    levels = {"per_class": statistic.per_class, "per_slice": statistic.per_slice}
    return {level: getattr(report, level)[statistic.name] for level, rule in levels.items() if rule is not None}


def assert_same(a: dict, b: dict, statistic, exact: bool = False):
    assert a.keys() == b.keys()
    for level in a:
        if exact:
            assert_array_equal(a[level], b[level], err_msg=f"{statistic.name} {level}")
        else:
            assert_allclose(a[level], b[level], rtol=statistic.rtol, atol=statistic.atol, err_msg=f"{statistic.name} {level}")


# --------------------------------------------------------------------------- the table itself


def test_every_statistic_has_a_reference():
    assert set(REFERENCES) == {s.name for s in STATISTICS}
    for statistic in STATISTICS:
        declared = {"per_class": statistic.per_class is not None, "per_slice": statistic.per_slice is not None}
        referenced = {"per_class": REFERENCES[statistic.name].per_class is not None,
                      "per_slice": REFERENCES[statistic.name].per_slice is not None}
        assert declared == referenced, statistic.name


def test_column_lists_for_report_writers():
    assert class_columns() == ["ce_mean", "ce_std", "accuracy", "top5_accuracy", "p_true_mean", "entropy_mean",
                               "brier", "precision", "recall", "f1", "auc", "auc_error_bound"]
    assert class_columns(has_reference=True) == [*class_columns(), "kl_mean"]
    assert summary_columns() == [
        "ce_mean", "ce_macro", "accuracy", "top5_accuracy", "p_true_mean", "entropy_mean", "ece", "brier",
        "precision_macro", "precision_weighted", "recall_macro", "recall_weighted", "f1_macro", "f1_weighted",
        "auc", "auc_error_bound",
    ]
    assert summary_columns(has_reference=True) == [*summary_columns(), "kl_mean"]
    assert INFORMATION_COLUMNS == {"ce_mean", "ce_std", "ce_macro", "entropy_mean", "kl_mean"}


# --------------------------------------------------------------------------- against the references


@lru_cache(maxsize=None)
def reference_case(kind: str, n_classes: int):
    inputs = make_inputs(kind, n_classes, n=2000 if n_classes <= 10 else 600, seed=1)
    rows = ref.ReportRows(
        inputs["pred"], inputs["labels"], kind, weights=inputs["weights"], slice_ids=inputs["slice_ids"],
        reference=inputs["reference"],
    )
    return partial(inputs).finalize(), rows


@pytest.mark.parametrize("n_classes", [3, pytest.param(10, marks=pytest.mark.slow), pytest.param(50, marks=pytest.mark.slow)])  # narrow (vertical and scatter) and wide
@pytest.mark.parametrize("kind", ["logits", "probs", "log_probs"])
@pytest.mark.parametrize("statistic", STATISTICS, ids=IDS)
def test_statistic_matches_its_reference(statistic, kind, n_classes):
    report, rows = reference_case(kind, n_classes)
    reference = REFERENCES[statistic.name]
    tolerance = dict(rtol=statistic.rtol, atol=statistic.atol)
    got = columns(report, statistic)
    if statistic.per_class is not None:
        cells = list(zip(report.per_class["slice"], report.per_class["class"]))
        present = [(s, c) for s in range(len(KEYS)) for c in range(n_classes)
                   if (rows.kept & (rows.slice == s) & (rows.label == c)).any()]
        assert cells == present
        expected = [reference.per_class(rows, rows.kept & (rows.slice == s) & (rows.label == c)) for s, c in cells]
        assert_allclose(got["per_class"], expected, **tolerance, err_msg=statistic.name)
    if statistic.per_slice is not None:
        expected = np.array([reference.per_slice(rows, s) for s in range(len(KEYS))])
        assert_allclose(got["array" if statistic.role == "array" else "per_slice"], expected, **tolerance,
                        err_msg=statistic.name)


@pytest.mark.parametrize("n_classes", [3, pytest.param(10, marks=pytest.mark.slow), pytest.param(50, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", ["logits", "probs", "log_probs"])
def test_binned_auc_matches_its_reference(kind, n_classes):
    """The reference cases' slices are within the exact-AUC cap (the generic test checks
    the exact AUC); with exact AUC off, the binned AUC and its bound against the pairs over bins."""
    inputs = make_inputs(kind, n_classes, n=2000 if n_classes <= 10 else 600, seed=1)
    report = partial(inputs, exact_auc_max_values=0).finalize()
    _, rows = reference_case(kind, n_classes)
    for part, name in enumerate(("auc", "auc_error_bound")):
        reference = _roc_ref(part, thresholds=1000)
        expected = [reference.per_class(rows, rows.kept & (rows.slice == s) & (rows.label == c))
                    for s, c in zip(report.per_class["slice"], report.per_class["class"])]
        assert_allclose(report.per_class[name], expected, rtol=1e-11, atol=1e-13, err_msg=name)
        expected = [reference.per_slice(rows, s) for s in range(len(KEYS))]
        assert_allclose(report.per_slice[name], expected, rtol=1e-11, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("statistic", [s for s in STATISTICS if s.reference_only], ids=lambda s: s.name)
def test_reference_only_statistics_need_a_reference(statistic):
    inputs = make_inputs("logits", 4, 100, seed=2)
    del inputs["reference"]
    report = partial(inputs).finalize()
    assert statistic.name not in report.per_class and statistic.name not in report.per_slice


# --------------------------------------------------------------------------- three parts of fixed rows


@lru_cache(maxsize=None)
def three_parts(n_classes: int):
    inputs = make_inputs("logits", n_classes, 900, seed=3)
    return [partial(inputs, slice(a, b)) for a, b in [(0, 250), (250, 600), (600, 900)]]


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("statistic", STATISTICS, ids=IDS)
def test_units(statistic):
    state = three_parts(10)[1]
    nats, bits = columns(state.finalize("e"), statistic), columns(state.finalize(2), statistic)
    assert (statistic.name in INFORMATION_COLUMNS) == (statistic.units == "information")
    for level in nats:
        if statistic.units == "information":
            assert np.isfinite(nats[level]).any() and (nats[level] != 0).any()
            assert_allclose(bits[level], nats[level] / math.log(2.0), rtol=1e-15, atol=0, err_msg=statistic.name)
        else:
            assert_array_equal(bits[level], nats[level], err_msg=statistic.name)


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize("n_classes", [10, 50])
@pytest.mark.parametrize("statistic", [s for s in STATISTICS if s.interval], ids=lambda s: s.name)
def test_interval_contains_the_value(statistic, n_classes):
    inputs = make_inputs("logits", n_classes, 3000, seed=4)
    state = class_stats_partial(kind="logits", slice_keys=KEYS, n_bins=N_BINS, buckets=np.arange(3000) % 20,
                                **{k: v for k, v in inputs.items() if isinstance(v, np.ndarray)})
    report = state.finalize()
    for level, rule in (("per_class", statistic.per_class), ("per_slice", statistic.per_slice)):
        if rule is None:
            continue
        columns = getattr(report, level)
        value, lo, hi = (columns[f"{statistic.name}{suffix}"] for suffix in ("", "_lo", "_hi"))
        finite = np.isfinite(lo) & np.isfinite(hi)
        assert finite.mean() > 0.9, (statistic.name, level)
        assert (lo[finite] <= value[finite]).all() and (value[finite] <= hi[finite]).all(), (statistic.name, level)
        assert (lo[finite] < hi[finite]).any(), (statistic.name, level)
