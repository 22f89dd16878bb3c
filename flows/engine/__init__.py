"""The engine: the only code that submits work to Dask.

Shards are planned into pieces (``pieces``), and so are in-memory tables and Dask
DataFrame partitions; each piece is read and reduced to a small mergeable state on a
worker, and the states are tree-reduced (``run``) on a cluster this package connects
to (``cluster``). Drift and the flows use the public
names below, never the modules' private ones.
"""

from .cluster import STALL_TIMEOUT, dask_client, map_all, map_reduce, tree_reduce, wait_all
from .pieces import (
    BadShard, FileInfo, PartitionInfo, Piece, PieceResult, evaluate_piece, first_readable_spec, inspect_file,
    inspect_partition, piece_batches, plan_pieces,
)
from .progress import Progress
from .run import (
    Evaluation, MemoryPieces, evaluate, evaluate_partitions, evaluate_source, evaluate_table, inspect_files, memory_pieces,
    probability_warning, reduce_pieces,
)

__all__ = [
    "STALL_TIMEOUT", "BadShard", "Evaluation", "FileInfo", "MemoryPieces", "PartitionInfo", "Piece", "PieceResult",
    "Progress", "dask_client", "evaluate", "evaluate_partitions", "evaluate_piece", "evaluate_source", "evaluate_table",
    "first_readable_spec", "inspect_file", "inspect_files", "inspect_partition", "map_all", "map_reduce", "memory_pieces",
    "piece_batches", "plan_pieces", "probability_warning", "reduce_pieces",
    "tree_reduce", "wait_all",
]
