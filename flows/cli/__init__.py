"""The ``xent`` command (``commands``) and its terminal output (``show``)."""

from .commands import entry_point, main

__all__ = ["entry_point", "main"]
