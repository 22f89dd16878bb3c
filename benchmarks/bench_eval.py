"""End-to-end benchmark of ``xent eval``: sharded Parquet -> per-class statistics.

Measures, on one synthetic dump (``flows.generate.generate_dump``: ``--rows`` x
``--classes`` float32 logits in a FixedSizeList column, or with ``--layout binary``
one float32 ``logit`` column of a binary model, in ``--shards`` zstd files):

1. the read floor: pyarrow's dataset reader with 2 threads reading only ``logits``
   and ``label`` and viewing the predictions as a 2-D numpy array (no compute); and,
   for reference, a single-threaded file-by-file ``pq.read_table``;
2. ``flows.engine.evaluate`` on an already running local Dask cluster
   (``dask_client(None)``), after one warm-up call (Numba cache load);
3. DuckDB (``SET threads=2``) computing the per-class mean cross-entropy in float64,
   in two formulations (list lambdas; one scalar column per class), query time only;
4. Polars (``POLARS_MAX_THREADS=2``) computing the same, in two formulations
   (``arr.get`` per class + horizontal ops; ``arr.agg``);
5. scaling: evaluation of 1/4 of the shards vs all of them, time ratio (in this
   process, warm cluster) and peak-RSS ratio (each evaluation in a fresh subprocess;
   its VmHWM on Linux, see ``RSS_CODE``, else ``ru_maxrss``);
6. the whole ``xent eval`` command on a tiny dump (10,000 rows, 2 shards) with a warm
   Numba cache, broken down into interpreter start, ``import flows.cli``, the imports
   ``cmd_eval`` makes (read from its source), an empty Prefect flow run when the CLI
   runs through Prefect, cluster start/stop, and the rest.

Every DuckDB/Polars result is checked against xent's per-class ``ce_mean`` (relative
difference at most 1e-6, same row counts). Times are medians over ``--repeats`` runs
after one warm-up run. A final summary prints each target with PASS or MISS.

Run from the repository root on an otherwise idle machine::

    python benchmarks/bench_eval.py --quick               # smoke run: 400k rows, 2 repeats
    python benchmarks/bench_eval.py                       # 20M x 10, 16 shards, 5 repeats
    python benchmarks/bench_eval.py --data bench-data --skip command   # keep the dump

Exit status: 0 when every peer agrees with xent (performance misses do not change
it); 1 when a peer disagrees, a row count does not match or a section fails (the
other sections still run and print); 2 on bad arguments.
"""

from __future__ import annotations

import os

PEER_THREADS = 2
# Polars reads its thread count once, at import: set it before anything imports polars.
os.environ["POLARS_MAX_THREADS"] = str(PEER_THREADS)

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

# Allow ``python benchmarks/bench_eval.py`` from a checkout that is not installed.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

try:
    import duckdb  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on the environment
    duckdb = None
    DUCKDB_ERROR = f"{type(exc).__name__}: {exc}"
try:
    import polars as pl  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on the environment
    pl = None
    POLARS_ERROR = f"{type(exc).__name__}: {exc}"

QUICK_ROWS = 400_000
QUICK_REPEATS = 2
AGREE_RTOL = 1e-6
FLOOR_TARGET = 1.25  # xent eval / read floor
TIME_SLACK = 1.10  # scaling: time ratio <= 1.1 x rows ratio (4.4x for 4x rows)
RSS_TARGET = 1.20  # scaling: peak RSS ratio
COMMAND_ROWS = 10_000
COMMAND_SHARDS = 2
COMMAND_TIMEOUT = 900  # seconds per subprocess: a hung one is reported, not waited for forever
MARKER = ".xent-bench.json"  # in --data: what the dump was generated with
SKIPPABLE = ("duckdb", "polars", "scaling", "command")


# --------------------------------------------------------------------------- helpers


@dataclass
class Timing:
    name: str
    group: str
    times: list[float]
    rows: int
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


@dataclass
class Outcome:
    timings: list[Timing] = field(default_factory=list)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)  # (what, measured, passed)
    failures: list[str] = field(default_factory=list)  # correctness problems: exit status 1
    notes: list[str] = field(default_factory=list)
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (summed over tasks, wall)

    def find(self, name: str) -> Timing | None:
        return next((t for t in self.timings if t.name == name), None)


