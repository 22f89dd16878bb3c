"""Synthetic, deterministic classifier-prediction dumps as sharded Parquet.

``generate_dump`` writes a folder of ``part-00000.parquet`` ... files that look like
what a real evaluation job dumps: one row per example, an ``id``, a true ``label``
and the model's predictions, optionally with slice columns (``model``, ``split``,
...), a ``weight`` column and hive partition folders (``date=2026-11-23/...``).
Every page carries a CRC-32 (``write_page_checksum``), so xent verifies what it reads.
``load_arrays`` reads a dump back into plain numpy arrays without going through the
evaluation engine, so tests can compare the engine's report against them.

Layouts of the prediction column(s), for ``C`` classes and ``kind`` one of
``"logits"``, ``"probs"`` or ``"log_probs"``:

``"fixed_size_list"``
    One column named after the kind (``logits`` / ``probs`` / ``log_probs``) of type
    ``FixedSizeList<float32|float64>[C]``.
``"list"``
    The same column as a variable-length ``List<float32|float64>`` whose rows all hold
    ``C`` values.
``"wide"``
    ``C`` scalar columns ``logit_0 .. logit_{C-1}`` (``prob_0 ..``, ``log_prob_0 ..``).
``"binary"``
    ``C`` must be 2 and labels are in {0, 1}. One scalar column: ``logit`` (the
    log-odds of class 1, ``l_1 - l_0``) or ``prob`` (the probability of class 1).
    ``kind="log_probs"`` is not available.

The data model (all per-class parameters are drawn once from ``seed``):

* labels follow a mildly imbalanced class prior;
* logits are ``bias + sigma[y] * N(0, 1)``, plus ``margin[y]`` on the true class and
  ``0.4 * margin[y]`` on a fixed "confusable" partner class, so the model beats
  chance and per-class cross-entropies differ;
* ``drift = d`` replaces the logits by ``logits / (1 + d / 2) + d * v`` for a fixed
  random per-class direction ``v``: a temperature change plus a systematic shift, so
  KL(undrifted || drifted) grows with ``d``. ``d = 0`` leaves the logits untouched;
* probabilities are a float64 softmax and log-probabilities a float64 log-softmax of
  the logits, cast to ``dtype`` at the end.

Every per-row random value is a counter-based hash of ``(seed, id, stream)``, so the
row with a given id is the same whatever ``rows``, ``shards``, ``shuffle`` or
``row_group_rows`` are: an unshuffled dump of ``rows=n`` is the first ``n`` ids of
any larger one, and ``shuffle=True`` only reorders rows (via a keyed pseudo-random
permutation of the positions). Dumps are generated and written one shard at a time,
so memory stays bounded by one shard.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["BAD_KINDS", "BadShard", "GeneratedDump", "generate_dump", "load_arrays"]

LAYOUTS = ("fixed_size_list", "list", "wide", "binary")
KINDS = ("logits", "probs", "log_probs")
DTYPES = {"float32": np.float32, "float64": np.float64}
# Kinds of deliberately broken shard, in the order shards are handed out to them.
BAD_KINDS = ("truncated", "nan", "bad_label", "wrong_classes", "missing_column", "unnormalized")
_ROW_DEFECTS = ("nan", "bad_label", "unnormalized")  # defects placed in one known row
_COLUMN_PREFIX = {"logits": "logit", "probs": "prob", "log_probs": "log_prob"}
_RESERVED = ("id", "label", "weight")
_CLASSES_KEY = b"xent.classes"
_MAX_ROW_GROUP = 1_000_000

# splitmix64 constants.
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


class BadShard(NamedTuple):
    """What is wrong with a deliberately broken shard.

    Attributes
    ----------
    kind : str
        One of ``BAD_KINDS``.
    row : int or None
        For ``"nan"``, ``"bad_label"`` and ``"unnormalized"``, the index of the broken
        row within the file (a NaN sits in class column ``row % C``); ``None`` for the
        other kinds.
    """

    kind: str
    row: int | None = None


@dataclass(frozen=True)
class GeneratedDump:
    """Description of a dump written by ``generate_dump``.

    Attributes
    ----------
    root : str
        The output folder, as given (local path or fsspec URL).
    files : list of str
        Every shard written, in shard order, as ``root + "/" + relative path``.
    bad : dict of str to BadShard
        Deliberately broken shards: path -> ``BadShard(kind, row)``.
    classes : int
        Number of classes ``C``.
    class_names : list of str or None
        ``["class_0", ...]`` when labels are strings, else ``None``.
    pred_column : str
        The prediction column (``logits``, ``probs``, ``log_probs``, ``logit``,
        ``prob``); for the wide layout the column prefix (``"logit_"``, ...).
    label_column : str
        Always ``"label"``.
    rows : int
        Rows written in total, including rows in bad shards.
    good_rows : int
        Rows in the shards that are not bad (what ``load_arrays`` returns).
    layout, kind, dtype : str
        The arguments the dump was generated with.
    pred_columns : list of str
        All prediction columns (``C`` names for the wide layout, else one).
    weight_column : str or None
        ``"weight"`` when weights were asked for.
    slice_columns : list of str
        Slice columns stored in the files.
    hive_columns : list of str
        Hive partition keys, outermost folder first.
    partitions : dict of str to dict
        Path -> ``{hive key: value}`` (the original Python values); empty without hive.
    """

    root: str
    files: list[str]
    bad: dict[str, BadShard]
    classes: int
    class_names: list[str] | None
    pred_column: str
    label_column: str
    rows: int
    good_rows: int
    layout: str
    kind: str
    dtype: str
    pred_columns: list[str]
    weight_column: str | None
    slice_columns: list[str]
    hive_columns: list[str]
    partitions: dict[str, dict[str, Any]]

    @property
    def good_files(self) -> list[str]:
        """Shards that are not in ``bad``, in order."""
        return [f for f in self.files if f not in self.bad]


# --------------------------------------------------------------------------- hashing


def _mix_int(x: int) -> int:
    """splitmix64 finaliser on a Python int (for deriving stream keys)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _MUL1) & _MASK64
    x = ((x ^ (x >> 27)) * _MUL2) & _MASK64
    return x ^ (x >> 31)


