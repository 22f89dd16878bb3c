"""What a dump will hold, decided before anything is written: the arguments checked,
and for every shard its rows, its file and its defect, if any."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

import numpy as np

from ..kinds import KINDS
from .streams import MASK64, mix_int, permute, stream_key

LAYOUTS = ("fixed_size_list", "list", "wide", "binary")
DTYPES = {"float32": np.float32, "float64": np.float64}
# Kinds of deliberately broken shard, in the order shards are handed out to them.
BAD_KINDS = ("truncated", "nan", "bad_label", "wrong_classes", "missing_column", "unnormalized")
ROW_DEFECTS = ("nan", "bad_label", "unnormalized")  # defects placed in one known row
_RESERVED = ("id", "label", "weight")


class PlantedDefect(NamedTuple):
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
class ShardPlan:
    """One file of the dump: positions ``[start, stop)`` of the row order."""

    index: int
    start: int
    stop: int
    rel: str  # path below the dump's root
    partition: dict[str, Any]  # hive key -> value; empty without hive
    bad: PlantedDefect | None

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def folder(self) -> str:
        """The hive folders above the file ("" without hive)."""
        return self.rel.rpartition("/")[0]


@dataclass(frozen=True)
class DumpPlan:
    """The checked arguments of ``generate_dump`` and the shards they make."""

    rows: int
    classes: int
    layout: str
    kind: str
    dtype: str
    slices: dict[str, list]
    hive: dict[str, list]
    weights: bool
    string_labels: bool
    null_labels: float
    drift: float
    seed: int  # modulo 2**64
    shuffle: bool
    row_group_rows: int | None
    shards: list[ShardPlan]

    @property
    def class_names(self) -> list[str] | None:
        return [f"class_{c}" for c in range(self.classes)] if self.string_labels else None

    @property
    def pred_columns(self) -> list[str]:
        """All prediction columns: ``C`` names for the wide layout, else one."""
        columns = KINDS[self.kind]
        if self.layout == "binary":
            return [columns.binary_column]
        if self.layout == "wide":
            return [f"{columns.wide_prefix}{j}" for j in range(self.classes)]
        return [columns.list_column]

    @property
    def pred_column(self) -> str:
        """The prediction column; for the wide layout the column prefix."""
        return KINDS[self.kind].wide_prefix if self.layout == "wide" else self.pred_columns[0]

    def ids(self, shard: ShardPlan) -> np.ndarray:
        """The row ids of a shard, in file order."""
        positions = np.arange(shard.start, shard.stop, dtype=np.int64)
        return permute(positions, self.rows, self.seed) if self.shuffle else positions


def plan_dump(*, rows, classes, shards, layout, kind, dtype, slices, hive, weights, string_labels,
              null_labels, drift, seed, shuffle, row_group_rows, bad_shards) -> DumpPlan:
    """Check ``generate_dump``'s arguments and lay out its shards; raises ValueError."""
    bad_counts = _check_args(rows, classes, shards, layout, kind, dtype, slices, hive, null_labels,
                             drift, row_group_rows, bad_shards)
    rows, classes, shards = int(rows), int(classes), int(shards)
    slices, hive = dict(slices or {}), dict(hive or {})
    seed = int(seed) & MASK64
    bad = _assign_bad_shards(bad_counts, rows, shards, seed)
    combos = list(itertools.product(*hive.values()))
    width = max(5, len(str(shards - 1)))
    plans = []
    for k in range(shards):
        start, stop = k * rows // shards, (k + 1) * rows // shards
        combo = combos[k * len(combos) // shards]
        folder = "/".join(f"{key}={_hive_segment(v)}" for key, v in zip(hive, combo))
        name = f"part-{k:0{width}d}.parquet"
        bad_kind = bad.get(k)
        bad_row = mix_int(stream_key(seed, "bad_row") + k) % (stop - start) if bad_kind in ROW_DEFECTS else None
        plans.append(ShardPlan(
            index=k, start=start, stop=stop, rel=f"{folder}/{name}" if folder else name,
            partition=dict(zip(hive, combo)), bad=PlantedDefect(bad_kind, bad_row) if bad_kind else None,
        ))
    return DumpPlan(
        rows=rows, classes=classes, layout=layout, kind=kind, dtype=dtype, slices=slices, hive=hive,
        weights=weights, string_labels=string_labels, null_labels=null_labels, drift=float(drift), seed=seed,
        shuffle=shuffle, row_group_rows=row_group_rows, shards=plans,
    )


def _assign_bad_shards(bad_counts: dict[str, int], rows: int, shards: int, seed: int) -> dict[int, str]:
    """Shard index -> bad kind: a seeded shuffle of shards 1..S-1, handed out in BAD_KINDS order."""
    order = np.random.default_rng([seed, 0x626164]).permutation(np.arange(1, shards))
    bad_of_shard: dict[int, str] = {}
    for bad_kind in BAD_KINDS:
        for _ in range(bad_counts.get(bad_kind, 0)):
            k = int(order[len(bad_of_shard)])
            bad_of_shard[k] = bad_kind
            if bad_kind in ROW_DEFECTS and (k + 1) * rows // shards == k * rows // shards:
                raise ValueError(f"bad shard {bad_kind!r} landed on an empty shard; use more rows")
    return bad_of_shard


def _hive_segment(value: Any) -> str:
    """``str(value)``, percent-encoded the way pyarrow's hive partitioning decodes it."""
    return quote(str(value), safe="")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_args(rows, classes, shards, layout, kind, dtype, slices, hive, null_labels, drift,
                row_group_rows, bad_shards) -> dict[str, int]:
    """The arguments' problems as ValueError; returns the nonzero ``bad_shards`` counts."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    allowed = ("logits", "probs") if layout == "binary" else tuple(KINDS)
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
    names = list(_RESERVED) + [c.list_column for c in KINDS.values()] + [c.binary_column for c in KINDS.values()]
    wide = re.compile("(?:" + "|".join(re.escape(c.wide_prefix) for c in KINDS.values()) + r")\d+")
    for what, spec in (("slices", slices or {}), ("hive", hive or {})):
        for name, values in spec.items():
            if name in names or wide.fullmatch(name):
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
