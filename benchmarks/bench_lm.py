"""End-to-end benchmark of ``xent eval --kind tokens`` (issue #18, section 5 "Performance").

Two synthetic token-rows dumps (``flows.generate.generate_token_dump``: ``doc_id`` int64,
``position`` int32, ``target`` int32, ``target_logprob`` float32, ``source`` string
(web, code, books); zstd, ``--shards`` files, vocabulary 32,000, no byte counts, the
generator's defaults otherwise), both sliced by ``source`` and the built-in position
buckets (0, 1, 2-3, 4-7, ...):

* "rows": ``--tokens`` tokens (default 20 M);
* "top-k": ``--topk-tokens`` tokens (default 5 M) with k = 20 ``topk_ids`` /
  ``topk_logprobs`` lists (k or k + 1 entries a row, vLLM's shape).

The issue asks for 200 M and 50 M tokens. The defaults are a tenth of that, to fit a
2-core, 24 GiB machine shared with other jobs in a few minutes; every target is a
ratio (to the read floor, to the peers, to a quarter of the tokens), and xent's work
grows with the batches it reads (262,144 tokens each, a V x K state each), so a tenth
of the size shows the same ratios up to the files' tree-reduce (a merge per file). ``--tokens 200000000 --topk-tokens 50000000 --shards 160`` runs the
issue's sizes: about 3.5 GB of disk (the rows dump is 5.1 bytes a token, the top-k
dump 49), and Polars' group-by then holds some 5 GB.

For each dump:

1. the read floor: pyarrow's dataset reader with 2 threads reading the columns xent
   reads (``TokenSpec.columns_to_read``) into NumPy without compute: primitive
   columns viewed, list columns as offsets and flat values, ``source`` read as an
   Arrow dictionary and its codes taken (the cheapest way to a string column's
   codes; xent reads it as a dictionary too). No page
   checksums (xent verifies them);
2. xent's whole report: ``flows.engine.evaluate`` on an already running local Dask
   cluster (``dask_client(None)``) after one warm-up call, followed by
   ``build_token_tables`` (the finalize: every table with its jackknife intervals);
   then one more evaluation with ``flows.phases`` recording on the workers;
3. DuckDB (``SET threads=2``) and 4. Polars (``POLARS_MAX_THREADS=2``) computing
   only the point estimates per source x position bucket (``CASE position WHEN 0
   THEN 0 ELSE floor(log2(position)) + 1``): token count, token-weighted mean CE and
   perplexity in float64, and on the top-k dump top-1 accuracy (the target's
   log-prob >= the largest listed log-prob). Each result is checked against xent's
   ``token_positions`` table (same counts, relative difference <= 1e-6);
5. scaling (rows dump): a quarter of the shards vs all of them (4x the tokens): the
   time ratio (warm cluster, this process) and the peak-RSS ratio, each evaluation
   in a fresh subprocess (VmHWM, as ``bench_eval``; the local cluster's workers are
   threads of that process, so its peak is the worker's);
6. where xent's time goes beyond the phase table: each step of a batch timed on one
   full batch of the dump (``to_token_batch`` with and without the slice coding and
   the top-k lists, the document key hash, the kernel call with and without the
   per-document table, the state allocation, the document table's lexsort, a merge
   of two batch states with and without its document tables) and multiplied by the
   dump's batch count; then one shard evaluated serially under cProfile.

Times are medians over ``--repeats`` runs after one warm-up run. A final summary
prints each target with PASS or MISS: xent / read floor <= 1.5, DuckDB / xent and
Polars / xent > 1, 4x tokens <= 4.4x time and <= 1.2x peak RSS.

Run from the repository root::

    python benchmarks/bench_lm.py --quick          # smoke run: 400k + 100k tokens, 2 repeats
    python benchmarks/bench_lm.py                  # 20M + 5M tokens, 16 shards each, 5 repeats
    python benchmarks/bench_lm.py --data bench-lm --skip profile,polars
    python benchmarks/bench_lm.py --compare        # only xent compare on two 5M-token top-k dumps (lm_compare.py)

Helpers (timings, threads, the dump marker, RSS's VmHWM) come from ``bench_eval``.
Exit status: 0 when every peer agrees with xent (performance misses do not change it);
1 when a peer disagrees, a count does not match or a section fails; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import io
import json
import os
import platform
import pstats
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# bench_eval, from beside this file whatever the working directory; importing it puts
# the checkout on sys.path and sets POLARS_MAX_THREADS before polars is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_eval  # noqa: E402
from bench_eval import (  # noqa: E402
    AGREE_RTOL,
    COMMAND_TIMEOUT,
    MARKER,
    PEER_THREADS,
    RSS_CODE,
    RSS_TARGET,
    TIME_SLACK,
    Outcome,
    Timing,
    arrow_threads,
    count_rows,
    fmt_s,
    parquet_files,
    rel_diff,
    subprocess_env,
    time_runs,
    print_summary,
)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

duckdb, pl = bench_eval.duckdb, bench_eval.pl

TOPK = 20  # the k
VOCAB = 32_000
SLICE = "source"  # the generator's default slice column
FLOOR_TARGET = 1.5  # xent's whole report / read floor (the 1.5x)
QUICK_TOKENS, QUICK_TOPK_TOKENS, QUICK_REPEATS = 400_000, 100_000, 2
PROFILE_REPEATS = 5  # timed runs of each step of a batch
SKIPPABLE = ("topk", "duckdb", "polars", "scaling", "profile")


@dataclass(frozen=True)
class Dump:
    label: str  # "rows" or "top-k": names its lines
    folder: Path
    files: list[str]
    tokens: int
    topk: int

    @property
    def quarter(self) -> list[str]:
        return self.files[: len(self.files) // 4]


@dataclass
class Measured(Timing):
    """A timing with the process's CPU seconds of each timed run (every thread: pyarrow's,
    the cluster's workers, DuckDB's, Polars'). On a shared machine the CPU seconds are
    the steadier figure: other jobs stretch the wall time, not the work."""

    cpu: list[float] = field(default_factory=list)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[list[float], list[float], object]:
    """``bench_eval.time_runs`` with each timed run's CPU seconds: (times, CPU seconds, last result)."""
    cpu: list[float] = []

    def counted():
        started = cpu_seconds()
        result = fn()
        cpu.append(cpu_seconds() - started)
        return result

    times, result = time_runs(counted, repeats, warmup)
    return times, cpu[warmup:], result


