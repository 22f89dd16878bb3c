"""``bench_lm.py --compare``: ``xent compare --kind tokens`` on two top-k dumps (issue #19).

Two dumps of the same tokens from ``flows.generate.generate_token_dump`` (seed 0, k = 20,
vocabulary 32,000, ``--shards`` zstd files, sliced by ``source``): the baseline
(``shift`` 0, the same files as ``bench_lm``'s top-k dump of that size) and a candidate
whose target log-probs are lower by 0.1 nats in expectation (``shift=0.1``). Timed,
medians over ``--repeats`` after one warm-up, on one running local cluster:

1. xent evaluating the candidate dump: ``flows.engine.evaluate`` and ``build_token_tables``
   (``bench_lm``'s "xent evaluate + report tables");
2. xent comparing the two: ``compare_token_models`` (both evaluations, the join on
   (doc_id, position) through a scratch folder, the pair state, the finalize) and
   ``token_compare_tables``; the issue's target: at most 2.5x (1);
3. DuckDB (2 threads) joining the two dumps on (doc_id, position) and computing the same
   point estimates: the mean CE difference per source and overall, and the mean KL lower
   bound KL_c over the ids listed on both sides plus the target and one tail bin, written
   with list functions (:data:`DUCKDB_COMPARE`). Checked against xent's ``compare.parquet``
   (``ce_mean_diff``, ``kl_lower_bound_mean`` and the token counts of the ``all`` rows)
   on a small pair of dumps before timing and on the timed pair after, to 1e-9 relative.

Then where the compare's time goes: the run's steps on the cluster one by one (as
``compare_token_models`` makes them, checked to give its figures), and each step of the
join's worker functions timed in this thread: ``spill_piece`` on one piece of each side
(read and convert, hashing, sorting, ``TokenRows.take``, pickling) and ``join_bucket`` on
one bucket (loading, ``TokenRows.concatenate``, key codes, uniqueness, intersection, take,
the pair kernel, the merge with the identity), multiplied out to the whole run.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench_eval import PEER_THREADS, Outcome, fmt_s, print_summary, rel_diff
from bench_lm import SLICE, TOPK, Dump, Measured, ensure_token_dump, measure, token_config, xent_report

import bench_eval

duckdb = bench_eval.duckdb

SHIFT = 0.1  # the candidate's expected CE increase, nats
RATIO_TARGET = 2.5  # compare / evaluate one dump (the issue's)
AGREE_RTOL = 1e-9  # DuckDB's point estimates against xent's
CHECK_TOKENS, CHECK_SHARDS = 200_000, 4  # the small pair checked before timing
ABSENT_LOGPROB = -9999.0  # xent_kernels.tokens: a list entry at or below it is no entry
TAIL_FLOOR = 1e-6  # xent_kernels.token_pair_report: the student's tail mass floor in the tail term

# KL_c of the kernel (xent_kernels.token_pairs): per joined token with the same target t,
# log-probs clipped at 0; the known ids are t and the ids listed on both sides (a listed
# entry counts when its log-prob is above ABSENT_LOGPROB); p_known, q_known their masses;
# KL_c = sum_known p (ln p - ln q) + p_tail ln(p_tail / max(q_tail, TAIL_FLOOR)), clipped
# at 0; tokens with a -inf target log-prob on either side are left out, as are infinite
# bounds. The lists of the generated dumps hold no id twice (xent's kernel would take the
# baseline's last entry of a repeated id, list_position the first).
DUCKDB_COMPARE = f"""
WITH b AS (
  SELECT doc_id, position, target, least(CAST(target_logprob AS DOUBLE), 0) AS lp, topk_ids AS ids,
         list_transform(topk_logprobs, lambda v: CAST(v AS DOUBLE)) AS lps
  FROM read_parquet($baseline) WHERE target IS NOT NULL AND target_logprob IS NOT NULL),
c AS (
  SELECT doc_id, position, target, {SLICE}, least(CAST(target_logprob AS DOUBLE), 0) AS lp, topk_ids AS ids,
         list_transform(topk_logprobs, lambda v: CAST(v AS DOUBLE)) AS lps
  FROM read_parquet($candidate) WHERE target IS NOT NULL AND target_logprob IS NOT NULL),