def time_runs(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[list[float], object]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; return the
    times and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


@contextmanager
def arrow_threads(n: int) -> Iterator[None]:
    """pyarrow's CPU and I/O pools at ``n`` threads, restored afterwards (the pools are
    process-wide and xent's reader uses them too)."""
    cpu, io = pa.cpu_count(), pa.io_thread_count()
    pa.set_cpu_count(n)
    pa.set_io_thread_count(n)
    try:
        yield
    finally:
        pa.set_cpu_count(cpu)
        pa.set_io_thread_count(io)


def subprocess_env() -> dict[str, str]:
    """This environment, with the checkout first on PYTHONPATH so subprocesses import
    the same ``flows`` and ``xent_kernels`` as this script."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 100 else f"{seconds:.1f}"


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


# --------------------------------------------------------------------------- data


def parquet_files(folder: Path) -> list[Path]:
    from flows.inputs.sources import PARQUET_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PARQUET_SUFFIXES
                  and not p.name.startswith((".", "_")))


def pred_column(layout: str) -> str:
    """The prediction column of a dump of `layout` (flows.generate's names)."""
    return "logit" if layout == "binary" else "logits"


def as_matrix(column: pa.Array, classes: int, layout: str) -> np.ndarray:
    """Predictions as NumPy without compute: (n, C) for a list column, (n,) for binary."""
    if layout == "binary":
        return column.to_numpy()
    return column.flatten().to_numpy().reshape(len(column), classes)


def ensure_dump(folder: Path, rows: int, classes: int, shards: int, layout: str) -> tuple[list[str], bool]:
    """The dump's files (sorted), generating it unless ``folder`` already holds one made
    with the same parameters. Returns (files, reused)."""
    from flows.generate import generate_dump

    params = {"rows": rows, "classes": classes, "shards": shards, "layout": layout,
              "kind": "logits", "dtype": "float32", "compression": "zstd", "seed": 0}
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
                return [str(folder / name) for name in sorted(sizes)], True
    elif folder.exists() and parquet_files(folder):
        raise SystemExit(
            f"bench_eval: {folder} holds Parquet files but no {MARKER}: not a dump this script made. "
            "Refusing to overwrite it; pass an empty or new folder with --data."
        )
    folder.mkdir(parents=True, exist_ok=True)
    # Mark the folder as ours before writing, so an interrupted run can be regenerated.
    marker.write_text(json.dumps({"params": params, "complete": False}))
    started = time.perf_counter()
    dump = generate_dump(folder, rows=rows, classes=classes, shards=shards, layout=layout,
                         kind="logits", dtype="float32", compression="zstd", seed=0, overwrite=True)
    print(f"generated {rows:,} rows x {classes} classes in {shards} shards under {folder} "
          f"in {time.perf_counter() - started:.1f} s")
    files = sorted(dump.files)
    sizes = {str(Path(f).relative_to(folder)): Path(f).stat().st_size for f in files}
    marker.write_text(json.dumps({"params": params, "complete": True, "files": sizes}, indent=1))
    return files, False


def count_rows(files: list[str]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


# --------------------------------------------------------------------------- 1. read floor


def read_dataset(files: list[str], classes: int, layout: str) -> int:
    """pyarrow dataset scan of the two columns, predictions viewed as (n, C) numpy."""
    rows = 0
    dataset = pads.dataset(files, format="parquet")
    for batch in dataset.to_batches(columns=[pred_column(layout), "label"], use_threads=True):
        pred = as_matrix(batch.column(0), classes, layout)
        labels = batch.column(1).to_numpy()
        rows += pred.shape[0] if labels.shape[0] == pred.shape[0] else -1
    return rows


def read_files_single_thread(files: list[str], classes: int, layout: str) -> int:
    rows = 0
    for path in files:
        table = pq.read_table(path, columns=[pred_column(layout), "label"], use_threads=False)
        for pred_chunk, label_chunk in zip(table.column(0).chunks, table.column("label").chunks):
            pred = as_matrix(pred_chunk, classes, layout)
            labels = label_chunk.to_numpy()
            rows += pred.shape[0] if labels.shape[0] == pred.shape[0] else -1
    return rows


def bench_floor(files: list[str], classes: int, layout: str, total_rows: int, repeats: int, out: Outcome) -> None:
    with arrow_threads(PEER_THREADS):
        times, rows = time_runs(lambda: read_dataset(files, classes, layout), repeats)
    out.timings.append(Timing("read floor: pyarrow dataset, 2 threads", "floor", times, total_rows))
    if rows != total_rows:
        out.failures.append(f"read floor read {rows:,} rows, expected {total_rows:,}")
    times, rows = time_runs(lambda: read_files_single_thread(files, classes, layout), repeats)
    out.timings.append(Timing("read: pq.read_table file by file, 1 thread", "floor", times, total_rows))
    if rows != total_rows:
        out.failures.append(f"single-thread read read {rows:,} rows, expected {total_rows:,}")


# --------------------------------------------------------------------------- 2. xent


def per_class_of(evaluation) -> dict[int, tuple[int, float]]:
    report = evaluation.result.stats.collapse_slices().finalize()
    pc = report.per_class
    return {int(c): (int(n), float(ce)) for c, n, ce in zip(pc["class"], pc["n"], pc["ce_mean"])}


def bench_xent(data_dir: Path, quarter: list[str] | None, total_rows: int, quarter_rows: int, repeats: int,
               out: Outcome) -> dict[int, tuple[int, float]]:
    from flows.config import EvalConfig
    from flows.engine import dask_client, evaluate

    config = EvalConfig(sources=[str(data_dir)])
    with dask_client(None) as client:
        threads = sum(client.nthreads().values())
        started = time.perf_counter()
        evaluate(config, client)
        first = time.perf_counter() - started
        out.notes.append(f"xent: first evaluate() on the fresh cluster (Numba cache load) took {first:.2f} s; "
                         f"cluster has {threads} worker thread(s)")
        times, evaluation = time_runs(lambda: evaluate(config, client), repeats, warmup=0)
        out.timings.append(Timing("xent evaluate (warm cluster)", "xent", times, total_rows))
        if evaluation.result.rows_read != total_rows:
            out.failures.append(f"xent read {evaluation.result.rows_read:,} rows, expected {total_rows:,}")
        reference = per_class_of(evaluation)
        bench_phases(config, client, out)

        if quarter is not None:
            config_q = EvalConfig(sources=quarter)
            times, evaluation_q = time_runs(lambda: evaluate(config_q, client), repeats)
            out.timings.append(Timing(f"xent evaluate, {len(quarter)} shard(s) (scaling)", "xent", times,
                                      quarter_rows))
            if evaluation_q.result.rows_read != quarter_rows:
                out.failures.append(f"xent read {evaluation_q.result.rows_read:,} rows of the quarter, "
                                    f"expected {quarter_rows:,}")
    return reference


def bench_phases(config, client, out: Outcome) -> None:
    """One more evaluation with ``flows.phases`` recording on the workers, then the
    client's steps of ``Report(evaluation).write`` timed one by one: where the time goes, summed over tasks and as wall
    time (the span during which at least one task was in the phase)."""
    from flows import phases
    from flows.engine import evaluate
    from flows.report.page import render_html
    from flows.report.tables import report_tables
    from flows.report.writing import write_tables_atomically

    client.run(phases.record)
    started = time.perf_counter()
    evaluation = evaluate(config, client)
    total = time.perf_counter() - started
    recorded = client.run(phases.stop).values()
    summary = phases.summarize(*recorded)
    started = time.perf_counter()
    tables = report_tables(evaluation)
    finalize = time.perf_counter() - started
    started = time.perf_counter()
    html = render_html(tables)
    page = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        write_tables_atomically(tables, folder, {}, {"report.html": html.encode()})
        write = time.perf_counter() - started
    out.phases = {name: summary.get(name, (0.0, 0.0)) for name in phases.PHASES}
    out.phases.update({"evaluate() in all, wall": (total, total), "finalize (report tables)": (finalize, finalize),
                       "page (render_html)": (page, page), "write (tables + page)": (write, write)})


def print_phases(out: Outcome) -> None:
    if not out.phases:
        return
    print(f"{'phase':<40} {'summed over tasks s':>20} {'wall s':>8}")
    for name, (summed, wall) in out.phases.items():
        print(f"{name:<40} {summed:>20.3f} {wall:>8.3f}")
    print("(read: pyarrow decoding a batch; convert: Arrow to NumPy and label checks; buckets: jackknife bucket ids; "
          "kernel: the fused statistics pass; merge: a piece's batch states and the tree-reduce's nodes)")
    print()


# --------------------------------------------------------------------------- 3. and 4. peers


DUCKDB_READ = "read: DuckDB sums the two columns, 2 threads"
WIDE_PEER_CLASSES = 64  # the one-column-per-class formulations run up to this many classes
BINARY_CE = "greatest(x, 0) - x * label + ln(1 + exp(-abs(x)))"  # -log sigmoid(x) for label 1, -log(1 - sigmoid(x)) for 0


def duckdb_queries(classes: int, layout: str) -> dict[str, str]:
    """Per-class row count and mean CE = max + ln(sum exp(x - max)) - x[label], in float64;
    for a binary logit x, the same CE written for one column."""
    if layout == "binary":
        return {"duckdb: binary CE of one logit column": f"""
            SELECT label, count(*) AS n, avg({BINARY_CE}) AS ce
            FROM (SELECT label, CAST(logit AS DOUBLE) AS x FROM read_parquet($files) WHERE label IS NOT NULL)
            GROUP BY label ORDER BY label"""}
    lists = """
        SELECT label, count(*) AS n, avg(m + ln(list_sum(list_transform(x, lambda v: exp(v - m)))) - x[label + 1]) AS ce
        FROM (SELECT label, x, list_max(x) AS m
              FROM (SELECT label, CAST(logits AS DOUBLE[]) AS x FROM read_parquet($files) WHERE label IS NOT NULL))
        GROUP BY label ORDER BY label"""
    columns = ", ".join(f"CAST(logits[{j + 1}] AS DOUBLE) AS x{j}" for j in range(classes))
    greatest = "greatest(" + ", ".join(f"x{j}" for j in range(classes)) + ")"
    sum_exp = " + ".join(f"exp(x{j} - m)" for j in range(classes))
    pick = "CASE label " + " ".join(f"WHEN {j} THEN x{j}" for j in range(classes)) + " END"
    wide = f"""
        SELECT label, count(*) AS n, avg(m + ln({sum_exp}) - ({pick})) AS ce
        FROM (SELECT *, {greatest} AS m
              FROM (SELECT label, {columns} FROM read_parquet($files) WHERE label IS NOT NULL))
        GROUP BY label ORDER BY label"""
    queries = {"duckdb: list_max + list_transform lambda": lists}
    if classes <= WIDE_PEER_CLASSES:  # past it DuckDB's parser refuses the expression (depth limit 1000)
        queries["duckdb: one column per class (x[j])"] = wide
    return queries


def polars_queries(files: list[str], classes: int, layout: str) -> dict[str, Callable[[], object]]:
    if layout == "binary":
        def binary():
            x, label = pl.col("logit").cast(pl.Float64), pl.col("label")
            ce = pl.max_horizontal(x, pl.lit(0.0)) - x * label + (-x.abs()).exp().log1p()
            return (pl.scan_parquet(files).filter(label.is_not_null()).select("label", ce.alias("ce"))
                    .group_by("label").agg(pl.len().alias("n"), pl.col("ce").mean()).sort("label").collect())

        return {"polars: binary CE of one logit column": binary}
    x = pl.col("logits")

    def wide():
        cols = [x.arr.get(j).cast(pl.Float64).alias(f"x{j}") for j in range(classes)]
        names = [pl.col(f"x{j}") for j in range(classes)]
        frame = (pl.scan_parquet(files).filter(pl.col("label").is_not_null())
                 .select("label", *cols).with_columns(pl.max_horizontal(names).alias("m")))
        lse = pl.col("m") + pl.sum_horizontal([(c - pl.col("m")).exp() for c in names]).log()
        pick = pl.coalesce([pl.when(pl.col("label") == j).then(c) for j, c in enumerate(names)])
        return (frame.select("label", (lse - pick).alias("ce"))
                .group_by("label").agg(pl.len().alias("n"), pl.col("ce").mean()).sort("label").collect())

    def arr_agg():
        logits = x.cast(pl.Array(pl.Float64, classes))
        lse = logits.arr.agg((pl.element() - pl.element().max()).exp().sum().log() + pl.element().max())
        return (pl.scan_parquet(files).filter(pl.col("label").is_not_null())
                .select("label", (lse - logits.arr.get(pl.col("label"))).alias("ce"))
                .group_by("label").agg(pl.len().alias("n"), pl.col("ce").mean()).sort("label").collect())

    return {"polars: arr.get per class + horizontal ops": wide, "polars: arr.agg over elements": arr_agg}


def check_agreement(name: str, rows: list[tuple], reference: dict[int, tuple[int, float]], out: Outcome) -> float:
    """Worst relative CE difference against xent; mismatches become failures."""
    got = {int(label): (int(n), float(ce)) for label, n, ce in rows}
    if set(got) != set(reference):
        out.failures.append(f"{name}: classes {sorted(got)} differ from xent's {sorted(reference)}")
        return float("inf")
    worst = 0.0
    for c, (n, ce) in reference.items():
        if got[c][0] != n:
            out.failures.append(f"{name}: class {c} has {got[c][0]:,} rows, xent {n:,}")
        worst = max(worst, rel_diff(got[c][1], ce))
    if not worst <= AGREE_RTOL:
        out.failures.append(f"{name}: per-class CE differs from xent by {worst:.2e} relative (> {AGREE_RTOL:g})")
    return worst


def bench_duckdb(files: list[str], classes: int, layout: str, total_rows: int, reference, repeats: int,
                 out: Outcome) -> None:
    con = duckdb.connect()
    con.execute(f"SET threads={PEER_THREADS}")
    params = {"files": files}
    column = pred_column(layout)
    total = f"list_sum({column})" if layout != "binary" else column  # every value decoded and used
    read = f"SELECT count(*), sum(label), sum({total}) FROM read_parquet($files)"
    times, _ = time_runs(lambda: con.execute(read, params).fetchall(), repeats)
    out.timings.append(Timing(DUCKDB_READ, "floor", times, total_rows, "the issue's read peer"))
    for name, query in duckdb_queries(classes, layout).items():
        times, rows = time_runs(lambda: con.execute(query, params).fetchall(), repeats)
        worst = check_agreement(name, rows, reference, out)
        out.timings.append(Timing(name, "duckdb", times, total_rows, f"max rel diff vs xent {worst:.1e}"))
    con.close()


def bench_polars(files: list[str], classes: int, layout: str, total_rows: int, reference, repeats: int,
                 out: Outcome) -> None:
    for name, query in polars_queries(files, classes, layout).items():
        times, frame = time_runs(query, repeats)
        worst = check_agreement(name, frame.select("label", "n", "ce").rows(), reference, out)
        out.timings.append(Timing(name, "polars", times, total_rows, f"max rel diff vs xent {worst:.1e}"))


# --------------------------------------------------------------------------- 5. peak RSS


# Peak RSS of a fresh process. On Linux this is VmHWM from /proc/self/status, not
# ru_maxrss: at exec, Linux carries the parent's high-water mark over into the
# child's ru_maxrss (the child of a 500 MiB parent reports >= 500 MiB), so ru_maxrss
# would measure this benchmark process instead of the evaluation. ru_maxrss is the
# fallback where /proc is missing (bytes on macOS, KiB elsewhere).
RSS_CODE = r"""
import json, resource, sys, time
def peak_mib():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024
files = json.loads(sys.stdin.read())
from flows.config import EvalConfig
from flows.engine import dask_client, evaluate
imported = peak_mib()
with dask_client(None) as client:
    ready = peak_mib()
    started = time.perf_counter()
    evaluation = evaluate(EvalConfig(sources=files), client)
    seconds = time.perf_counter() - started
    peak = peak_mib()
print(json.dumps({"imported": imported, "ready": ready, "peak": peak, "seconds": seconds,
                  "rows": evaluation.result.rows_read}))
"""


def measure_rss(files: list[str]) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", RSS_CODE], input=json.dumps(files), capture_output=True,
                              text=True, env=subprocess_env(), check=False, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"RSS subprocess timed out after {COMMAND_TIMEOUT} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"RSS subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(files: list[str], quarter: list[str], runs: int) -> tuple[list[dict], list[dict]]:
    """Alternate quarter and full runs so slow drift on the machine hits both alike."""
    small, large = [], []
    for _ in range(runs):
        small.append(measure_rss(quarter))
        large.append(measure_rss(files))
    return small, large


# --------------------------------------------------------------------------- 6. whole command


# Imports what ``cmd_eval`` imports (read from its source, so this follows the CLI as
# it changes) and reports whether that pulled in Prefect.
EVAL_IMPORTS_CODE = r"""
import ast, importlib, importlib.util, inspect, json, sys
import flows.cli
for node in ast.walk(ast.parse(inspect.getsource(flows.cli.commands.cmd_eval))):
    if isinstance(node, ast.ImportFrom):
        base = ".".join(part for part in ("flows" if node.level else "", node.module or "") if part)
        module = importlib.import_module(base)
        for alias in node.names:  # `from . import pipelines` names modules
            if hasattr(module, "__path__") and importlib.util.find_spec(f"{base}.{alias.name}"):
                importlib.import_module(f"{base}.{alias.name}")
    elif isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
print(json.dumps({"prefect": "prefect" in sys.modules}))
"""

# One empty Prefect flow run, the way the CLI runs flows: what a flow costs on top of
# the work (without PREFECT_API_URL, Prefect starts a temporary local server).
EMPTY_FLOW_CODE = r"""
import json, time
import flows.cli
from prefect import flow

@flow
def xent_bench_empty_flow():
    return 1

started = time.perf_counter()
run = getattr(flows.cli.commands, "run_flow", None)
run(xent_bench_empty_flow) if run else xent_bench_empty_flow()
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

def show_argv(argv: list[str]) -> str:
    """A command for messages, with inline ``-c`` code abbreviated."""
    if len(argv) > 2 and argv[1] == "-c" and "\n" in argv[2]:
        argv = [argv[0], "-c", "<script>", *argv[3:]]
    return shlex.join(argv)


def run_timed(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, check=False,
                              timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{show_argv(argv)} timed out after {COMMAND_TIMEOUT} s") from None
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{show_argv(argv)} exited {proc.returncode}; end of its stderr:\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def bench_command(classes: int, repeats: int, out: Outcome) -> dict[str, float]:
    """Medians of each step, by label; raises RuntimeError when a command fails."""
    from flows.engine import dask_client
    from flows.generate import generate_dump

    xent = Path(sys.executable).parent / "xent"
    env = subprocess_env()
    medians: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="xent-bench-cmd-") as tmp:
        dump = Path(tmp) / "dump"
        generate_dump(dump, rows=COMMAND_ROWS, classes=classes, shards=COMMAND_SHARDS, seed=0)
        if xent.exists():
            command = [str(xent), "eval", str(dump), "--out", str(Path(tmp) / "report")]
        else:
            out.notes.append(f"command: no {xent.name} script beside the interpreter (xent not installed); "
                             "timed `python -m flows.cli` instead")
            command = [sys.executable, "-m", "flows.cli", "eval", str(dump), "--out", str(Path(tmp) / "report")]
        run_timed(command, env, tmp)  # warm-up: Numba cache, OS file cache
        _, stdout = run_timed([sys.executable, "-c", EVAL_IMPORTS_CODE], env, tmp)
        uses_prefect = json.loads(stdout.strip().splitlines()[-1])["prefect"]

        steps = [
            ("start", "python -c pass (interpreter start)", [sys.executable, "-c", "pass"]),
            ("cli", "python -c 'import flows.cli'", [sys.executable, "-c", "import flows.cli"]),
            ("imports", "python: import flows.cli + what cmd_eval imports", [sys.executable, "-c", EVAL_IMPORTS_CODE]),
            ("total", "xent eval (whole command)", command),
        ]
        for key, label, argv in steps:
            times = [run_timed(argv, env, tmp)[0] for _ in range(repeats)]
            medians[key] = statistics.median(times)
            out.timings.append(Timing(label, "command", times, COMMAND_ROWS if key == "total" else 0))

        if uses_prefect:
            flow_times = []
            for _ in range(repeats):
                _, stdout = run_timed([sys.executable, "-c", EMPTY_FLOW_CODE], env, tmp)
                flow_times.append(json.loads(stdout.strip().splitlines()[-1])["seconds"])
            medians["flow"] = statistics.median(flow_times)
            out.timings.append(Timing("empty Prefect flow run, fresh process (flow call only)", "command",
                                      flow_times, 0))

        def up_down():
            with dask_client(None):
                pass

        times, _ = time_runs(up_down, repeats)
        medians["cluster"] = statistics.median(times)
        out.timings.append(Timing("dask_client(None) start + stop, in this process", "command", times, 0))
    return medians


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
    print(f"machine: {platform.platform()}, os.cpu_count()={os.cpu_count()}, pyarrow cpu_count={pa.cpu_count()}"
          + (f", polars threads={pl.thread_pool_size()}" if pl and hasattr(pl, "thread_pool_size") else ""))
    print(f"XENT_CACHE_DIR={os.environ.get('XENT_CACHE_DIR', '(unset)')}")
    print(f"parameters: rows={args.rows:,} classes={args.classes} layout={args.layout} shards={args.shards} repeats={args.repeats} "
          f"skip={','.join(sorted(args.skip)) or '-'}")
    if hasattr(os, "getloadavg"):
        load = os.getloadavg()[0]
        if load > 0.5:
            print(f"WARNING: 1-minute load average is {load:.2f}: the machine is not idle, timings will be noisy")
    if os.cpu_count() != PEER_THREADS:
        print(f"NOTE: the read floor, DuckDB and Polars use {PEER_THREADS} threads; xent's local cluster uses "
              f"os.cpu_count()={os.cpu_count()} threads, so ratios are not like for like on this machine")
    print()


def print_table(out: Outcome) -> None:
    floor = out.find("read floor: pyarrow dataset, 2 threads")
    xent = out.find("xent evaluate (warm cluster)")
    header = f"{'method':<52} {'median s':>9} {'min s':>8} {'Mrows/s':>8} {'x floor':>8} {'x xent':>7}  note"
    print(header)
    print("-" * len(header))
    group = None
    order = ("floor", "xent", "duckdb", "polars", "command")
    for t in sorted(out.timings, key=lambda t: order.index(t.group) if t.group in order else len(order)):
        if group is not None and t.group != group:
            print()
        group = t.group
        rate = f"{t.rows / t.median / 1e6:.1f}" if t.rows and t.group != "command" else ""
        comparable = t.group in ("floor", "xent", "duckdb", "polars") and "scaling" not in t.name
        vs_floor = f"{t.median / floor.median:.2f}" if floor and comparable else ""
        vs_xent = f"{t.median / xent.median:.2f}" if xent and comparable else ""
        print(f"{t.name:<52} {fmt_s(t.median):>9} {fmt_s(t.best):>8} {rate:>8} {vs_floor:>8} {vs_xent:>7}  {t.note}")
    print()


def verdict(passed: bool | None) -> str:
    return "info" if passed is None else ("PASS" if passed else "MISS")


def print_summary(out: Outcome, agreement: str, checked: str) -> int:
    """The notes, each target with PASS, MISS or info, whether the peers agreed with xent
    (`agreement`; `checked` names what was counted) and every failure; the exit status."""
    for note in out.notes:
        print(note)
    if out.notes:
        print()
    print("summary")
    width = max(len(what) for what, _, _ in out.targets)
    for what, measured, passed in out.targets:
        print(f"  {verdict(passed):<5} {what:<{width}}  {measured}")
    peers = [t.name for t in out.timings if t.group in ("duckdb", "polars")]
    agree = "FAIL" if out.failures else ("PASS" if peers else "skip")
    print(f"  {agree:<5} {agreement:<{width}}  {len(peers)} {checked} checked")
    for failure in out.failures:
        print(f"  FAIL: {failure}")
    return 1 if out.failures else 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help=f"rows in the dump (default 20,000,000; --quick {QUICK_ROWS:,})")
    parser.add_argument("--classes", type=int, default=10, help="classes (default 10; 2 with --layout binary)")
    parser.add_argument("--layout", choices=["fixed_size_list", "binary"], default="fixed_size_list",
                        help="a FixedSizeList column of C logits (default), or one logit column of a binary model")
    parser.add_argument("--shards", type=int, default=16, help="Parquet files (default 16)")
    parser.add_argument("--repeats", type=int, help=f"timed runs per method (default 5; --quick {QUICK_REPEATS})")
    parser.add_argument("--data", help="folder for the dump; reused when it holds a dump made with the same "
                                       "parameters (default: a folder in the temp directory)")
    parser.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SKIPPABLE)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_ROWS:,} rows and {QUICK_REPEATS} repeats unless given")
    args = parser.parse_args(argv)
    args.rows = args.rows if args.rows is not None else (QUICK_ROWS if args.quick else 20_000_000)
    args.repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else 5)
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = args.skip - set(SKIPPABLE)
    if unknown:
        parser.error(f"--skip: unknown section(s) {sorted(unknown)}; choose from {','.join(SKIPPABLE)}")
    if args.rows < args.shards or args.shards < 1:
        parser.error("need --shards >= 1 and --rows >= --shards")
    if args.layout == "binary":
        args.classes = 2
    if args.classes < 2:
        parser.error("need --classes >= 2")
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
    if duckdb is None:
        print(f"duckdb skipped: {DUCKDB_ERROR}")
    if pl is None:
        print(f"polars skipped: {POLARS_ERROR}")

    if args.data:
        data_dir = Path(args.data).expanduser().absolute()
    else:
        data_dir = Path(tempfile.gettempdir()) / (f"xent-bench-r{args.rows}-c{args.classes}-s{args.shards}"
                                                  + ("-binary" if args.layout == "binary" else ""))
    files, reused = ensure_dump(data_dir, args.rows, args.classes, args.shards, args.layout)
    total_rows = count_rows(files)
    size = sum(Path(f).stat().st_size for f in files)
    print(f"dump: {data_dir} ({'reused' if reused else 'generated'}): {len(files)} files, {total_rows:,} rows, "
          f"{size / 2**20:.1f} MiB on disk, {total_rows * (1 if args.layout == 'binary' else args.classes) * 4 / 2**20:.1f} MiB of float32 logits")

    quarter = None
    quarter_rows = 0
    if "scaling" not in args.skip:
        if len(files) >= 4:
            quarter = files[: len(files) // 4]
            quarter_rows = count_rows(quarter)
        else:
            print(f"scaling skipped: needs at least 4 shards, the dump has {len(files)}")
            args.skip.add("scaling")
    print()

    out = Outcome()
    bench_floor(files, args.classes, args.layout, total_rows, args.repeats, out)
    reference = bench_xent(data_dir, quarter, total_rows, quarter_rows, args.repeats, out)
    for section, bench in (("duckdb", bench_duckdb), ("polars", bench_polars)):
        if section not in args.skip:
            try:
                bench(files, args.classes, args.layout, total_rows, reference, args.repeats, out)
            except Exception as error:  # a peer that cannot run is reported, the rest goes on
                out.failures.append(f"{section} section: {type(error).__name__}: {error}")

    rss = None
    if "scaling" not in args.skip:
        try:
            rss = bench_rss(files, quarter, max(1, min(args.repeats, 3)))
        except RuntimeError as error:
            out.failures.append(f"peak RSS section: {error}")
    command = None
    if "command" not in args.skip:
        try:
            command = bench_command(args.classes, args.repeats, out)
        except RuntimeError as error:
            out.failures.append(f"command section: {error}")

    print_table(out)
    print_phases(out)
    floor = out.find("read floor: pyarrow dataset, 2 threads")
    xent = out.find("xent evaluate (warm cluster)")
    ratio = xent.median / floor.median
    out.targets.append((f"xent evaluate within {FLOOR_TARGET}x of the read floor", f"{ratio:.2f}x",
                        ratio <= FLOOR_TARGET))

    duckdb_read = out.find(DUCKDB_READ)
    if duckdb_read is not None and "read" in out.phases:
        wall = out.phases["read"][1]
        out.targets.append(("xent's read phase (wall) vs DuckDB's read of the two columns",
                            f"{wall / duckdb_read.median:.2f}x (xent also reads the id column for the buckets)", None))
    for group in ("duckdb", "polars"):
        peers = [t for t in out.timings if t.group == group]
        if peers:
            best = min(peers, key=lambda t: t.median)
            out.targets.append((f"xent vs fastest {group} ({best.name.split(': ', 1)[1]})",
                                f"xent {xent.median / best.median:.2f}x its time", None))

    if rss is not None:
        small, large = rss
        quarter_t = out.find(f"xent evaluate, {len(quarter)} shard(s) (scaling)")
        rows_ratio = total_rows / quarter_rows
        time_ratio = xent.median / quarter_t.median
        limit = TIME_SLACK * rows_ratio
        out.targets.append((f"scaling: time ratio for {rows_ratio:.2f}x rows <= {limit:.2f}x", f"{time_ratio:.2f}x",
                            time_ratio <= limit))
        peak_s = statistics.median(r["peak"] for r in small)
        peak_l = statistics.median(r["peak"] for r in large)
        out.targets.append((f"scaling: peak RSS ratio <= {RSS_TARGET}x",
                            f"{peak_l / peak_s:.2f}x ({peak_s:.0f} -> {peak_l:.0f} MiB)", peak_l / peak_s <= RSS_TARGET))
        for label, runs, rows in (("1/4 of the shards", small, quarter_rows), ("all shards", large, total_rows)):
            print(f"peak RSS, {label} ({rows:,} rows), fresh process, median of {len(runs)}: "
                  f"after imports {statistics.median(r['imported'] for r in runs):.0f} MiB, "
                  f"cluster up {statistics.median(r['ready'] for r in runs):.0f} MiB, "
                  f"after evaluate {statistics.median(r['peak'] for r in runs):.0f} MiB "
                  f"(evaluate incl. cache load {statistics.median(r['seconds'] for r in runs):.2f} s)")
            if any(r["rows"] != rows for r in runs):
                out.failures.append(f"RSS subprocess for {label} read {runs[0]['rows']:,} rows, expected {rows:,}")
        print()

    if command is not None:
        total, start, cli, imports = command["total"], command["start"], command["cli"], command["imports"]
        cluster, flow = command["cluster"], command.get("flow")
        parts = [f"interpreter {start:.2f} s", f"import flows.cli {cli - start:.2f} s",
                 f"imports of cmd_eval {imports - cli:.2f} s"]
        if flow is not None:
            parts.append(f"Prefect flow run overhead ~{flow:.2f} s")
        parts.append(f"cluster start/stop ~{cluster:.2f} s")
        rest = total - imports - cluster - (flow or 0.0)
        parts.append(f"rest (evaluate, report, print) ~{rest:.2f} s")
        print(f"xent eval on {COMMAND_ROWS:,} rows x {args.classes} classes in {COMMAND_SHARDS} shards, warm Numba "
              f"cache, median of {args.repeats}: total {total:.2f} s = " + " + ".join(parts))
        print()
        out.targets.append(("xent eval whole command, tiny dump", f"{total:.2f} s", None))

    return print_summary(out, "peers agree with xent per class (rel <= 1e-6, same counts)", "peer formulation(s)")


if __name__ == "__main__":
    sys.exit(main())
