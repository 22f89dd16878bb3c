"""Single-core benchmark of xent's fused per-class statistics kernel against peers.

Measures, on the same float32 logits array and in the same process:

* ``xent_kernels.class_stats_partial(logits, labels, kind="logits").finalize()``:
  the fused one-pass kernel (per-class count, weight, CE mean/std, entropy, p_true,
  top-1/top-5 accuracy, per-slice marginals and confidence histogram);
* ``xent_kernels.cross_entropy(logits, labels, reduction="mean")``: the plain API;
* peers that compute only the mean cross-entropy:
  a numpy log-sum-exp written for speed (row blocks that stay in cache, preallocated
  buffers, ``out=`` everywhere), reducing along axis 1 and, for C <= 32, also a
  variant reducing column by column; ``scipy.special.log_softmax`` + gather (same row
  blocks), and ``torch.nn.functional.cross_entropy`` (optional; skipped when torch
  is not importable).

Everything runs on one thread. Each method is called once to warm up (JIT compile,
page faults), then timed ``--repeats`` times with ``time.perf_counter``; the table
reports the median. The accuracy column is the relative error of each method's mean
CE against a float64 reference (``scipy.special.logsumexp`` on float64 logits).

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_kernels.py            # headline: 8M x 10 and 80k x 1000
    PYTHONPATH=. python benchmarks/bench_kernels.py --quick    # smoke run, 200k logits per size
    PYTHONPATH=. python benchmarks/bench_kernels.py --classes 10,2,100,1000

``--rows`` is the row count for the first entry of ``--classes``; every other class
count gets the same number of logits (rows * C_first // C).

Exit status is 1 when a xent kernel misses the accuracy tolerance (ACCURACY FAIL).
"""

from __future__ import annotations

import os

# Single-threaded everything; must happen before numpy/numba/torch are imported.
for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import scipy.special  # noqa: E402

# Allow running as ``python benchmarks/bench_kernels.py`` from a checkout without
# PYTHONPATH: put the repository root (this file's grandparent) on the path.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

import numba  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as torch_F  # noqa: E402

    torch.set_num_threads(1)
    TORCH_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the environment
    torch = None
    torch_F = None
    TORCH_ERROR = f"{type(exc).__name__}: {exc}"

from xent_kernels import class_stats_partial, cross_entropy  # noqa: E402

FUSED_NAME = "xent class_stats_partial+finalize"
FUSED_TOL = 1e-6
# Rows per block for the numpy/scipy peers: about 2**18 logits (1 MiB float32)
# per block, at most 65536 rows. Measured best on this kind of machine.
BLOCK_LOGITS = 1 << 18
MAX_BLOCK_ROWS = 65536
# At or below this many classes a second numpy peer reduces over columns (strided
# elementwise ops) instead of along axis 1, which numpy does slowly for short rows
# (about 3x faster at C=10, 7x at C=2; slower from C=64 on). The axis=1 peer is the
# usual way to write it and runs near the kernel issue's figure for numpy.
COLUMNWISE_MAX_C = 32


# --------------------------------------------------------------------------- data