pairs AS (  -- known: [baseline log-prob, candidate log-prob] of each id listed on both sides but t
  SELECT c.{SLICE}, b.lp AS lp_b, c.lp AS lp_c, len(b.ids) > 0 AND len(c.ids) > 0 AS listed,
         list_transform(
           list_filter(list_zip(c.ids, c.lps, list_transform(c.ids, lambda u: list_position(b.ids, u))),
                       lambda e: e[1] <> c.target AND e[2] > {ABSENT_LOGPROB} AND e[3] IS NOT NULL
                                 AND b.lps[e[3]] > {ABSENT_LOGPROB}),
           lambda e: [least(b.lps[e[3]], 0), least(e[2], 0)]) AS known
  FROM b JOIN c USING (doc_id, position)
  WHERE b.target = c.target AND isfinite(b.lp) AND isfinite(c.lp)),
masses AS (
  SELECT {SLICE}, lp_b, lp_c, listed,
         exp(lp_b) + coalesce(list_sum(list_transform(known, lambda k: exp(k[1]))), 0) AS p_known,
         exp(lp_c) + coalesce(list_sum(list_transform(known, lambda k: exp(k[2]))), 0) AS q_known,
         exp(lp_b) * (lp_b - lp_c)
           + coalesce(list_sum(list_transform(known, lambda k: exp(k[1]) * (k[1] - k[2]))), 0) AS kl_known
  FROM pairs),
tokens AS (
  SELECT {SLICE}, lp_b - lp_c AS ce_diff, listed,
         greatest(kl_known + CASE WHEN 1 - p_known > 0
                                  THEN (1 - p_known) * ln((1 - p_known) / greatest(1 - q_known, {TAIL_FLOOR}))
                                  ELSE 0 END, 0) AS kl
  FROM masses)
SELECT {SLICE}, count(*) AS n, avg(ce_diff) AS ce_mean_diff,
       avg(kl) FILTER (WHERE listed AND isfinite(kl)) AS kl_mean
