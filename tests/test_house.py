"""The house rules of flows/: importing sets nothing up, and only the engine talks to Dask."""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import flows

FLOWS = Path(flows.__file__).resolve().parent


def _modules() -> list[str]:
    names = ["flows", "xent_kernels"]
    for info in pkgutil.walk_packages([str(FLOWS)], prefix="flows."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


@pytest.mark.slow
def test_importing_any_module_sets_no_environment_and_creates_no_folder_of_its_own(tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    code = (
        "import importlib, json, os, sys\n"
        "before = dict(os.environ)\n"
        f"for name in {_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({k: after.get(k) for k in set(before) ^ set(after) | {k for k in before if before[k] != after.get(k)}}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "XDG_", "DO_NOT_TRACK"))}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}
    # Two exceptions, neither xent's own doing: Numba creates its on-disk cache folder when
    # a kernel is decorated, and Prefect creates ~/.prefect when flows.pipelines imports it.
    created = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")}
    numba_cache = {p for p in created if p.startswith("home/.cache/xent")}
    prefects_own = {p for p in created if p.startswith("home/.prefect")}
    assert created - numba_cache - prefects_own == {"home", "tmp", "home/.cache"}
    assert len({p.split("/")[3] for p in numba_cache if p.count("/") >= 3}) == 1, numba_cache


def test_only_the_engine_submits_work_to_dask():
    callers = []
    for path in FLOWS.rglob("*.py"):
        if path.parent.name == "engine":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("map", "submit", "gather", "scatter", "compute") \
                    and isinstance(node.value, ast.Name) and node.value.id == "client":
                callers.append(f"{path.relative_to(FLOWS)}:{node.lineno} client.{node.attr}")
    assert callers == []


def test_every_kind_flows_offers_is_a_kind_the_kernels_take():
    import numpy as np
    import pytest

    from flows.kinds import KINDS
    from xent_kernels import class_stats_partial

    probs = np.array([[0.25, 0.75]])
    for kind in KINDS:
        assert class_stats_partial(np.log(probs) if "log" in kind else probs, [1], kind=kind).counts.sum() == 1
    with pytest.raises(ValueError, match="kind must be one of"):
        class_stats_partial(probs, [1], kind="scores")
