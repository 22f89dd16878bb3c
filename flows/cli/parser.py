"""The ``xent`` argument parser: every command, its options, and the exit codes."""

from __future__ import annotations

import argparse

from ..errors import EXIT_CODES_HELP
from ..kinds import KINDS, TOKENS
from ..metadata import VERSION
from .compare import cmd_compare
from .convert import cmd_convert
from .demo import cmd_demo, cmd_generate
from .drift import cmd_drift
from .evaluate import cmd_eval, cmd_report
from .nightly import cmd_nightly, cmd_serve
from .warmup import cmd_warmup


def add_eval_arguments(parser: argparse.ArgumentParser, sources: bool = True) -> None:
    if sources:
        parser.add_argument("sources", nargs="*", help="Parquet files, folders, globs or fsspec URLs (or 'sources' in --config)")
    parser.add_argument("--out", required=True, help="report folder (written atomically)")
    parser.add_argument("--config", help="YAML file with evaluation settings; flags override it")
    parser.add_argument("--kind", choices=[*KINDS, TOKENS],
                        help="what the prediction numbers are; tokens: a language model's token log-probs (a row per "
                        "token or per document; columns under tokens: in a config)")
    parser.add_argument("--pred-col", help="prediction column, or wide-column prefix such as logit_")
    parser.add_argument("--label-col", help="true-class column (default: label)")
    parser.add_argument("--weight-col", help="optional row-weight column")
    parser.add_argument("--slice-by", help="comma-separated slice columns or hive keys")
    parser.add_argument("--classes", help="class names: comma list, or a file (one per line or a JSON list)")
    parser.add_argument("--units", choices=["nats", "bits"])
    parser.add_argument("--eps", type=float, help="clip the true class's probability to at least EPS (default: exact)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (or $DASK_SCHEDULER_ADDRESS)")
    parser.add_argument("--on-bad-shard", choices=["error", "skip"])
    parser.add_argument("--on-nonfinite", choices=["error", "count"])
    parser.add_argument("--prob-tolerance", type=float, metavar="TOL",
                        help="probs: how far a row's sum may be from 1 (default 1e-4)")
    parser.add_argument("--renormalize", action="store_true", default=None,
                        help="probs: divide each row by its sum (log_probs: subtract its logsumexp)")
    parser.add_argument("--buckets", type=int, metavar="K", help="jackknife buckets for the intervals (default 20; 1: none)")
    parser.add_argument("--level", type=float, help="two-sided confidence level of the intervals (default 0.95)")
    parser.add_argument("--min-slice-size", type=int, metavar="N", help="flag slices of fewer rows small_slice (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xent", description="Exact cross-entropy reports for classifier predictions.", epilog=EXIT_CODES_HELP
    )
    parser.add_argument("--version", action="version", version=f"xent {VERSION}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details and show tracebacks")
    # also after the command (xent eval ... --verbose), where an error line tells users to add it
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress details and show tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **options) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[verbose], **options)

    p = command("eval", help="evaluate a prediction dump into per-class and per-slice reports")
    add_eval_arguments(p)
    p.add_argument("--no-prefect", action="store_true",
                   help="run the same steps without Prefect (no temporary server: fastest for small ad-hoc dumps)")
    p.set_defaults(handler=cmd_eval)

    p = command("report", help="render a report folder as one self-contained HTML page")
    p.add_argument("path", help="a report folder (the --out of xent eval), or a nightly REPORT_ROOT (its history page)")
    p.add_argument("--html", metavar="FILE", help="where to write the page (default: PATH/report.html, listed in its "
                   "manifest; for a REPORT_ROOT, TABLES_ROOT/history.html)")
    p.set_defaults(handler=cmd_report)

    p = command("drift", help="compare a current dump with a reference: per-sample KL, marginal and confidence drift")
    p.add_argument("--reference", nargs="+", required=True, help="the reference dump")
    p.add_argument("--current", nargs="+", required=True, help="the current dump")
    p.add_argument("--id-col", help="row id column; the per-sample join key is it plus the slice columns (default: id)")
    p.add_argument("--id-cols", metavar="COL[,COL...]",
                   help="the whole per-sample join key, e.g. model,id (columns or hive folder keys)")
    p.add_argument("--per-sample-smoothing", type=float, metavar="EPS",
                   help="smooth both sides' probabilities, (q + EPS) / (1 + C·EPS), before per-sample KL "
                   "(default: exact; a probability of 0 makes a row's KL infinite)")
    add_eval_arguments(p, sources=False)
    p.add_argument("--no-prefect", action="store_true", help="run the same steps without Prefect (no run history, no artifact)")
    p.set_defaults(handler=cmd_drift)

    p = command("compare", help="compare a candidate model with a baseline on the same rows: paired "
                       "differences with intervals, wins/ties/losses, verdicts and gates (exit 3 on a breach)")
    p.add_argument("--baseline", nargs="+", required=True, help="the baseline dump")
    p.add_argument("--candidate", nargs="+", required=True, help="the candidate dump (the same rows, by key)")
    p.add_argument("--id-cols", metavar="COL[,COL...]",
                   help="the join key, e.g. model,id (default: id plus the slice columns)")
    add_eval_arguments(p, sources=False)
    p.add_argument("--no-prefect", action="store_true", help="run the same steps without Prefect (no run history, no artifact)")
    p.set_defaults(handler=cmd_compare)

    p = command("nightly", help="evaluate each configured source for a date (or a range) into the report history")
    p.add_argument("--config", required=True, help="nightly YAML config (see configs/nightly.yaml)")
    p.add_argument("--date", help="YYYY-MM-DD (default: today in the schedule's timezone)")
    p.add_argument("--from", dest="start", help="backfill from this date (YYYY-MM-DD)")
    p.add_argument("--to", dest="end", help="backfill to this date, inclusive")
    p.add_argument("--no-prefect", action="store_true",
                   help="run the same steps without Prefect (no run history, no artifacts, no temporary server)")
    p.set_defaults(handler=cmd_nightly)

    p = command("serve", help="serve the nightly flow on its cron schedule (needs PREFECT_API_URL)")
    p.add_argument("--config", required=True, help="nightly YAML config")
    p.set_defaults(handler=cmd_serve)

    p = command("generate", help="write a synthetic sharded dump: classifier predictions, or language-model "
                       "tokens with --kind tokens")
    p.add_argument("out", help="folder to write")
    p.add_argument("--kind", choices=[*KINDS, "tokens"], default="logits",
                   help="classifier predictions of this kind, or language-model token log-probabilities (tokens)")
    p.add_argument("--layout", choices=["fixed_size_list", "list", "wide", "binary", "token_rows", "documents"],
                   help="default: fixed_size_list; token_rows for --kind tokens (documents: one row per document)")
    p.add_argument("--shards", type=int, help="number of files (default: 8; 4 for --kind tokens)")
    p.add_argument("--slice", action="append", metavar="NAME=V1,V2",
                   help="a slice column and its values (--kind tokens: one value per document; default source=web,code,books)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", action="store_true", help="permute rows across shards (--kind tokens: tokens, or documents)")
    p.add_argument("--overwrite", action="store_true", help="replace Parquet files already in the folder")
    classifier = p.add_argument_group("classifier dumps")
    classifier.add_argument("--rows", type=int, help="rows (default: 100000)")
    classifier.add_argument("--classes", type=int, help="classes (default: 10)")
    classifier.add_argument("--dtype", choices=["float32", "float64"], help="prediction float type (default: float32)")
    classifier.add_argument("--hive", action="append", metavar="NAME=V1,V2", help="hive folder key and its values")
    classifier.add_argument("--weights", action="store_true", help="add a weight column")
    classifier.add_argument("--drift", type=float, help="how far predictions move from the seed's baseline (default: 0)")
    classifier.add_argument("--bad", action="append", metavar="KIND=COUNT", help="make COUNT shards bad: truncated, nan, ...")
    tokens = p.add_argument_group("token dumps (--kind tokens)")
    tokens.add_argument("--tokens", type=int, help="scored tokens (default: 100000)")
    tokens.add_argument("--vocab", type=int, metavar="V", help="vocabulary size (default: 32000)")
    tokens.add_argument("--topk", type=int, metavar="K", help="add top-K lists of ids and log-probabilities (default: 0, none)")
    tokens.add_argument("--shift", type=float, metavar="S", help="a second model of the same tokens whose target "
                        "log-probabilities are S nats lower on average, with a float64 column true_kl: each token's "
                        "exact KL(first model ‖ this one) in nats, which xent compare --kind tokens bounds from the "
                        "top-k lists (default: 0, the first model)")
    tokens.add_argument("--shift-head", type=int, metavar="M", help="with --shift: the target's freed probability "
                        "goes only to the first model's M best tokens (the target excepted), in proportion, and the "
                        "others keep theirs, so the top-k KL lower bound falls below true_kl on average when K < M (default: "
                        "every token but the target, where the bound meets it at any K)")
    p.set_defaults(handler=cmd_generate)

    p = command("convert", help="write vLLM prompt log-probs or OpenAI chat-completion log-probs as a token dump")
    p.add_argument("format", choices=["vllm", "openai"],
                   help="vllm: JSONL of outputs with prompt_token_ids and prompt_logprobs (doc_id: request_id, else "
                   "the record's 0-based index; position 0 is not scored); openai: JSONL of chat-completion responses "
                   "or Batch API output (doc_id: 'ID:CHOICE'; OpenAI gives no token ids, so tokens are numbered by "
                   "their bytes as first met and the numbering is written to _vocab.parquet in --out; top_logprobs "
                   "entries of -9999.0 mean absent and are dropped, a target of -9999.0 is an error)")
    p.add_argument("input", help="the JSONL file (.gz and other compressions by their suffix)")
    p.add_argument("--out", required=True, help="dump folder: part-NNNNN.parquet shards, each staged as it fills, the folder "
                   "published all-or-nothing at the end")
    p.add_argument("--rows-per-shard", type=int, metavar="N", help="at most N tokens per shard (default 1,000,000)")
    p.add_argument("--vocab", metavar="FILE", help="openai: the _vocab.parquet of an earlier conversion, so its "
                   "tokens keep their ids (compare two models or two days by token id)")
    p.set_defaults(handler=cmd_convert)

    p = command("demo", help="generate a dump, evaluate it on a local cluster, print the report")
    p.add_argument("--out", help="folder for dumps and reports (default: a new temporary folder)")
    p.set_defaults(handler=cmd_demo)

    p = command("warmup", help="compile every kernel into Numba's cache and build the page bundle "
                       "(for image builds and CI: the first run then compiles nothing)")
    p.set_defaults(handler=cmd_warmup)
    return parser