FROM tokens GROUP BY GROUPING SETS (({SLICE}), ()) ORDER BY {SLICE} NULLS LAST"""


def ensure_pair(base: Path, tokens: int, shards: int) -> tuple[Dump, Dump, bool]:
    """The baseline and candidate dumps under `base`, generated unless already there;
    (baseline, candidate, both reused)."""
    name = f"xent-bench-lm-t{tokens}-k{TOPK}-s{shards}"
    baseline, reused_b = ensure_token_dump(base / name, "baseline", tokens, TOPK, shards)
    candidate, reused_c = ensure_token_dump(base / f"{name}-shift{SHIFT:g}", "candidate", tokens, TOPK, shards, SHIFT)
    return baseline, candidate, reused_b and reused_c


def compare_config(baseline: Dump, candidate: Dump):
    from flows.config import CompareConfig

    return CompareConfig(sources=[str(candidate.folder)], baseline=[str(baseline.folder)], kind="tokens",
                         slice_by=[SLICE])


def xent_compare(config, client):
    """The comparison and its two tables, as ``xent compare`` writes them."""
    from flows.monitor.token_compare import compare_token_models, token_compare_tables

    report = compare_token_models(config, client)
    return report, token_compare_tables(report, config)


def xent_estimates(tables) -> dict:
    """(source or None for overall): (tokens, ce_mean_diff, kl_lower_bound_mean), the ``all`` rows."""
    rows = tables["compare"].to_pylist()
    return {(None if row["overall"] else row[SLICE]): (row["tokens"], row["ce_mean_diff"], row["kl_lower_bound_mean"])
            for row in rows if row["scope"] == "all"}


def duckdb_estimates(con, baseline: Dump, candidate: Dump) -> dict:
    rows = con.execute(DUCKDB_COMPARE, {"baseline": baseline.files, "candidate": candidate.files}).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def check_agreement(what: str, mine: dict, xent: dict, out: Outcome) -> float:
    """Worst relative difference of DuckDB's means against xent's; a mismatch is a failure."""
    if set(mine) != set(xent):
        out.failures.append(f"{what}: DuckDB's slices {sorted(mine, key=str)} differ from xent's {sorted(xent, key=str)}")
        return math.inf
    worst = 0.0
    for key, (n, ce, kl) in xent.items():
        got = mine[key]
        if int(got[0]) != int(n):
            out.failures.append(f"{what}: {key or 'overall'}: DuckDB joined {int(got[0]):,} tokens, xent {int(n):,}")
        worst = max(worst, rel_diff(got[1], ce), rel_diff(got[2], kl))
    if not worst <= AGREE_RTOL:
        out.failures.append(f"{what}: DuckDB differs from xent by {worst:.2e} relative (> {AGREE_RTOL:g})")
    return worst


# --------------------------------------------------------------------------- where the time goes


def timed(steps: list, name: str, fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    steps.append((name, time.perf_counter() - started))
    return result


def compare_steps(config, client) -> tuple:
    """``compare_token_models``'s steps one by one on the cluster, the join's spill and
    bucket joins apart (``join_sides``' body); (steps, xent_estimates-like figures of the
    result, the kept scratch folder, the number of buckets, (the join sides, the pairing)).
    The caller removes the scratch."""
    from flows.config import log_base, nats_per_unit
    from flows.engine import map_all, map_reduce
    from flows.monitor.join import join_bucket, prepare_join, spill_piece
    from flows.monitor.sides import evaluate_sides
    from flows.monitor.token_compare import SIDES, token_pairing
    from flows.report.token_tables import token_counts

    steps: list = []
    started = time.perf_counter()
    sides = timed(steps, "both evaluations (evaluate_sides)", evaluate_sides, config, client, None, SIDES,
                  config.baseline, {"baseline": None, "candidate": None})
    spec = sides["candidate"].evaluation.spec
    counts = token_counts(config, sides["candidate"].evaluation.result.stats)
    pairing = timed(steps, "frequency ranks (token_counts, token_pairing)", token_pairing, SIDES, counts,
                    config.compare.tie_tolerance * nats_per_unit(config.units))
    joins = timed(steps, "join sides: key columns, footers inspected (prepare_join)", prepare_join, config,
                  spec.doc_cols, sides, client, pairing)
    settings = config.compare
    n_buckets = max(1, math.ceil(sum(side.rows for side in joins.values()) / settings.bucket_rows))
    scratch = os.path.join(tempfile.gettempdir(), f"xent-bench-join-{uuid.uuid4().hex[:12]}")
    os.makedirs(scratch)
    spills = [(piece, name, i, joins[name].spec) for name in pairing.names for i, piece in enumerate(joins[name].pieces)]
    pieces, names, indexes, specs = zip(*spills)
    timed(steps, f"spill: {len(pieces)} pieces hashed into {n_buckets} buckets (map_all spill_piece)", map_all,
          client, spill_piece, pieces, names, indexes, specs, [None] * len(pieces), scratch=scratch,
          n_buckets=n_buckets, rows_type=pairing.rows, stall_timeout=config.stall_timeout)
    joined = timed(steps, f"join: {n_buckets} buckets (map_reduce join_bucket)", map_reduce, client, join_bucket,
                   [scratch] * n_buckets, range(n_buckets), spec=joins["candidate"].spec, pairing=pairing,
                   split_every=config.split_every, stall_timeout=config.stall_timeout)
    report = timed(steps, "finalize (TokenPairStats.finalize)", joined.stats.finalize, base=log_base(config.units),
                   level=config.interval_level)
    steps.append(("all of the above", time.perf_counter() - started))
    overall = next(i for i, (s, scope) in enumerate(zip(report.rows["slice"], report.rows["scope"]))
                   if s == -1 and scope == "all")
    figures = {"matched": joined.matched, "ce_mean_diff": float(report.rows["ce_mean_diff"][overall]),
               "kl_lower_bound_mean": float(report.rows["kl_lower_bound_mean"][overall])}
    return steps, figures, scratch, n_buckets, (joins, pairing)


def median_time(fn, repeats: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def spill_detail(joins: dict, pairing, n_buckets: int) -> list:
    """``spill_piece``'s steps on each side's first piece, in this thread: (step, seconds a piece, pieces)."""
    from flows.engine import piece_batches
    from flows.monitor.join import bucket_of

    out = []
    for name in pairing.names:
        side = joins[name]
        piece, spec = side.pieces[0], side.spec
        batches = median_time(lambda: list(piece_batches(piece, spec, None)))
        rows = median_time(lambda: [pairing.rows.of_batch(b) for b in batches[1]])
        buckets = median_time(lambda: [bucket_of(r.keys, n_buckets) for r in rows[1]])
        orders = median_time(lambda: [np.argsort(b, kind="stable") for b in buckets[1]])

        def split():
            parts = []
            for r, b, order in zip(rows[1], buckets[1], orders[1]):
                bounds = np.searchsorted(b[order], np.arange(n_buckets + 1))
                parts += [r.take(order[bounds[k]:bounds[k + 1]]) for k in range(n_buckets) if bounds[k + 1] > bounds[k]]
            return parts

        parts = median_time(split)
        dumped = median_time(lambda: [pickle.dumps(p, protocol=pickle.HIGHEST_PROTOCOL) for p in parts[1]])
        size = sum(len(d) for d in dumped[1])
        n = len(side.pieces)
        out += [(f"{name}: read + convert a piece (piece_batches: read, to_token_batch)", batches[0], n),
                (f"{name}: TokenRows.of_batch", rows[0], n),
                (f"{name}: bucket_of (key_hash of doc_id, position)", buckets[0], n),
                (f"{name}: argsort of the buckets", orders[0], n),
                (f"{name}: searchsorted + TokenRows.take per bucket", parts[0], n),
                (f"{name}: pickle.dumps of the parts ({size / piece.rows:.0f} bytes a token)", dumped[0], n)]
    return out


def join_detail(scratch: str, pairing, spec) -> list:
    """``join_bucket``'s steps on bucket 0, in this thread: (step, seconds a bucket, 1)."""
    from flows.monitor.join import JoinResult, _check_unique, _key_codes

    first_name, second_name = pairing.names

    def load(name):
        folder = os.path.join(scratch, name, "00000")
        parts = []
        for part in sorted(os.listdir(folder)):
            with open(os.path.join(folder, part), "rb") as handle:
                parts.append(pickle.load(handle))
        return parts

    loaded = median_time(lambda: (load(first_name), load(second_name)))
    concatenated = median_time(lambda: tuple(pairing.rows.concatenate(parts) for parts in loaded[1]))
    first, second = concatenated[1]
    codes = median_time(lambda: _key_codes(first, second))
    unique = median_time(lambda: (_check_unique(first_name, codes[1][0], first, spec.id_cols, pairing.setting),
                                  _check_unique(second_name, codes[1][1], second, spec.id_cols, pairing.setting)))
    intersect = median_time(lambda: np.intersect1d(*codes[1], assume_unique=True, return_indices=True))
    _, in_first, in_second = intersect[1]
    taken = median_time(lambda: (first.take(in_first), second.take(in_second)))
    reduced = median_time(lambda: pairing.reduce(spec, *taken[1]))
    empty = JoinResult.empty(pairing.state, **pairing.options(spec))
    merged = median_time(lambda: JoinResult.merge(JoinResult(reduced[1]), empty))
    tokens = len(first) + len(second)
    return [(f"load: pickle.load of both sides' parts ({tokens:,} tokens)", loaded[0], 1),
            ("TokenRows.concatenate, both sides", concatenated[0], 1),
            ("key codes (_key_codes: np.unique per key column, twice each)", codes[0], 1),
            ("uniqueness (_check_unique, both sides)", unique[0], 1),
            ("np.intersect1d of the codes", intersect[0], 1),
            ("TokenRows.take of the matched tokens, both sides", taken[0], 1),
            (f"the pair kernel (pairing.reduce: token_pairs_partial, {len(in_first):,} pairs)", reduced[0], 1),
            ("merge with the identity (JoinResult.merge)", merged[0], 1)]