def make_data(rows: int, n_classes: int, seed: int, label_mode: str):
    """logits ~ N(0, 3) float32 (C-contiguous); labels int64, drawn from softmax(logits)
    (Gumbel-max, blockwise) or uniformly."""
    rng = np.random.default_rng([seed, n_classes])
    logits = rng.standard_normal((rows, n_classes), dtype=np.float32)
    logits *= np.float32(3.0)
    if label_mode == "uniform":
        labels = rng.integers(0, n_classes, size=rows, dtype=np.int64)
    else:
        labels = np.empty(rows, dtype=np.int64)
        block = max(1, (1 << 20) // n_classes)
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            g = rng.gumbel(size=(stop - start, n_classes)).astype(np.float32)
            g += logits[start:stop]
            labels[start:stop] = g.argmax(axis=1)
    return np.ascontiguousarray(logits), labels


def reference_ce(logits: np.ndarray, labels: np.ndarray, block_rows: int):
    """float64 per-row CE summed to mean and to per-class means (not timed)."""
    rows, n_classes = logits.shape
    total = 0.0
    class_sum = np.zeros(n_classes, dtype=np.float64)
    for start in range(0, rows, block_rows):
        stop = min(start + block_rows, rows)
        x = logits[start:stop].astype(np.float64)
        y = labels[start:stop]
        ce = scipy.special.logsumexp(x, axis=1) - x[np.arange(stop - start), y]
        total += float(np.sum(ce))
        class_sum += np.bincount(y, weights=ce, minlength=n_classes)
    counts = np.bincount(labels, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_mean = class_sum / counts
    return total / rows, class_mean, counts


# -------------------------------------------------------------------------- peers


def block_rows_for(n_classes: int) -> int:
    return int(min(MAX_BLOCK_ROWS, max(16, BLOCK_LOGITS // n_classes)))


class NumpyLSE:
    """Mean CE by a blocked, max-shifted log-sum-exp in float32 with preallocated
    buffers; per-block sums accumulate in float64."""

    def __init__(self, n_classes: int, columnwise: bool):
        self.C = n_classes
        self.B = block_rows_for(n_classes)
        self.columnwise = columnwise
        self.buf = np.empty((self.B, n_classes), dtype=np.float32)
        self.m = np.empty((self.B, 1), dtype=np.float32)
        self.s = np.empty(self.B, dtype=np.float32)
        self.offsets = np.arange(self.B, dtype=np.int64) * n_classes
        self.idx = np.empty(self.B, dtype=np.int64)

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> float:
        rows, C = logits.shape
        assert C == self.C
        B = self.B
        total = 0.0
        for start in range(0, rows, B):
            stop = min(start + B, rows)
            k = stop - start
            x = logits[start:stop]
            buf = self.buf[:k]
            m2 = self.m[:k]
            m = m2[:, 0]
            s = self.s[:k]
            if self.columnwise:
                np.copyto(m, x[:, 0])
                for j in range(1, C):
                    np.maximum(m, x[:, j], out=m)
                np.subtract(x, m2, out=buf)
                np.exp(buf, out=buf)
                np.copyto(s, buf[:, 0])
                for j in range(1, C):
                    np.add(s, buf[:, j], out=s)
            else:
                np.max(x, axis=1, keepdims=True, out=m2)
                np.subtract(x, m2, out=buf)
                np.exp(buf, out=buf)
                np.sum(buf, axis=1, out=s)
            np.log(s, out=s)
            s += m
            idx = self.idx[:k]
            np.add(self.offsets[:k], labels[start:stop], out=idx)
            true_logit = x.reshape(-1).take(idx)
            total += float(s.sum(dtype=np.float64)) - float(true_logit.sum(dtype=np.float64))
        return total / rows


class ScipyLogSoftmax:
    """Mean CE from scipy.special.log_softmax plus a gather, in the same row blocks."""

    def __init__(self, n_classes: int):
        self.C = n_classes
        self.B = block_rows_for(n_classes)
        self.offsets = np.arange(self.B, dtype=np.int64) * n_classes
        self.idx = np.empty(self.B, dtype=np.int64)

    def __call__(self, logits: np.ndarray, labels: np.ndarray) -> float:
        rows = logits.shape[0]
        total = 0.0
        for start in range(0, rows, self.B):
            stop = min(start + self.B, rows)
            k = stop - start
            logp = scipy.special.log_softmax(logits[start:stop], axis=1)
            idx = self.idx[:k]
            np.add(self.offsets[:k], labels[start:stop], out=idx)
            total += float(logp.reshape(-1).take(idx).sum(dtype=np.float64))
        return -total / rows


def torch_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(torch_F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item())


def xent_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(cross_entropy(logits, labels, reduction="mean"))


def fused(logits: np.ndarray, labels: np.ndarray):
    return class_stats_partial(logits, labels, kind="logits").finalize()


def fused_mean_ce(report) -> float:
    """Overall mean CE from a finalized report: the single slice's ce_mean when
    there is one, else the weight-averaged per-class ce_mean."""
    per_slice = getattr(report, "per_slice", None) or {}
    if "ce_mean" in per_slice:
        col = np.asarray(per_slice["ce_mean"], dtype=np.float64).reshape(-1)
        if col.size == 1:
            return float(col[0])
    pc = report.per_class
    w = np.asarray(pc["weight"] if "weight" in pc else pc["n"], dtype=np.float64)
    ce = np.asarray(pc["ce_mean"], dtype=np.float64)
    keep = w > 0
    return float(np.sum(ce[keep] * w[keep]) / np.sum(w[keep]))


# ------------------------------------------------------------------------- timing


def time_it(func, args, repeats: int):
    """Warm up once, then ``repeats`` timed calls. Returns (times, last result)."""
    result = func(*args)  # warm-up: JIT compile, first-touch page faults
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        result = func(*args)
        times.append(time.perf_counter() - t0)
    return times, result


def rel_err(value: float, ref: float) -> float:
    return abs(value - ref) / abs(ref) if ref != 0 else abs(value - ref)


def fmt_row(cols, widths):
    return "  ".join(str(c).ljust(w) if i in (1, 5) else str(c).rjust(w) for i, (c, w) in enumerate(zip(cols, widths))).rstrip()


def print_env(args):
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  numba {numba.__version__}  "
        f"scipy {scipy.__version__}  torch {torch.__version__ if torch is not None else 'not available'}"
    )
    print(f"platform {platform.platform()}  machine {platform.machine()}  os.cpu_count() = {os.cpu_count()}")
    threads = {v: os.environ.get(v) for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    print("threads:", "  ".join(f"{k}={v}" for k, v in threads.items()), end="")
    print(f"  numba.get_num_threads()={numba.get_num_threads()}", end="")
    if torch is not None:
        print(f"  torch.get_num_threads()={torch.get_num_threads()}")
    else:
        print()
    if torch is None:
        print(f"NOTE: torch not importable ({TORCH_ERROR}); its rows are skipped.")
    print(f"repeats={args.repeats} (median reported)  labels={args.labels}  seed={args.seed}")


def run_size(rows: int, n_classes: int, args) -> tuple[list, list[str]]:
    t0 = time.perf_counter()
    logits, labels = make_data(rows, n_classes, args.seed, args.labels)
    ref, ref_class, ref_counts = reference_ce(logits, labels, block_rows_for(n_classes) * 4)
    setup = time.perf_counter() - t0
    n_logits = rows * n_classes
    print(
        f"\n== C={n_classes}  rows={rows:,}  logits={n_logits:,}  ({logits.nbytes / 2**20:.0f} MiB float32)  "
        f"reference mean CE (float64) = {ref:.12f}  [data+reference {setup:.1f}s]"
    )

    methods = [(FUSED_NAME, None), ("xent cross_entropy(mean)", xent_cross_entropy)]
    methods.append((f"numpy LSE (axis=1, {block_rows_for(n_classes)}-row blocks)", NumpyLSE(n_classes, columnwise=False)))
    if n_classes <= COLUMNWISE_MAX_C:
        methods.append((f"numpy LSE (columnwise, {block_rows_for(n_classes)}-row blocks)", NumpyLSE(n_classes, columnwise=True)))
    methods.append((f"scipy log_softmax ({block_rows_for(n_classes)}-row blocks)", ScipyLogSoftmax(n_classes)))
    if torch is not None:
        methods.append(("torch F.cross_entropy", torch_ce))

    results = []
    failures = []
    fused_median = None
    for name, func in methods:
        if args.only and not any(tag in name for tag in args.only):
            continue
        try:
            if func is None:
                times, report = time_it(fused, (logits, labels), args.repeats)
                value = fused_mean_ce(report)
            else:
                times, value = time_it(func, (logits, labels), args.repeats)
        except Exception as exc:  # keep going: report the failure in the table
            results.append((n_classes, name, None, None, None, f"ERROR {type(exc).__name__}: {exc}"))
            if name.startswith("xent"):
                failures.append(f"C={n_classes} {name}: raised {type(exc).__name__}: {exc}")
            continue
        med = statistics.median(times)
        if func is None:
            fused_median = med
            check_fused_report(report, rows, n_classes, ref_class, ref_counts, failures)
        err = rel_err(value, ref)
        flag = ""
        if name.startswith("xent") and not (err <= FUSED_TOL):
            flag = "  ACCURACY FAIL"
            failures.append(f"C={n_classes} {name}: mean CE {value!r} vs reference {ref!r}, rel. error {err:.2e} > {FUSED_TOL:g}")
        results.append((n_classes, name, med, med / n_logits * 1e9, times, f"{err:.2e}{flag}"))

    widths = (5, 52, 10, 9, 13, 22)
    print(fmt_row(("C", "method", "median s", "ns/logit", "fused speedup", "rel. error"), widths))
    print(fmt_row(("-" * 5, "-" * 52, "-" * 10, "-" * 9, "-" * 13, "-" * 22), widths))
    for c, name, med, nspl, times, err in results:
        if med is None:
            print(fmt_row((c, name, "-", "-", "-", err), widths))
            continue
        speed = f"{med / fused_median:.2f}x" if fused_median else "n/a"
        print(fmt_row((c, name, f"{med:.4f}", f"{nspl:.3f}", speed, err), widths))
    if args.verbose:
        for c, name, med, nspl, times, err in results:
            if times:
                print(f"   {name}: " + " ".join(f"{t:.4f}" for t in times) + f"  (min {min(times):.4f})")
    for line in failures:
        print("ACCURACY FAIL:", line)
    del logits, labels
    gc.collect()
    return results, failures


def check_fused_report(report, rows, n_classes, ref_class, ref_counts, failures):
    """Extra sanity checks on the fused output: counts and per-class ce_mean."""
    pc = report.per_class
    try:
        # per_class has one entry per (slice, class) that has rows; "class" says which.
        cls = np.asarray(pc["class"], dtype=np.int64).reshape(-1) if "class" in pc else np.arange(n_classes)
        n = np.asarray(pc["n"], dtype=np.int64).reshape(-1)
        present = np.flatnonzero(ref_counts > 0)
        if not (np.array_equal(np.sort(cls), present) and np.array_equal(n, ref_counts[cls])):
            failures.append(f"C={n_classes} {FUSED_NAME}: per_class classes/n differ from bincount(labels)")
            return
        ce = np.asarray(pc["ce_mean"], dtype=np.float64).reshape(-1)
        errs = np.abs(ce - ref_class[cls]) / np.abs(ref_class[cls])
        worst = float(errs.max()) if errs.size else 0.0
        print(f"   fused per-class ce_mean: max rel. error {worst:.2e} over {cls.size} classes; per-class n match bincount", end="")
        if not worst <= FUSED_TOL:
            print("  ACCURACY FAIL")
            failures.append(f"C={n_classes} {FUSED_NAME}: per-class ce_mean max rel. error {worst:.2e} > {FUSED_TOL:g}")
        else:
            print()
    except Exception as exc:  # report, don't crash the benchmark
        failures.append(f"C={n_classes} {FUSED_NAME}: per-class check failed: {type(exc).__name__}: {exc}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows for the first --classes entry (default 8,000,000; --quick: 20,000)")
    parser.add_argument("--classes", default="10,1000", help="comma list of class counts (default 10,1000); e.g. 10,2,100,1000")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per method (default 7; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200k logits per size")
    parser.add_argument("--labels", choices=("softmax", "uniform"), default="softmax", help="label distribution (default: sampled from softmax(logits))")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--only", default="", help="comma list of substrings; time only methods whose name contains one (the fused kernel is always needed for the speed-up column)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every timing")
    args = parser.parse_args(argv)

    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    if not classes or min(classes) < 1:
        parser.error("--classes needs positive integers")
    if args.rows is None:
        args.rows = 200_000 // classes[0] if args.quick else 8_000_000
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    args.only = [s for s in args.only.split(",") if s]
    if args.only:
        args.only.append("class_stats_partial")

    print_env(args)
    total_logits = args.rows * classes[0]
    all_failures = []
    summary = []
    for c in classes:
        rows = max(1, total_logits // c)
        results, failures = run_size(rows, c, args)
        all_failures += failures
        summary += results

    print("\nsummary: fused speed-up = method median / fused median (>1 means the fused kernel is faster)")
    for c, name, med, nspl, times, err in summary:
        if med is not None and name != FUSED_NAME:
            fm = next((r[2] for r in summary if r[0] == c and r[1] == FUSED_NAME and r[2]), None)
            if fm:
                print(f"  C={c:<5} {med / fm:6.2f}x  {name}")
    if all_failures:
        print(f"\nACCURACY FAIL: {len(all_failures)} problem(s); see above.")
        return 1
    print("\naccuracy: all xent kernels within rel. error", FUSED_TOL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
