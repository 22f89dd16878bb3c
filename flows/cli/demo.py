"""``xent generate`` (a synthetic dump) and ``xent demo`` (two days of one, through the
nightly flow)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..errors import UsageError, XentError
from .running import pipelines, run_flow


# The options that only one family of dumps takes, by argparse dest.
_CLASSIFIER_OPTIONS = {"rows": "--rows", "classes": "--classes", "dtype": "--dtype", "hive": "--hive",
                       "weights": "--weights", "drift": "--drift", "bad": "--bad"}
_TOKEN_OPTIONS = {"tokens": "--tokens", "vocab": "--vocab", "topk": "--topk", "shift": "--shift",
                 "shift_head": "--shift-head"}
_TOKEN_LAYOUTS = ("token_rows", "documents")


def cmd_generate(args: argparse.Namespace) -> int:
    tokens = args.kind == "tokens"
    foreign = _CLASSIFIER_OPTIONS if tokens else _TOKEN_OPTIONS
    given = [flag for dest, flag in foreign.items() if getattr(args, dest) not in (None, False)]
    if given:
        family, other = ("token dumps (--kind tokens)", "classifier dumps") if tokens else \
            (f"classifier dumps (--kind {args.kind})", "token dumps (--kind tokens)")
        raise UsageError(f"{', '.join(given)}: only for {other}, not {family}; drop {'it' if len(given) == 1 else 'them'}")
    if args.layout is not None and (args.layout in _TOKEN_LAYOUTS) != tokens:
        wanted = "token_rows or documents" if tokens else "fixed_size_list, list, wide or binary"
        raise UsageError(f"--layout {args.layout} does not go with --kind {args.kind}; use {wanted}")

    def name_values(items: list[str]) -> dict[str, list[str]]:
        pairs = [item.partition("=") for item in items]
        return {name: values.split(",") for name, _, values in pairs}

    # Only what was given: the generators' own defaults fill in the rest.
    options = {name: value for name, value in (
        ("layout", args.layout), ("shards", args.shards), ("seed", args.seed), ("shuffle", args.shuffle),
        ("overwrite", args.overwrite), ("slices", name_values(args.slice) if args.slice else None),
    ) if value is not None}
    if tokens:
        from ..generate.tokens import generate_token_dump

        options.update({name: value for name, value in (
            ("tokens", args.tokens), ("vocab_size", args.vocab), ("topk", args.topk), ("shift", args.shift),
            ("shift_head", args.shift_head),
        ) if value is not None})
        token_dump = generate_token_dump(args.out, **options)
        print(f"wrote {token_dump.tokens:,} tokens of {token_dump.documents:,} documents in {len(token_dump.files)} "
              f"files under {token_dump.root}")
        return 0

    from ..generate.dump import generate_dump
    from ..generate.tokens import generate_token_dump

    options.update({name: value for name, value in (
        ("rows", args.rows), ("classes", args.classes), ("dtype", args.dtype), ("drift", args.drift),
        ("hive", name_values(args.hive) if args.hive else None),
        ("bad_shards", {k: int(v) for k, v in (item.split("=") for item in args.bad)} if args.bad else None),
    ) if value is not None})
    dump = generate_dump(args.out, kind=args.kind, weights=args.weights, **options)
    print(f"wrote {dump.rows:,} rows in {len(dump.files)} files under {dump.root}")
    return 0


DEMO_DATES = ("2026-11-22", "2026-11-23")


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from ..config import NightlyConfig, build_config
    from ..generate.dump import generate_dump
    from ..generate.tokens import generate_token_dump
    from ..report.page import HTML_FILE
    from ..runs.nightly import run_folder
    from .show import print_drift, print_report

    nightly_flow = pipelines().nightly_flow

    out = Path(args.out).absolute() if args.out else Path(tempfile.mkdtemp(prefix="xent-demo-"))
    print(f"demo folder: {out}")
    started = time.perf_counter()
    baseline, today = DEMO_DATES
    # Yesterday's dump is the baseline; today's holds the same ids, reshuffled into
    # other shards, from a model that has drifted.
    common = dict(rows=200_000, classes=10, slices={"model": ["a", "b"]}, seed=1, overwrite=True)
    generate_dump(out / "dumps" / f"date={baseline}", shards=8, **common)
    generate_dump(out / "dumps" / f"date={today}", shards=6, drift=0.5, shuffle=True, **common)
    # A language model's token log-probs too: the same documents on both days, scored
    # by a model that got worse (shift) today.
    for date, shift in ((baseline, 0.0), (today, 0.3)):
        generate_token_dump(out / "lm" / f"date={date}", tokens=200_000, topk=20, shards=4, shift=shift,
                            slices={"domain": ["web", "code"]}, seed=1, overwrite=True)
    lm_source = {"name": "lm", "paths": [str(out / "lm" / "date={date}")], "gate": [],
                 "reference": [str(out / "lm" / f"date={baseline}")], "settings": {"kind": "tokens", "slice_by": ["domain"]}}
    config = {
        "report_root": str(out / "reports"),
        "sources": [{"name": "demo", "paths": [str(out / "dumps" / "date={date}")], "reference": [str(out / "dumps" / f"date={baseline}")]},
                    lm_source],
        "defaults": {"slice_by": ["model"], "units": "nats"},
        # each source is checked against the thresholds of its kind: classifier predictions, token dumps
        "drift": {"thresholds": {"kl_per_sample": 0.05, "marginal_js": 0.005, "confidence_psi": 0.1,
                                 "ce_shift": 0.1, "kl_lower_bound_per_token": 0.05}},
        # Each run against the previous one: a breach where accuracy surely fell by more than 0.1.
        "gate": [{"metric": "accuracy", "max_decrease": 0.1}],
        "baseline": "previous",
    }
    config_path = out / "nightly.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"nightly evaluation of {baseline} and {today} with drift monitoring and gates against the previous run "
          f"(config: {config_path})")
    try:
        outcomes = run_flow(nightly_flow, str(config_path), baseline, today)
    except XentError as error:
        if error.exit_code != 3:
            raise
        outcomes = error.outcomes
    tables = Path(run_folder(build_config(NightlyConfig, config_path).tables_base, today, "demo"))
    print_report({"per_class": str(tables / "per_class.parquet"), "summary": str(tables / "summary.parquet")})
    print_drift(str(tables / "drift.parquet"))
    lm = Path(run_folder(build_config(NightlyConfig, config_path).tables_base, today, "lm"))
    print_report({name: str(lm / f"{name}.parquet") for name in ("token_summary", "token_positions", "token_frequency")})
    print_drift(str(lm / "drift.parquet"))
    for outcome in outcomes:  # the drift breaches are listed above; the gates' here
        print(outcome.line())
        for breach in outcome.gate_breaches:
            print(f"GATE BREACH against {outcome.gate.baseline}: {breach}")
    print(f"history: {out / 'reports'} (one read of reports/**/*.parquet gives every metric of every run)")
    breached = [o for o in outcomes if o.breach_lines()]
    verdict = f"{sum(len(o.breach_lines()) for o in breached)} breach(es), as planted" if breached else "no breach"
    print(f"demo finished in {time.perf_counter() - started:.1f} s; {verdict}")
    print(f"page: {tables / HTML_FILE}")
    return 0