# --------------------------------------------------------------------------- data


def ensure_token_dump(folder: Path, label: str, tokens: int, topk: int, shards: int,
                      shift: float = 0.0) -> tuple[Dump, bool]:
    """The dump in `folder`, generated unless it already holds one made with the same
    parameters (``bench_eval``'s marker); `shift` > 0 makes a second model's dump of the
    same tokens (``generate_token_dump``'s). Returns (dump, reused)."""
    from flows.generate.tokens import DEFAULT_TOKEN_SLICES, generate_token_dump

    slices = {name: list(values) for name, values in DEFAULT_TOKEN_SLICES.items()}
    params = {"kind": "tokens", "layout": "token_rows", "tokens": tokens, "topk": topk, "shards": shards,
              "vocab_size": VOCAB, "slices": slices, "with_bytes": False, "seed": 0}
    if shift:  # only then, so the markers of the first model's dumps stay valid
        params["shift"] = shift
    marker = folder / MARKER
    if marker.exists():
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = {}
        if recorded.get("complete") and recorded.get("params") == params:
            sizes = recorded.get("files", {})
            present = {str(p.relative_to(folder)): p.stat().st_size for p in parquet_files(folder)}
            if sizes and present == sizes:
                return Dump(label, folder, [str(folder / name) for name in sorted(sizes)], tokens, topk), True
    elif folder.exists() and parquet_files(folder):
        raise SystemExit(f"bench_lm: {folder} holds Parquet files but no {MARKER}: not a dump this script made. "
                         "Refusing to overwrite it; pass an empty or new folder with --data.")
    folder.mkdir(parents=True, exist_ok=True)
    # Mark the folder as ours before writing, so an interrupted run can be regenerated.
    marker.write_text(json.dumps({"params": params, "complete": False}))
    started = time.perf_counter()
    dump = generate_token_dump(folder, tokens=tokens, vocab_size=VOCAB, shards=shards, topk=topk, slices=slices,
                               with_bytes=False, seed=0, shift=shift, overwrite=True)
    print(f"generated {tokens:,} tokens{f' with top-{topk} lists' if topk else ''} ({dump.documents:,} documents) "
          f"in {shards} shards under {folder} in {time.perf_counter() - started:.1f} s")
    files = sorted(dump.files)
    sizes = {str(Path(f).relative_to(folder)): Path(f).stat().st_size for f in files}
    marker.write_text(json.dumps({"params": params, "complete": True, "files": sizes}, indent=1))
    return Dump(label, folder, files, tokens, topk), False


def token_config(sources: list[str]):
    from flows.config import EvalConfig

    return EvalConfig(sources=sources, kind="tokens", slice_by=[SLICE])


def token_spec(dump: Dump):
    """xent's read settings for `dump`, resolved from its first file as a run does."""
    from flows.inputs.tokens import resolve_token_spec

    return resolve_token_spec(token_config([str(dump.folder)]), pq.read_schema(dump.files[0]), dump.files[0], {})


# --------------------------------------------------------------------------- 1. read floor


def as_numpy(column: pa.Array) -> tuple[np.ndarray, ...]:
    """A column in NumPy without compute: a list as (offsets, values), a dictionary as
    its codes, anything else viewed."""
    if pa.types.is_list(column.type):
        return column.offsets.to_numpy(), column.flatten().to_numpy()
    if pa.types.is_dictionary(column.type):
        return (column.indices.to_numpy(zero_copy_only=False),)
    return (column.to_numpy(zero_copy_only=False),)


def read_floor(files: list[str], columns: list[str]) -> int:
    """pyarrow dataset scan of `columns` into NumPy (``source`` as dictionary codes)."""
    dataset = pads.dataset(files, format=pads.ParquetFileFormat(
        read_options=pads.ParquetReadOptions(dictionary_columns={SLICE})))
    rows = 0
    for batch in dataset.to_batches(columns=columns, use_threads=True):
        arrays = [as_numpy(column) for column in batch.columns]
        rows += batch.num_rows if all(len(a[-1]) >= batch.num_rows for a in arrays) else -1
    return rows


def bench_floor(dump: Dump, columns: list[str], repeats: int, out: Outcome) -> None:
    with arrow_threads(PEER_THREADS):
        times, cpu, rows = measure(lambda: read_floor(dump.files, columns), repeats)
    out.timings.append(Measured(f"{dump.label}: read floor, pyarrow dataset, 2 threads", "floor", times, dump.tokens,
                              ", ".join(columns), cpu))
    if rows != dump.tokens:
        out.failures.append(f"{dump.label}: the read floor read {rows:,} rows, expected {dump.tokens:,}")


