"""Two dumps' rows joined on key columns: per-sample drift and model comparison.

Neither dump is ever held whole: each shard's rows are hashed by key into buckets
spilled to a scratch folder, then each bucket is joined exactly and its matched rows
are reduced to a small mergeable state by a :class:`Pairing`: per-sample
KL(reference‖current) for drift (:data:`KL_PAIRING`), both models' statistics for
``xent compare`` (:mod:`flows.monitor.paired`). Keys found on one side only are counted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pickle
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from distributed import Client

from xent_kernels.drift import PerSampleKL, per_sample_kl_partial
from xent_kernels.hashing import key_hash
from xent_kernels.mergeable import Mergeable, merge_states

from ..config import EvalConfig, JoinSettings
from ..engine import Evaluation, Piece, inspect_files, map_all, map_reduce, memory_pieces, piece_batches, plan_pieces
from ..errors import DataError
from ..inputs.reader import open_parquet
from ..inputs.sources import InputFile
from ..inputs.spec import ReadSpec
from ..inputs.tokens import TokenSpec

@dataclass(frozen=True)
class JoinResult:
    """A pairing's merged state of the matched rows, and the row counts of the join:
    `only_first`/`only_second` are rows whose key the other side lacks. Mergeable
    (:mod:`xent_kernels.mergeable`) whatever the pairing's state type."""

    stats: Mergeable  # the pairing's state: a PerSampleKL for drift
    matched: int = 0
    only_first: int = 0
    only_second: int = 0
    in_order: bool = False  # paired row by row, the files holding the same keys in the same order (no hash join)

    @classmethod
    def empty(cls, state: type[Mergeable], **options) -> "JoinResult":
        """No rows joined: the identity of :meth:`merge` for states of type `state` made
        with `options` (the arguments of ``state.empty``)."""
        return cls(state.empty(**options))

    @classmethod
    def merge(cls, *results: "JoinResult") -> "JoinResult":
        """One result of all `results`: their states merged, their counts added."""
        stats = merge_states(*(r.stats for r in results))
        return cls(
            stats,
            sum(r.matched for r in results),
            sum(r.only_first for r in results),
            sum(r.only_second for r in results),
            any(r.in_order for r in results),
        )


def bucket_of(keys: list[np.ndarray], n_buckets: int) -> np.ndarray:
    """A bucket per row of the key columns, the same on every worker and in every
    process (no salted hashes): ``key_hash`` with seed 0, so join buckets are
    independent of the jackknife buckets (``key_buckets``, another seed)."""
    return (key_hash(keys) % np.uint64(n_buckets)).astype(np.int64)


@dataclass
class Rows:
    """One side's rows of a bucket (the matched rows, aligned, in a pairing)."""

    keys: list[np.ndarray]  # one array per key column
    pred: np.ndarray
    labels: np.ndarray
    weights: np.ndarray | None
    slice_ids: np.ndarray
    slice_keys: list[tuple]  # the key of each slice id

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "Rows":
        return Rows([values[index] for values in self.keys], self.pred[index], self.labels[index],
                    None if self.weights is None else self.weights[index], self.slice_ids[index], self.slice_keys)

    @classmethod
    def of_batch(cls, batch: Any) -> "Rows":
        """A batch's rows (:class:`flows.inputs.reader.Batch`), its key columns read."""
        slice_ids = batch.slice_ids if batch.slice_ids is not None else np.zeros(len(batch.labels), np.int64)
        return cls(list(batch.ids), batch.pred, batch.labels, batch.weights, slice_ids, list(batch.slice_keys))

    @classmethod
    def concatenate(cls, parts: list["Rows"]) -> "Rows":
        """The rows of `parts`, in order, slice ids renumbered over all of them."""
        slice_ids, slice_keys = renumber_slices(parts)
        return cls(
            [concatenate_keys([p.keys[j] for p in parts]) for j in range(len(parts[0].keys))],
            np.concatenate([p.pred for p in parts]),
            np.concatenate([p.labels for p in parts]),
            None if parts[0].weights is None else np.concatenate([p.weights for p in parts]),
            slice_ids,
            slice_keys,
        )


