"""Find the Parquet shards behind a list of sources and fingerprint them.

A source is a file, a folder (searched recursively), a glob, or any of these as an
fsspec URL (``s3://bucket/dump/``). Hive folders (``date=2026-11-23/model=b/``) below a
source become slice values of the files inside them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from ..errors import DataError, InfrastructureError, UsageError, as_infrastructure_error, without_credentials

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True)
class InputFile:
    """One shard: where it is and what identifies its content."""

    url: str
    size: int
    version: str  # modification time or ETag: changes when the content does
    hive: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))


# The extra of pyproject.toml that brings each protocol's fsspec implementation.
PROTOCOL_EXTRAS = {"http": "http", "https": "http", "s3": "s3", "s3a": "s3"}


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of `url` and the path in it.

    Raises
    ------
    UsageError
        The protocol's implementation is not installed (naming the extra to install).
    """
    try:
        return url_to_fs(url, **(storage_options or {}))
    except ImportError as error:
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        extra = PROTOCOL_EXTRAS.get(protocol)
        install = f"pip install 'xent[{extra}]'" if extra else f"install the fsspec implementation of {protocol}://"
        raise UsageError(f"{without_credentials(url)}: reading {protocol}:// URLs needs a package that is not "
                         f"installed ({error}); {install}") from None


# HTTP servers (scheme://host:port) seen to answer a range request with the range: asked
# once per process, not at every open of every file.
_SERVERS_WITH_RANGE: set[str] = set()


def range_ignored(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether an HTTP server answers a request for 2 bytes with more (the whole file):
    it ignores HTTP Range, and Parquet cannot be read from it a part at a time. False
    for other file systems, and when the request fails (the read that follows says why)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    server = "/".join(path.split("/")[:3])
    if not {"http", "https"} & set(protocols) or server in _SERVERS_WITH_RANGE:
        return False
    try:
        ignored = len(fs.cat_file(path, start=0, end=2)) > 2
    except Exception:  # noqa: BLE001 - the caller reports its own error
        return False
    if not ignored:
        _SERVERS_WITH_RANGE.add(server)
    return ignored


def range_ignored_error(url: str) -> InfrastructureError:
    """The server of `url` returned the whole file for a range request."""
    server = "/".join(without_credentials(url).split("/")[:3])
    return InfrastructureError(
        f"{server} returned the whole file for a range request (reading {without_credentials(url)}): Parquet is read "
        "a part at a time; serve the files with a server that supports HTTP Range requests (nginx, Apache, Caddy; "
        "not Python's http.server) or copy them locally"
    )


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local file system (plain paths, file:// URLs)."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def _hive_values(relative: str) -> dict[str, str]:
    values = {}
    for segment in relative.split("/")[:-1]:
        key, sep, value = segment.partition("=")
        if sep and key:
            values[key] = value
    return values


def _is_data_file(path: str) -> bool:
    name = posixpath.basename(path)
    return name.endswith(PARQUET_SUFFIXES) and not name.startswith((".", "_"))


def list_inputs(sources: list[str], storage_options: dict[str, Any] | None = None) -> list[InputFile]:
    """Every Parquet file named by `sources`, sorted by URL, without duplicates.

    Raises
    ------
    UsageError
        No sources given.
    DataError
        A source matches no Parquet file (the message names it).
    """
    if not sources:
        raise UsageError("no input: give at least one file, folder, glob or URL")
    found: dict[str, InputFile] = {}
    for source in sources:
        fs, path = filesystem(source, storage_options)
        fs.invalidate_cache()  # listings must show what is there now, not what a cached listing saw
        try:
            if any(char in path for char in "*?["):
                root = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
                entries = fs.glob(path, detail=True)
            elif fs.isdir(path):
                root = path.rstrip("/")
                entries = fs.find(path, detail=True)
            elif fs.exists(path):
                root = posixpath.dirname(path)
                entries = {path: fs.info(path)}
            else:
                raise DataError(f"{source}: no such file or folder")
        except DataError:
            raise
        except Exception as error:
            failure = as_infrastructure_error(error, source, "cannot list")
            if failure is not None:
                raise failure from error
            if isinstance(error, (OSError, ValueError)):
                raise DataError(f"{source}: cannot list: {error}") from None
            raise
        matched = 0
        for entry_path, info in sorted(entries.items()):
            if info.get("type") == "directory" or not _is_data_file(entry_path):
                continue
            url = entry_path if is_local(fs) else fs.unstrip_protocol(entry_path)
            relative = entry_path[len(root) :].lstrip("/") if entry_path.startswith(root) else posixpath.basename(entry_path)
            found[url] = InputFile(url=url, size=int(info.get("size") or 0), version=_version(info), hive=_hive_values(relative))
            matched += 1
        if not matched:
            raise DataError(f"{source}: no Parquet files matched (looked for *{', *'.join(PARQUET_SUFFIXES)})")
    return [found[url] for url in sorted(found)]


def fingerprint(inputs: list[InputFile]) -> dict[str, Any]:
    """Identity of the input: per-file URL, size and version, and one digest of them all."""
    files = [{"url": without_credentials(f.url), "size": f.size, "version": f.version} for f in inputs]
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "files": files, "n_files": len(files), "bytes": sum(f.size for f in inputs)}


def dump_label(sources: list[str]) -> str:
    """A short name for a dump: the last folder (or file) name of its first source,
    before any glob, with ``+N`` when there are N more sources."""
    first = without_credentials(sources[0]) if sources else ""
    glob = re.search(r"[*?\[]", first)
    name = posixpath.basename(posixpath.dirname(first[: glob.start()])) if glob else posixpath.basename(first.rstrip("/"))
    return f"{name or 'dump'}+{len(sources) - 1}" if len(sources) > 1 else name or "dump"
