"""``xent drift``: a current dump against a reference."""

from __future__ import annotations

import argparse

from .two_sided import run_two_sided, set_option


def cmd_drift(args: argparse.Namespace) -> int:
    from ..api import DRIFT
    from .show import print_drift

    def set_options(config) -> None:
        set_option(config.drift, "id_col", args.id_col, "--id-col")
        set_option(config.drift, "id_cols", args.id_cols, "--id-cols")
        set_option(config.drift, "per_sample_smoothing", args.per_sample_smoothing, "--per-sample-smoothing")

    return run_two_sided(args, DRIFT, set_options, print_drift)