def renumber_slices(parts: list[Any]) -> tuple[np.ndarray, list[tuple]]:
    """The slice ids of `parts` (each with ``slice_ids`` into its ``slice_keys``),
    concatenated and renumbered into one list of keys."""
    keys: dict[tuple, int] = {}
    slice_ids = []
    for part in parts:
        local = np.array([keys.setdefault(k, len(keys)) for k in part.slice_keys], dtype=np.int64)
        slice_ids.append(local[part.slice_ids] if local.size else part.slice_ids)
    return np.concatenate(slice_ids), list(keys)


@dataclass(frozen=True)
class Pairing:
    """What a join makes of its matched rows: states of type `state`, which speaks
    :mod:`xent_kernels.mergeable`.

    `names` are the two sides (scratch folders and messages use them); `reduce(spec,
    first, second)` turns the matched rows of both sides, aligned row by row (at least
    one), into a `state`; `options(spec)` are the arguments of ``state.empty`` for
    states of `spec`; `setting` is the config key that sets the join key, for messages;
    `rows` the type of the rows spilled (:class:`Rows`; a token dump's are its tokens).
    """

    names: tuple[str, str]
    state: type[Mergeable]
    reduce: Callable[[ReadSpec, Rows, Rows], Mergeable]
    options: Callable[[ReadSpec], dict[str, Any]]
    setting: str
    rows: type = Rows  # what a batch's rows become: ``of_batch``, ``take``, ``concatenate``, ``keys``
    # The evaluation already refuses a key twice in a dump (token dumps: a position repeated), so two
    # dumps holding the same keys in the same order may be paired row by row, with no hash join
    # (`rows` then also has ``part(start, stop)``).
    pairs_in_order: bool = False


def _kl_options(spec: ReadSpec) -> dict[str, Any]:
    return {"n_classes": spec.n_classes}


def _kl_reduce(spec: ReadSpec, reference: Rows, current: Rows, smoothing: float | None = None) -> PerSampleKL:
    """KL(reference‖current) statistics, sliced by the current side's slices."""
    return per_sample_kl_partial(reference.pred, current.pred, current.labels, kind=spec.kind,
                                 slice_ids=current.slice_ids, slice_keys=current.slice_keys, smoothing=smoothing)


def kl_pairing(smoothing: float | None = None) -> Pairing:
    """The drift join's pairing: per-sample KL, both sides smoothed by `smoothing` (None: exact)."""
    return Pairing(("reference", "current"), PerSampleKL, functools.partial(_kl_reduce, smoothing=smoothing),
                   _kl_options, "drift.id_cols")


KL_PAIRING = kl_pairing()


def spill_piece(piece: Piece, side: str, index: int, spec: ReadSpec, data: Any = None, *, scratch: str,
                n_buckets: int, rows_type: type = Rows) -> int:
    """Split one piece's rows (from its file, or `data` in memory), as `rows_type`
    makes them of each batch, into bucket files under scratch/side/bucket; returns rows."""
    rows = 0
    for b, batch in enumerate(piece_batches(piece, spec, data)):
        batch_rows = rows_type.of_batch(batch)
        buckets = bucket_of(batch_rows.keys, n_buckets)
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(n_buckets + 1))
        for k in range(n_buckets):
            take = order[bounds[k] : bounds[k + 1]]
            if not take.size:
                continue
            folder = os.path.join(scratch, side, f"{k:05d}")
            os.makedirs(folder, exist_ok=True)
            part = batch_rows.take(take)
            # pickle, not np.savez: np.load parses each array header with ast.literal_eval,
            # which fails at random in concurrent worker threads on CPython 3.11
            # ("AST constructor recursion depth mismatch", python/cpython#106905).
            with open(os.path.join(folder, f"{index:06d}-{b:05d}.pkl"), "wb") as handle:
                pickle.dump(part, handle, protocol=pickle.HIGHEST_PROTOCOL)
        rows += len(order)
    return rows


