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


def _import_graph() -> dict[str, dict[str, str]]:
    """Module -> {imported module of ours: "file:line"}, from every import statement in
    flows/ and xent_kernels/, at module level, inside a function or under TYPE_CHECKING,
    with the packages an import runs first."""
    files = {}
    for root in (FLOWS, FLOWS.parent / "xent_kernels"):
        for path in root.rglob("*.py"):
            parts = [root.name, *path.relative_to(root).with_suffix("").parts]
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, dict[str, str]] = {name: {} for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                    imported = ".".join(parts[:i])
                    if imported in files and not (name + ".").startswith(imported + "."):
                        graph[name].setdefault(imported, f"{path.relative_to(FLOWS.parent)}:{node.lineno}")
    return graph


def _cycles(graph: dict[str, dict[str, str]]) -> list[str]:
    """Each cycle of `graph` found by graphlib, as its import statements."""
    import graphlib

    cycles = []
    graph = {a: dict(b) for a, b in graph.items()}
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return cycles
        except graphlib.CycleError as error:
            cycle = error.args[1][::-1]  # [a, ..., a], each importing the next
            cycles.append(" -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[0]}")
            del graph[cycle[0]][cycle[1]]  # break it and look for the next


def test_no_import_cycle_between_modules_lazy_imports_included():
    assert _cycles(_import_graph()) == []


def test_no_import_cycle_between_the_packages_of_flows():
    # flows.report and flows.monitor, flows.cli and flows.pipelines: one imports the other, never both ways.
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, dict[str, str]] = {}
    for name, imports in _import_graph().items():
        for imported, where in imports.items():
            if top(imported) not in (top(name), "flows"):
                packages.setdefault(top(name), {}).setdefault(top(imported), where)
    assert _cycles(packages) == []


def test_a_bad_option_to_evaluate_is_caught_by_except_value_error(tmp_path):
    import pandas as pd
    import pytest

    path = tmp_path / "part-0000.parquet"
    pd.DataFrame({"logits": [[0.1, 0.9], [0.8, 0.2]], "label": [1, 0]}).to_parquet(path)
    with pytest.raises(ValueError, match="kind"):
        flows.evaluate(str(path), kind="scores")


MAX_MODULE_LINES = 700


def test_no_module_above_700_lines():
    root = FLOWS.parent
    sizes = {str(path.relative_to(root)): len(path.read_text().splitlines())
             for package in ("flows", "xent_kernels") for path in (root / package).rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
