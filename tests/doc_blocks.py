"""The README's and the docs' text and code blocks, for the tests that run or check them.

A fenced block is preceded by ``<!-- tested: MARKER -->`` (a test runs it; ``MARKERS``
names the test module) or ``<!-- not run: reason -->``.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# Each marker and the test module that runs its blocks.
MARKERS = {
    "OWN": "tests/test_readme.py",
    "USES": "tests/test_docs.py",
    "KERNELS": "tests/test_docs.py",
    "NIGHTLY_GATE": "tests/test_docs.py",
    "API": "tests/test_api.py",
    "REPORT_ROOT": "tests/test_nightly.py",
    "CHECKSUMS": "tests/test_first_day_report.py",
    "TOKENS": "tests/test_tokens_eval.py",
    "TEACHER_STUDENT": "tests/test_generate_tokens.py",
}

# A fenced block: its indentation, the comment line before it (if any), its language and body.
FENCE = re.compile(r"(?:^<!-- (?P<mark>[^\n]*?) -->\n)?^(?P<indent>[ ]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```",
                   re.M | re.S)


def doc_files() -> list[Path]:
    """README.md, then every Markdown page under docs/."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def doc_text() -> str:
    """The README and the docs pages, one after the other."""
    return "\n\n".join(path.read_text() for path in doc_files())


def fenced_blocks(path: Path) -> list[tuple[str | None, str, str, int]]:
    """Every fenced block of `path`: (its marker comment or None, language, body, line)."""
    text = path.read_text()
    return [(m["mark"], m["lang"], m["body"], text.count("\n", 0, m.start("indent")) + 1) for m in FENCE.finditer(text)]


def marked_blocks(marker: str, language: str | None = None) -> list[tuple[str, str]]:
    """(language, body) of the blocks marked ``<!-- tested: MARKER -->``, in the README
    and then the docs pages, in order."""
    return [(lang, body) for path in doc_files() for mark, lang, body, _ in fenced_blocks(path)
            if mark == f"tested: {marker}" and language in (None, lang)]
