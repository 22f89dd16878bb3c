"""The Dask step: shards -> small per-piece states -> one tree-reduced state.

States are merged in a tree with a fixed fan-in, so the report does not depend on
file order or on which worker ran what (merge is associative and commutative).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from distributed import Client

from ..config import EvalConfig
from ..errors import DataError
from ..inputs.reader import ReadSpec, resolve_spec
from ..inputs.sources import InputFile, fingerprint, list_inputs
from .cluster import STALL_TIMEOUT, map_all, map_reduce
from .pieces import BadShard, FileInfo, PieceResult, _empty, evaluate_piece, first_readable_spec, inspect_file, plan_pieces
from .progress import Progress

log = logging.getLogger("xent")


@dataclass
class Evaluation:
    """Everything a report is written from."""

    config: EvalConfig
    spec: ReadSpec
    inputs: list[InputFile]
    result: PieceResult
    fingerprint: dict = field(default_factory=dict)
    n_files_verified: int = 0  # inputs whose pages carry checksums, verified as they are read

    @property
    def n_files(self) -> int:
        return len(self.inputs)



def evaluate(
    config: EvalConfig, client: Client, progress: Progress | None = None, inputs: list[InputFile] | None = None
) -> Evaluation:
    """Run one evaluation on `client` and return the merged statistics. `inputs`
    defaults to listing `config.sources`."""
    inputs = inputs if inputs is not None else list_inputs(config.sources, config.storage_options)
    spec, unreadable = first_readable_spec(config, inputs)
    progress = progress or Progress.quiet()
    readable = [file for file in inputs if file.url not in {b.url for b in unreadable}]
    infos = inspect_files(client, readable, spec, progress, config.stall_timeout)
    rejected = [info for info in infos if info.error is not None]
    if 2 * len(rejected) > len(infos):
        # The file the settings came from may be the odd one out: take the other layout
        # if it fits more files.
        try:
            other_spec = resolve_spec(config, rejected[0].file)
        except DataError:
            other_spec = None
        if other_spec is not None:
            other = inspect_files(client, readable, other_spec, progress, config.stall_timeout)
            if sum(i.error is None for i in other) > len(infos) - len(rejected):
                spec, infos = other_spec, other
    bad = unreadable + tuple(BadShard(i.file.url, i.error, i.rows) for i in infos if i.error is not None)
    # With on_bad_shard='skip' a file is one task: a bad row group must drop its whole file.
    pieces = plan_pieces(infos, config.task_rows if config.on_bad_shard == "error" else None)
    result = PieceResult(_empty(spec), bad)
    if pieces:
        with progress.stage("evaluating", sum(p.rows for p in pieces), unit="rows") as advance:
            total = map_reduce(
                client, evaluate_piece, pieces, spec=spec, merge=PieceResult.merge, split_every=config.split_every,
                stall_timeout=config.stall_timeout, on_done=lambda i: advance(pieces[i].rows),
            )
            result = PieceResult.merge(total, result)
    verified = sum(info.checksummed for info in infos)
    if result.probability_like:
        first, more = result.probability_like[0], len(result.probability_like) - 1
        log.warning("%s%s: every row read as logits is non-negative and sums to 1: these look like probabilities; "
                    "if they are, pass --kind probs (kind: probs in a config)", first,
                    f" and {more} more file(s)" if more else "")
    return Evaluation(config, spec, inputs, result, fingerprint(inputs), n_files_verified=verified)


def inspect_files(client: Client, files: list[InputFile], spec: ReadSpec, progress: Progress | None = None,
                  stall_timeout: float = STALL_TIMEOUT) -> list[FileInfo]:
    """Each file's row groups, schema check and checksum status (``FileInfo``), in order."""
    progress = progress or Progress.quiet()
    with progress.stage("inspecting shards", len(files)) as advance:
        return map_all(client, inspect_file, files, spec=spec, stall_timeout=stall_timeout, on_done=lambda i: advance(1))

