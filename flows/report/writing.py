"""Write a report folder all-or-nothing.

Local folders: the new report is written, fsynced and given its manifest in a hidden
sibling folder, then swapped with the old folder in one ``renameat2(RENAME_EXCHANGE)``
call, so at every instant the report path holds the complete old report or the complete
new one. Where the kernel or file system lacks the exchange, two renames are used and
the gap between them is repaired by the next write to the same path.

Object stores have no rename. There the old manifest is deleted first, every file is
uploaded (each object appears whole when its upload ends), and the manifest is written
last: a report is complete when ``_manifest.json`` exists and lists its files.

:func:`write_tables_atomically` writes tables held in memory; :class:`StagedFolder` takes
the files one by one (a converted token dump's shards, as each is full) and publishes
them the same way at the end, holding one file in memory at a time.
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
import tempfile
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

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
    with StagedFolder(out, storage_options) as folder:
        for name, table in tables.items():
            folder.write_table(name, table)
        for name, data in (files or {}).items():
            folder.write_file(name, data)
    return folder.paths


class StagedFolder:
    """A folder written file by file and published whole, for output too big to hold in
    memory at once (a converted token dump): each file goes to a staging place as it is
    given, and leaving the ``with`` block without an error publishes them all with their
    manifest, as :func:`write_tables_atomically` does (which is this with every table at
    once). An error in the block publishes nothing and removes the staging place; what a
    crash leaves there, the next write to the same path removes.

    Locally the staging place is the hidden sibling folder that is then swapped into
    place. For an object store it is a local temporary folder, uploaded only at the end,
    so that a failed write leaves the old report whole there too.

    >>> with StagedFolder("dumps/day1") as folder:          # doctest: +SKIP
    ...     for name, table in shards:
    ...         folder.write_table(name, table)
    >>> folder.paths                                        # doctest: +SKIP
    {'part-00000': 'dumps/day1/part-00000.parquet', ...}

    Raises
    ------
    InfrastructureError
        The disk or the object store failed (full, read-only, unreachable).
    """

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None) -> None:
        self.out = out
        self._fs, path = filesystem(out, storage_options)
        self._local = is_local(self._fs)
        self._target = str(Path(path).absolute()) if self._local else path.rstrip("/")
        self._staging: Path | None = None
        self._entries: dict[str, dict[str, Any]] = {}  # file name -> its manifest entry, in the order first written
        self._files: dict[str, str] = {}  # table or file name -> file name
        self.paths: dict[str, str] = {}  # table or file name -> path, once published

    def __enter__(self) -> StagedFolder:
        with _write_failures(self.out):
            if self._local:
                out = Path(self._target)
                out.parent.mkdir(parents=True, exist_ok=True)
                recover_leftovers(out)
                staging = _sibling(out, _STAGING)
                staging.mkdir()
            else:
                staging = Path(tempfile.mkdtemp(prefix="xent-staging-"))
        self._staging = staging
        return self

    def write_table(self, name: str, table: pa.Table) -> None:
        """Stage `table` as ``<name>.parquet`` (page checksums on); a second call with the
        same name replaces it."""
        self._stage(f"{name}.parquet", name, lambda handle: pq.write_table(table, handle, **PARQUET_OPTIONS))

    def write_file(self, name: str, data: bytes) -> None:
        """Stage `data` as the file `name` (``report.html``, say)."""
        self._stage(name, name, lambda handle: handle.write(data))

    def read_table(self, name: str) -> pa.Table:
        """The table staged as ``<name>.parquet``."""
        return pq.read_table(self._staging_path() / self._files[name])

    def _stage(self, file: str, name: str, write: Callable[[IO[bytes]], object]) -> None:
        if file == MANIFEST:
            raise ValueError(f"{MANIFEST} is written by the folder itself")
        with _write_failures(self.out):
            written = _write_synced(self._staging_path() / file, write)
        self._entries[file] = {"file": file, "bytes": written.size, "sha256": written.sha256.hexdigest()}
        self._files[name] = file

    def _staging_path(self) -> Path:
        if self._staging is None:
            raise RuntimeError("StagedFolder is written inside a `with` block")
        return self._staging

    def __exit__(self, error_type, error, traceback) -> None:
        staging = self._staging_path()
        try:
            if error_type is None:
                manifest = _manifest(list(self._entries.values()))
                with _write_failures(self.out):
                    if self._local:
                        _publish_local(staging, Path(self._target), self.out, manifest)
                        self.paths = {name: str(Path(self._target) / file) for name, file in self._files.items()}
                    else:
                        _publish_object_store(staging, self._fs, self._target, self.out, list(self._entries), manifest)
                        self.paths = {name: self._fs.unstrip_protocol(f"{self._target}/{file}")
                                      for name, file in self._files.items()}
        finally:
            if staging.exists():  # after a swap, the old report; after an error, the new one
                shutil.rmtree(staging, ignore_errors=True)


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


class _Hashing(io.RawIOBase):
    """A file being written, and the size and SHA-256 of what was written to it (so that
    a table goes to disk without its Parquet bytes ever held whole in memory)."""

    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__()
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.handle.write(data)
        self.sha256.update(data)
        size = memoryview(data).nbytes
        self.size += size
        return size

    def tell(self) -> int:
        return self.size


def _write_synced(target: Path, write: Callable[[IO[bytes]], object]) -> _Hashing:
    """`target` written by `write` and fsynced; its size and hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        hashing = _Hashing(handle)
        write(hashing)
        handle.flush()
        os.fsync(handle.fileno())
    return hashing


def _manifest(entries: list[dict[str, Any]]) -> bytes:
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


def _publish_local(staging: Path, out: Path, label: str, manifest: bytes) -> None:
    _write_synced(staging / MANIFEST, lambda handle: handle.write(manifest))  # last: its presence says the folder is complete
    _fsync_dir(staging)
    with _interrupts_deferred():
        retired = _swap_into_place(staging, out)
        committed.append(label)
        _fsync_dir(out.parent)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


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


def _publish_object_store(staging: Path, fs, root: str, label: str, files: list[str], manifest: bytes) -> None:
    manifest_path = f"{root}/{MANIFEST}"
    if fs.exists(manifest_path):
        fs.rm(manifest_path)  # from here on, readers see an incomplete report, never a mix
    for name in files:  # one file in memory at a time
        fs.pipe_file(f"{root}/{name}", (staging / name).read_bytes())
    fs.pipe_file(manifest_path, manifest)
    committed.append(label)
    # Files of an older report that this one does not have (bad_shards, say) are removed.
    stale = [p for p in fs.find(root) if p.endswith((".parquet", ".html")) and p[len(root) + 1 :] not in files]
    if stale:
        fs.rm(stale)
    fs.invalidate_cache(root)


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
