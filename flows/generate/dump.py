"""Synthetic, deterministic classifier-prediction dumps as sharded Parquet.

``generate_dump`` writes a folder of ``part-00000.parquet`` ... files that look like
what a real evaluation job dumps: one row per example, an ``id``, a true ``label``
and the model's predictions, optionally with slice columns (``model``, ``split``,
...), a ``weight`` column and hive partition folders (``date=2026-11-23/...``).
Every page carries a CRC-32 (``write_page_checksum``), so xent verifies what it reads.

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

The steps: ``plan`` checks the arguments and decides what each shard holds,
``shards`` builds a shard's table from its row ids (over the random streams of
``streams``), and ``write`` writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import fsspec

from .plan import BAD_KINDS, PlantedDefect, plan_dump
from .shards import ShardBuilder
from .write import clear_existing, write_shard

__all__ = ["BAD_KINDS", "GeneratedDump", "PlantedDefect", "generate_dump"]


@dataclass(frozen=True)
class GeneratedDump:
    """Description of a dump written by ``generate_dump``.

    Attributes
    ----------
    root : str
        The output folder, as given (local path or fsspec URL).
    files : list of str
        Every shard written, in shard order, as ``root + "/" + relative path``.
    bad : dict of str to PlantedDefect
        Deliberately broken shards: path -> ``PlantedDefect(kind, row)``.
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
        Rows in the shards that are not bad.
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
    bad: dict[str, PlantedDefect]
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
    plan = plan_dump(rows=rows, classes=classes, shards=shards, layout=layout, kind=kind, dtype=dtype,
                     slices=slices, hive=hive, weights=weights, string_labels=string_labels,
                     null_labels=null_labels, drift=drift, seed=seed, shuffle=shuffle,
                     row_group_rows=row_group_rows, bad_shards=bad_shards)
    root = os.fspath(out)
    fs, base = fsspec.core.url_to_fs(root, **(storage_options or {}))
    base = base.rstrip("/")
    clear_existing(fs, base, root, overwrite)

    builder = ShardBuilder(plan)
    dictionary_columns = list(plan.slices) + (["label"] if string_labels else [])
    files, bad, partitions = [], {}, {}
    for shard in plan.shards:
        table = builder.table(shard)
        write_shard(fs, f"{base}/{shard.rel}", table, row_group_rows=row_group_rows, compression=compression,
                    dictionary_columns=dictionary_columns, truncate=shard.bad is not None and shard.bad.kind == "truncated")
        del table
        path = f"{root.rstrip('/')}/{shard.rel}"
        files.append(path)
        if plan.hive:
            partitions[path] = shard.partition
        if shard.bad is not None:
            bad[path] = shard.bad

    return GeneratedDump(
        root=root, files=files, bad=bad, classes=plan.classes, class_names=plan.class_names,
        pred_column=plan.pred_column, label_column="label", rows=plan.rows,
        good_rows=sum(shard.rows for shard in plan.shards if shard.bad is None),
        layout=layout, kind=kind, dtype=dtype, pred_columns=plan.pred_columns,
        weight_column="weight" if weights else None, slice_columns=list(plan.slices),
        hive_columns=list(plan.hive), partitions=partitions,
    )
