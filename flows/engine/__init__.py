"""The engine: the only code that submits work to Dask.

Shards are planned into pieces (``pieces``), each piece is read and reduced to a
small mergeable state on a worker, and the states are tree-reduced (``run``) on a
cluster this package connects to (``cluster``). Drift and the flows use the public
names below, never the modules' private ones.
"""

from .cluster import STALL_TIMEOUT, dask_client, map_all, map_reduce, tree_reduce, wait_all
from .pieces import BadShard, FileInfo, Piece, PieceResult, evaluate_piece, first_readable_spec, inspect_file, plan_pieces
from .progress import Progress
from .run import Evaluation, evaluate, inspect_files

__all__ = [
    "STALL_TIMEOUT", "BadShard", "Evaluation", "FileInfo", "Piece", "PieceResult", "Progress", "dask_client",
    "evaluate", "evaluate_piece", "first_readable_spec", "inspect_file", "inspect_files", "map_all", "map_reduce",
    "plan_pieces", "tree_reduce", "wait_all",
]