def _stream_key(seed: int, stream: str) -> int:
    """A 64-bit key for one named random stream of one seed."""
    return _mix_int(_mix_int(seed) + zlib.crc32(stream.encode()) * _GOLDEN)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (wrapping arithmetic)."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(_MUL1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_MUL2)
    z ^= z >> np.uint64(31)
    return z


def _bits(ids: np.ndarray, key: int, width: int = 1) -> np.ndarray:
    """64 random bits per (id, j) for j < width: splitmix64 output number id*width+j."""
    z = ids.astype(np.uint64)[:, None] * np.uint64(width) + np.arange(width, dtype=np.uint64)
    z *= np.uint64(_GOLDEN)
    z += np.uint64(key)
    return _mix(z)


def _uniform(ids: np.ndarray, key: int) -> np.ndarray:
    """One float64 uniform in [0, 1) per id (53 random bits)."""
    return (_bits(ids, key)[:, 0] >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normals(ids: np.ndarray, key: int, width: int) -> np.ndarray:
    """Standard normals, shape (len(ids), width), by Box-Muller on 32-bit halves."""
    half = (width + 1) // 2
    h = _bits(ids, key, half)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32  # in (0, 1): log is finite
    theta = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * (2.0 * math.pi * 2.0**-32)
    del h
    r = np.sqrt(-2.0 * np.log(u1))
    out = np.empty((len(ids), 2 * half))
    np.multiply(r, np.cos(theta), out=out[:, :half])
    np.multiply(r, np.sin(theta), out=out[:, half:])
    return out[:, :width]


def _permute(pos: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A keyed pseudo-random bijection of [0, n) applied to positions ``pos``.

    A 6-round Feistel network on the smallest even bit width covering n, with cycle
    walking for values that land in [n, 2**bits).
    """
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = [_stream_key(seed, f"shuffle/{r}") for r in range(6)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for key in keys:
            f = right * np.uint64(_GOLDEN) + np.uint64(key)
            left, right = right, left ^ (_mix(f) & mask)
        return (left << np.uint64(half)) | right

    out = feistel(pos.astype(np.uint64))
    todo = np.flatnonzero(out >= np.uint64(n))
    while todo.size:  # expected < 4 rounds: the domain is less than 4n
        out[todo] = feistel(out[todo])
        todo = todo[out[todo] >= np.uint64(n)]
    return out.astype(np.int64)


# ------------------------------------------------------------------------ data model


@dataclass(frozen=True)
class _Model:
    """Per-class parameters of the synthetic classifier, drawn once from the seed."""

    cum_prior: np.ndarray  # cumulative class prior
    bias: np.ndarray  # added to every row's logits
    margin: np.ndarray  # extra logit on the true class, by true class
    sigma: np.ndarray  # noise scale, by true class
    partner: np.ndarray  # confusable class, by true class
    drift_dir: np.ndarray  # direction of the logit shift under drift

    @classmethod
    def from_seed(cls, seed: int, classes: int) -> _Model:
        rng = np.random.default_rng([seed, 0x78656E74])
        prior = rng.dirichlet(np.full(classes, 4.0))
        bias = rng.normal(0.0, 0.3, classes)
        margin = rng.uniform(1.0, 4.0, classes)
        sigma = rng.uniform(0.7, 2.0, classes)
        partner = (np.arange(classes) + rng.integers(1, classes, classes)) % classes
        drift_dir = rng.normal(0.0, 1.0, classes)
        return cls(np.cumsum(prior), bias, margin, sigma, partner, drift_dir)

    def labels(self, ids: np.ndarray, seed: int) -> np.ndarray:
        u = _uniform(ids, _stream_key(seed, "label"))
        y = np.searchsorted(self.cum_prior, u, side="right")
        return np.minimum(y, len(self.cum_prior) - 1).astype(np.int64)

    def logits(self, ids: np.ndarray, y: np.ndarray, seed: int, drift: float) -> np.ndarray:
        """float64 logits, shape (len(ids), C)."""
        c = len(self.bias)
        out = _normals(ids, _stream_key(seed, "noise"), c)
        out *= self.sigma[y][:, None]
        out += self.bias
        rows = np.arange(len(ids))
        out[rows, y] += self.margin[y]
        out[rows, self.partner[y]] += 0.4 * self.margin[y]
        if drift != 0.0:  # skipped at 0 so undrifted logits are bitwise unchanged
            out /= 1.0 + 0.5 * drift
            out += drift * self.drift_dir
        return out


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


# ------------------------------------------------------------------------- arguments


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_args(rows, classes, shards, layout, kind, dtype, slices, hive, null_labels, drift,
                row_group_rows, bad_shards) -> dict[str, int]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    allowed = ("logits", "probs") if layout == "binary" else KINDS
    if kind not in allowed:
        raise ValueError(f"kind must be one of {allowed} for layout {layout!r}, got {kind!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if not _is_int(classes) or classes < 2:
        raise ValueError(f"classes must be an int >= 2, got {classes!r}")
    if layout == "binary" and classes != 2:
        raise ValueError(f"layout 'binary' needs classes=2, got {classes}")
    if not _is_int(rows) or rows < 0:
        raise ValueError(f"rows must be an int >= 0, got {rows!r}")
    if not _is_int(shards) or shards < 1:
        raise ValueError(f"shards must be an int >= 1, got {shards!r}")
    if not 0.0 <= null_labels <= 1.0:
        raise ValueError(f"null_labels must be a fraction in [0, 1], got {null_labels!r}")
    if not (math.isfinite(drift) and drift >= 0.0):
        raise ValueError(f"drift must be finite and >= 0, got {drift!r}")
    if row_group_rows is not None and (not _is_int(row_group_rows) or row_group_rows < 1):
        raise ValueError(f"row_group_rows must be a positive int or None, got {row_group_rows!r}")
    names = list(_RESERVED) + list(KINDS) + list(_COLUMN_PREFIX.values())
    for what, spec in (("slices", slices or {}), ("hive", hive or {})):
        for name, values in spec.items():
            if name in names or re.fullmatch(r"(logit|prob|log_prob)_\d+", name):
                raise ValueError(f"{what} column {name!r} clashes with another column")
            if len(values) == 0:
                raise ValueError(f"{what} column {name!r} needs at least one value")
            names.append(name)
    for name, values in (hive or {}).items():
        if any(v is None for v in values):
            raise ValueError(f"hive column {name!r}: None is not a partition value")
    n_combos = math.prod(len(v) for v in (hive or {}).values())
    if shards < n_combos:
        raise ValueError(f"{n_combos} hive partitions need shards >= {n_combos}, got {shards}")
    bad = {k: int(v) for k, v in (bad_shards or {}).items() if v}
    unknown = set(bad) - set(BAD_KINDS)
    if unknown:
        raise ValueError(f"unknown bad_shards kinds {sorted(unknown)}; known: {BAD_KINDS}")
    if any(v < 0 for v in bad.values()):
        raise ValueError(f"bad_shards counts must be >= 0, got {bad_shards}")
    if sum(bad.values()) > shards - 1:
        raise ValueError(f"{sum(bad.values())} bad shards need shards >= {sum(bad.values()) + 1} "
                         "(the first shard is always good)")
    if "unnormalized" in bad and kind != "probs":
        raise ValueError("bad_shards 'unnormalized' needs kind='probs'")
    if layout == "binary" and ({"unnormalized", "wrong_classes"} & set(bad)):
        raise ValueError("bad_shards 'unnormalized' and 'wrong_classes' need a class axis, "
                         "not layout 'binary'")
    return bad


# -------------------------------------------------------------------------- writing


def _pred_arrays(pred: np.ndarray, layout: str, name: str, prefix: str) -> dict[str, pa.Array]:
    """Arrow prediction column(s) for a (n, K) array, or (n,) for binary."""
    if layout == "binary":
        return {name: pa.array(pred)}
    n, k = pred.shape
    if layout == "wide":
        columns = np.ascontiguousarray(pred.T)
        return {f"{prefix}{j}": pa.array(columns[j]) for j in range(k)}
    values = pa.array(np.ascontiguousarray(pred).reshape(-1))
    if layout == "fixed_size_list":
        return {name: pa.FixedSizeListArray.from_arrays(values, k)}
    if n * k >= 2**31:
        raise ValueError(f"a shard of {n} x {k} values is too big for a List column; use more shards")
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return {name: pa.ListArray.from_arrays(offsets, values)}


def _write_atomic(fs, path: str, write) -> None:
    """Call ``write(file)`` on a hidden temporary file next to ``path``, then rename it."""
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"  # leading dot: dataset readers skip it
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # the temporary file may never have been created
            pass
        raise


def _truncated_bytes(data: bytes) -> bytes:
    """A Parquet file cut short: at most half of it, and never its footer."""
    footer = int.from_bytes(data[-8:-4], "little") + 8  # metadata + length + b"PAR1"
    return data[: max(0, min(len(data) // 2, len(data) - footer))]


def _existing_parquet(fs, base: str) -> list[str]:
    if not fs.exists(base):
        return []
    return [p for p in fs.find(base) if p.endswith((".parquet", ".pq", ".parq")) and not p.rsplit("/", 1)[-1].startswith(".")]


def generate_dump(
    out: str | os.PathLike,
    *,
    rows: int = 100_000,
    classes: int = 10,
    shards: int = 8,
    layout: str = "fixed_size_list",
    kind: str = "logits",
    dtype: str = "float32",
    slices: dict[str, list] | None = None,
    hive: dict[str, list] | None = None,
    weights: bool = False,
    string_labels: bool = False,
    null_labels: float = 0.0,
    drift: float = 0.0,
    seed: int = 0,
    shuffle: bool = False,
    row_group_rows: int | None = None,
    bad_shards: dict[str, int] | None = None,
    compression: str = "zstd",
    storage_options: dict | None = None,
    overwrite: bool = False,
) -> GeneratedDump:
    """Write a synthetic prediction dump as sharded Parquet.

    Parameters
    ----------
    out : str or os.PathLike
        Output folder, a local path or an fsspec URL; created if missing.
    rows : int
        Total rows over all shards. Ids are ``0 .. rows-1``.
    classes : int
        Number of classes ``C`` (exactly 2 for ``layout="binary"``).
    shards : int
        Number of files. Shard ``k`` holds positions ``[k*rows//shards, (k+1)*rows//shards)``.
    layout : {"fixed_size_list", "list", "wide", "binary"}
        How predictions are stored; see the module docstring.
    kind : {"logits", "probs", "log_probs"}
        What is stored; the binary layout takes ``"logits"`` or ``"probs"``.
    dtype : {"float32", "float64"}
        Float type of the predictions.
    slices : dict of str to list, optional
        Slice columns; each row gets one of the listed values, uniformly at random.
    hive : dict of str to list, optional
        Hive partition keys and values. Shards are spread in contiguous runs over the
        combinations (``itertools.product`` order) and written under
        ``key=value/...`` folders; the values are not stored in the files. Needs
        ``shards >=`` the number of combinations.
    weights : bool
        Add a float64 ``weight`` column, uniform in [0.5, 2).
    string_labels : bool
        Store labels as ``"class_0" ..`` strings and the class list as JSON under the
        schema metadata key ``b"xent.classes"``.
    null_labels : float
        Fraction (in expectation) of rows whose label is null.
    drift : float
        0 for the reference model; ``d > 0`` gives ``logits / (1 + d/2) + d * v``.
    seed : int
        Seeds everything; the same seed gives the same row for the same id.
    shuffle : bool
        Permute the rows before sharding (same id -> row mapping, different order).
    row_group_rows : int, optional
        Rows per Parquet row group; default one row group per shard, capped at 1,000,000.
    bad_shards : dict of str to int, optional
        How many shards to break per kind in ``BAD_KINDS``. Different kinds get
        different shards, never the first one; the choice depends only on ``seed``
        and ``shards``. ``"unnormalized"`` needs ``kind="probs"``; it and
        ``"wrong_classes"`` are not available for the binary layout.
    compression : str
        Parquet compression codec.
    storage_options : dict, optional
        Passed to fsspec for ``out``.
    overwrite : bool
        If ``out`` already holds Parquet files (``.parquet``, ``.pq``, ``.parq``, searched
        recursively), delete them first instead of raising ``FileExistsError``: stale
        shards would otherwise join the dump.

    Returns
    -------
    GeneratedDump
        Where everything was written and which shards are broken.
    """
    bad_counts = _check_args(rows, classes, shards, layout, kind, dtype, slices, hive, null_labels,
                             drift, row_group_rows, bad_shards)
    rows, classes, shards = int(rows), int(classes), int(shards)
    slices, hive = dict(slices or {}), dict(hive or {})
    seed = int(seed) & _MASK64
    np_dtype = DTYPES[dtype]
    root = os.fspath(out)
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")

    # Which shards are broken: a seeded shuffle of shards 1..S-1, handed out in BAD_KINDS order.
    order = np.random.default_rng([seed, 0x626164]).permutation(np.arange(1, shards))
    bad_of_shard: dict[int, str] = {}
    for bad_kind in BAD_KINDS:
        for _ in range(bad_counts.get(bad_kind, 0)):
            k = int(order[len(bad_of_shard)])
            bad_of_shard[k] = bad_kind
            if bad_kind in _ROW_DEFECTS and (k + 1) * rows // shards == k * rows // shards:
                raise ValueError(f"bad shard {bad_kind!r} landed on an empty shard; use more rows")

    existing = _existing_parquet(fs, base)
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {len(existing)} .parquet file(s), e.g. "
                              f"{existing[0]}; pass overwrite=True to delete them")
    for path in existing:
        fs.rm(path)

    model = _Model.from_seed(seed, classes)
    class_names = [f"class_{c}" for c in range(classes)] if string_labels else None
    # One extra name so a "bad_label" row (label == classes) can be spelled too.
    label_names = pa.array([f"class_{c}" for c in range(classes + 1)]) if string_labels else None
    prefix = _COLUMN_PREFIX[kind]
    if layout == "binary":
        pred_column, pred_columns = prefix, [prefix]
    elif layout == "wide":
        pred_column, pred_columns = f"{prefix}_", [f"{prefix}_{j}" for j in range(classes)]
    else:
        pred_column, pred_columns = kind, [kind]
    slice_values = {name: pa.array(values) for name, values in slices.items()}
    metadata = {_CLASSES_KEY: json.dumps(class_names).encode()} if string_labels else None
    dictionary_columns = list(slices) + (["label"] if string_labels else [])

    combos = list(itertools.product(*hive.values()))
    width = max(5, len(str(shards - 1)))
    files: list[str] = []
    bad: dict[str, BadShard] = {}
    partitions: dict[str, dict[str, Any]] = {}
    good_rows = 0
    for k in range(shards):
        start, stop = k * rows // shards, (k + 1) * rows // shards
        n = stop - start
        combo = combos[k * len(combos) // shards]
        folder = "/".join(f"{key}={_hive_segment(v)}" for key, v in zip(hive, combo))
        rel = f"{folder}/part-{k:0{width}d}.parquet" if folder else f"part-{k:0{width}d}.parquet"
        path = f"{root.rstrip('/')}/{rel}"
        bad_kind = bad_of_shard.get(k)
        bad_row = None
        if bad_kind in _ROW_DEFECTS:
            bad_row = _mix_int(_stream_key(seed, "bad_row") + k) % n

        positions = np.arange(start, stop, dtype=np.int64)
        ids = _permute(positions, rows, seed) if shuffle else positions
        y = model.labels(ids, seed)
        logits = model.logits(ids, y, seed, float(drift))
        if bad_kind == "wrong_classes":  # one more class: a neutral extra logit, then normalise
            logits = np.concatenate([logits, np.zeros((n, 1))], axis=1)
        pred = _to_kind(logits, kind, layout).astype(np_dtype)
        del logits
        if bad_kind == "nan":
            if pred.ndim == 1:
                pred[bad_row] = np.nan
            else:  # in class column bad_row % C, so not always the first or the true class
                pred[bad_row, bad_row % classes] = np.nan
        elif bad_kind == "unnormalized":
            pred[bad_row] *= np_dtype(1.5)

        null = _uniform(ids, _stream_key(seed, "null")) < null_labels if null_labels > 0 else None
        if bad_kind == "bad_label":
            y[bad_row] = classes
            if null is not None:
                null[bad_row] = False
        label = pa.array(y, mask=null)
        if string_labels:
            label = label_names.take(label)

        columns: dict[str, pa.Array] = {"id": pa.array(ids)}
        if bad_kind != "missing_column":
            columns["label"] = label
        columns.update(_pred_arrays(pred, layout, pred_column, f"{prefix}_"))
        del pred
        for name, values in slice_values.items():
            u = _uniform(ids, _stream_key(seed, f"slice/{name}"))
            idx = np.minimum((u * len(values)).astype(np.int64), len(values) - 1)
            columns[name] = values.take(pa.array(idx))
        if weights:
            columns["weight"] = pa.array(0.5 + 1.5 * _uniform(ids, _stream_key(seed, "weight")))
        table = pa.table(columns).replace_schema_metadata(metadata)

        group = int(row_group_rows or min(max(n, 1), _MAX_ROW_GROUP))

        def write(f, table=table, group=group, truncate=bad_kind == "truncated"):
            options = dict(row_group_size=group, compression=compression, use_dictionary=dictionary_columns,
                           write_page_checksum=True)
            if not truncate:
                pq.write_table(table, f, **options)
                return
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf, **options)
            f.write(_truncated_bytes(buf.getvalue().to_pybytes()))

        fs.makedirs(f"{base}/{folder}" if folder else base, exist_ok=True)
        _write_atomic(fs, f"{base}/{rel}", write)
        del table, columns

        files.append(path)
        if hive:
            partitions[path] = dict(zip(hive, combo))
        if bad_kind is None:
            good_rows += n
        else:
            bad[path] = BadShard(bad_kind, bad_row)

    return GeneratedDump(
        root=root, files=files, bad=bad, classes=classes, class_names=class_names,
        pred_column=pred_column, label_column="label", rows=rows, good_rows=good_rows,
        layout=layout, kind=kind, dtype=dtype, pred_columns=pred_columns,
        weight_column="weight" if weights else None, slice_columns=list(slices),
        hive_columns=list(hive), partitions=partitions,
    )


def _hive_segment(value: Any) -> str:
    """``str(value)``, percent-encoded the way pyarrow's hive partitioning decodes it."""
    from urllib.parse import quote

    return quote(str(value), safe="")


# -------------------------------------------------------------------------- reading


def _column_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """Numeric columns as numeric arrays; strings and others as object arrays."""
    return column.to_numpy(zero_copy_only=False)


def _read_pred(table: pa.Table, dump: GeneratedDump) -> np.ndarray:
    c = dump.classes
    if dump.layout == "binary":
        x = table.column(dump.pred_column).to_numpy().astype(np.float64)
        if dump.kind == "logits":  # softmax([0, l]) == [1 - sigmoid(l), sigmoid(l)]
            return np.column_stack([np.zeros_like(x), x])
        return np.column_stack([1.0 - x, x])
    if dump.layout == "wide":
        if table.num_rows == 0:
            return np.empty((0, c))
        return np.column_stack([table.column(name).to_numpy() for name in dump.pred_columns]).astype(np.float64)
    column = table.column(dump.pred_column).combine_chunks()
    if dump.layout == "list" and len(column) and not pc.all(pc.equal(pc.list_value_length(column), c)).as_py():
        raise ValueError(f"{dump.pred_column}: not every row holds {c} values")
    return column.flatten().to_numpy().astype(np.float64).reshape(-1, c)


def _read_label(table: pa.Table, dump: GeneratedDump) -> np.ndarray:
    column = table.column(dump.label_column)
    if dump.class_names is not None:
        column = pc.index_in(column, value_set=pa.array(dump.class_names))
    return column.fill_null(-1).to_numpy().astype(np.int64)


def load_arrays(dump: GeneratedDump, *, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Read the good shards of a dump back into numpy, without the evaluation engine.

    Parameters
    ----------
    dump : GeneratedDump
        What ``generate_dump`` returned.
    storage_options : dict, optional
        Passed to fsspec for the dump's files.

    Returns
    -------
    dict of str to numpy.ndarray
        Rows of all good shards in file order: ``pred`` (n, C) float64 (for the binary
        layout ``[0, logit]`` or ``[1 - p, p]``), ``label`` (n,) int64 with -1 for
        null, ``id`` (n,) int64, ``weight`` (n,) float64 if present, and one array per
        slice and hive column (strings as object arrays).
    """
    parts: dict[str, list[np.ndarray]] = {"pred": [], "label": [], "id": []}
    extra = ([dump.weight_column] if dump.weight_column else []) + dump.slice_columns
    for name in extra + dump.hive_columns:
        parts[name] = []
    for path in dump.good_files:
        fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
        with fs.open(fs_path, "rb") as f:
            table = pq.read_table(f)
        parts["pred"].append(_read_pred(table, dump))
        parts["label"].append(_read_label(table, dump))
        parts["id"].append(table.column("id").to_numpy())
        for name in extra:
            parts[name].append(_column_numpy(table.column(name)))
        for name in dump.hive_columns:
            value = dump.partitions[path][name]
            parts[name].append(np.full(table.num_rows, value, dtype=object if isinstance(value, str) else None))
    out: dict[str, np.ndarray] = {}
    for name, chunks in parts.items():
        if chunks:
            out[name] = np.concatenate(chunks)
        elif name == "pred":
            out[name] = np.empty((0, dump.classes))
        else:
            out[name] = np.empty(0, dtype=np.int64 if name in ("label", "id") else np.float64)
    return out