# --------------------------------------------------------------------------- 2. xent


def xent_report(config, client):
    """The engine's evaluation and the report's tables (the finalize, with intervals)."""
    from flows.engine import evaluate
    from flows.report.token_tables import build_token_tables

    evaluation = evaluate(config, client)
    return evaluation, build_token_tables(evaluation)


def position_reference(tables: dict[str, pa.Table]) -> dict[tuple[str, int], dict[str, float]]:
    """xent's token_positions per (source, position_from), slices only."""
    table = tables["token_positions"].to_pydict()
    names = ("tokens", "ce_mean", "perplexity", "top1_accuracy")
    return {(table[SLICE][i], table["position_from"][i]): {name: table[name][i] for name in names}
            for i in range(len(table["tokens"])) if not table["overall"][i]}


def overall_tokens(tables: dict[str, pa.Table]) -> int:
    summary = tables["token_summary"].to_pydict()
    return int(next(n for n, overall in zip(summary["tokens"], summary["overall"]) if overall))


def xent_name(dump: Dump) -> str:
    return f"{dump.label}: xent evaluate + report tables"


def bench_xent(dump: Dump, client, repeats: int, with_quarter: bool, out: Outcome,
               phase_table: dict[str, dict[str, tuple[float, float]]]) -> dict:
    config = token_config([str(dump.folder)])
    started = time.perf_counter()
    xent_report(config, client)
    out.notes.append(f"{dump.label}: first evaluation on this cluster (warm-up) took {time.perf_counter() - started:.2f} s")
    times, cpu, (_, tables) = measure(lambda: xent_report(config, client), repeats, warmup=0)
    out.timings.append(Measured(xent_name(dump), "xent", times, dump.tokens, "warm cluster; finalize with intervals", cpu))
    if overall_tokens(tables) != dump.tokens:
        out.failures.append(f"{dump.label}: xent counted {overall_tokens(tables):,} tokens, expected {dump.tokens:,}")
    phase_table[dump.label] = record_phases(config, client)
    times, cpu, tokens = measure(lambda: serial_pieces(dump), repeats)
    out.timings.append(Measured(f"{dump.label}: xent's pieces in this thread, no cluster", "xent", times, dump.tokens,
                                "evaluate_piece per file + merge + report tables: the work without Dask", cpu))
    if tokens != dump.tokens:
        out.failures.append(f"{dump.label}: the serial run counted {tokens:,} tokens, expected {dump.tokens:,}")
    if with_quarter:
        config_q = token_config(dump.quarter)
        times, cpu, (_, tables_q) = measure(lambda: xent_report(config_q, client), repeats)
        quarter_tokens = count_rows(dump.quarter)
        out.timings.append(Measured(f"{dump.label}: xent, {len(dump.quarter)} of {len(dump.files)} shards (scaling)",
                                    "xent", times, quarter_tokens, "", cpu))
        if overall_tokens(tables_q) != quarter_tokens:
            out.failures.append(f"{dump.label}: xent counted {overall_tokens(tables_q):,} tokens in the quarter, "
                                f"expected {quarter_tokens:,}")
    return position_reference(tables)


def serial_pieces(dump: Dump) -> int:
    """The run's work in this thread, without Dask: every file one piece (as the run plans
    them while a file is under ``task_rows``), the states merged, the tables built. Returns
    the tokens counted."""
    from flows.engine import Evaluation
    from flows.engine.pieces import Piece, PieceResult, evaluate_piece
    from flows.inputs.sources import list_inputs
    from flows.report.token_tables import build_token_tables

    config, spec = token_config([str(dump.folder)]), token_spec(dump)
    inputs = list_inputs(config.sources)
    results = [evaluate_piece(Piece(file, None, pq.ParquetFile(file.url).metadata.num_rows), spec) for file in inputs]
    evaluation = Evaluation(config, spec, inputs, PieceResult.merge(*results))
    return overall_tokens(build_token_tables(evaluation))


def record_phases(config, client) -> dict[str, tuple[float, float]]:
    """One more report with ``flows.phases`` recording on the workers: per phase, (seconds
    summed over tasks, wall seconds), the batch count, and the client's finalize."""
    from flows import phases
    from flows.engine import evaluate
    from flows.report.token_tables import build_token_tables

    client.run(phases.record)
    started = time.perf_counter()
    evaluation = evaluate(config, client)
    total = time.perf_counter() - started
    recorded = list(client.run(phases.stop).values())
    started = time.perf_counter()
    build_token_tables(evaluation)
    finalize = time.perf_counter() - started
    summary = phases.summarize(*recorded)
    table = {name: summary.get(name, (0.0, 0.0)) for name in phases.PHASES}
    batches = sum(len(intervals.get("convert", [])) for intervals in recorded)
    table.update({"evaluate() in all, wall": (total, total), "finalize (build_token_tables)": (finalize, finalize),
                  "batches": (batches, batches)})
    return table


# --------------------------------------------------------------------------- 3. and 4. peers

# The position bucket of the issue: 0, 1, 2-3, 4-7, ... as 0, 1, 2, 3, ...
DUCKDB_BUCKET = "CASE position WHEN 0 THEN 0 ELSE CAST(floor(log2(position)) AS BIGINT) + 1 END"


