"""A new user's first day at the command line: config typos are one line per problem
with a "did you mean"; a missing source fails before Prefect starts; the cluster's own
logs go to a log file, not the terminal; a failing nightly ends with one short line.
Each runs the real `xent` command on real files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from support import cli_env, moto_server, run_cli, run_without_prefect, start_process, wait_until, xent_command
from flows.drift_statistics import drift_metrics
from flows.generate import generate_dump


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")


def error_lines(result) -> list[str]:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("xent: error: ") for line in lines), result.stderr
    return [line.removeprefix("xent: error: ") for line in lines]


# --------------------------------------------------------------------------- config typos

NIGHTLY_TYPO = """\
report_root: reports
sorces:
  - name: prod
    paths: [dump]
"""

NIGHTLY_NESTED = """\
report_root: reports
sources:
  - name: prod
    paths: [dump]
    refrence: previous
drift:
  confidence_bin: 5
  thresholds: {marginal_jss: 0.1}
gate: {metric: ce_mean, max_increse: 0.01}
"""

NIGHTLY_SETTINGS = """\
report_root: reports
defaults: {kidn: probs}
sources:
  - name: prod
    paths: [dump]
    settings: {slice_bye: [model]}
"""

CASES = {
    "nightly sources": (["nightly"], NIGHTLY_TYPO, [
        "key 'sources': missing: this key is required",
        "key 'sorces': unknown key; did you mean 'sources'?",
    ]),
    "nightly nested": (["nightly"], NIGHTLY_NESTED, [
        "key 'sources.0.refrence': unknown key; did you mean 'reference'?",
        "key 'drift.thresholds': unknown drift metric(s) ['marginal_jss']; known: ['kl_per_sample', 'marginal_kl', "
        "'marginal_js', 'marginal_psi', 'confidence_kl', 'confidence_js', 'confidence_psi'], and for token dumps "
        "['kl_lower_bound_per_token', 'top1_marginal_kl', 'top1_marginal_js', 'top1_marginal_psi', 'ce_shift', "
        "'position_ce_shift_max', 'frequency_ce_shift_max']; did you mean 'marginal_js'?",
        "key 'drift.confidence_bin': unknown key; did you mean 'confidence_bins'?",
        "key 'gate.0.max_increse': unknown key; did you mean 'max_increase'?",
    ]),
    "nightly settings": (["nightly"], NIGHTLY_SETTINGS, [
        "key 'defaults.kidn': unknown key; did you mean 'kind'?",
        "key 'sources.0.settings.slice_bye' (prod): unknown key; did you mean 'slice_by'?",
    ]),
    "eval": (["eval", "dump", "--out", "out"], "kidn: probs\nn_bucket: 4\n", [
        "key 'kidn': unknown key; did you mean 'kind'?",
        "key 'n_bucket': unknown key; did you mean 'n_buckets'?",
    ]),
    "drift": (["drift", "--reference", "a", "--current", "b", "--out", "out"], "drift: {smothing: 0.01}\n", [
        "key 'drift.smothing': unknown key; did you mean 'smoothing'?",
    ]),
    "compare": (["compare", "--baseline", "a", "--candidate", "b", "--out", "out"],
                "compare: {tie_tolerence: 0.1}\ngate: [{metric: ce_mean, max_decrese: 0.1}]\n", [
        "key 'compare.tie_tolerence': unknown key; did you mean 'tie_tolerance'?",
        "key 'gate.0.max_decrese': unknown key; did you mean 'max_decrease'?",
    ]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_config_typos_are_one_line_each_with_did_you_mean(tmp_path, prefect_home, case):
    command, text, expected = CASES[case]
    config = tmp_path / "typo.yaml"
    config.write_text(text)
    result = run_cli([*command, "--config", str(config)], cli_env(prefect_home), cwd=tmp_path)
    assert error_lines(result) == [f"{config}: {line}" for line in expected]


def test_an_unknown_key_far_from_any_lists_the_keys_at_its_level(tmp_path, prefect_home):
    config = tmp_path / "far.yaml"
    config.write_text("drift: {zzzz: 1}\n")
    result = run_cli(["drift", "--reference", "a", "--current", "b", "--out", "out", "--config", str(config)],
                     cli_env(prefect_home), cwd=tmp_path)
    [line] = error_lines(result)
    assert line.startswith(f"{config}: key 'drift.zzzz': unknown key; known keys here: bucket_rows, confidence_bins, ")
    assert "did you mean" not in line


# --------------------------------------------------------------------------- a failing nightly's last line


@pytest.mark.slow
def test_a_failing_nightly_ends_with_one_short_line_naming_the_count_and_the_page(tmp_path, prefect_home):
    days = ("2026-11-22", "2026-11-23")
    for seed, (day, drift) in enumerate(zip(days, (0.0, 1.5))):
        generate_dump(tmp_path / "dumps" / f"date={day}", rows=2000, classes=4, shards=2,
                      slices={"model": ["a", "b", "c"]}, seed=seed, drift=drift)
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({
        "report_root": str(tmp_path / "reports"),
        "sources": [{"name": "prod", "paths": [str(tmp_path / "dumps" / "date={date}")], "reference": "previous"}],
        "defaults": {"slice_by": ["model"]},
        "drift": {"thresholds": {metric: 1e-9 for metric in drift_metrics(tokens=False)}},
        "gate": [{"metric": metric, "max_increase": 0.0, "mode": "point"} for metric in ("ce_mean", "ece", "brier")],
    }))
    result = run_cli(["nightly", "--config", str(config), "--from", days[0], "--to", days[1], "--no-prefect"],
                     cli_env(prefect_home), timeout=300)
    assert result.returncode == 3, result.stderr
    breaches = [line for line in result.stdout.splitlines() if line.startswith("BREACH ")]
    assert len(breaches) >= 25
    page = tmp_path / "reports-tables" / "history.html"
    assert result.stdout.strip().splitlines()[-1] == f"page: {page}"
    [last] = result.stderr.strip().splitlines()
    assert last == f"xent: error: {len(breaches)} breach(es) in 2 source-date run(s), listed above; page: {page}"
    assert len(last) - len(str(page)) < 200


# --------------------------------------------------------------------------- fail before Prefect


@pytest.mark.slow
def test_bad_sources_and_outputs_fail_before_prefect_is_imported(tmp_path):
    """Without --no-prefect: a missing folder, an unknown URL scheme, an output folder
    that cannot be created fail with their exit code and one line, Prefect never imported."""
    dump = generate_dump(tmp_path / "dump", rows=500, classes=3, shards=1, seed=0).root
    (tmp_path / "a-file").write_text("not a folder")
    nightly = tmp_path / "nightly.yaml"
    nightly.write_text(yaml.safe_dump({"report_root": str(tmp_path / "a-file" / "reports"),
                                       "sources": [{"name": "prod", "paths": [str(dump)]}]}))
    runs = {
        "eval missing": (["eval", "missing", "--out", "out"], 1, "xent: error: missing: no such file or folder"),
        "drift missing": (["drift", "--reference", "gone", "--current", str(dump), "--out", "out"], 1,
                          "xent: error: gone: no such file or folder"),
        "compare missing": (["compare", "--baseline", str(dump), "--candidate", "gone", "--out", "out"], 1,
                            "xent: error: gone: no such file or folder"),
        "scheme": (["eval", "s3x://bucket/dump/", "--out", "out"], 2,
                   "xent: error: s3x://bucket/dump/: unknown URL scheme 's3x://'; did you mean 's3'?"),
        "out under a file": (["eval", str(dump), "--out", "a-file/report"], 2,
                             f"xent: error: --out a-file/report: cannot create it, {tmp_path / 'a-file'} is a file; "
                             "give a folder path"),
        "nightly root": (["nightly", "--config", str(nightly), "--date", "2026-11-23"], 2,
                         f"xent: error: report_root {tmp_path / 'a-file' / 'reports'}: cannot create it, "
                         f"{tmp_path / 'a-file'} is a file; give a folder path"),
    }
    codes, prefect_modules, result = run_without_prefect([args for args, _, _ in runs.values()], tmp_path)
    assert prefect_modules == [], prefect_modules
    assert codes == [code for _, code, _ in runs.values()], result.stderr
    assert result.stderr.strip().splitlines() == [line for _, _, line in runs.values()]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the cluster's logs


@pytest.mark.slow
def test_an_object_store_outage_mid_run_is_one_line_and_the_cluster_log_holds_the_rest(tmp_path, prefect_home):
    """moto's S3 server stops while an eval on a LocalCluster reads from it: exit 4 and
    exactly one stderr line, nothing from distributed, tornado or asyncio on the terminal;
    with --verbose the cluster log is named and holds distributed's messages."""
    boto3 = pytest.importorskip("boto3")
    storage = {"key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}, "config_kwargs": {"retries": {"max_attempts": 1}}}
    config = tmp_path / "s3.yaml"
    env = cli_env(prefect_home, AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", TMPDIR=str(tmp_path))
    results = []
    for verbose in ([], ["--verbose"]):
        with moto_server(tmp_path) as moto:
            storage["client_kwargs"]["endpoint_url"] = moto.url
            config.write_text(yaml.safe_dump({"storage_options": storage, "batch_logits": 2000, "task_rows": 500}))
            boto3.client("s3", endpoint_url=moto.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name="us-east-1").create_bucket(Bucket="dumps")
            generate_dump("s3://dumps/dump/", rows=60_000, classes=10, shards=8, seed=3,
                          storage_options={k: v for k, v in storage.items() if k != "config_kwargs"})
            run = start_process("xent", [*xent_command(), *verbose, "eval", "s3://dumps/dump/", "--out",
                                         str(tmp_path / "out"), "--config", str(config), "--no-prefect"],
                                tmp_path / "xent.log", env, cwd=tmp_path)
            reads = lambda: moto.server.log_tail(200_000).count("part-")  # noqa: E731
            start = reads()
            wait_until(lambda: run.check_alive() or reads() > start + 20, 120, "the eval's first reads")
        run.process.wait(180)  # the moto server is stopped
        results.append((run.process.returncode, (tmp_path / "xent.log").read_text()))
    (code, quiet), (verbose_code, loud) = results
    assert code == 4, quiet
    [line] = quiet.strip().splitlines()
    assert line.startswith("xent: error: ") and "network" in line, quiet
    assert verbose_code == 4 and "Traceback" in loud, loud
    named = [line.removeprefix("cluster log: ") for line in loud.splitlines() if line.startswith("cluster log: ")]
    assert len(named) == 2 and named[0] == named[1] and Path(named[0]).parent == tmp_path / "xent-logs", loud
    assert "distributed." in Path(named[0]).read_text()
    # The traceback aside, no record of distributed's, tornado's or asyncio's loggers
    # (in distributed's format or the root logger's).
    records = re.compile(r"(distributed|tornado|asyncio)[.\w]* - (DEBUG|INFO|WARNING|ERROR|CRITICAL)|"
                         r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) (distributed|tornado|asyncio)|Task was destroyed")
    assert not [line for line in loud.splitlines() if records.search(line)], loud


def test_verbose_is_taken_where_the_error_line_says_to_put_it():
    # An internal error says "rerun with --verbose"; a user appends it to the command they ran.
    from flows.cli.parser import build_parser

    parser = build_parser()
    after = parser.parse_args(["compare", "--baseline", "a", "--candidate", "b", "--out", "o", "--verbose"])
    before = parser.parse_args(["-v", "compare", "--baseline", "a", "--candidate", "b", "--out", "o"])
    neither = parser.parse_args(["compare", "--baseline", "a", "--candidate", "b", "--out", "o"])
    assert after.verbose and before.verbose and not neither.verbose
