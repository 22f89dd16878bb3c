"""``xent compare`` on token dumps: a candidate language model against a baseline on the
same tokens (issue #19).

Both dumps are evaluated as token dumps (their own reports, bad data and fingerprints
as for ``xent eval --kind tokens``), then their tokens are joined on document key and
position through drift's join (:mod:`flows.monitor.join`, with :class:`TokenRows`): a
token on one side only is counted, not compared; a different target at the same key is
a data error naming the key. Each joined bucket becomes a
:class:`xent_kernels.token_pairs.TokenPairStats`, in the frequency buckets of the
candidate's own per-token counts (or the counts file given). The baseline is read as
the teacher and the candidate as the student for the KL lower bound.

``compare.parquet`` has a row per (slice or overall, scope): ``all`` tokens, each
position bucket, each frequency bucket (:mod:`xent_kernels.token_pair_report`);
``compare_tokens.parquet`` a row per target id, the largest total CE increase
(``ce_sum_diff``, tokens × mean difference) first. Gates read the ``all`` rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from distributed import Client

from xent_kernels.token_pair_report import TokenPairReport
from xent_kernels.token_pairs import TokenPairStats, take_lists, token_pairs_partial
from xent_kernels.token_report import frequency_edges, frequency_ranks

from ..config import CompareConfig, log_base, nats_per_unit
from ..engine import Evaluation, Progress
from ..errors import DataError
from ..inputs.tokens import TokenBatch, TokenSpec
from ..report.tables import _column, slice_key_columns
from ..report.token_tables import read_vocabulary, token_counts
from .gates import breached_gates, gate_rows
from .paired import compare_metadata
from .join import JoinResult, Pairing, concatenate_keys, describe_key, renumber_slices
from .sides import evaluate_sides, join_evaluated

SIDES = ("baseline", "candidate")
JOIN_COUNTS = ("n_matched", "n_only_baseline", "n_only_candidate")  # on the overall all-tokens row


@dataclass
class TokenRows:
    """One side's tokens of a join bucket: keys (the document key columns, then the
    position), and what the pair state reads."""

    keys: list[np.ndarray]
    target: np.ndarray
    logprob: np.ndarray
    buckets: np.ndarray  # the document's jackknife bucket
    slice_ids: np.ndarray
    slice_keys: list[tuple]
    target_bytes: np.ndarray | None
    topk_offsets: np.ndarray | None
    topk_ids: np.ndarray | None
    topk_logprobs: np.ndarray | None

    def __len__(self) -> int:
        return len(self.target)

    @classmethod
    def of_batch(cls, batch: TokenBatch) -> "TokenRows":
        n = len(batch.target)
        return cls([*batch.doc_keys, batch.position], batch.target, batch.target_logprob,
                   np.zeros(n, np.int64) if batch.buckets is None else batch.buckets,
                   np.zeros(n, np.int64) if batch.slice_ids is None else batch.slice_ids, list(batch.slice_keys),
                   batch.target_bytes, batch.topk_offsets, batch.topk_ids, batch.topk_logprobs)

    def part(self, start: int, stop: int) -> "TokenRows":
        """Rows `start` to `stop` (views, no copy of the lists)."""
        lists: tuple = (None, None, None)
        if self.topk_offsets is not None:
            first, last = self.topk_offsets[start], self.topk_offsets[stop]
            lists = (self.topk_offsets[start:stop + 1] - first, self.topk_ids[first:last],
                     self.topk_logprobs[first:last])
        return TokenRows([values[start:stop] for values in self.keys], self.target[start:stop],
                         self.logprob[start:stop], self.buckets[start:stop], self.slice_ids[start:stop],
                         self.slice_keys, None if self.target_bytes is None else self.target_bytes[start:stop],
                         *lists)

    def take(self, index: np.ndarray) -> "TokenRows":
        lists: tuple = (None, None, None)
        if self.topk_offsets is not None:
            lists = take_lists(self.topk_offsets, self.topk_ids, self.topk_logprobs, np.asarray(index, np.int64))
        return TokenRows([values[index] for values in self.keys], self.target[index], self.logprob[index],
                         self.buckets[index], self.slice_ids[index], self.slice_keys,
                         None if self.target_bytes is None else self.target_bytes[index], *lists)

    @classmethod
    def concatenate(cls, parts: list["TokenRows"]) -> "TokenRows":
        slice_ids, slice_keys = renumber_slices(parts)
        lists: tuple = (None, None, None)
        if parts[0].topk_offsets is not None:
            shifts = np.cumsum([0, *(p.topk_offsets[-1] for p in parts[:-1])])
            offsets = np.concatenate([[0], *(p.topk_offsets[1:] + shift for p, shift in zip(parts, shifts))])
            lists = (offsets, np.concatenate([p.topk_ids for p in parts]),
                     np.concatenate([p.topk_logprobs for p in parts]))
        return cls(
            [concatenate_keys([p.keys[j] for p in parts]) for j in range(len(parts[0].keys))],
            *(np.concatenate([getattr(p, name) for p in parts]) for name in ("target", "logprob", "buckets")),
            slice_ids, slice_keys,
            None if parts[0].target_bytes is None else np.concatenate([p.target_bytes for p in parts]), *lists,
        )


# --------------------------------------------------------------------------- the pairing, on the workers


def _pair_options(spec: TokenSpec, *, frequency_edges: tuple[int, ...]) -> dict:
    return dict(position_edges=tuple(spec.columns.position_edges), frequency_edges=frequency_edges,
                n_buckets=spec.n_buckets)


def _pair_reduce(spec: TokenSpec, baseline: TokenRows, candidate: TokenRows, *, names: tuple[str, str],
                 frequency_of: np.ndarray, frequency_edges: tuple[int, ...], tie_tolerance: float) -> TokenPairStats:
    """The pair state of the matched tokens (`baseline` the first side, named
    `names[0]`), sliced by the second side's slices. Both sides must score the same target."""
    differ = baseline.target != candidate.target
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        first, second = names
        raise DataError(
            f"token ({describe_key(spec.id_cols, candidate, row)}) has target {baseline.target[row]} in the {first} "
            f"dump but {candidate.target[row]} in the {second} dump: the tokens joined must be the same on both "
            "sides (the same tokenizer and documents; check the document key and position columns)"
        )
    target = candidate.target.astype(np.int64)
    # ids the candidate's counts never saw rank after every counted id: the last bucket
    frequency = frequency_of[np.minimum(target, len(frequency_of) - 1)] if len(frequency_of) else np.zeros(len(target), np.int64)
    frequency = np.where(target < len(frequency_of), frequency, len(frequency_edges) - 1)
    both_lists = baseline.topk_offsets is not None and candidate.topk_offsets is not None
    return token_pairs_partial(
        target, baseline.logprob, candidate.logprob, positions=candidate.keys[-1], frequency_bucket=frequency,
        buckets=candidate.buckets, slice_ids=candidate.slice_ids, slice_keys=candidate.slice_keys,
        target_bytes=candidate.target_bytes,
        baseline_topk=(baseline.topk_offsets, baseline.topk_ids, baseline.topk_logprobs) if both_lists else None,
        candidate_topk=(candidate.topk_offsets, candidate.topk_ids, candidate.topk_logprobs) if both_lists else None,
        position_edges=tuple(spec.columns.position_edges), frequency_edges=frequency_edges, n_buckets=spec.n_buckets,
        tie_tolerance=tie_tolerance,
    )