def duckdb_query(topk: bool) -> str:
    top1 = ", avg(CAST(lp >= list_max(topk_logprobs) AS DOUBLE)) AS top1" if topk else ""
    return f"""
        SELECT {SLICE}, bucket, count(*) AS n, avg(-lp) AS ce, exp(avg(-lp)) AS ppl{top1}
        FROM (SELECT {SLICE}, {DUCKDB_BUCKET} AS bucket, CAST(target_logprob AS DOUBLE) AS lp
                     {", topk_logprobs" if topk else ""}
              FROM read_parquet($files) WHERE target IS NOT NULL AND target_logprob IS NOT NULL)
        GROUP BY ALL ORDER BY ALL"""


def polars_query(files: list[str], topk: bool) -> Callable[[], object]:
    position, lp = pl.col("position"), pl.col("target_logprob").cast(pl.Float64)
    bucket = pl.when(position == 0).then(0).otherwise(position.cast(pl.Float64).log(2).floor().cast(pl.Int64) + 1)
    aggregates = [pl.len().alias("n"), (-lp).mean().alias("ce")]
    if topk:
        aggregates.append((lp >= pl.col("topk_logprobs").list.max()).cast(pl.Float64).mean().alias("top1"))

    def query():
        return (pl.scan_parquet(files)
                .filter(pl.col("target").is_not_null() & pl.col("target_logprob").is_not_null())
                .group_by(pl.col(SLICE), bucket.alias("bucket")).agg(aggregates)
                .with_columns(pl.col("ce").exp().alias("ppl")).sort(SLICE, "bucket").collect())

    return query


def position_from(bucket: int) -> int:
    """The lower edge of position bucket `bucket` (xent's ``position_from``)."""
    return 0 if bucket == 0 else 2 ** (bucket - 1)


def check_agreement(name: str, rows: list[dict], reference: dict, out: Outcome) -> float:
    """Worst relative difference of CE, perplexity and top-1 against xent's token_positions;
    mismatches become failures."""
    got = {(row[SLICE], position_from(int(row["bucket"]))): row for row in rows}
    if set(got) != set(reference):
        out.failures.append(f"{name}: (source, position bucket) cells {sorted(got)} differ from xent's "
                            f"{sorted(reference)}")
        return float("inf")
    worst = 0.0
    for cell, ref in reference.items():
        row = got[cell]
        if int(row["n"]) != ref["tokens"]:
            out.failures.append(f"{name}: cell {cell} has {int(row['n']):,} tokens, xent {ref['tokens']:,}")
        pairs = [("ce", "ce_mean"), ("ppl", "perplexity")] + ([("top1", "top1_accuracy")] if "top1" in row else [])
        worst = max([worst] + [rel_diff(float(row[mine]), float(ref[theirs])) for mine, theirs in pairs])
    if not worst <= AGREE_RTOL:
        out.failures.append(f"{name}: differs from xent's token_positions by {worst:.2e} relative (> {AGREE_RTOL:g})")
    return worst


def bench_duckdb(dump: Dump, reference: dict, repeats: int, out: Outcome) -> None:
    name = f"{dump.label}: duckdb, CE + perplexity{' + top-1' if dump.topk else ''}"
    con = duckdb.connect()
    try:
        con.execute(f"SET threads={PEER_THREADS}")
        query = duckdb_query(bool(dump.topk))
        times, cpu, result = measure(lambda: con.execute(query, {"files": dump.files}).fetchall(), repeats)
        columns = [column[0] for column in con.description]
    finally:
        con.close()
    worst = check_agreement(name, [dict(zip(columns, row)) for row in result], reference, out)
    out.timings.append(Measured(name, "duckdb", times, dump.tokens, f"max rel diff vs xent {worst:.1e}", cpu))


def bench_polars(dump: Dump, reference: dict, repeats: int, out: Outcome) -> None:
    name = f"{dump.label}: polars, CE + perplexity{' + top-1' if dump.topk else ''}"
    times, cpu, frame = measure(polars_query(dump.files, bool(dump.topk)), repeats)
    worst = check_agreement(name, frame.to_dicts(), reference, out)
    out.timings.append(Measured(name, "polars", times, dump.tokens, f"max rel diff vs xent {worst:.1e}", cpu))


# --------------------------------------------------------------------------- 5. peak RSS

# bench_eval's fresh-process measurement (VmHWM), evaluating a token dump and building its
# tables: its code up to the evaluation, then the token run.
RSS_CODE_LM = RSS_CODE.split("files = json.loads")[0] + r"""
request = json.loads(sys.stdin.read())
from flows.config import EvalConfig
from flows.engine import dask_client, evaluate
from flows.report.token_tables import build_token_tables
imported = peak_mib()
with dask_client(None) as client:
    ready = peak_mib()
    started = time.perf_counter()
    tables = build_token_tables(evaluate(EvalConfig(**request), client))
    seconds = time.perf_counter() - started
    peak = peak_mib()
summary = tables["token_summary"].to_pydict()
tokens = next(n for n, overall in zip(summary["tokens"], summary["overall"]) if overall)
print(json.dumps({"imported": imported, "ready": ready, "peak": peak, "seconds": seconds, "rows": tokens}))
"""


