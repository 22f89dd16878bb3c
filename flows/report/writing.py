"""Write a report folder all-or-nothing.

Local folders: the new report is written, fsynced and given its manifest in a hidden
sibling folder, then swapped with the old folder in one ``renameat2(RENAME_EXCHANGE)``
call, so at every instant the report path holds the complete old report or the complete
new one. Where the kernel or file system lacks the exchange, two renames are used and
the gap between them is repaired by the next write to the same path.

Object stores have no rename. There the old manifest is deleted first, every file is
uploaded (each object appears whole when its upload ends), and the manifest is written
last: a report is complete when ``_manifest.json`` exists and lists its files.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import as_infrastructure_error
from ..inputs.sources import filesystem, is_local

MANIFEST = "_manifest.json"
PARQUET_OPTIONS = {"compression": "zstd", "write_page_checksum": True}
_STAGING, _RETIRED = "tmp", "old"

# Paths whose new report is in place in this process: an interrupt after that point
# does not undo the write, and the CLI says so instead of reporting a failure.
committed: list[str] = []


def write_tables_atomically(
    tables: dict[str, pa.Table], out: str, storage_options: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
) -> dict[str, str]:
    """Write `tables` as ``out/<name>.parquet``, `files` ({file name: bytes}, such as
    ``report.html``) as they are, plus ``out/_manifest.json`` listing them all,
    replacing whatever report was at `out` all-or-nothing; returns {table or file
    name: path}.

    Raises
    ------
    InfrastructureError
        The disk or the object store failed (full, read-only, unreachable).
    """
    fs, path = filesystem(out, storage_options)
    with _write_failures(out):
        if is_local(fs):
            return _write_local(tables, Path(path).absolute(), out, files or {})
        return _write_object_store(tables, fs, path.rstrip("/"), out, files or {})


@contextlib.contextmanager
def _write_failures(target: str) -> Iterator[None]:
    """An OSError of the disk or the object store (full, read-only, unreachable) as an
    InfrastructureError naming `target`; any other error as it is."""
    try:
        yield
    except OSError as error:
        failure = as_infrastructure_error(error, target, "cannot write")
        if failure is None:
            raise
        raise failure from error


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return sink.getvalue()


def _manifest(files: dict[str, bytes]) -> bytes:
    entries = [{"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()]
    return json.dumps(
        {"format": "xent-report/1", "written_at": dt.datetime.now(dt.timezone.utc).isoformat(), "files": entries},
        indent=1,
    ).encode()


def read_manifest(out: str, storage_options: dict[str, Any] | None = None) -> dict | None:
    """The manifest of the report at `out`, or None when there is no complete report."""
    fs, path = filesystem(f"{out.rstrip('/')}/{MANIFEST}", storage_options)
    try:
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- local folders


def _write_local(tables: dict[str, pa.Table], out: Path, label: str, extra: dict[str, bytes]) -> dict[str, str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(out)
    staging = _sibling(out, _STAGING)
    staging.mkdir()
    try:
        files = {f"{name}.parquet": _parquet_bytes(table) for name, table in tables.items()} | extra
        files[MANIFEST] = _manifest(files)  # last: its presence says the folder is complete
        for name, data in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(staging)
        with _interrupts_deferred():
            retired = _swap_into_place(staging, out)
            committed.append(label)
            _fsync_dir(out.parent)
            if retired is not None:
                shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return {name: str(out / f"{name}.parquet") for name in tables} | {name: str(out / name) for name in extra}


def _sibling(out: Path, role: str) -> Path:
    """A hidden sibling of `out` owned by this process: ``.NAME.tmp-PID-TOKEN``."""
    return out.parent / f".{out.name}.{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _swap_into_place(staging: Path, out: Path) -> Path | None:
    """Make `staging` the folder at `out`; returns where the old report now is (to delete)."""
    try:
        os.rename(staging, out)  # nothing at `out` yet
        return None
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
    if exchange(staging, out):
        return staging  # holds the old report now
    retired = _sibling(out, _RETIRED)
    os.rename(out, retired)  # a crash here leaves `out` missing: recover_leftovers puts `retired` back
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(retired, out)
        raise
    return retired


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    global _renameat2
    if _renameat2 is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)
        if _renameat2:
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange
    raise OSError(code, os.strerror(code), str(b))


def recover_leftovers(out: Path) -> None:
    """Repair what an interrupted write to `out` left behind: put back a retired report
    if `out` went missing between two renames, and delete staging and retired folders of
    processes that are gone."""
    leftovers = sorted(out.parent.glob(f".{out.name}.{_STAGING}-*")) + sorted(out.parent.glob(f".{out.name}.{_RETIRED}-*"))
    dead = [path for path in leftovers if not _owner_alive(path)]
    if not out.exists():
        retired = [path for path in dead if path.name.startswith(f".{out.name}.{_RETIRED}-") and (path / MANIFEST).exists()]
        if retired:
            os.rename(retired[-1], out)
            dead.remove(retired[-1])
    for path in dead:
        shutil.rmtree(path, ignore_errors=True)


def _owner_alive(path: Path) -> bool:
    try:
        pid = int(path.name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False  # ours from an earlier, failed write in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (main thread only; elsewhere the
    signal lands in the main thread, not here), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            os.kill(os.getpid(), sig)


# --------------------------------------------------------------------------- object stores


def _write_object_store(tables: dict[str, pa.Table], fs, root: str, label: str,
                        extra: dict[str, bytes]) -> dict[str, str]:
    manifest_path = f"{root}/{MANIFEST}"
    if fs.exists(manifest_path):
        fs.rm(manifest_path)  # from here on, readers see an incomplete report, never a mix
    files = {f"{name}.parquet": _parquet_bytes(table) for name, table in tables.items()} | extra
    for name, data in files.items():
        fs.pipe_file(f"{root}/{name}", data)
    fs.pipe_file(manifest_path, _manifest(files))
    committed.append(label)
    # Files of an older report that this one does not have (bad_shards, say) are removed.
    stale = [p for p in fs.find(root) if p.endswith((".parquet", ".html")) and p[len(root) + 1 :] not in files]
    if stale:
        fs.rm(stale)
    fs.invalidate_cache(root)
    return ({name: fs.unstrip_protocol(f"{root}/{name}.parquet") for name in tables}
            | {name: fs.unstrip_protocol(f"{root}/{name}") for name in extra})


def add_file(out: str, name: str, data: bytes, storage_options: dict[str, Any] | None = None) -> str:
    """Put one file (``report.html``) into the complete report at `out` and list it in
    its manifest; returns its path. Each of the two writes replaces its file whole
    (a rename locally); the manifest is written last, so a crash between them leaves
    the new file listed with the old file's hash until the next ``add_file``. The
    tables are not touched. Not safe against a concurrent rewrite of the same folder."""
    manifest = read_manifest(out, storage_options)
    if manifest is None:
        raise FileNotFoundError(f"{out}: no {MANIFEST}, so no complete report here (was it written by xent?)")
    manifest["files"] = [entry for entry in manifest["files"] if entry["file"] != name] + [
        {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    root = out.rstrip("/")
    written = replace_file(f"{root}/{name}", data, storage_options)
    replace_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), storage_options)
    return written


def replace_file(target: str, data: bytes, storage_options: dict[str, Any] | None = None) -> str:
    """Write one file whole: locally a hidden sibling renamed over `target` (a reader
    sees the old file or the new one), on an object store one upload; returns its path.

    Raises
    ------
    InfrastructureError
        The disk or the object store failed (full, read-only, unreachable).
    """
    fs, path = filesystem(target, storage_options)
    with _write_failures(target):
        if not is_local(fs):
            fs.pipe_file(path, data)
            return fs.unstrip_protocol(path)
        local = Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            partial.write_bytes(data)
            os.replace(partial, local)
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
            raise
        return str(local)
