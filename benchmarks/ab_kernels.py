"""A/B timing of the fused per-class kernel: the working tree against a git revision.

On a small, noisy machine two separate benchmark runs can differ by 10-20%, more than
most kernel changes. This script loads both versions into one process (the revision's
``xent_kernels`` is extracted with ``git archive`` into a temporary folder and imported
under another name) and times them alternately on the same arrays, so that both see
the same noise. It prints, per class count, the median ns/logit of each, the ratio of
the medians, the range of the per-round ratios, and the largest relative difference
between the two reports (per-class ce_mean and p_true_mean). With ``--buckets K``
the new side also gets jackknife bucket ids (splitmix64 of the row number mod K), as
a run with intervals would.

Run from the repository root::

    python benchmarks/ab_kernels.py --base HEAD~1 --classes 10,2,1000
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_PACKAGE = "xent_kernels_base"


def extract_revision(revision: str, into: Path) -> str:
    """Put `revision`'s xent_kernels at into/BASE_PACKAGE; return the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", commit, "xent_kernels"], cwd=REPO_ROOT, check=True, stdout=out)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (into / "xent_kernels").rename(into / BASE_PACKAGE)  # the package imports itself relatively
    return commit


def report_columns(report):
    pc = report.per_class
    return np.asarray(pc["ce_mean"], dtype=np.float64), np.asarray(pc["p_true_mean"], dtype=np.float64)


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    scale = np.maximum(np.abs(a), np.abs(b))
    diff = np.abs(a - b)
    return float(np.max(np.where(scale > 0, diff / np.where(scale > 0, scale, 1), diff), initial=0.0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare the working tree with (default HEAD)")
    parser.add_argument("--classes", default="10,2,1000", help="comma list of class counts")
    parser.add_argument("--logits", type=int, default=40_000_000, help="logits per class count (default 40M)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating timed rounds (default 9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", type=int, default=0,
                        help="jackknife buckets passed to the new side only (default 0: none)")
    parser.add_argument("--confusion", choices=("on", "off"), default=None,
                        help="the new side's confusion matrix (default: the kernel's default for C)")
    parser.add_argument("--thresholds", type=int, default=None,
                        help="the new side's ROC histogram bins, 0 = AUC off (default: the kernel's default for C)")
    args = parser.parse_args(argv)

    print("command:", shlex.join([sys.executable, *sys.argv]))
    with tempfile.TemporaryDirectory(prefix="xent-ab-") as tmp:
        # Both versions compile into a private cache: a shared one would mix them.
        os.environ["XENT_CACHE_DIR"] = str(Path(tmp) / "cache")
        commit = extract_revision(args.base, Path(tmp))
        sys.path[:0] = [tmp, str(REPO_ROOT)]
        base = importlib.import_module(BASE_PACKAGE)
        new = importlib.import_module("xent_kernels")
        print(f"base: {args.base} = {commit[:12]}    new: working tree    rounds={args.rounds} (alternating)")
        print(f"{'C':>5}  {'base ns/logit':>13}  {'new ns/logit':>12}  {'new/base':>8}  {'per-round range':>15}  {'max rel. diff':>13}")
        for n_classes in (int(c) for c in args.classes.split(",") if c.strip()):
            rng = np.random.default_rng([args.seed, n_classes])
            rows = max(1, args.logits // n_classes)
            logits = rng.standard_normal((rows, n_classes), dtype=np.float32) * np.float32(3.0)
            labels = rng.integers(0, n_classes, rows)
            extra = {}
            if args.confusion is not None:
                extra["confusion"] = args.confusion == "on"
            if args.thresholds is not None:
                extra["n_thresholds"] = args.thresholds
            if args.buckets:
                from xent_kernels.hashing import splitmix64

                bucket_ids = (splitmix64(np.arange(rows, dtype=np.uint64)) % np.uint64(args.buckets)).astype(np.int64)
                extra.update(buckets=bucket_ids, n_buckets=args.buckets)
            calls = {
                "base": lambda: base.class_stats_partial(logits, labels, kind="logits"),
                "new": lambda: new.class_stats_partial(logits, labels, kind="logits", **extra),
            }
            reports = {name: call().finalize() for name, call in calls.items()}  # warm-up: compile, page faults
            times = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            t_base, t_new = times["base"], times["new"]
            ratios = [b / a for a, b in zip(t_base, t_new)]
            diff = max(max_rel_diff(x, y) for x, y in zip(report_columns(reports["base"]), report_columns(reports["new"])))
            per_logit = 1e9 / logits.size
            print(
                f"{n_classes:>5}  {statistics.median(t_base) * per_logit:>13.3f}  {statistics.median(t_new) * per_logit:>12.3f}  "
                f"{statistics.median(t_new) / statistics.median(t_base):>8.3f}  {min(ratios):>7.3f}-{max(ratios):<7.3f}  {diff:>13.1e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
