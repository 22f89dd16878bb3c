"""A report path always holds a complete report: interrupts and kills at many instants
of the write phase, with the swap done by renameat2 and by the two-rename fallback."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support import child_env, wait_until
from flows.report import writing
from flows.generate import generate_dump

# Runs `xent eval` in a child process with the write phase slowed down, so that signals
# land inside it: a marker file when the write starts, then a pause at each fsync, before
# and after each step of the swap (and between the two renames of the fallback), and after it.
CHILD = r"""
import os, sys, time
from pathlib import Path
from flows.report import writing

marker, pause, strategy = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
real_enter, real_publish = writing.StagedFolder.__enter__, writing._publish_local
real_exchange, real_rename = writing.exchange, os.rename

def enter(folder):
    marker.write_text("writing")
    return real_enter(folder)

def publish_local(*args):
    real_publish(*args)
    time.sleep(4 * pause)  # the report is in place: a signal now must not undo it

def exchange(a, b):
    if strategy == "fallback":
        return False
    time.sleep(pause)
    swapped = real_exchange(a, b)
    time.sleep(pause)
    return swapped

class SlowOs:
    def __getattr__(self, name):
        return getattr(os, name)
    def fsync(self, fd):
        time.sleep(pause / 2)
        os.fsync(fd)
    def rename(self, a, b):
        time.sleep(pause)
        real_rename(a, b)
        time.sleep(pause)

writing.StagedFolder.__enter__, writing._publish_local = enter, publish_local
writing.exchange, writing.os = exchange, SlowOs()
from flows.cli import entry_point
sys.argv = ["xent", *sys.argv[4:]]
entry_point()
"""


def report_state(out: Path) -> str | None:
    """The fingerprint digest of the complete report at `out`; fails on a partial one."""
    manifest = json.loads((out / writing.MANIFEST).read_text())
    for entry in manifest["files"]:
        data = (out / entry["file"]).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], entry
    digests = {json.loads(pq.read_schema(out / name).metadata[b"xent.fingerprint"])["digest"]
               for name in ("per_class.parquet", "summary.parquet")}
    assert len(digests) == 1, f"tables of two reports mixed: {digests}"
    return digests.pop()


class Watcher(threading.Thread):
    """Checks, as often as it can, that the report path is a folder with a manifest."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out, self.stop, self.gaps, self.looks = out, threading.Event(), [], 0

    def run(self) -> None:
        while not self.stop.is_set():
            if not (self.out / writing.MANIFEST).is_file():
                # a swap in flight can make one stat miss; look again before calling it a gap
                if not (self.out / writing.MANIFEST).is_file():
                    self.gaps.append(time.monotonic())
            self.looks += 1


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("atomic")
    old = generate_dump(root / "old", rows=400, classes=3, shards=2, seed=1)
    new = generate_dump(root / "new", rows=500, classes=3, shards=2, seed=2)
    return root, old, new


def eval_args(dump, out: Path) -> list[str]:
    return ["eval", dump.root, "--out", str(out), "--no-prefect"]


def run_and_signal(tmp_path: Path, dump, out: Path, sig: int, delay: float, strategy: str, pause: float):
    marker = tmp_path / f"marker-{sig}-{delay}-{strategy}"
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), str(pause), strategy, *eval_args(dump, out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(DASK_SCHEDULER_ADDRESS=None), cwd=tmp_path,
    )
    try:
        wait_until(lambda: marker.exists() or process.poll() is not None, 120, "the write phase")
        time.sleep(delay)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


# Instants across the slowed write phase: 0.3 s staging the new folder, then the swap
# (0.5 s with the exchange, 0.8 s with the fallback), then 0.6 s with the report in place
# (long enough that the last instant lands there, before the command ends by itself).
PAUSE = 0.15
DELAYS = {"exchange": [0.0, 0.15, 0.3, 0.5, 0.7, 0.9], "fallback": [0.0, 0.2, 0.45, 0.7, 0.95, 1.2]}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["exchange", "fallback"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_report_path_survives_signals_at_every_instant(tmp_path, dumps, sig, strategy):
    _, old, new = dumps
    out = tmp_path / "report"
    from flows.cli import main

    assert main(eval_args(old, out)) == 0
    old_digest = report_state(out)
    outcomes = []
    for delay in DELAYS[strategy]:
        watcher = Watcher(out)
        watcher.start()
        code, stderr = run_and_signal(tmp_path, new, out, sig, delay, strategy, PAUSE)
        watcher.stop.set()
        watcher.join()
        if strategy == "exchange":
            assert not watcher.gaps, f"report path missing {len(watcher.gaps)} of {watcher.looks} looks (delay {delay})"
        else:
            # two renames leave a gap a reader can see; what a crash in it leaves, the
            # next write to the path repairs before anything else
            writing.recover_leftovers(out)
        digest = report_state(out)
        if sig == signal.SIGINT:
            # 0 exactly when the new report is in place, and then it says so
            assert code == (0 if digest != old_digest else 130), (delay, code, stderr)
            assert len(stderr.strip().splitlines()) == 1, stderr
            if code == 0:
                assert "written in full" in stderr
        else:
            assert code == -signal.SIGKILL, (delay, code, stderr)
        outcomes.append("new" if digest != old_digest else "old")
        # the next run on the same path cleans up and writes the new report
        assert main(eval_args(old, out)) == 0
        assert report_state(out) == old_digest
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.")]
        assert leftovers == [], leftovers
    # the instants straddle the swap: some runs were stopped before it, some after
    assert "old" in outcomes and "new" in outcomes, outcomes


def test_next_write_puts_back_a_report_lost_between_two_renames(tmp_path, dumps):
    """What a kill between the fallback's renames leaves: no report path, the old one
    retired beside it, the new one staged. The next run restores, then replaces."""
    _, old, new = dumps
    out = tmp_path / "report"
    from flows.cli import main

    assert main(eval_args(old, out)) == 0
    old_digest = report_state(out)
    os.rename(out, tmp_path / ".report.old-999999999-deadbeef")  # a pid that cannot exist
    (tmp_path / ".report.tmp-999999999-cafecafe").mkdir()
    writing.recover_leftovers(out)
    assert report_state(out) == old_digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert main(eval_args(new, out)) == 0
    assert report_state(out) != old_digest


def test_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "x").write_text("b")
    assert writing.exchange(a, b) or sys.platform != "linux", "no renameat2 exchange on this Linux file system"
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_fallback_puts_the_old_report_back_when_the_second_rename_fails(tmp_path, dumps, monkeypatch):
    _, old, new = dumps
    out = tmp_path / "report"
    from flows.cli import main

    assert main(eval_args(old, out)) == 0
    old_digest = report_state(out)

    class FailingSecondRename:
        def __getattr__(self, name):
            return getattr(os, name)

        def rename(self, a, b):
            if ".tmp-" in str(a) and Path(b) == out and not out.exists():  # the second of the two
                raise OSError(5, "Input/output error", str(b))
            os.rename(a, b)

    monkeypatch.setattr(writing, "exchange", lambda a, b: False)
    monkeypatch.setattr(writing, "os", FailingSecondRename())
    assert main(eval_args(new, out)) == 4
    assert report_state(out) == old_digest
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.")] == []
