"""``python -m flows.cli``: the xent command."""

from .commands import entry_point

entry_point()
