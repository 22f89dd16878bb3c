"""Per-sample KL(reference‖current): both dumps' rows joined on key columns.

Neither dump is ever held whole: each shard's rows are hashed by key into buckets
spilled to a scratch folder, then each bucket is joined exactly and reduced to
per-(slice, class) statistics by the fused kernel. Keys found on one side only are
counted.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client

from xent_kernels import ClassStats, class_stats_partial
from xent_kernels.hashing import key_hash

from ..config import DriftConfig
from ..engine import Piece, map_all, map_reduce, piece_batches
from ..errors import DataError
from ..inputs.reader import ReadSpec


@dataclass(frozen=True)
class JoinResult:
    stats: ClassStats
    matched: int = 0
    only_reference: int = 0
    only_current: int = 0

    @staticmethod
    def merge(*results: "JoinResult") -> "JoinResult":
        stats = functools.reduce(ClassStats.merge, (r.stats for r in results))
        return JoinResult(
            stats,
            sum(r.matched for r in results),
            sum(r.only_reference for r in results),
            sum(r.only_current for r in results),
        )


def bucket_of(keys: list[np.ndarray], n_buckets: int) -> np.ndarray:
    """A bucket per row of the key columns, the same on every worker and in every
    process (no salted hashes): ``key_hash`` with seed 0, so join buckets are
    independent of the jackknife buckets (``key_buckets``, another seed)."""
    return (key_hash(keys) % np.uint64(n_buckets)).astype(np.int64)


@dataclass
class _Rows:
    """One side's rows of a bucket."""

    keys: list[np.ndarray]  # one array per key column
    pred: np.ndarray
    labels: np.ndarray
    slice_ids: np.ndarray
    slice_keys: list[tuple]  # the key of each slice id

    def __len__(self) -> int:
        return len(self.labels)


def spill_piece(piece: Piece, side: str, index: int, spec: ReadSpec, data: Any = None, *, scratch: str,
                n_buckets: int) -> int:
    """Split one piece's rows (from its file, or `data` in memory) into bucket files
    under scratch/side/bucket; returns rows."""
    rows = 0
    for b, batch in enumerate(piece_batches(piece, spec, data)):
        buckets = bucket_of(batch.ids, n_buckets)
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(n_buckets + 1))
        slice_ids = batch.slice_ids if batch.slice_ids is not None else np.zeros(len(order), np.int64)
        for k in range(n_buckets):
            take = order[bounds[k] : bounds[k + 1]]
            if not take.size:
                continue
            folder = os.path.join(scratch, side, f"{k:05d}")
            os.makedirs(folder, exist_ok=True)
            part = _Rows([values[take] for values in batch.ids], batch.pred[take], batch.labels[take], slice_ids[take],
                         list(batch.slice_keys))
            # pickle, not np.savez: np.load parses each array header with ast.literal_eval,
            # which fails at random in concurrent worker threads on CPython 3.11
            # ("AST constructor recursion depth mismatch", python/cpython#106905).
            with open(os.path.join(folder, f"{index:06d}-{b:05d}.pkl"), "wb") as handle:
                pickle.dump(part, handle, protocol=pickle.HIGHEST_PROTOCOL)
        rows += len(order)
    return rows


