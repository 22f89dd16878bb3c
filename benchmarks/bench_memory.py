"""Memory-bounded evaluation: what a task holds, and a dump 4x larger than a worker's cap.

Two sections:

``task``
    The peak RSS of one task (``flows.engine.evaluate_piece`` over a whole file), each
    in a fresh interpreter after a warm-up piece on a tiny file (so the floor holds the
    Numba kernel and pyarrow's readers), above the RSS before it (``VmHWM`` reset
    through ``/proc/self/clear_refs``; Linux only). First over files of one row group
    of 250k, 1M and 4M rows x ``--classes`` float32 logits at the default
    ``batch_logits``, then over the largest file at several ``batch_logits``: the peak
    should follow ``batch_logits`` and not the file or its row group.
``cluster``
    A real ``dask scheduler`` and two ``dask worker --nthreads 1 --memory-limit
    MEMORY_LIMIT`` processes (with nannies) on 127.0.0.1 evaluate a dump whose decoded
    predictions are at least 4x the cap (default 22,000,000 x 50 float32 logits in 11
    files of two 1M-row groups: 4.1 GiB for a 1 GiB cap), through ``xent eval
    --no-prefect --scheduler``. The workers' RSS is sampled with psutil every 50 ms,
    their status (paused or not) from the scheduler every 0.5 s; a worker restarted by
    its nanny shows as a new process. Then ``xent eval --no-prefect`` on a local
    cluster, and the two reports must be equal (counts exactly, numbers to 1e-12).

Run from the repository root::

    python benchmarks/bench_memory.py --quick                  # smoke run: 2M rows, small task files
    python benchmarks/bench_memory.py                          # the real run: 4.1 GiB decoded, 1 GiB workers
    python benchmarks/bench_memory.py --data bench-mem --skip task

The cluster dump is written once into ``--data`` (default: a folder named after the
parameters in the temp directory) and reused, as in ``bench_eval.py``. Exit status 1
when the cluster run fails, a worker is restarted, or the reports differ.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent
for folder in (_REPO_ROOT, _REPO_ROOT / "tests", _REPO_ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from distributed import Client  # noqa: E402

from bench_eval import count_rows, ensure_dump  # noqa: E402
from support import assert_same_report, dask_cluster, run_cli  # noqa: E402
from flows.config import EvalConfig  # noqa: E402
from flows.generate import generate_dump  # noqa: E402
from test_memory import task_peak  # noqa: E402

MiB = 2**20
SECTIONS = ("task", "cluster")
DEFAULT_BATCH = EvalConfig.model_fields["batch_logits"].default
TASK_ROWS = (250_000, 1_000_000, 4_000_000)
TASK_BATCHES = (1_000_000, 2_000_000, 4_000_000, 8_000_000, 16_000_000)
QUICK_ROWS, QUICK_TASK_ROWS, QUICK_TASK_BATCHES = 2_000_000, (100_000, 400_000), (1_000_000, 4_000_000)
RUN_TIMEOUT = 3600  # seconds per xent run: a hung run is reported, not waited for forever


# --------------------------------------------------------------------------- task


def bench_task(classes: int, rows: tuple[int, ...], batches: tuple[int, ...], folder: Path) -> None:
    warm = generate_dump(folder / "warm", rows=1_000, classes=classes, shards=1, seed=1, overwrite=True)
    files = {n: generate_dump(folder / f"rg{n}", rows=n, classes=classes, shards=1, seed=1, row_group_rows=n,
                              overwrite=True) for n in rows}
    print(f"task: peak RSS of one piece above the worker's floor, {classes} float32 logits a row, one row group a file")
    print(f"{'row group rows':>15} {'decoded MiB':>12} {'batch_logits':>13} {'peak above floor MiB':>21} {'B/value read':>12}")

    def show(n: int, batch: int) -> None:
        peak = task_peak(warm.root, files[n].root, batch)["peak_above"]
        values = min(n, max(1024, batch // classes)) * classes  # in the largest batch read (ReadSpec.batch_rows)
        print(f"{n:>15,} {n * classes * 4 / MiB:>12.0f} {batch:>13,} {peak / MiB:>21.0f} {peak / values:>12.1f}")

    for n in rows:
        show(n, DEFAULT_BATCH)
    for batch in batches:
        show(rows[-1], batch)
    print()


# --------------------------------------------------------------------------- cluster


@dataclass
class WorkerWatch:
    """Each worker's processes (a nanny restarts a worker as a new one) and their peak
    RSS, and how often the scheduler saw each worker paused."""

    address: str
    pids: dict[str, list[int]] = field(default_factory=dict)  # worker name -> its pids, in order
    peak: dict[int, int] = field(default_factory=dict)  # pid -> bytes
    paused_samples: dict[str, int] = field(default_factory=dict)
    status_samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def sample_rss(self) -> None:
        while not self.stop.wait(0.05):
            for pid in [pid for pids in list(self.pids.values()) for pid in pids]:
                try:
                    self.peak[pid] = max(self.peak.get(pid, 0), psutil.Process(pid).memory_info().rss)
                except psutil.NoSuchProcess:
                    pass

    def sample_status(self) -> None:
        with Client(self.address, timeout="20s") as client:
            while True:
                workers = client.scheduler_info(n_workers=-1)["workers"]
                names = {address: worker["name"] for address, worker in workers.items()}
                for address, pid in client.run(os.getpid).items():
                    if address in names and pid not in self.pids.setdefault(names[address], []):
                        self.pids[names[address]].append(pid)
                self.status_samples += 1
                for worker in workers.values():
                    if worker.get("status") == "paused":
                        self.paused_samples[worker["name"]] = self.paused_samples.get(worker["name"], 0) + 1
                if self.stop.wait(0.5):
                    return


def timed_eval(args: list[str]) -> tuple[float, object]:
    started = time.perf_counter()
    result = run_cli(args, timeout=RUN_TIMEOUT)
    return time.perf_counter() - started, result


def read_report(folder: Path) -> dict:
    return {name: pq.read_table(folder / f"{name}.parquet") for name in ("per_class", "summary")}


def bench_cluster(data: Path, rows: int, classes: int, shards: int, memory_limit: str, work: Path) -> bool:
    files, reused = ensure_dump(data, rows, classes, shards)
    total_rows = count_rows(files)
    decoded = total_rows * classes * 4
    metadata = pq.ParquetFile(files[0]).metadata
    largest = max(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
    print(f"cluster: dump {data} ({'reused' if reused else 'generated'}): {len(files)} files of "
          f"{metadata.num_row_groups} row group(s) (largest {largest:,} rows), "
          f"{total_rows:,} rows x {classes} float32 logits = {decoded / 2**30:.2f} GiB decoded, "
          f"{sum(Path(f).stat().st_size for f in files) / 2**30:.2f} GiB on disk")
    ok = True
    with dask_cluster(work / "cluster", n_workers=2, nanny=True, memory_limit=memory_limit) as cluster:
        with Client(cluster.address, timeout="20s") as client:
            info = client.scheduler_info(n_workers=-1)["workers"].values()
            cap = min(w["memory_limit"] for w in info)
        print(f"workers: 2 x (1 thread, --memory-limit {memory_limit} = {cap / MiB:.0f} MiB); "
              f"decoded predictions = {decoded / cap:.1f}x one worker's cap, {decoded / (2 * cap):.1f}x both")
        watch = WorkerWatch(cluster.address)
        threads = [threading.Thread(target=watch.sample_status, daemon=True),
                   threading.Thread(target=watch.sample_rss, daemon=True)]
        for thread in threads:
            thread.start()
        try:
            seconds, result = timed_eval(["eval", str(data), "--out", str(work / "cluster-report"), "--no-prefect",
                                          "--scheduler", cluster.address])
        finally:
            watch.stop.set()
            for thread in threads:
                thread.join(10)
        print(f"cluster run: exit {result.returncode} in {seconds:.1f} s ({total_rows / seconds / 1e6:.2f} M rows/s)")
        if result.returncode != 0:
            print(f"  stderr: {result.stderr.strip()[-2000:]}")
            ok = False
        for name, pids in sorted(watch.pids.items()):
            peaks = ", ".join(f"{watch.peak.get(pid, 0) / MiB:.0f} MiB ({watch.peak.get(pid, 0) / cap:.0%} of cap)" for pid in pids)
            print(f"  worker {name}: peak RSS {peaks}; {len(pids) - 1} restart(s); paused in "
                  f"{watch.paused_samples.get(name, 0)} of {watch.status_samples} status samples")
            ok &= len(pids) == 1
    if result.returncode == 0:
        local_seconds, local = timed_eval(["eval", str(data), "--out", str(work / "local-report"), "--no-prefect"])
        print(f"local run (in-process LocalCluster, {os.cpu_count()} threads): exit {local.returncode} in {local_seconds:.1f} s")
        if local.returncode != 0:
            print(f"  stderr: {local.stderr.strip()[-2000:]}")
            return False
        try:
            assert_same_report(read_report(work / "cluster-report"), read_report(work / "local-report"))
            print("report: equal to the local run's (counts exactly, numbers to 1e-12)")
        except AssertionError as error:
            print(f"report: DIFFERS from the local run's: {error}")
            ok = False
    return ok


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help=f"rows in the cluster dump (default 22,000,000; --quick {QUICK_ROWS:,})")
    parser.add_argument("--classes", type=int, default=50, help="classes (default 50)")
    parser.add_argument("--shards", type=int, default=11, help="files in the cluster dump (default 11)")
    parser.add_argument("--memory-limit", default="1GiB", help="each worker's --memory-limit (default 1GiB)")
    parser.add_argument("--data", help="folder for the cluster dump, reused when it holds one made with the same "
                                       "parameters (default: a folder in the temp directory)")
    parser.add_argument("--skip", default="", help=f"comma list of sections to skip: {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: small dump and task files")
    args = parser.parse_args(argv)
    args.rows = args.rows if args.rows is not None else (QUICK_ROWS if args.quick else 22_000_000)
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if args.skip - set(SECTIONS):
        parser.error(f"--skip: unknown section(s) {sorted(args.skip - set(SECTIONS))}; choose from {','.join(SECTIONS)}")
    if args.rows < args.shards or args.shards < 1 or args.classes < 2:
        parser.error("need --shards >= 1, --rows >= --shards and --classes >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import distributed
    import pyarrow

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"versions: python {platform.python_version()}, pyarrow {pyarrow.__version__} "
          f"(pool {pyarrow.default_memory_pool().backend_name}), distributed {distributed.__version__}; "
          f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
    print()
    ok = True
    with tempfile.TemporaryDirectory(prefix="xent-bench-mem-") as tmp:
        if "task" not in args.skip:
            if Path("/proc/self/clear_refs").exists():
                bench_task(args.classes, QUICK_TASK_ROWS if args.quick else TASK_ROWS,
                           QUICK_TASK_BATCHES if args.quick else TASK_BATCHES, Path(tmp) / "task")
            else:
                print("task: skipped, needs Linux /proc to measure peak RSS\n")
        if "cluster" not in args.skip:
            data = (Path(args.data).expanduser().absolute() if args.data else
                    Path(tempfile.gettempdir()) / f"xent-bench-r{args.rows}-c{args.classes}-s{args.shards}")
            ok = bench_cluster(data, args.rows, args.classes, args.shards, args.memory_limit, Path(tmp))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