def measure_rss(files: list[str]) -> dict:
    request = {"sources": files, "kind": "tokens", "slice_by": [SLICE]}
    try:
        proc = subprocess.run([sys.executable, "-c", RSS_CODE_LM], input=json.dumps(request), capture_output=True,
                              text=True, env=subprocess_env(), check=False, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"RSS subprocess timed out after {COMMAND_TIMEOUT} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"RSS subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(dump: Dump, runs: int) -> tuple[list[dict], list[dict]]:
    """Alternate quarter and full runs so slow drift on the machine hits both alike."""
    small, large = [], []
    for _ in range(runs):
        small.append(measure_rss(dump.quarter))
        large.append(measure_rss(dump.files))
    return small, large


# --------------------------------------------------------------------------- 6. profile


def batches_in(dump: Dump, batch_rows: int) -> int:
    """Batches a run reads: each row group is read in batches of `batch_rows`."""
    total = 0
    for path in dump.files:
        metadata = pq.ParquetFile(path).metadata
        total += sum(-(-metadata.row_group(g).num_rows // batch_rows) for g in range(metadata.num_row_groups))
    return total


def median_time(fn: Callable[[], object], repeats: int = PROFILE_REPEATS) -> float:
    times, _ = time_runs(fn, repeats)
    return statistics.median(times)


def first_batches(dump: Dump, spec) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """The dump's first two batches as a run reads them (the first twice if it has one)."""
    from flows.inputs.spec import text_slices

    found: list[pa.RecordBatch] = []
    for path in dump.files:
        parquet = pq.ParquetFile(path, read_dictionary=text_slices(spec) or None)
        found += parquet.iter_batches(batch_size=spec.batch_rows, columns=spec.columns_to_read())
        if len(found) >= 2:
            break
    return found[0], found[min(1, len(found) - 1)]


def profile_steps(dump: Dump) -> tuple[list[tuple[str, float, str]], int]:
    """Each step of a batch, timed on the dump's first batch: (step, seconds a batch, how),
    and the batch's tokens."""
    from flows.engine.pieces import _token_batch_stats  # the worker's own call of the kernel
    from flows.inputs.reader import open_parquet
    from flows.inputs.spec import text_slices
    from flows.inputs.sources import list_inputs
    from flows.inputs.tokens import to_token_batch
    from xent_kernels.hashing import JACKKNIFE_SEED, buckets_of, key_hash
    from xent_kernels.token_documents import DocumentTable, batch_documents
    from xent_kernels.tokens import TokenStats

    spec = token_spec(dump)
    file = list_inputs([dump.files[0]])[0]
    parquet = open_parquet(file.url, {}, spec.column_buffer, text_slices(spec))
    first, second = first_batches(dump, spec)
    steps: list[tuple[str, float, str]] = []

    def step(name: str, fn: Callable[[], object], how: str) -> None:
        steps.append((name, median_time(fn), how))

    step("read: decode one batch", lambda: next(parquet.iter_batches(
        batch_size=spec.batch_rows, row_groups=[0], columns=spec.columns_to_read())), "iter_batches, first batch")
    step("convert: to_token_batch", lambda: to_token_batch(first, 0, file, spec), "as the workers call it")
    no_slices = dataclasses.replace(spec, slice_by=(), slice_types=())
    step("  without the source slice coding", lambda: to_token_batch(first, 0, file, no_slices),
         "difference = the dictionary's indices to slice ids")
    if spec.has_topk:
        no_topk = dataclasses.replace(spec, has_topk=False)
        step("  without the top-k lists", lambda: to_token_batch(first, 0, file, no_topk),
             "difference = list flattening, lengths, the keep mask and int64/float64 copies")
    doc_ids = first.column("doc_id").to_numpy()
    hashes = key_hash([doc_ids], JACKKNIFE_SEED)
    step("  document key hash (key_hash)", lambda: key_hash([doc_ids], JACKKNIFE_SEED), "splitmix64 of doc_id")
    step("  jackknife buckets (buckets_of)", lambda: buckets_of(hashes, spec.n_buckets), f"hash % {spec.n_buckets}")

    tokens = to_token_batch(first, 0, file, spec)
    step("kernel: a piece's first batch", lambda: _token_batch_stats(None, tokens, file=file, spec=spec),
         "token_stats_partial as the workers call it: the piece's state allocated")
    piece_state = _token_batch_stats(None, tokens, file=file, spec=spec)
    fold = functools.partial(_token_batch_stats, piece_state, file=file, spec=spec)
    step("kernel: a later batch, folded in", lambda: fold(tokens), "into the piece's state, as every later batch")
    if spec.has_topk:
        no_lists = dataclasses.replace(tokens, topk_offsets=None, topk_ids=None, topk_logprobs=None)
        step("  without the top-k lists", lambda: fold(no_lists),
             "difference = the pass over the list entries (rank, duplicate check, exp, entropy, ECE)")
    no_documents = dataclasses.replace(tokens, doc_hashes=None)
    step("  without the per-document table", lambda: fold(no_documents),
         "difference = batch_documents and the merge of the document tables")
    vocab = int(tokens.target.max()) + 1
    options = dict(spec.state_options(), slice_keys=tokens.slice_keys, vocab=vocab)
    step(f"  state allocation (TokenStats.empty, V={vocab:,})", lambda: TokenStats.empty(**options),
         f"V x K = {vocab:,} x {spec.n_buckets} int64 + 2 float64, zeroed: once a piece")
    slice_ids = tokens.slice_ids if tokens.slice_ids is not None else np.zeros(len(tokens.target), np.int64)
    logprob = tokens.target_logprob.astype(np.float64)
    step("  batch_documents", lambda: batch_documents(slice_ids, tokens.doc_hashes, tokens.position, logprob),
         "one pass over runs of a document's tokens (a sort when they are not together)")

    a = _token_batch_stats(None, tokens, file=file, spec=spec)
    b = _token_batch_stats(None, to_token_batch(second, spec.batch_rows, file, spec), file=file, spec=spec)
    step("merge: TokenStats.merge of two piece states", lambda: TokenStats.merge(a, b),
         "a tree-reduce node: _on copies onto the union + two_sum of every array + documents")
    step("  of which DocumentTable.merge_two", lambda: DocumentTable.merge_two(a.documents, b.documents),
         f"{len(a.documents.n):,} + {len(b.documents.n):,} documents")
    return steps, first.num_rows


def profile_serial(dump: Dump, top: int = 14) -> str:
    """One shard evaluated in this thread under cProfile: the functions with the most
    time of their own (Numba kernels count in their caller's)."""
    from flows.engine.pieces import Piece, evaluate_piece
    from flows.inputs.sources import list_inputs

    spec = token_spec(dump)
    file = list_inputs([dump.files[0]])[0]
    piece = Piece(file, None, pq.ParquetFile(dump.files[0]).metadata.num_rows)
    evaluate_piece(piece, spec)  # compiled kernels loaded, file in the OS cache
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(evaluate_piece, piece, spec)
    wall = time.perf_counter() - started
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return (f"{dump.label}: one shard ({piece.rows:,} tokens) evaluated serially under cProfile in {wall:.2f} s; "
            f"top {top} by own time:\n" + "\n".join(lines[start:]))


def print_profile(dump: Dump, phase_table: dict[str, tuple[float, float]] | None) -> None:
    spec = token_spec(dump)
    n_batches = batches_in(dump, spec.batch_rows)
    # A piece folds each of its batch states into its running state (from empty), and the
    # tree-reduce merges the pieces' states: about one merge per batch, plus pieces - 1.
    n_merges = n_batches + len(dump.files) - 1
    steps, batch_tokens = profile_steps(dump)
    print(f"{dump.label}: each step of a batch ({batch_tokens:,} tokens), median of {PROFILE_REPEATS}, one thread; "
          f"x {n_batches} batches in the dump (x {n_merges} for a merge)")
    header = f"{'step':<66} {'ms/batch':>9} {'ns/token':>9} {'s/dump':>7} {'share':>6}  how"
    print(header)
    print("-" * len(header))
    # The share is of the work the phases summed over tasks (read + convert + kernel + merge).
    work = sum(phase_table[name][0] for name in ("read", "convert", "buckets", "kernel", "merge")) if phase_table else 0
    by_name = {name: seconds for name, seconds, _ in steps}
    allocation = next(seconds for name, seconds in by_name.items() if name.startswith("  state allocation"))
    rest = by_name["  without the per-document table"] - allocation  # the kernel less the documents and allocation
    steps.insert(next(i for i, (name, _, _) in enumerate(steps) if name.startswith("merge")),
                 ("  the rest: the Numba pass (_token_pass) and NumPy preparation", rest,
                  "kernel - per-document table - state allocation"))
    parent = 0.0
    for name, seconds, how in steps:
        if not name.startswith(" "):
            parent = seconds
        if name.startswith("  without"):
            seconds = parent - seconds  # what the left-out part costs
            name = name.replace("without", "cost of")
        per_dump = seconds * (n_merges if name.startswith("merge") or "merge_two" in name else n_batches)
        share = f"{per_dump / work:.0%}" if work else ""
        print(f"{name:<66} {seconds * 1e3:>9.2f} {seconds / batch_tokens * 1e9:>9.1f} {per_dump:>7.2f} {share:>6}  {how}")
    print(f"(shares are of the {work:.2f} s the workers' phases summed to on the cluster, where two threads share "
          "the cores and the memory bandwidth, so the shares are indicative)")
    print()
    print(profile_serial(dump))
    print()


# --------------------------------------------------------------------------- output


def print_header(args: argparse.Namespace) -> None:
    import dask
    import distributed
    import numba

    import flows

    print("command:", shlex.join([sys.executable, *sys.argv]))
    versions = [("python", platform.python_version()), ("numpy", np.__version__), ("pyarrow", pa.__version__),
                ("dask", dask.__version__), ("distributed", distributed.__version__),
                ("duckdb", duckdb.__version__ if duckdb else "not installed"),
                ("polars", pl.__version__ if pl else "not installed"), ("numba", numba.__version__),
                ("xent", flows.__version__)]
    print("versions:", ", ".join(f"{name} {v}" for name, v in versions))
    print(f"machine: {platform.platform()}, os.cpu_count()={os.cpu_count()}, pyarrow cpu_count={pa.cpu_count()}")
    print(f"XENT_CACHE_DIR={os.environ.get('XENT_CACHE_DIR', '(unset)')}")
    sizes = (f"compare-tokens={args.compare_tokens:,}" if args.compare
             else f"tokens={args.tokens:,} topk-tokens={args.topk_tokens:,}")
    print(f"parameters: {sizes} (k={TOPK}) shards={args.shards} "
          f"repeats={args.repeats} skip={','.join(sorted(args.skip)) or '-'}")
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print(f"WARNING: 1-minute load average is {os.getloadavg()[0]:.2f}: the machine is not idle, timings will be "
              "noisy")
    if os.cpu_count() != PEER_THREADS:
        print(f"NOTE: the read floor, DuckDB and Polars use {PEER_THREADS} threads; xent's local cluster uses "
              f"os.cpu_count()={os.cpu_count()} threads, so ratios are not like for like on this machine")
    print()


def print_table(out: Outcome, dumps: list[Dump]) -> None:
    header = (f"{'method':<56} {'median s':>9} {'min s':>8} {'Mtok/s':>7} {'x floor':>8} {'x xent':>7} "
              f"{'CPU s':>7} {'CPU x floor':>11}  note")
    print(header)
    print("-" * len(header))
    for dump in dumps:
        floor = out.find(f"{dump.label}: read floor, pyarrow dataset, 2 threads")
        xent = out.find(xent_name(dump))
        for t in (t for t in out.timings if t.name.startswith(f"{dump.label}: ")):
            comparable = "scaling" not in t.name
            vs_floor = f"{t.median / floor.median:.2f}" if floor and comparable else ""
            vs_xent = f"{t.median / xent.median:.2f}" if xent and comparable else ""
            cpu = getattr(t, "cpu_median", float("nan"))
            cpu_vs_floor = f"{cpu / floor.cpu_median:.2f}" if floor and comparable else ""
            print(f"{t.name:<56} {fmt_s(t.median):>9} {fmt_s(t.best):>8} {t.rows / t.median / 1e6:>7.1f} "
                  f"{vs_floor:>8} {vs_xent:>7} {fmt_s(cpu):>7} {cpu_vs_floor:>11}  {t.note}")
        print()


def print_phases(phase_table: dict[str, dict[str, tuple[float, float]]]) -> None:
    for label, table in phase_table.items():
        batches = int(table["batches"][0])
        print(f"{label}: phases of one more evaluation ({batches} batches)")
        print(f"{'phase':<40} {'summed over tasks s':>20} {'wall s':>8}")
        for name, (summed, wall) in table.items():
            if name != "batches":
                print(f"{name:<40} {summed:>20.3f} {wall:>8.3f}")
        print()
    print("(read: pyarrow decoding a batch; convert: to_token_batch, Arrow to NumPy with the slice coding, the "
          "document key hash and buckets, and the top-k lists flattened; buckets: not separate for tokens; kernel: "
          "token_stats_partial, the state allocated, the Numba pass and the per-document table; merge: a piece's "
          "batch states folded and the tree-reduce's nodes)")
    print()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, help=f"tokens of the rows dump (default 20,000,000; --quick "
                                                   f"{QUICK_TOKENS:,}; the issue: 200,000,000)")
    parser.add_argument("--topk-tokens", type=int, help=f"tokens of the top-{TOPK} dump (default 5,000,000; "
                                                        f"--quick {QUICK_TOPK_TOKENS:,}; the issue: 50,000,000)")
    parser.add_argument("--shards", type=int, default=16, help="Parquet files per dump (default 16)")
    parser.add_argument("--repeats", type=int, help=f"timed runs per method (default 5; --quick {QUICK_REPEATS})")
    parser.add_argument("--data", help="folder for the dumps (two subfolders); reused when they hold dumps made "
                                       "with the same parameters (default: folders in the temp directory)")
    parser.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SKIPPABLE)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: small dumps and 2 repeats unless given")
    parser.add_argument("--compare", action="store_true", help="run only the token comparison (lm_compare.py): "
                                                               "xent compare of two top-k dumps against one evaluation "
                                                               "and DuckDB")
    parser.add_argument("--compare-tokens", type=int, help=f"tokens of each compared dump (default 5,000,000; "
                                                           f"--quick {QUICK_TOPK_TOKENS:,}; the issue: 50,000,000)")
    args = parser.parse_args(argv)
    args.tokens = args.tokens if args.tokens is not None else (QUICK_TOKENS if args.quick else 20_000_000)
    args.topk_tokens = (args.topk_tokens if args.topk_tokens is not None
                        else (QUICK_TOPK_TOKENS if args.quick else 5_000_000))
    args.repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else 5)
    args.compare_tokens = (args.compare_tokens if args.compare_tokens is not None
                           else (QUICK_TOPK_TOKENS if args.quick else 5_000_000))
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = args.skip - set(SKIPPABLE)
    if unknown:
        parser.error(f"--skip: unknown section(s) {sorted(unknown)}; choose from {','.join(SKIPPABLE)}")
    if args.shards < 4 and "scaling" not in args.skip:
        parser.error("the scaling section needs --shards >= 4 (a quarter of the shards); or --skip scaling")
    if args.shards < 1 or args.tokens < args.shards or args.topk_tokens < args.shards:
        parser.error("need --shards >= 1 and --tokens, --topk-tokens >= --shards")
    if args.repeats < 1:
        parser.error("need --repeats >= 1")
    if duckdb is None:
        args.skip.add("duckdb")
    if pl is None:
        args.skip.add("polars")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args)
    base = Path(args.data).expanduser().absolute() if args.data else Path(tempfile.gettempdir())
    if args.compare:
        import lm_compare

        return lm_compare.run(args, base)
    for name, module in (("duckdb", duckdb), ("polars", pl)):
        if module is None:
            print(f"{name} skipped: {getattr(bench_eval, name.upper() + '_ERROR')}")

    wanted = [("rows", args.tokens, 0)] + ([] if "topk" in args.skip else [("top-k", args.topk_tokens, TOPK)])
    dumps = []
    for label, tokens, topk in wanted:
        folder = base / f"xent-bench-lm-t{tokens}-k{topk}-s{args.shards}"
        dump, reused = ensure_token_dump(folder, label, tokens, topk, args.shards)
        size = sum(Path(f).stat().st_size for f in dump.files)
        print(f"{label} dump: {folder} ({'reused' if reused else 'generated'}): {len(dump.files)} files, "
              f"{count_rows(dump.files):,} tokens, {size / 2**20:.1f} MiB on disk")
        dumps.append(dump)
    print()

    from flows.engine import dask_client

    out = Outcome()
    phase_table: dict[str, dict[str, tuple[float, float]]] = {}
    references = {}
    for dump in dumps:
        bench_floor(dump, token_spec(dump).columns_to_read(), args.repeats, out)
    with dask_client(None) as client:
        out.notes.append(f"xent: the local cluster has {sum(client.nthreads().values())} worker thread(s)")
        for dump in dumps:
            with_quarter = dump.label == "rows" and "scaling" not in args.skip
            references[dump.label] = bench_xent(dump, client, args.repeats, with_quarter, out, phase_table)
    for dump in dumps:
        for section, bench in (("duckdb", bench_duckdb), ("polars", bench_polars)):
            if section not in args.skip:
                try:
                    bench(dump, references[dump.label], args.repeats, out)
                except Exception as error:  # a peer that cannot run is reported, the rest goes on
                    out.failures.append(f"{dump.label}: {section} section: {type(error).__name__}: {error}")

    rss = None
    if "scaling" not in args.skip:
        try:
            rss = bench_rss(dumps[0], max(1, min(args.repeats, 3)))
        except RuntimeError as error:
            out.failures.append(f"peak RSS section: {error}")

    print_table(out, dumps)
    print_phases(phase_table)
    if "profile" not in args.skip:
        for dump in dumps:
            try:
                print_profile(dump, phase_table.get(dump.label))
            except Exception as error:  # the profile is a reading aid: report it and go on
                out.failures.append(f"{dump.label}: profile section: {type(error).__name__}: {error}")

    for dump in dumps:
        floor = out.find(f"{dump.label}: read floor, pyarrow dataset, 2 threads")
        xent = out.find(xent_name(dump))
        ratio = xent.median / floor.median
        out.targets.append((f"{dump.label}: xent's report within {FLOOR_TARGET}x of the read floor", f"{ratio:.2f}x",
                            ratio <= FLOOR_TARGET))
        out.targets.append((f"{dump.label}: the same in CPU seconds", f"{xent.cpu_median / floor.cpu_median:.2f}x "
                            f"({xent.cpu_median:.2f} / {floor.cpu_median:.2f} s)", None))
        for group in ("duckdb", "polars"):
            peer = next((t for t in out.timings if t.group == group and t.name.startswith(f"{dump.label}: ")), None)
            if peer is not None:
                out.targets.append((f"{dump.label}: {group} / xent > 1 (xent faster)", f"{peer.median / xent.median:.2f}x",
                                    peer.median > xent.median))

    if rss is not None:
        dump = dumps[0]
        small, large = rss
        quarter_tokens = count_rows(dump.quarter)
        quarter_t = out.find(f"{dump.label}: xent, {len(dump.quarter)} of {len(dump.files)} shards (scaling)")
        tokens_ratio = dump.tokens / quarter_tokens
        time_ratio = out.find(xent_name(dump)).median / quarter_t.median
        limit = TIME_SLACK * tokens_ratio
        out.targets.append((f"scaling: time ratio for {tokens_ratio:.2f}x tokens <= {limit:.2f}x", f"{time_ratio:.2f}x",
                            time_ratio <= limit))
        cpu_ratio = out.find(xent_name(dump)).cpu_median / quarter_t.cpu_median
        out.targets.append(("scaling: the same in CPU seconds", f"{cpu_ratio:.2f}x", None))
        peak_s = statistics.median(r["peak"] for r in small)
        peak_l = statistics.median(r["peak"] for r in large)
        out.targets.append((f"scaling: peak RSS ratio <= {RSS_TARGET}x",
                            f"{peak_l / peak_s:.2f}x ({peak_s:.0f} -> {peak_l:.0f} MiB)", peak_l / peak_s <= RSS_TARGET))
        for label, runs, tokens in (("1/4 of the shards", small, quarter_tokens), ("all shards", large, dump.tokens)):
            print(f"peak RSS, {label} ({tokens:,} tokens), fresh process, median of {len(runs)}: "
                  f"after imports {statistics.median(r['imported'] for r in runs):.0f} MiB, "
                  f"cluster up {statistics.median(r['ready'] for r in runs):.0f} MiB, "
                  f"after the report {statistics.median(r['peak'] for r in runs):.0f} MiB "
                  f"(report incl. cache load {statistics.median(r['seconds'] for r in runs):.2f} s)")
            if any(r["rows"] != tokens for r in runs):
                out.failures.append(f"RSS subprocess for {label} counted {runs[0]['rows']:,} tokens, expected {tokens:,}")
        print()

    return print_summary(out, "peers agree with xent per source x position bucket (rel <= 1e-6, same counts)",
                         "peer query(ies)")


if __name__ == "__main__":
    sys.exit(main())
