"""Rules of the test suite itself: test modules import helpers, never each other, and
importing conftest.py or support.py sets nothing up."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from support import child_env

TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_conftest_or_another_test_module():
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.name}:{node.lineno} imports {name}" for name in names
                      if name == "conftest" or name.startswith("test_")]
    assert found == [], "move what they share to tests/support.py"


def test_importing_conftest_and_support_starts_nothing_and_sets_no_environment():
    code = (
        "import json, os, sys, threading; before = dict(os.environ); "
        "import conftest, support; "
        "print(json.dumps({'changed': sorted(k for k in os.environ.keys() | before.keys() if os.environ.get(k) != before.get(k)), "
        "'threads': threading.active_count(), "
        "'modules': sorted(m for m in ('prefect', 'distributed', 'dask') if m in sys.modules)}))"
    )
    env = child_env(DO_NOT_TRACK=None, PREFECT_HOME=None, PREFECT_SERVER_ANALYTICS_ENABLED=None,
                    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=TESTS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"changed": [], "threads": 1, "modules": []}
