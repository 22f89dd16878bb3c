"""The docs: every code block run or marked as not run, the README's uses run as a newcomer
runs them, links that lead somewhere, the example configs checked against the config
models, the reference pages generated from the code, and `mkdocs build --strict`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import BaseModel
from scipy.special import log_softmax, softmax

from doc_blocks import MARKERS, README, ROOT, doc_files, fenced_blocks, marked_blocks
from flows import config as config_module
from flows import errors
from flows.cli import main
from flows.cli.commands import build_parser
from flows.drift_statistics import DRIFT_COLUMNS, DRIFT_STATISTICS
from flows.config import CompareSettings, DriftSettings, EvalConfig, NightlyConfig, NightlySource, Schedule, build_config
from xent_kernels import STATISTICS

# docs/hooks.py, the generator of the reference pages (loaded by path: docs/ is no package).
_spec = importlib.util.spec_from_file_location("xent_docs_hooks", ROOT / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hooks)

CONFIGS = ROOT / "configs"


# --------------------------------------------------------------------------- code blocks


def test_every_code_block_is_run_or_says_why_not():
    unmarked, unknown = [], []
    for path in doc_files():
        for mark, _, _, line in fenced_blocks(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if mark is None:
                unmarked.append(where)
            elif mark.startswith("tested: ") and mark.removeprefix("tested: ") not in MARKERS:
                unknown.append(f"{where}: {mark}")
            elif not mark.startswith("tested: ") and not re.fullmatch(r"not run: \S.*", mark):
                unknown.append(f"{where}: {mark}")
    assert unmarked == [], "code blocks with neither <!-- tested: MARKER --> nor <!-- not run: reason -->"
    assert unknown == []


@pytest.mark.parametrize("marker", sorted(MARKERS))
def test_each_marker_has_blocks_and_a_test_that_runs_them(marker):
    assert marked_blocks(marker), f"no block is marked {marker}"
    assert f'marked_blocks("{marker}"' in (ROOT / MARKERS[marker]).read_text()


@pytest.mark.slow  # about 6 s warm, 2 min with a cold Numba cache
def test_the_readmes_uses_run(tmp_path, monkeypatch, capsys):
    """The README's "The uses" blocks, in order, in an empty folder: each command exits 0
    and the Python block prints the report; the numbers are NumPy's on the dump."""
    monkeypatch.chdir(tmp_path)
    blocks = marked_blocks("USES")
    assert [language for language, _ in blocks] == ["bash", "bash", "bash", "bash", "python"]
    for language, body in blocks:
        if language == "bash":
            for line in body.splitlines():
                argv = shlex.split(line)
                assert argv[0] == "xent"
                assert main(argv[1:]) == 0, line
        else:
            namespace: dict = {}
            exec(compile(body, "README.md", "exec"), namespace)
    assert "ce_mean" in capsys.readouterr().out
    for folder, table in (("report", "summary"), ("drift", "drift"), ("cmp", "compare")):
        assert (tmp_path / folder / f"{table}.parquet").is_file(), folder
        assert (tmp_path / folder / "report.html").is_file(), folder

    # Overall mean CE in bits, the obvious way from today's logits.
    dump = pq.read_table(tmp_path / "dumps" / "date=2026-11-23").to_pandas()
    logits = np.stack(dump["logits"].to_numpy()).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_q[np.arange(len(dump)), dump["label"].to_numpy()].mean() / np.log(2)
    summary = pq.read_table(tmp_path / "report" / "summary.parquet").to_pandas()
    np.testing.assert_allclose(summary[summary["overall"]]["ce_mean"].iloc[0], expected, rtol=1e-12)
    assert namespace["report"].summary["ce_mean"].tolist() == summary["ce_mean"].tolist()

    # As the README says: the same ids on both days (every row joins), and a drifted model.
    compare = pq.read_table(tmp_path / "cmp" / "compare.parquet").to_pandas()
    joined = compare[compare["overall"] & compare["class"].isna()].iloc[0]
    assert (joined["n_matched"], joined["n_only_baseline"], joined["n_only_candidate"]) == (20000, 0, 0)
    drift = pq.read_table(tmp_path / "drift" / "drift.parquet").to_pandas()
    kl = drift[drift["overall"] & (drift["metric"] == "kl_per_sample") & drift["class"].isna()]["value"]
    assert len(kl) == 1 and 0 < kl.iloc[0] < np.inf


def test_the_kernel_library_example_runs():
    """The kernel library's calls on random logits: the merged state's report is the mean
    CE of all rows, computed with SciPy."""
    ((_, body),) = marked_blocks("KERNELS")
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(300, 5)), rng.normal(size=(200, 5))
    y1, y2 = rng.integers(0, 5, 300), rng.integers(0, 5, 200)
    namespace = {"logits": z1, "labels": y1, "probs": softmax(z1, axis=1),
                 "reference_logits": z1, "model_logits": z2[:1].repeat(300, axis=0), "z1": z1, "y1": y1, "z2": z2, "y2": y2}
    exec(compile(body, "docs/guides/kernels.md", "exec"), namespace)
    z, y = np.concatenate([z1, z2]), np.concatenate([y1, y2])
    expected = -log_softmax(z, axis=1)[np.arange(len(y)), y].mean()
    np.testing.assert_allclose(namespace["report"].per_slice["ce_mean"], [expected], rtol=1e-12)


