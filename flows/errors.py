"""Errors that end a run, each with the exit code the CLI returns for it."""

from __future__ import annotations


class XentError(Exception):
    """Base class: a message for the user and an exit code."""

    exit_code = 1


class UsageError(XentError):
    """Bad command line or configuration: nothing was read."""

    exit_code = 2


class DataError(XentError):
    """The input data is not what the configuration says it is."""

    exit_code = 1


class DriftBreach(XentError):
    """A drift metric exceeded its threshold (the report was still written)."""

    exit_code = 3
