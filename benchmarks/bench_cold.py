"""The first ``xent eval --no-prefect`` on a fresh machine against the second, and what
the first pays for.

Every run is a fresh interpreter whose HOME is a new empty folder and which has no
``XENT_CACHE_DIR``, ``NUMBA_CACHE_DIR`` or ``XDG_CACHE_HOME``: Numba's cache and the page
bundle both start empty, as on a new container, CI job or Dask worker. On one dump
(``--rows`` x ``--classes`` float32 logits, the defaults of ``xent generate``):

1. cold: the first eval in a new HOME; warm: the same command again in that HOME;
2. with a warmup: ``xent warmup`` in another new HOME, then the eval (skip with
   ``--no-warmup``: the warmup takes about a minute);
3. the phases of a cold run, in one fresh interpreter: imports (``flows.cli``, then
   what ``cmd_eval`` imports), the first local cluster's start, the page bundle build,
   and the eval itself, split into Numba compiles (per top-level kernel, from Numba's
   ``numba:compile`` events) and the rest.

Times are wall seconds and CPU seconds (the children's user + sys; a compile's thread
CPU time): on a shared machine the CPU figures are the steadier ones.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_cold.py                 # about 2 minutes
    PYTHONPATH=. python benchmarks/bench_cold.py --no-warmup     # cold, warm and phases only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fresh_env(home: Path) -> dict[str, str]:
    """This environment with a new HOME and no cache folder set, xent first on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("XENT_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "DASK_SCHEDULER_ADDRESS")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU (user + sys) seconds of a child process, and its stderr."""
    started = time.perf_counter()
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed with exit {child.returncode}:\n{stderr[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, stderr


def xent(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def phases(dump: str, out: str) -> None:
    """In this (fresh) interpreter: time each phase of a cold eval, print them as JSON."""
    import threading

    rows: list[tuple[str, float, float]] = []

    def phase(name: str, function):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        rows.append((name, time.perf_counter() - wall, time.process_time() - cpu))
        return result

    main = phase("import flows.cli", lambda: __import__("flows.cli.commands", fromlist=["main"]).main)

    def eval_imports():
        import flows.api  # noqa: F401 - what cmd_eval imports
        import flows.config  # noqa: F401
        import flows.engine  # noqa: F401
        import flows.report.page  # noqa: F401
        import flows.runs.adhoc  # noqa: F401
        import xent_kernels  # noqa: F401

    phase("import the eval modules", eval_imports)
    from numba.core import event

    compiles: dict[str, list[float]] = {}
    local = threading.local()

    class TopLevelCompiles(event.Listener):
        """Wall and thread CPU time of each outermost compile (callees are inside it)."""

        def on_start(self, ev):
            local.stack = getattr(local, "stack", [])
            local.stack.append((time.perf_counter(), time.thread_time()))

        def on_end(self, ev):
            wall, cpu = local.stack.pop()
            if not local.stack:
                dispatcher = ev.data["dispatcher"]
                name = f"{dispatcher.py_func.__module__.removeprefix('xent_kernels.')}.{dispatcher.py_func.__name__}"
                spent = compiles.setdefault(name, [0.0, 0.0])
                spent[0] += time.perf_counter() - wall
                spent[1] += time.thread_time() - cpu

    event.register("numba:compile", TopLevelCompiles())

    def cluster():
        from flows.engine import dask_client

        with dask_client(None):
            pass

    phase("first local cluster start and stop", cluster)
    from flows.report.page.common import vega_embed_script

    phase("page bundle build", vega_embed_script)
    code = phase("eval (below: its compiles and the rest)", lambda: main(["eval", dump, "--out", out, "--no-prefect"]))
    assert code == 0, code
    print(json.dumps({"phases": rows, "compiles": compiles}), file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--no-warmup", action="store_true", help="skip the warmup figure")
    parser.add_argument("--phases", nargs=2, metavar=("DUMP", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases:
        phases(*args.phases)
        return 0

    from flows.generate import generate_dump
    from flows.metadata import VERSION

    print(f"xent {VERSION}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="xent-bench-cold-") as folder:
        tmp = Path(folder)
        dump = str(tmp / "dump")
        generate_dump(dump, rows=args.rows, classes=args.classes)
        command = xent("eval", dump, "--out", str(tmp / "report"), "--no-prefect")
        print(f"dump: {args.rows:,} rows x {args.classes} classes, float32 logits; command: xent eval --no-prefect")
        results = []
        env = fresh_env(tmp / "home-cold")
        results.append(("cold (empty HOME, no cache)", *timed(command, env)[:2]))
        results.append(("warm (the same HOME again)", *timed(command, env)[:2]))
        if not args.no_warmup:
            env = fresh_env(tmp / "home-warmup")
            results.append(("xent warmup (empty HOME)", *timed(xent("warmup"), env)[:2]))
            results.append(("eval after the warmup", *timed(command, env)[:2]))
        print(f"\n{'run':44} {'wall s':>8} {'CPU s':>8}")
        for name, wall, cpu in results:
            print(f"{name:44} {wall:8.2f} {cpu:8.2f}")

        stderr = timed([sys.executable, __file__, "--phases", dump, str(tmp / "phases")], fresh_env(tmp / "home-phases"))[2]
        measured = json.loads(stderr.strip().splitlines()[-1])
        print(f"\nphases of a cold eval, in one interpreter (interpreter start not included)\n{'phase':44} {'wall s':>8} {'CPU s':>8}")
        for name, wall, cpu in measured["phases"]:
            print(f"{name:44} {wall:8.2f} {cpu:8.2f}")
            if name.startswith("eval"):
                compiled = sorted(measured["compiles"].items(), key=lambda item: -item[1][0])
                for kernel, (k_wall, k_cpu) in compiled:
                    print(f"  compile {kernel:34} {k_wall:8.2f} {k_cpu:8.2f}")
                print(f"  {'the rest of the eval':42} {wall - sum(w for w, _ in measured['compiles'].values()):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
