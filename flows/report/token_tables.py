"""A token dump's report tables (kind: tokens), from a merged ``TokenStats``.

``token_summary``: a row per slice and the overall row (``overall`` True): tokens,
documents (documents layout), token-weighted CE and perplexity, bits per byte, byte and
word perplexity, top-1 accuracy, top-k share, the target's rank distribution, ECE of
the top-1 probability, the coarsened-entropy lower bound, counts left out.
``token_positions``: the same token metrics per position bucket (per slice and overall).
``token_frequency``: per frequency-rank bucket of the target (1-10, 11-100, ...) over all
slices, the ranks from the dump's own counts. ``per_token``: per target id seen.
Every ``<metric>_lo``/``_hi`` pair is a jackknife interval over document-hash buckets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xent_kernels.tokens import TokenReport, TokenStats

from ..config import EvalConfig, log_base
from ..engine import Evaluation
from ..errors import DataError, without_credentials
from ..inputs.sources import filesystem
from .tables import _column, report_metadata, skipped_rows, slice_key_columns

TOKEN_TABLES = ("token_summary", "token_positions", "token_frequency", "per_token")
# The columns the terminal and the Prefect artifact show per slice.
TOKEN_HEADLINE = ("tokens", "documents", "perplexity", "ce_mean", "bits_per_byte", "top1_accuracy")
# Columns in bits per byte whatever the report's units (lm-eval's bits_per_byte); the
# perplexities are unitless; every other CE-like column is in the report's units.
UNIT_FREE = ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def _slice_rows(report: TokenReport, table: dict[str, np.ndarray], evaluation: Evaluation) -> dict[str, pa.Array]:
    """The slice key columns and ``overall`` for rows indexed by slice (-1 overall)."""
    spec, stats = evaluation.spec, evaluation.result.stats
    keys = [stats.slice_keys[i] if i >= 0 else () for i in table["slice"]]
    columns = slice_key_columns(keys, spec.slice_by, spec.slice_types) if spec.slice_by else {}
    columns["overall"] = pa.array(table["slice"] == -1)
    return columns


def _metric_columns(table: dict[str, np.ndarray], skip: tuple[str, ...] = ("slice",)) -> dict[str, pa.Array]:
    return {name: _column(np.asarray(values)) for name, values in table.items() if name not in skip}


def read_id_table(url: str, value: str, storage_options: dict, what: str) -> dict[int, object]:
    """{id: value} from a Parquet file with columns ``id`` and `value` (a vocabulary or
    token counts); a DataError naming the file when it cannot be read or lacks them."""
    try:
        fs, path = filesystem(url, storage_options)
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=["id", value])
    except (OSError, pa.ArrowException, KeyError) as error:
        raise DataError(f"{url}: cannot read the {what} (a Parquet file with columns id and {value}): {error}") from None
    return dict(zip(table.column("id").to_pylist(), table.column(value).to_pylist()))


def given_counts(config: EvalConfig, vocab: int) -> np.ndarray | None:
    """The counts file's count per token id (at least `vocab` ids), None without one."""
    if not config.tokens.counts:
        return None
    given = read_id_table(config.tokens.counts, "count", config.storage_options, "token counts")
    counts = np.zeros(max(max(given, default=-1) + 1, vocab))
    counts[list(given)] = list(given.values())
    return counts


def token_counts(config: EvalConfig, stats: TokenStats) -> np.ndarray:
    """The count per token id that frequency ranks come from: the counts file's, else
    the dump's own (`stats`)."""
    given = given_counts(config, stats.vocab)
    return stats.token_sums[..., 0].sum(axis=1) if given is None else given


def read_vocabulary(config: EvalConfig) -> dict[int, str]:
    """The vocabulary file's token text per id."""
    return read_id_table(config.tokens.vocab, "token", config.storage_options, "vocabulary")


def build_token_tables(evaluation: Evaluation) -> dict[str, pa.Table]:
    config, result = evaluation.config, evaluation.result
    counts = given_counts(config, result.stats.vocab)
    report = result.stats.finalize(base=log_base(config.units), level=config.interval_level, counts=counts)
    summary = report.summary
    if not evaluation.spec.slice_by:  # one slice: its row is the overall row
        summary = {name: values[-1:] for name, values in summary.items()}
    columns = _slice_rows(report, summary, evaluation)
    columns.update(_metric_columns(summary))
    skipped = skipped_rows([b.rows for b in result.bad_shards])
    overall = np.asarray(summary["slice"]) == -1
    columns["n_skipped"] = pa.array([skipped if o else None for o in overall], type=pa.int64())
    columns["n_bad_shards"] = pa.array([len(result.bad_shards) if o else None for o in overall], type=pa.int64())
    tables = {"token_summary": pa.table(columns)}

    positions = report.positions
    if not evaluation.spec.slice_by:
        keep = positions["slice"] == -1
        positions = {name: values[keep] for name, values in positions.items()}
    keep = positions["tokens"] > 0
    positions = {name: values[keep] for name, values in positions.items()}
    position_to = _position_to(positions["position_from"], evaluation.result.stats.position_edges)
    columns = _slice_rows(report, positions, evaluation)
    columns["position_from"] = _column(positions["position_from"])
    columns["position_to"] = _column(position_to)
    columns.update(_metric_columns(positions, ("slice", "position_from")))
    tables["token_positions"] = pa.table(columns)
    tables["token_frequency"] = pa.table(_metric_columns(report.frequency, ()))
    per_token = _metric_columns(report.per_token, ())
    if config.tokens.vocab:
        vocab = read_vocabulary(config)
        per_token["token"] = pa.array([vocab.get(int(i)) for i in report.per_token["target"]], pa.string())
    tables["per_token"] = pa.table(per_token)
    if config.on_bad_shard == "skip":
        tables["bad_shards"] = pa.table({
            "file": pa.array([without_credentials(b.url) for b in result.bad_shards], type=pa.string()),
            "reason": pa.array([b.reason for b in result.bad_shards], type=pa.string()),
            "rows": pa.array([b.rows for b in result.bad_shards], type=pa.int64()),
        })
    return tables


def _position_to(starts: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """The last position of each bucket; -1 for the open last one."""
    following = {a: b - 1 for a, b in zip(edges, edges[1:])}
    return np.array([following.get(int(s), -1) for s in starts], dtype=np.int64)


def token_report_tables(evaluation: Evaluation) -> dict[str, pa.Table]:
    """The token report tables as written, each with the report metadata."""
    metadata = report_metadata(evaluation)
    return {name: table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
            for name, table in build_token_tables(evaluation).items()}
