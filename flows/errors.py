"""Errors that end a run, each with the exit code the CLI returns for it.

0 success · 1 data · 2 usage or config · 3 threshold breached · 4 infrastructure
(cluster, storage, network, disk) · 5 internal error (a bug in xent).
"""

from __future__ import annotations

import errno
import re

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_BREACH, EXIT_INFRASTRUCTURE, EXIT_INTERNAL = 0, 1, 2, 3, 4, 5
EXIT_CODES_HELP = (
    "exit codes: 0 success, 1 data error (file, column and row named), 2 usage or config error, "
    "3 threshold breached (the report is written), 4 infrastructure (cluster, storage, network, disk), "
    "5 internal error (a bug: rerun with --verbose and report it)"
)


# The user:password@ of a URL (http://alice:secret@host/...).
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")


def without_credentials(text: str) -> str:
    """`text` with the user:password@ of every URL in it removed: what is shown, logged
    or stored wherever a source is named (the credentials stay in the URL that is read)."""
    return _URL_CREDENTIALS.sub(r"\1", text)


class XentError(Exception):
    """Base class: a message for the user (URL credentials removed) and an exit code."""

    exit_code = EXIT_DATA

    def __init__(self, message: str = "", *args):
        super().__init__(without_credentials(str(message)), *args)


class UsageError(XentError, ValueError):
    """Bad command line or configuration: nothing was read. A ValueError too, so
    ``except ValueError`` around :func:`flows.evaluate` catches a bad option."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration with one or more problems: `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class DataError(XentError, ValueError):
    """The input data is not what the configuration says it is (a ValueError too)."""

    exit_code = EXIT_DATA


class DriftBreach(XentError):
    """A threshold or gate was breached (the report was still written)."""

    exit_code = EXIT_BREACH


class GateBreach(XentError):
    """A compare gate was breached: the candidate is worse than allowed (the report was still written)."""

    exit_code = EXIT_BREACH


class InfrastructureError(XentError):
    """The cluster, storage, network or disk failed; the data may be fine.

    `transient` causes (a network hiccup, an endpoint briefly down) are worth a retry;
    a full disk or a read-only path is not.
    """

    exit_code = EXIT_INFRASTRUCTURE

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


# errno values that mean the machine or the network failed, not the data.
_DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system", errno.EDQUOT: "disk quota exceeded",
                errno.EIO: "I/O error", errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH,
                   errno.ECONNABORTED, errno.EPIPE, errno.ENETDOWN, errno.EHOSTDOWN}
# Exception class names from libraries we do not import here (botocore, aiohttp, distributed, tornado).
_NETWORK_CLASSES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
                    "CommClosedError", "StreamClosedError"}


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def infrastructure_cause(error: BaseException) -> tuple[str, bool] | None:
    """(short cause, transient) when `error` (or what caused it) is a failure of the
    machine, the disk or the network rather than of the data; else None."""
    for link in _chain(error):
        name = type(link).__name__
        if isinstance(link, InfrastructureError):
            return str(link), link.transient
        if name == "KilledWorker":
            return ("a Dask worker died while running a task, on every try (often out of memory: raise the "
                    "workers' memory limit or lower batch_logits)"), False
        if name in ("FutureCancelledError", "CancelledError"):
            return "the Dask scheduler cancelled the work (the scheduler was lost or restarted)", True
        if isinstance(link, OSError) and link.errno in _DISK_ERRNOS:
            return _DISK_ERRNOS[link.errno], False
        if isinstance(link, (ConnectionError, TimeoutError)) or name in _NETWORK_CLASSES or (
            isinstance(link, OSError) and link.errno in _NETWORK_ERRNOS
        ):
            return f"network: {link}" if str(link) else f"network: {name}", True
    return None


def as_infrastructure_error(error: BaseException, resource: str, action: str = "cannot use") -> InfrastructureError | None:
    """An InfrastructureError naming `resource` when `error` is one, else None:
    ``cannot write /reports/x: disk full``."""
    found = infrastructure_cause(error)
    if found is None:
        return None
    cause, transient = found
    if isinstance(error, InfrastructureError):
        return error
    return InfrastructureError(f"{action} {resource}: {cause}", transient=transient)