def _load_bucket(folder: str) -> Any:
    """One side's spilled rows of a bucket (None: none)."""
    parts = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), "rb") as handle:
            parts.append(pickle.load(handle))  # written by spill_piece into this run's own scratch folder
    return type(parts[0]).concatenate(parts) if parts else None


def concatenate_keys(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate key arrays exactly: int64 with uint64 would promote to float64."""
    if np.result_type(*arrays).kind == "f" and all(a.dtype.kind in "iu" for a in arrays):
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


def _key_codes(first: Rows, second: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of both sides' key rows, equal exactly when the keys are equal:
    each column is factorized over both sides, and codes are combined column by column
    and re-factorized, so they stay below the row count (no overflow, no collisions)."""
    n_first = len(first)
    codes = np.zeros(n_first + len(second), dtype=np.int64)
    for first_values, second_values in zip(first.keys, second.keys):
        _, column = np.unique(concatenate_keys([first_values, second_values]), return_inverse=True)
        _, codes = np.unique(codes * (int(column.max()) + 1) + column, return_inverse=True)
    codes = codes.reshape(-1)
    return codes[:n_first], codes[n_first:]


def describe_key(key: tuple[str, ...], rows: Rows, row: int) -> str:
    """``id=7, model='a'``: the key of one row."""
    return ", ".join(f"{name}={values[row:row + 1].tolist()[0]!r}" for name, values in zip(key, rows.keys))


def _check_unique(side: str, codes: np.ndarray, rows: Rows, key: tuple[str, ...], setting: str) -> None:
    counts = np.bincount(codes)
    if counts.max(initial=0) > 1:
        row = int(np.flatnonzero(counts[codes] > 1)[0])
        raise DataError(
            f"{side} dump: key ({describe_key(key, rows, row)}) appears {counts[codes[row]]} times, but the join key "
            f"({', '.join(key)}) must identify one row: set {setting} (or --id-cols) to the columns that do, e.g. [model, id]"
        )


def join_bucket(scratch: str, bucket: int, *, spec: ReadSpec, pairing: Pairing = KL_PAIRING) -> JoinResult:
    """Join one bucket's rows of both sides on the key columns; the pairing's state of the matched rows."""
    first_name, second_name = pairing.names
    first = _load_bucket(os.path.join(scratch, first_name, f"{bucket:05d}"))
    second = _load_bucket(os.path.join(scratch, second_name, f"{bucket:05d}"))
    empty = JoinResult.empty(pairing.state, **pairing.options(spec))
    if first is None or second is None:
        return dataclasses.replace(empty, only_first=0 if first is None else len(first),
                                   only_second=0 if second is None else len(second))
    first_codes, second_codes = _key_codes(first, second)
    _check_unique(first_name, first_codes, first, spec.id_cols, pairing.setting)
    _check_unique(second_name, second_codes, second, spec.id_cols, pairing.setting)
    _, in_first, in_second = np.intersect1d(first_codes, second_codes, assume_unique=True, return_indices=True)
    counts = dict(matched=len(in_second), only_first=len(first) - len(in_first),
                  only_second=len(second) - len(in_second))
    if not len(in_second):
        return dataclasses.replace(empty, **counts)
    # Merged with the identity, as every state the engine merges: its slices in canonical order.
    stats = pairing.reduce(spec, first.take(in_first), second.take(in_second))
    return JoinResult.merge(JoinResult(stats, **counts), empty)


@dataclass
class JoinSide:
    """One side of the join: its read settings (key columns included) and its pieces."""

    spec: ReadSpec
    pieces: list[Piece]
    data: list[Any] | None  # in memory: one future per piece, its rows; None for file pieces
    rows: int


class Misaligned(Exception):
    """Two pieces paired in order hold different keys: the dumps need the hash join."""


def _in_order(sides: list[JoinSide]) -> bool:
    """Whether two sides' files could hold the same rows in the same order: the same
    number of pieces, of the same rows each."""
    first, second = sides
    return (first.data is None and second.data is None and len(first.pieces) == len(second.pieces)
            and all(a.rows == b.rows for a, b in zip(first.pieces, second.pieces)))


def join_piece_in_order(first_piece: Piece, second_piece: Piece, first_spec: Any, second_spec: Any, *,
                        pairing: Pairing) -> JoinResult:
    """Two pieces holding the same keys in the same order, paired row by row as their
    batches come (whatever their batch sizes); Misaligned at the first key that differs."""
    rows_type = pairing.rows
    streams = [(rows_type.of_batch(b) for b in piece_batches(piece, spec))
               for piece, spec in ((first_piece, first_spec), (second_piece, second_spec))]
    pending: list[Any] = [None, None]
    states, matched = [], 0
    while True:
        for side in (0, 1):
            if pending[side] is None or not len(pending[side]):
                pending[side] = next(streams[side], None)
        if pending[0] is None or pending[1] is None or not len(pending[0]) or not len(pending[1]):
            if (pending[0] is not None and len(pending[0])) or (pending[1] is not None and len(pending[1])):
                raise Misaligned()
            break
        n = min(len(pending[0]), len(pending[1]))
        first, second = pending[0].part(0, n), pending[1].part(0, n)
        if not all(np.array_equal(a, b) for a, b in zip(first.keys, second.keys)):
            raise Misaligned()
        states.append(pairing.reduce(second_spec, first, second))
        matched += n
        pending = [pending[0].part(n, len(pending[0])), pending[1].part(n, len(pending[1]))]
    empty = JoinResult.empty(pairing.state, **pairing.options(second_spec))
    return JoinResult.merge(JoinResult(merge_states(*states) if states else empty.stats, matched, in_order=True), empty)


def join_sides(config: EvalConfig, settings: JoinSettings, sides: dict[str, JoinSide], client: Client,
               pairing: Pairing = KL_PAIRING) -> JoinResult:
    """Hash both sides' rows by key into buckets spilled to scratch, then join each
    bucket; the spec of the second side (drift: current, compare: candidate) reads
    the matched rows. In-memory sides' ``data`` lists are emptied once spilled.

    With a pairing whose keys are unique per dump (``pairs_in_order``), files holding
    the same rows in the same order (the same prompts scored by two models through one
    pipeline) are first paired piece by piece with no spill; at the first key that
    differs, the hash join runs instead."""
    first_name, second_name = pairing.names
    if pairing.pairs_in_order and _in_order([sides[first_name], sides[second_name]]):
        try:
            return map_reduce(
                client, join_piece_in_order, sides[first_name].pieces, sides[second_name].pieces,
                [sides[first_name].spec] * len(sides[first_name].pieces),
                [sides[second_name].spec] * len(sides[second_name].pieces), pairing=pairing,
                split_every=config.split_every, stall_timeout=config.stall_timeout,
            )
        except Misaligned:
            pass
    total_rows = sum(side.rows for side in sides.values())
    n_buckets = max(1, math.ceil(total_rows / settings.bucket_rows))
    scratch = os.path.join(settings.scratch_dir or tempfile.gettempdir(), f"xent-join-{uuid.uuid4().hex[:12]}")
    os.makedirs(scratch)
    try:
        spills = [(piece, name, i, sides[name].spec, None if sides[name].data is None else sides[name].data[i])
                  for name in pairing.names for i, piece in enumerate(sides[name].pieces)]
        pieces, names, indexes, specs, data = zip(*spills) if spills else ((), (), (), (), ())
        map_all(client, spill_piece, pieces, names, indexes, specs, data,
                scratch=scratch, n_buckets=n_buckets, rows_type=pairing.rows, stall_timeout=config.stall_timeout)
        # Spilled: release the in-memory rows on the cluster before the join.
        spills, data = [], ()
        for side in sides.values():
            if side.data is not None:
                side.data.clear()
        return map_reduce(
            client, join_bucket, [scratch] * n_buckets, range(n_buckets), spec=sides[pairing.names[1]].spec,
            pairing=pairing, split_every=config.split_every,
            stall_timeout=config.stall_timeout,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------- both sides, evaluated, to join


@dataclass
class EvaluatedSide:
    """A side already evaluated: its evaluation, and the in-memory data it read (None: its files)."""

    evaluation: Evaluation
    data: Any


def _comparable_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    return str(arrow_type)


def key_spec(spec: ReadSpec, schema: pa.Schema, first: InputFile, key: tuple[str, ...], side: str, setting: str,
             n_bins: int = 1) -> tuple[ReadSpec, list[str]]:
    """`spec`, reading the key columns too (hive folder keys from the path of `first`,
    the side's first file or in-memory stand-in, whose schema is `schema`) with `n_bins`
    confidence bins, and each key column's type as compared across the two sides."""
    hive, types = [], []
    for name in key:
        if name in schema.names:  # a column wins over a hive key, as for slices
            types.append(_comparable_type(schema.field(name).type))
        elif name in first.hive:
            hive.append(name)
            types.append("string")
        else:
            raise DataError(
                f"{side} dump {first.url}: no key column '{name}' (neither a column nor a hive folder key "
                f"{sorted(first.hive)}); columns are {sorted(schema.names)}. Rows are joined on "
                f"({', '.join(key)}): set {setting} (or --id-cols) to columns both dumps have"
            )
    if isinstance(spec, TokenSpec):  # the document key is the spec's own, its tokens' positions added
        return dataclasses.replace(spec, read_keys=True), types
    return dataclasses.replace(spec, id_cols=key, hive_ids=tuple(hive), n_bins=n_bins), types


def prepare_join(config: EvalConfig, key: tuple[str, ...], sides: dict[str, EvaluatedSide], client: Client,
                 pairing: Pairing = KL_PAIRING, n_bins: int = 1) -> dict[str, JoinSide]:
    """Both evaluated sides (named as `pairing` names them) as join sides reading the
    key columns: the key columns checked to exist and to have one type on both sides."""
    specs, types, memory = {}, {}, {}
    for name in pairing.names:
        side = sides[name]
        spec = side.evaluation.spec
        if side.data is None:
            first = side.evaluation.inputs[0]
            schema = open_parquet(first.url, spec.storage_options).schema_arrow
        else:
            memory[name] = memory_pieces(config, client, side.data)
            first, schema = memory[name].source, memory[name].schema
        specs[name], types[name] = key_spec(spec, schema, first, key, name, pairing.setting, n_bins)
    first_name, second_name = pairing.names
    first_file, second_file = (sides[name].evaluation.spec.reference_file for name in pairing.names)
    for column, first_type, second_type in zip(key, types[first_name], types[second_name]):
        if first_type != second_type:
            raise DataError(
                f"key column '{column}' is {first_type} in the {first_name} dump ({first_file}) but "
                f"{second_type} in the {second_name} dump ({second_file}); the join needs one type on both sides"
            )
    joins = {}
    for name in pairing.names:
        side = sides[name]
        if name in memory:
            # A Dask partition's rows are known only once read: the evaluation counted them.
            joins[name] = JoinSide(specs[name], memory[name].pieces, memory[name].data, side.evaluation.result.rows_read)
        else:
            infos = inspect_files(client, side.evaluation.inputs, specs[name], stall_timeout=config.stall_timeout)
            joins[name] = JoinSide(specs[name], plan_pieces(infos, config.task_rows), None, sum(i.rows for i in infos))
    return joins