def token_pairing(names: tuple[str, str], counts: np.ndarray, tie_tolerance: float = 0.0) -> Pairing:
    """The join's pairing for token dumps, sides `names` (the first is the teacher):
    frequency buckets by rank of `counts` (per token id), the tie tolerance in nats."""
    rank = frequency_ranks(counts, len(counts))
    edges = frequency_edges(max(int((counts > 0).sum()), 1))
    frequency_of = np.searchsorted(edges, rank, side="right") - 1
    edges_tuple = tuple(int(e) for e in edges)
    return Pairing(
        names, TokenPairStats,
        functools.partial(_pair_reduce, names=names, frequency_of=frequency_of, frequency_edges=edges_tuple,
                          tie_tolerance=tie_tolerance),
        functools.partial(_pair_options, frequency_edges=edges_tuple), "tokens.doc_cols", TokenRows,
        pairs_in_order=True,  # an evaluation refuses a position repeated in a document
    )


# --------------------------------------------------------------------------- the comparison


@dataclass
class TokenCompareReport:
    joined: JoinResult  # stats: TokenPairStats
    key: tuple[str, ...]
    slice_by: tuple[str, ...]
    baseline: Evaluation
    candidate: Evaluation
    report: TokenPairReport
    table: pa.Table  # compare.parquet without its metadata
    per_token: pa.Table  # compare_tokens.parquet
    breaches: list[str]

    @property
    def overall_row(self) -> dict[str, Any]:
        where = pc.and_(self.table.column("overall"), pc.equal(self.table.column("scope"), "all"))
        return self.table.filter(where).to_pylist()[0]


