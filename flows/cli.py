"""The ``xent`` command line.

Exit codes: 0 success, 1 data error, 2 usage or config error, 3 drift threshold breached.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError, XentError


def _quiet_defaults() -> None:
    # No telemetry and no server unless the user points Prefect at one.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", help="Parquet files, folders, globs or fsspec URLs (or 'sources' in --config)")
    parser.add_argument("--out", required=True, help="report folder (written atomically)")
    parser.add_argument("--config", help="YAML file with evaluation settings; flags override it")
    parser.add_argument("--kind", choices=["logits", "probs", "log_probs"], help="what the prediction numbers are")
    parser.add_argument("--pred-col", help="prediction column, or wide-column prefix such as logit_")
    parser.add_argument("--label-col", help="true-class column (default: label)")
    parser.add_argument("--weight-col", help="optional row-weight column")
    parser.add_argument("--slice-by", help="comma-separated slice columns or hive keys")
    parser.add_argument("--classes", help="class names: comma list, or a file (one per line or a JSON list)")
    parser.add_argument("--units", choices=["nats", "bits"])
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (or $DASK_SCHEDULER_ADDRESS)")
    parser.add_argument("--on-bad-shard", choices=["error", "skip"])
    parser.add_argument("--on-nonfinite", choices=["error", "count"])


def _eval_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from .config import read_class_names

    return {
        "sources": args.sources or None,
        "kind": args.kind,
        "pred_col": args.pred_col,
        "label_col": args.label_col,
        "weight_col": args.weight_col,
        "slice_by": args.slice_by,
        "classes": read_class_names(args.classes) if args.classes else None,
        "units": args.units,
        "scheduler": args.scheduler,
        "on_bad_shard": args.on_bad_shard,
        "on_nonfinite": args.on_nonfinite,
    }


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import EvalConfig, build_config
    from .engine import Progress, dask_client, evaluate
    from .report import write_report
    from .show import print_report

    config = build_config(EvalConfig, args.config, _eval_overrides(args))
    started = time.perf_counter()
    with dask_client(config.scheduler) as client:
        evaluation = evaluate(config, client, Progress.auto())
    paths = write_report(evaluation, args.out, config.storage_options)
    print_report(paths, elapsed=time.perf_counter() - started)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate_dump

    slices = {}
    for item in args.slice or []:
        name, _, values = item.partition("=")
        slices[name] = values.split(",")
    hive = {}
    for item in args.hive or []:
        name, _, values = item.partition("=")
        hive[name] = values.split(",")
    dump = generate_dump(
        args.out,
        rows=args.rows,
        classes=args.classes,
        shards=args.shards,
        layout=args.layout,
        kind=args.kind,
        dtype=args.dtype,
        slices=slices or None,
        hive=hive or None,
        weights=args.weights,
        drift=args.drift,
        seed=args.seed,
        shuffle=args.shuffle,
        bad_shards={k: int(v) for k, v in (item.split("=") for item in args.bad or [])} or None,
        overwrite=args.overwrite,
    )
    print(f"wrote {dump.rows:,} rows in {len(dump.files)} files under {dump.root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import EvalConfig
    from .engine import Progress, dask_client, evaluate
    from .generate import generate_dump
    from .report import write_report
    from .show import print_report

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="xent-demo-"))
    print(f"demo folder: {out}")
    started = time.perf_counter()
    dump = generate_dump(
        out / "dumps" / "current", rows=200_000, classes=10, shards=8, slices={"model": ["a", "b"]}, seed=1, overwrite=True
    )
    config = EvalConfig(sources=[dump.root], slice_by=["model"], units="nats")
    with dask_client(None) as client:
        evaluation = evaluate(config, client, Progress.auto())
    paths = write_report(evaluation, str(out / "reports" / "adhoc"))
    print_report(paths, elapsed=time.perf_counter() - started)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xent", description="Exact cross-entropy reports for classifier predictions.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="evaluate a prediction dump into per-class and per-slice reports")
    _add_eval_arguments(p)
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("generate", help="write a synthetic sharded prediction dump")
    p.add_argument("out", help="folder to write")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--layout", choices=["fixed_size_list", "list", "wide", "binary"], default="fixed_size_list")
    p.add_argument("--kind", choices=["logits", "probs", "log_probs"], default="logits")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--slice", action="append", metavar="NAME=V1,V2", help="a slice column and its values")
    p.add_argument("--hive", action="append", metavar="NAME=V1,V2", help="hive folder key and its values")
    p.add_argument("--weights", action="store_true", help="add a weight column")
    p.add_argument("--drift", type=float, default=0.0, help="how far predictions move from the seed's baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", action="store_true", help="permute rows across shards")
    p.add_argument("--bad", action="append", metavar="KIND=COUNT", help="make COUNT shards bad: truncated, nan, ...")
    p.add_argument("--overwrite", action="store_true", help="replace Parquet files already in the folder")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("demo", help="generate a dump, evaluate it on a local cluster, print the report")
    p.add_argument("--out", help="folder for dumps and reports (default: a new temporary folder)")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except XentError as error:
        print(f"xent: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("xent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