def test_the_nightly_gate_example_is_a_valid_config(tmp_path):
    ((_, body),) = marked_blocks("NIGHTLY_GATE", "yaml")
    config = {"report_root": str(tmp_path / "reports"), "sources": [{"name": "prod", "paths": ["dump/{date}"]}],
              **yaml.safe_load(body)}
    loaded = NightlyConfig.model_validate(config)
    gates, baseline = loaded.gates(loaded.sources[0])
    assert [(g.metric, g.max_increase, g.mode) for g in gates] == [("ce_mean", 0.01, "interval")]
    assert baseline == "previous"


# --------------------------------------------------------------------------- README and links


def test_readme_fits_on_a_screen():
    assert len(README.read_text().splitlines()) <= 250
    assert [p.name for p in (ROOT / "docs" / "images").iterdir() if p.stat().st_size > 200_000] == []


def test_relative_links_lead_to_files():
    missing = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert missing == []


def test_the_readme_links_every_docs_page():
    text = README.read_text()
    pages = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "docs").rglob("*.md")) if p.name != "index.md"]
    assert [page for page in pages if f"({page})" not in text] == []


# --------------------------------------------------------------------------- example configs


def _keys(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_adhoc_yaml_lists_every_key_with_its_default():
    """configs/adhoc.yaml says it lists every key: each EvalConfig key, at its default."""
    data = yaml.safe_load((CONFIGS / "adhoc.yaml").read_text())
    assert sorted(_keys(EvalConfig) - set(data)) == [], "keys missing from configs/adhoc.yaml"
    defaults = EvalConfig().model_dump()
    assert {key: value for key, value in data.items() if defaults[key] != value} == {}


@pytest.mark.parametrize("name, section, model", [
    ("drift.yaml", "drift", DriftSettings),
    ("compare.yaml", "compare", CompareSettings),
    ("nightly.yaml", None, NightlyConfig),
    ("nightly.yaml", "schedule", Schedule),
])
def test_example_configs_list_every_key_of_their_section(name, section, model):
    data = yaml.safe_load((CONFIGS / name).read_text())
    assert set((data[section] if section else data)) == _keys(model)
    if model is NightlyConfig:
        assert {key for source in data["sources"] for key in source} == _keys(NightlySource)


@pytest.mark.parametrize("name", ["adhoc.yaml", "drift.yaml", "compare.yaml", "nightly.yaml"])
def test_example_configs_are_valid(name):
    model = {"adhoc.yaml": EvalConfig, "drift.yaml": config_module.DriftConfig,
             "compare.yaml": config_module.CompareConfig, "nightly.yaml": NightlyConfig}[name]
    build_config(model, CONFIGS / name)  # unknown keys and bad values raise, naming the key


# --------------------------------------------------------------------------- generated reference


def _config_models() -> list[type[BaseModel]]:
    return [value for value in vars(config_module).values() if isinstance(value, type) and issubclass(value, BaseModel)
            and value.__module__ == config_module.__name__ and value.model_fields]


def test_config_reference_has_every_model_and_key():
    listed = {name for name, _ in hooks.CONFIG_MODELS}
    assert sorted(m.__name__ for m in _config_models() if m.__name__ not in listed) == []
    text = hooks.config_markdown()
    for model in _config_models():
        section = text.split(f"### {model.__name__}\n", 1)[1].split("\n### ", 1)[0]
        own = set(model.model_fields) - set().union(*(b.model_fields for b in model.__mro__[1:]
                                                      if isinstance(b, type) and issubclass(b, BaseModel)))
        assert [key for key in own if f"| `{key}` |" not in section] == [], model.__name__
    assert "| `max_auc_classes` | integer | ≥ 0 | `64` |" in text


def test_statistics_reference_has_every_column():
    text = hooks.statistics_markdown()
    assert [s.name for s in STATISTICS if f"| `{s.name}` |" not in text] == []
    assert "| `ce_mean` | per_class, summary |" in text and "| jackknife | [0, ∞) | lower |" in text
    drift = text.split("### Drift metrics", 1)[1]
    assert [s.name for s in DRIFT_STATISTICS if f"| `{s.name}` |" not in drift] == []
    assert [name for name in DRIFT_COLUMNS if f"| `{name}` |" not in drift] == []
    assert "| `marginal_psi` | population stability index" in drift and "| nats or bits (`units`) |" in drift


def _parsers(parser, prefix="xent"):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix} {name}")


def test_cli_reference_has_every_command_option_and_exit_code():
    text = hooks.cli_markdown()
    parsers = dict(_parsers(build_parser()))
    assert len(parsers) > 5
    for name, parser in parsers.items():
        section = text.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)
    for code in range(6):
        assert f"\n- {code} " in text


def test_the_exit_code_table_has_every_code():
    """The hand-written table of causes and examples on the command-line page lists every
    exit code of flows.errors, and 130 (interrupted)."""
    text = (ROOT / "docs" / "reference" / "cli.md").read_text()
    listed = [int(code) for code in re.findall(r"^\| (\d+) \|", text, re.M)]
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_") and isinstance(value, int)}
    assert listed == sorted(codes | {130})


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed: pip install -e '.[docs]' (the test extra includes it)")
def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning (a broken link or reference fails it), offline."""
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "max_confusion_classes" in page and "xent:generate" not in page
