"""The ``xent`` command (``commands``; its parser in ``parser``, one module per command
family) and its terminal output (``show``)."""

from .commands import build_parser, entry_point, main

__all__ = ["build_parser", "entry_point", "main"]