def print_profile(config, client, evaluation_median: float) -> dict:
    steps, figures, scratch, n_buckets, (joins, pairing) = compare_steps(config, client)
    try:
        spilled = sum(f.stat().st_size for f in Path(scratch).rglob("*.pkl"))
        total = dict(steps)["all of the above"]
        print(f"the compare's steps on the cluster, one run (wall s; {spilled / 2**20:.0f} MiB spilled, "
              f"{n_buckets} buckets of bucket_rows {config.compare.bucket_rows:,})")
        for name, seconds in steps:
            print(f"  {name:<78} {fmt_s(seconds):>8} {seconds / total:>6.0%}")
        print(f"  (one evaluation, median above: {fmt_s(evaluation_median)} s; "
              f"matched {figures['matched']:,}, overall ce_mean_diff {figures['ce_mean_diff']:.6f}, "
              f"kl_lower_bound_mean {figures['kl_lower_bound_mean']:.6f})")
        print()
        spec = joins["candidate"].spec
        rows = spill_detail(joins, pairing, n_buckets)
        print("the spill's steps on one piece of each side, this thread, median of 3 (x pieces for the run; the "
              "cluster runs 2 at once)")
        for name, seconds, times in rows:
            print(f"  {name:<78} {seconds * 1e3:>8.1f} ms x {times:>3} = {seconds * times:>6.2f} s")
        print(f"  {'sum':<78} {'':>8}          {sum(s * t for _, s, t in rows):>6.2f} s")
        print()
        rows = join_detail(scratch, pairing, spec)
        print(f"join_bucket's steps on one bucket, this thread, median of 3 (x {n_buckets} buckets for the run)")
        for name, seconds, _ in rows:
            print(f"  {name:<78} {seconds * 1e3:>8.1f} ms x {n_buckets:>3} = {seconds * n_buckets:>6.2f} s")
        print(f"  {'sum':<78} {'':>8}          {sum(s for _, s, _ in rows) * n_buckets:>6.2f} s")
        print()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return figures


# --------------------------------------------------------------------------- the section


