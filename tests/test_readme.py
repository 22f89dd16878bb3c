"""The README's "Your own predictions" snippets, run as a new user would run them."""

from __future__ import annotations

import shlex

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import accuracy_score, log_loss

from doc_blocks import marked_blocks
from flows.cli import main


def test_own_predictions_snippets(tmp_path, monkeypatch, capsys):
    (_, python), (language, command) = marked_blocks("OWN")
    assert language == "bash"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python, "README.md", "exec"), namespace)
    assert sorted(p.name for p in (tmp_path / "preds").iterdir()) == [f"part-{i}.parquet" for i in range(4)]

    argv = shlex.split(command)
    assert argv[0] == "xent"
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out

    y_test, probs = namespace["y_test"], namespace["probs"]
    summary = pq.read_table(tmp_path / "report" / "summary.parquet").to_pandas()
    overall = summary[summary["overall"]].iloc[0]
    assert overall["n"] == len(y_test)
    np.testing.assert_allclose(overall["ce_mean"], log_loss(y_test, probs, labels=np.arange(10)), rtol=1e-12)
    np.testing.assert_allclose(overall["accuracy"], accuracy_score(y_test, probs.argmax(axis=1)), rtol=1e-12)
    assert set(summary["segment"].dropna()) == {"dark", "light"}
