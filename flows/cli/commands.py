"""The ``xent`` command line: parse, run the command, turn every failure into one line
and an exit code.

Exit codes: 0 success, 1 data error, 2 usage or config error, 3 threshold breached,
4 infrastructure (cluster, storage, network, disk), 5 internal error.

One module per command family (``evaluate``, ``drift``, ``compare``, ``nightly``,
``demo``), what they share in ``running``, the parser in ``parser``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Sequence

from ..errors import EXIT_INFRASTRUCTURE, EXIT_INTERNAL, XentError, infrastructure_cause, without_credentials
from .parser import build_parser
from .running import run_flow

__all__ = ["build_parser", "entry_point", "main", "run_flow"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _WithoutCredentials) for f in handler.filters):
            handler.addFilter(_WithoutCredentials())
    # Prefect's per-run INFO lines would bury the report; -v brings them back.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if args.verbose else "WARNING")
    from ..report.writing import committed

    committed.clear()  # what this command writes, not an earlier call in the same process
    try:
        return args.handler(args)
    except XentError as error:
        _print_error(str(error), args.verbose, getattr(error, "problems", None))
        return error.exit_code
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        if args.command in ("eval", "drift", "compare") and out in committed:
            print(f"xent: interrupted, but the report was written in full: {out}", file=sys.stderr)
            return 0
        written = f" (written in full before it: {', '.join(committed)})" if committed else ""
        print(f"xent: interrupted{written}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure ends in one line and an exit code
        cause = infrastructure_cause(error)  # not named where it happened: the cause alone
        if cause is not None:
            _print_error(cause[0], args.verbose)
            return EXIT_INFRASTRUCTURE
        _print_error(f"internal error: {type(error).__name__}: {error} (a bug in xent; rerun with --verbose for the traceback)",
                     args.verbose)
        return EXIT_INTERNAL


class _WithoutCredentials(logging.Filter):
    """Log lines name sources without the user:password@ of their URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = without_credentials(message), ()
        return True


def _print_error(message: str, verbose: bool, problems: list[str] | None = None) -> None:
    """One line on stderr (one per problem of a config); the traceback too with --verbose."""
    if verbose:
        import traceback

        from ..runtime import cluster_log_path

        traceback.print_exc()
        if cluster_log_path().exists():
            print(f"cluster log: {cluster_log_path()}", file=sys.stderr)
    for line in problems or [message]:
        one_line = without_credentials(" ".join(part.strip() for part in line.splitlines() if part.strip()))
        print(f"xent: error: {one_line}", file=sys.stderr)


def entry_point() -> None:
    """The `xent` command: `main`, then a process exit that skips native teardown.

    pyarrow can abort the process after all work is done, while its thread pools are
    torn down at exit ("terminate called without an active exception", SIGABRT;
    apache/arrow#34314; seen twice in this project's test runs). The report is
    already written by then, but the exit code would say otherwise. So atexit handlers
    (Prefect's temporary server, logging) run here, and the process ends with os._exit.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