def _load_bucket(folder: str) -> _Rows | None:
    """One side's spilled rows of a bucket, with slice ids renumbered over all its parts."""
    parts = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), "rb") as handle:
            parts.append(pickle.load(handle))  # written by spill_piece into this run's own scratch folder
    if not parts:
        return None
    keys: dict[tuple, int] = {}
    slice_ids = []
    for part in parts:
        local = np.array([keys.setdefault(k, len(keys)) for k in part.slice_keys], dtype=np.int64)
        slice_ids.append(local[part.slice_ids] if local.size else part.slice_ids)
    return _Rows(
        [_concatenate([p.keys[j] for p in parts]) for j in range(len(parts[0].keys))],
        np.concatenate([p.pred for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate(slice_ids),
        list(keys),
    )


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate key arrays exactly: int64 with uint64 would promote to float64."""
    if np.result_type(*arrays).kind == "f" and all(a.dtype.kind in "iu" for a in arrays):
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


def _key_codes(reference: _Rows, current: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of both sides' key rows, equal exactly when the keys are equal:
    each column is factorized over both sides, and codes are combined column by column
    and re-factorized, so they stay below the row count (no overflow, no collisions)."""
    n_ref = len(reference)
    codes = np.zeros(n_ref + len(current), dtype=np.int64)
    for ref_values, cur_values in zip(reference.keys, current.keys):
        _, column = np.unique(_concatenate([ref_values, cur_values]), return_inverse=True)
        _, codes = np.unique(codes * (int(column.max()) + 1) + column, return_inverse=True)
    codes = codes.reshape(-1)
    return codes[:n_ref], codes[n_ref:]


def _check_unique(side: str, codes: np.ndarray, rows: _Rows, key: tuple[str, ...]) -> None:
    counts = np.bincount(codes)
    if counts.max(initial=0) > 1:
        row = int(np.flatnonzero(counts[codes] > 1)[0])
        value = ", ".join(f"{name}={values[row:row + 1].tolist()[0]!r}" for name, values in zip(key, rows.keys))
        raise DataError(
            f"{side} dump: key ({value}) appears {counts[codes[row]]} times, but the join key ({', '.join(key)}) "
            "must identify one row: set drift.id_cols (or --id-cols) to the columns that do, e.g. [model, id]"
        )


def join_bucket(scratch: str, bucket: int, *, spec: ReadSpec) -> JoinResult:
    """Join one bucket's reference and current rows on the key columns; KL(reference‖current) statistics."""
    empty = ClassStats.empty(spec.n_classes, n_bins=spec.n_bins, has_reference=True)
    ref = _load_bucket(os.path.join(scratch, "reference", f"{bucket:05d}"))
    cur = _load_bucket(os.path.join(scratch, "current", f"{bucket:05d}"))
    if ref is None or cur is None:
        return JoinResult(empty, 0, 0 if ref is None else len(ref), 0 if cur is None else len(cur))
    ref_codes, cur_codes = _key_codes(ref, cur)
    _check_unique("reference", ref_codes, ref, spec.id_cols)
    _check_unique("current", cur_codes, cur, spec.id_cols)
    _, in_ref, in_cur = np.intersect1d(ref_codes, cur_codes, assume_unique=True, return_indices=True)
    stats = class_stats_partial(
        cur.pred[in_cur], cur.labels[in_cur], kind=spec.kind, slice_ids=cur.slice_ids[in_cur], slice_keys=cur.slice_keys,
        reference=ref.pred[in_ref], reference_kind=spec.kind, n_bins=spec.n_bins,
    ) if len(in_cur) else empty
    return JoinResult(ClassStats.merge(stats, empty), len(in_cur), len(ref) - len(in_ref), len(cur) - len(in_cur))


@dataclass
class JoinSide:
    """One side of the join: its read settings (key columns included) and its pieces."""

    spec: ReadSpec
    pieces: list[Piece]
    data: list[Any] | None  # in memory: one future per piece, its rows; None for file pieces
    rows: int


def per_sample_kl(config: DriftConfig, sides: dict[str, JoinSide], client: Client) -> JoinResult:
    """Hash both sides' rows by key into buckets spilled to scratch, then join each
    bucket. In-memory sides' ``data`` lists are emptied once spilled."""
    settings = config.drift
    total_rows = sum(side.rows for side in sides.values())
    n_buckets = max(1, math.ceil(total_rows / settings.bucket_rows))
    scratch = os.path.join(settings.scratch_dir or tempfile.gettempdir(), f"xent-drift-{uuid.uuid4().hex[:12]}")
    os.makedirs(scratch)
    try:
        spills = [(piece, name, i, sides[name].spec, None if sides[name].data is None else sides[name].data[i])
                  for name in ("reference", "current") for i, piece in enumerate(sides[name].pieces)]
        pieces, names, indexes, specs, data = zip(*spills) if spills else ((), (), (), (), ())
        map_all(client, spill_piece, pieces, names, indexes, specs, data,
                scratch=scratch, n_buckets=n_buckets, stall_timeout=config.stall_timeout)
        # Spilled: release the in-memory rows on the cluster before the join.
        spills, data = [], ()
        for side in sides.values():
            if side.data is not None:
                side.data.clear()
        return map_reduce(
            client, join_bucket, [scratch] * n_buckets, range(n_buckets), spec=sides["current"].spec,
            merge=JoinResult.merge, split_every=config.split_every, stall_timeout=config.stall_timeout,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
