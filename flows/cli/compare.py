"""``xent compare``: a candidate model against a baseline on the same rows."""

from __future__ import annotations

import argparse

from .two_sided import run_two_sided, set_option


def cmd_compare(args: argparse.Namespace) -> int:
    from ..api import COMPARE
    from .show import print_compare

    def set_options(config) -> None:
        set_option(config.compare, "id_cols", args.id_cols, "--id-cols")

    return run_two_sided(args, COMPARE, set_options, print_compare)