def run(args, base: Path) -> int:
    from flows.engine import dask_client

    out = Outcome()
    small_b, small_c, _ = ensure_pair(base, CHECK_TOKENS, CHECK_SHARDS)
    baseline, candidate, reused = ensure_pair(base, args.compare_tokens, args.shards)
    for dump in (baseline, candidate):
        size = sum(Path(f).stat().st_size for f in dump.files)
        print(f"{dump.label} dump: {dump.folder} ({'reused' if reused else 'generated'}): {len(dump.files)} files, "
              f"{dump.tokens:,} tokens, k = {TOPK}, {size / 2**20:.1f} MiB on disk")
    print()
    con = None
    if duckdb is not None:
        con = duckdb.connect()
        con.execute(f"SET threads={PEER_THREADS}")
    with dask_client(None) as client:
        out.notes.append(f"xent: the local cluster has {sum(client.nthreads().values())} worker thread(s)")
        if con is not None:  # DuckDB's SQL checked on the small pair before anything is timed
            _, tables = xent_compare(compare_config(small_b, small_c), client)
            worst = check_agreement(f"small pair ({CHECK_TOKENS:,} tokens)", duckdb_estimates(con, small_b, small_c),
                                    xent_estimates(tables), out)
            out.notes.append(f"DuckDB against xent on {CHECK_TOKENS:,} tokens: worst relative difference {worst:.1e}")
        eval_config, config = token_config([str(candidate.folder)]), compare_config(baseline, candidate)
        times, cpu, _ = measure(lambda: xent_report(eval_config, client), args.repeats)
        out.timings.append(Measured("candidate: xent evaluate + report tables", "xent", times, candidate.tokens,
                                    "one dump, warm cluster", cpu))
        times, cpu, (_, tables) = measure(lambda: xent_compare(config, client), args.repeats)
        out.timings.append(Measured("xent compare (both evaluations, join, pairs, tables)", "xent", times,
                                    candidate.tokens, "compare_token_models + token_compare_tables", cpu))
        reference = xent_estimates(tables)
        if con is not None:
            try:
                times, cpu, mine = measure(lambda: duckdb_estimates(con, baseline, candidate), args.repeats)
                out.timings.append(Measured(f"duckdb {duckdb.__version__}: join + mean ΔCE per source + mean KL_c",
                                            "duckdb", times, candidate.tokens, "2 threads", cpu))
                worst = check_agreement("timed pair", mine, reference, out)
                out.notes.append(f"DuckDB against xent on the timed pair: worst relative difference {worst:.1e}")
            finally:
                con.close()
        print_table(out)
        if "profile" not in args.skip:
            print_profile(config, client, out.timings[0].median)
    evaluation, compare = out.timings[0], out.timings[1]
    ratio = compare.median / evaluation.median
    out.targets.append((f"compare / evaluate one dump <= {RATIO_TARGET}", f"{ratio:.2f}x", ratio <= RATIO_TARGET))
    out.targets.append(("the same in CPU seconds", f"{compare.cpu_median / evaluation.cpu_median:.2f}x "
                        f"({compare.cpu_median:.2f} / {evaluation.cpu_median:.2f} s)", None))
    peer = next((t for t in out.timings if t.group == "duckdb"), None)
    if peer is not None:
        out.targets.append(("duckdb / xent compare > 1 (xent faster)", f"{peer.median / compare.median:.2f}x",
                            peer.median > compare.median))
        out.targets.append(("the same in CPU seconds", f"{peer.cpu_median / compare.cpu_median:.2f}x", None))
    tokens, ce, kl = reference[None]
    out.notes.append(f"xent compare, overall: {tokens:,} tokens, mean ΔCE {ce:.6f} nats, mean KL_c {kl:.6f} nats")
    return print_summary(out, f"DuckDB's means agree with xent's (rel <= {AGREE_RTOL:g}, same counts)", "query")


def print_table(out: Outcome) -> None:
    evaluation = out.timings[0]
    header = (f"{'method':<60} {'median s':>9} {'min s':>8} {'Mtok/s':>7} {'x eval':>7} {'CPU s':>7} "
              f"{'CPU x eval':>10}  note")
    print(header)
    print("-" * len(header))
    for t in out.timings:
        print(f"{t.name:<60} {fmt_s(t.median):>9} {fmt_s(t.best):>8} {t.rows / t.median / 1e6:>7.1f} "
              f"{t.median / evaluation.median:>7.2f} {fmt_s(t.cpu_median):>7} "
              f"{t.cpu_median / evaluation.cpu_median:>10.2f}  {t.note}")
    print("(Mtok/s: tokens of one dump per second)")
    print()

