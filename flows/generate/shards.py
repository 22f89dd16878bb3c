"""One shard's rows as an Arrow table: ids -> labels, predictions of the requested
kind, layout and dtype, slices and weights, with the shard's planned defect."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..metadata import CLASSES_KEY
from .plan import DTYPES, DumpPlan, ShardPlan
from .streams import normals, stream_key, uniform


@dataclass(frozen=True)
class Model:
    """Per-class parameters of the synthetic classifier, drawn once from the seed."""

    cum_prior: np.ndarray  # cumulative class prior
    bias: np.ndarray  # added to every row's logits
    margin: np.ndarray  # extra logit on the true class, by true class
    sigma: np.ndarray  # noise scale, by true class
    partner: np.ndarray  # confusable class, by true class
    drift_dir: np.ndarray  # direction of the logit shift under drift

    @classmethod
    def from_seed(cls, seed: int, classes: int) -> Model:
        rng = np.random.default_rng([seed, 0x78656E74])
        prior = rng.dirichlet(np.full(classes, 4.0))
        bias = rng.normal(0.0, 0.3, classes)
        margin = rng.uniform(1.0, 4.0, classes)
        sigma = rng.uniform(0.7, 2.0, classes)
        partner = (np.arange(classes) + rng.integers(1, classes, classes)) % classes
        drift_dir = rng.normal(0.0, 1.0, classes)
        return cls(np.cumsum(prior), bias, margin, sigma, partner, drift_dir)

    def labels(self, ids: np.ndarray, seed: int) -> np.ndarray:
        u = uniform(ids, stream_key(seed, "label"))
        y = np.searchsorted(self.cum_prior, u, side="right")
        return np.minimum(y, len(self.cum_prior) - 1).astype(np.int64)

    def logits(self, ids: np.ndarray, y: np.ndarray, seed: int, drift: float) -> np.ndarray:
        """float64 logits, shape (len(ids), C)."""
        c = len(self.bias)
        out = normals(ids, stream_key(seed, "noise"), c)
        out *= self.sigma[y][:, None]
        out += self.bias
        rows = np.arange(len(ids))
        out[rows, y] += self.margin[y]
        out[rows, self.partner[y]] += 0.4 * self.margin[y]
        if drift != 0.0:  # skipped at 0 so undrifted logits are bitwise unchanged
            out /= 1.0 + 0.5 * drift
            out += drift * self.drift_dir
        return out


class ShardBuilder:
    """Builds the tables of one dump's shards; what all shards share is made once."""

    def __init__(self, plan: DumpPlan):
        self.plan = plan
        self.model = Model.from_seed(plan.seed, plan.classes)
        self.np_dtype = DTYPES[plan.dtype]
        # One extra name so a "bad_label" row (label == classes) can be spelled too.
        self.label_names = (pa.array([f"class_{c}" for c in range(plan.classes + 1)])
                            if plan.string_labels else None)
        self.slice_values = {name: pa.array(values) for name, values in plan.slices.items()}
        self.metadata = {CLASSES_KEY: json.dumps(plan.class_names).encode()} if plan.string_labels else None

    def table(self, shard: ShardPlan) -> pa.Table:
        """The rows of `shard`, with its defect if it is a bad shard."""
        plan, n = self.plan, shard.rows
        bad_kind, bad_row = shard.bad if shard.bad else (None, None)
        ids = plan.ids(shard)
        y = self.model.labels(ids, plan.seed)
        logits = self.model.logits(ids, y, plan.seed, plan.drift)
        if bad_kind == "wrong_classes":  # one more class: a neutral extra logit, then normalise
            logits = np.concatenate([logits, np.zeros((n, 1))], axis=1)
        pred = _to_kind(logits, plan.kind, plan.layout).astype(self.np_dtype)
        del logits
        if bad_kind == "nan":
            if pred.ndim == 1:
                pred[bad_row] = np.nan
            else:  # in class column bad_row % C, so not always the first or the true class
                pred[bad_row, bad_row % plan.classes] = np.nan
        elif bad_kind == "unnormalized":
            pred[bad_row] *= self.np_dtype(1.5)

        null = uniform(ids, stream_key(plan.seed, "null")) < plan.null_labels if plan.null_labels > 0 else None
        if bad_kind == "bad_label":
            y[bad_row] = plan.classes
            if null is not None:
                null[bad_row] = False
        label = pa.array(y, mask=null)
        if self.label_names is not None:
            label = self.label_names.take(label)

        columns: dict[str, pa.Array] = {"id": pa.array(ids)}
        if bad_kind != "missing_column":
            columns["label"] = label
        columns.update(_pred_arrays(pred, plan.layout, plan.pred_column))
        del pred
        for name, values in self.slice_values.items():
            u = uniform(ids, stream_key(plan.seed, f"slice/{name}"))
            idx = np.minimum((u * len(values)).astype(np.int64), len(values) - 1)
            columns[name] = values.take(pa.array(idx))
        if plan.weights:
            columns["weight"] = pa.array(0.5 + 1.5 * uniform(ids, stream_key(plan.seed, "weight")))
        return pa.table(columns).replace_schema_metadata(self.metadata)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


def _to_kind(logits: np.ndarray, kind: str, layout: str) -> np.ndarray:
    """float64 predictions of ``kind``: (n, C), or (n,) for the binary layout."""
    if layout == "binary":
        if kind == "logits":
            return logits[:, 1] - logits[:, 0]
        return _softmax(logits)[:, 1]
    if kind == "logits":
        return logits
    if kind == "probs":
        return _softmax(logits)
    return _log_softmax(logits)


def _pred_arrays(pred: np.ndarray, layout: str, name: str) -> dict[str, pa.Array]:
    """Arrow prediction column(s) for a (n, K) array, or (n,) for binary; `name` is
    the column, or for the wide layout the columns' prefix."""
    if layout == "binary":
        return {name: pa.array(pred)}
    n, k = pred.shape
    if layout == "wide":
        columns = np.ascontiguousarray(pred.T)
        return {f"{name}{j}": pa.array(columns[j]) for j in range(k)}
    values = pa.array(np.ascontiguousarray(pred).reshape(-1))
    if layout == "fixed_size_list":
        return {name: pa.FixedSizeListArray.from_arrays(values, k)}
    if n * k >= 2**31:
        raise ValueError(f"a shard of {n} x {k} values is too big for a List column; use more shards")
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return {name: pa.ListArray.from_arrays(offsets, values)}
