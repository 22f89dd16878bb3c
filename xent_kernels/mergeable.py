"""The one contract of every mergeable state: ``empty``, ``merge`` and, where a state
has a report of its own, ``finalize``.

A piece of rows (a partition, a batch, a joined bucket) is reduced to a small state, and
states are combined in a tree of any shape. flox and dask name the steps chunk ->
combine -> aggregate; torchmetrics' ``Metric`` has ``merge_state`` and ``compute``.
Every state type of xent says it the same way, so the engine's tree-reduce combines any
of them with :func:`merge_states`, and one table of merge-law tests
(``tests/test_merge_laws.py``) holds every type to the laws:

``Type.empty(...)``
    The state of no rows: the identity of ``merge``. Its arguments give the state's
    shape (classes, buckets, options); states merge only with states of one shape.
``Type.merge(*states)``
    One state of all of one or more states. Associative and commutative: merging two
    states either way round gives the same bits, and any tree of merges over any
    sharding gives the state of the whole, up to the float64 rounding of compensated
    sums (each type's entry in the test table says how close).
``state.finalize(base="e", level=DEFAULT_LEVEL)``
    Report values in nats (``base="e"``) or bits (``base=2``), with intervals at
    `level`: ``ClassStats`` and ``PairedStats``, and ``UnpairedStats`` (two merged
    states of different rows, finalized but never merged).

Pure Python and NumPy: the engine (Dask) imports this, never the other way round.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@runtime_checkable
class Mergeable(Protocol):
    """A state that merges: ``empty`` is the identity of an associative, commutative
    n-ary ``merge``."""

    @classmethod
    def empty(cls, *args, **kwargs) -> Self:
        """The state of no rows, of the shape the arguments give."""
        ...

    @classmethod
    def merge(cls, *states: Self) -> Self:
        """One state of all `states` (at least one, all of one shape)."""
        ...


State = TypeVar("State", bound=Mergeable)


def merge_states(*states: State) -> State:
    """The combine step of a tree-reduce, for any state type: its own ``merge`` of
    `states` (one or more, of one type)."""
    if not states:
        raise ValueError("merge_states needs at least one state: the identity depends on the state's shape")
    kind = type(states[0])
    if any(type(state) is not kind for state in states):
        raise TypeError(f"cannot merge states of different types: {sorted({type(s).__name__ for s in states})}")
    return kind.merge(*states)


def add_counts(tables: Iterable[dict[tuple[Hashable, ...], NDArray[np.int64]]]) -> dict[tuple[Hashable, ...], NDArray[np.int64]]:
    """Per-slice count arrays added key by key, left to right (a key missing from a table
    counts 0): the merge of the count tables that ride along a state (outcomes, infinite rows)."""
    total: dict[tuple[Hashable, ...], NDArray[np.int64]] = {}
    for table in tables:
        for key, counts in table.items():
            total[key] = total[key] + counts if key in total else counts
    return total