def compare_token_models(config: CompareConfig, client: Client, progress: Progress | None = None, *,
                         baseline: Any = None, candidate: Any = None) -> TokenCompareReport:
    """Evaluate both token dumps, join their tokens on document key and position, and
    compute the paired differences and the KL lower bound."""
    sides = evaluate_sides(config, client, progress, SIDES, config.baseline, {"baseline": baseline, "candidate": candidate})
    evaluations = {name: sides[name].evaluation for name in SIDES}
    spec = evaluations["candidate"].spec
    counts = token_counts(config, evaluations["candidate"].result.stats)
    pairing = token_pairing(SIDES, counts, config.compare.tie_tolerance * nats_per_unit(config.units))
    key, joined = join_evaluated(config, config.compare, sides, client, pairing, require_match=True, key=spec.doc_cols)
    report = joined.stats.finalize(base=log_base(config.units), level=config.interval_level)
    table = _rows_table(report, joined, spec)
    per_token = _per_token_table(report, config, counts)
    all_rows = table.filter(pc.equal(table.column("scope"), "all"))
    breaches = breached_gates(config.gate, gate_rows(all_rows, config.gate, spec.slice_by), spec.slice_by)
    return TokenCompareReport(joined, (*key, spec.columns.position_col), spec.slice_by, evaluations["baseline"],
                              evaluations["candidate"], report, table, per_token, breaches)


def _rows_table(report: TokenPairReport, joined: JoinResult, spec: TokenSpec) -> pa.Table:
    rows = report.rows
    keep = (rows["tokens"] > 0) | (rows["scope"] == "all")
    if not spec.slice_by:  # one slice: its rows are the overall rows
        keep &= rows["slice"] == -1
    rows = {name: values[keep] for name, values in rows.items()}
    stats = joined.stats
    keys = [stats.slice_keys[i] if i >= 0 else () for i in rows["slice"]]
    columns = slice_key_columns(keys, spec.slice_by, spec.slice_types) if spec.slice_by else {}
    columns["overall"] = pa.array(rows["slice"] == -1)
    columns["scope"] = pa.array(rows["scope"], pa.string())
    columns["verdict"] = pa.array(rows["ce_mean_verdict"], pa.string())
    for name, values in rows.items():
        if name not in ("slice", "scope"):
            columns[name] = pa.array(values, pa.string()) if name.endswith("_verdict") else _column(np.asarray(values))
    overall = (rows["slice"] == -1) & (rows["scope"] == "all")
    left_out = dict(zip(range(-1, len(stats.slice_keys)), [report.left_out[-1], *report.left_out[:-1]]))
    columns["n_left_out"] = pa.array([int(left_out[s]) if scope == "all" else None
                                      for s, scope in zip(rows["slice"], rows["scope"])], pa.int64())
    for name, count in zip(JOIN_COUNTS, (joined.matched, joined.only_first, joined.only_second)):
        columns[name] = pa.array([count if o else None for o in overall], pa.int64())
    return pa.table(columns)


def _per_token_table(report: TokenPairReport, config: CompareConfig, counts: np.ndarray) -> pa.Table:
    per_token = dict(report.per_token)
    per_token["ce_sum_diff"] = per_token["tokens"] * per_token["ce_mean_diff"]
    # the tokens that cost the most first: by total CE increase, not mean (a token seen once would lead)
    order = np.lexsort((per_token["target"], -per_token["ce_sum_diff"]))
    columns = {name: _column(np.asarray(values)[order]) for name, values in per_token.items()}
    rank = frequency_ranks(counts, max(len(counts), int(per_token["target"].max(initial=-1)) + 1))
    columns["frequency_rank"] = pa.array(rank[per_token["target"][order]], pa.int64())
    if config.tokens.vocab:
        vocab = read_vocabulary(config)
        columns["token"] = pa.array([vocab.get(int(i)) for i in per_token["target"][order]], pa.string())
    return pa.table(columns)


def token_compare_tables(report: TokenCompareReport, config: CompareConfig) -> dict[str, pa.Table]:
    """compare.parquet and compare_tokens.parquet, with a comparison's metadata
    (:func:`flows.monitor.paired.compare_metadata`) saying the dumps are token dumps, which
    side is the teacher, and which join ran."""
    metadata = compare_metadata(report, config, tokens=True, teacher="baseline", student="candidate",
                                join="in order" if report.joined.in_order else "hash")
    return {"compare": report.table.replace_schema_metadata(metadata),
            "compare_tokens": report.per_token.replace_schema_metadata(metadata)}
