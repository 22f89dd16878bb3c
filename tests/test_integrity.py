"""Parquet page checksums: flipped bytes in checksummed files are data errors, files
without checksums are counted as unverified, the checksum detector agrees with
pyarrow, and what xent writes carries checksums. Every fault is a real flipped bit
in a real file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.generate import generate_dump
from flows.inputs.integrity import (
    _Compact,
    first_row_group_chunks,
    header_has_crc,
    inspect_integrity,
)
from flows.inputs.sources import filesystem
from flows.metadata import INTEGRITY_KEY

from support import RecordingHTTPServer, assert_same_report, child_env, moto_server, read_page_header, run_cli


# --------------------------------------------------------------------------- helpers


def pages(path: Path, column_prefix: str | None = None) -> list[dict]:
    """Every page of the (healthy) file: row group, leaf column, header start, data start
    and end, from pyarrow's column chunk metadata and the page headers."""
    data = path.read_bytes()
    metadata = pq.ParquetFile(path).metadata
    found = []
    for g in range(metadata.num_row_groups):
        for i in range(metadata.num_columns):
            chunk = metadata.row_group(g).column(i)
            if column_prefix and not chunk.path_in_schema.startswith(column_prefix):
                continue
            offsets = [chunk.data_page_offset, chunk.dictionary_page_offset if chunk.has_dictionary_page else None]
            position = min(o for o in offsets if o)
            end = position + chunk.total_compressed_size
            while position < end:
                header = read_page_header(data, position)
                start = position + header.header_size
                found.append({"group": g, "column": chunk.path_in_schema, "type": header.type, "crc": header.crc,
                              "header": position, "start": start, "end": start + header.compressed_size})
                position = start + header.compressed_size
            assert position == end, "the pages of a column chunk end where the chunk does"
    return found


def flip(path: Path, position: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def copy_dump(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_without_checksums(path: Path) -> None:
    parquet = pq.ParquetFile(path)
    table = parquet.read()
    pq.write_table(table, path, row_group_size=parquet.metadata.row_group(0).num_rows, compression="none",
                   write_page_checksum=False)


def integrity_of(out: Path) -> dict:
    return json.loads(pq.read_schema(out / "summary.parquet").metadata[INTEGRITY_KEY])


def inspect(path: Path, columns: list[str] | None = None) -> bool:
    parquet = pq.ParquetFile(path)
    return inspect_integrity(parquet, str(path), columns or parquet.schema_arrow.names, {})


# --------------------------------------------------------------------------- flipped bytes are caught


@pytest.mark.slow
def test_flipped_bytes_in_logits_pages_fail_the_evaluation_every_time(tmp_path, capsys):
    dump = generate_dump(tmp_path / "dump", rows=8000, classes=10, shards=2, row_group_rows=1000, seed=1)
    logits_pages = [(Path(f), p) for f in dump.files for p in pages(Path(f), "logits") if p["type"] == 0]
    assert len(logits_pages) == 8 and all(p["crc"] is not None for _, p in logits_pages)
    rng = np.random.default_rng(0)
    # Eight flips, each on a fresh copy, one in every page of both files.
    for k, index in enumerate(rng.permutation(len(logits_pages))):
        file, page = logits_pages[index]
        copy = copy_dump(dump.root, tmp_path / f"copy{k}")
        flip(copy / file.name, int(rng.integers(page["start"], page["end"])), int(rng.integers(8)))
        out = tmp_path / f"out{k}"
        assert main(["eval", str(copy), "--out", str(out), "--no-prefect"]) == 1
        err = capsys.readouterr().err
        assert f"{copy / file.name}: page checksum mismatch in row group {page['group']}" in err, err
        assert "the file is corrupt; re-write it from its source" in err
        assert not out.exists()
    # The installed command too: exit 1, one line, nothing written.
    result = run_cli(["eval", str(tmp_path / "copy0"), "--out", str(tmp_path / "cli-out"), "--no-prefect"],
                     cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "page checksum mismatch in row group" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cli-out").exists()


@pytest.mark.slow
def test_flipped_dictionary_page_and_unread_column(tmp_path, capsys):
    """A flip in a dictionary page is caught when the column is read; a column that is
    not read is not checked and does not change the report."""
    dump = generate_dump(tmp_path / "dump", rows=4000, classes=4, shards=1, row_group_rows=1000,
                         slices={"model": ["a", "b", "c"]}, seed=2)
    file = Path(dump.files[0])
    dictionary = [p for p in pages(file, "model") if p["type"] == 2 and p["group"] == 2]
    assert len(dictionary) == 1 and dictionary[0]["crc"] is not None
    copy = copy_dump(dump.root, tmp_path / "copy")
    flip(copy / file.name, (dictionary[0]["start"] + dictionary[0]["end"]) // 2, 3)

    assert main(["eval", str(copy), "--out", str(tmp_path / "sliced"), "--slice-by", "model", "--no-prefect"]) == 1
    assert f"{copy / file.name}: page checksum mismatch in row group 2" in capsys.readouterr().err

    assert main(["eval", str(dump.root), "--out", str(tmp_path / "clean"), "--no-prefect"]) == 0
    assert main(["eval", str(copy), "--out", str(tmp_path / "unsliced"), "--no-prefect"]) == 0
    capsys.readouterr()
    assert_same_report(*({name: pq.read_table(tmp_path / out / f"{name}.parquet") for name in ("per_class", "summary")}
                         for out in ("unsliced", "clean")), rtol=0)


def test_flip_in_the_first_rows_of_a_list_column(tmp_path, capsys):
    """A variable-length list column's class count is learned from the first rows,
    which are verified too."""
    dump = generate_dump(tmp_path / "dump", rows=2000, classes=5, shards=2, layout="list", seed=3)
    first = sorted(dump.files)[0]
    page = next(p for p in pages(Path(first), "logits") if p["type"] == 0)
    flip(Path(first), page["start"] + 17, 6)
    assert main(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect"]) == 1
    assert f"{first}: page checksum mismatch in the rows read to learn the class count" in capsys.readouterr().err


def test_skipped_corrupt_shard_is_listed_and_counted(tmp_path, capsys):
    dump = generate_dump(tmp_path / "dump", rows=8000, classes=4, shards=4, bad_shards={"truncated": 1}, seed=4)
    truncated = next(iter(dump.bad))
    flipped = Path(next(f for f in sorted(dump.files) if f not in dump.bad))
    page = next(p for p in pages(flipped, "logits") if p["type"] == 0)
    flip(flipped, (page["start"] + page["end"]) // 2)
    out = tmp_path / "out"
    assert main(["eval", dump.root, "--out", str(out), "--on-bad-shard", "skip", "--no-prefect"]) == 0
    stdout = capsys.readouterr().out
    bad = {row["file"]: row["reason"] for row in pq.read_table(out / "bad_shards.parquet").to_pylist()}
    assert set(bad) == {truncated, str(flipped)}
    assert "page checksum mismatch in row group 0" in bad[str(flipped)]
    # The corrupt shard was verified (that is how it was caught); the truncated one could not be.
    assert integrity_of(out) == {"files": 4, "page_checksums_verified": 3, "without_page_checksums": 0}
    assert "inputs: 4 files, 3 with page checksums verified; 1 not inspected (bad shards)\n" in stdout


# --------------------------------------------------------------------------- files without checksums


@pytest.mark.slow
def test_dump_without_checksums_is_evaluated_and_reported_unverified(tmp_path, capsys):
    dump = generate_dump(tmp_path / "dump", rows=4000, classes=4, shards=2, seed=5)
    assert main(["eval", dump.root, "--out", str(tmp_path / "checked"), "--no-prefect"]) == 0
    assert "inputs: 2 files, 2 with page checksums verified\n" in capsys.readouterr().out
    assert integrity_of(tmp_path / "checked") == {"files": 2, "page_checksums_verified": 2, "without_page_checksums": 0}

    first, second = (Path(f) for f in sorted(dump.files))
    rewrite_without_checksums(second)
    assert main(["eval", dump.root, "--out", str(tmp_path / "mixed"), "--no-prefect"]) == 0
    assert "inputs: 2 files, 1 with page checksums verified; 1 without" in capsys.readouterr().out
    assert integrity_of(tmp_path / "mixed") == {"files": 2, "page_checksums_verified": 1, "without_page_checksums": 1}

    rewrite_without_checksums(first)
    assert main(["eval", dump.root, "--out", str(tmp_path / "unchecked"), "--no-prefect"]) == 0
    stdout = capsys.readouterr().out
    assert ("inputs: 2 files, 0 with page checksums verified; 2 without (pandas' and pyarrow's default; "
            "write_page_checksum=True adds them)\n") in stdout
    assert integrity_of(tmp_path / "unchecked") == {"files": 2, "page_checksums_verified": 0, "without_page_checksums": 2}

    # What "cannot be detected" means: a flipped bit in a logit (uncompressed) changes the report, exit 0.
    page = next(p for p in pages(first, "logits") if p["type"] == 0)
    flip(first, (page["start"] + page["end"]) // 2, 6)
    assert main(["eval", dump.root, "--out", str(tmp_path / "flipped"), "--no-prefect"]) == 0
    capsys.readouterr()
    ce = [pq.read_table(tmp_path / name / "summary.parquet").column("ce_mean")[0].as_py() for name in ("unchecked", "flipped")]
    assert ce[0] != ce[1]


@pytest.mark.slow
def test_s3_files_are_verified_and_a_flip_is_caught(tmp_path, capsys, monkeypatch):
    """The footer and page-header reads are ranged reads through fsspec: S3 works too."""
    s3fs = pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("flask", reason="moto's standalone server needs moto[server]")
    with moto_server(tmp_path) as moto, RecordingHTTPServer() as decoy:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_ENDPOINT_URL", decoy.url)  # anything ignoring storage_options is refused
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        options = {"client_kwargs": {"endpoint_url": moto.url, "region_name": "us-east-1"}, "key": "k", "secret": "s"}
        boto3.client("s3", endpoint_url=moto.url, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="integrity")
        try:
            dump = generate_dump("s3://integrity/dump/", rows=4000, classes=4, shards=2, row_group_rows=1000,
                                 storage_options=options, seed=10)
            config = tmp_path / "s3.yaml"
            config.write_text(json.dumps({"storage_options": options}))
            assert main(["eval", dump.root, "--out", str(tmp_path / "out"), "--config", str(config), "--no-prefect"]) == 0
            assert "inputs: 2 files, 2 with page checksums verified" in capsys.readouterr().out
            assert integrity_of(tmp_path / "out") == {"files": 2, "page_checksums_verified": 2, "without_page_checksums": 0}

            fs = s3fs.S3FileSystem(**options)
            target = sorted(dump.files)[1]
            local = tmp_path / "shard.parquet"
            local.write_bytes(fs.cat_file(target))
            page = next(p for p in pages(local, "logits") if p["type"] == 0 and p["group"] == 1)
            flip(local, (page["start"] + page["end"]) // 2, 5)
            fs.pipe_file(target, local.read_bytes())
            assert main(["eval", dump.root, "--out", str(tmp_path / "out2"), "--config", str(config), "--no-prefect"]) == 1
            assert f"{target}: page checksum mismatch in row group 1" in capsys.readouterr().err
            assert decoy.requests == []
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


# --------------------------------------------------------------------------- the footer


def _footer(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    return data, len(data) - 8 - length


def test_footer_row_count_flipped_lower_is_a_data_error(tmp_path, capsys):
    """No checksum covers the footer; a row group's row count flipped lower makes pyarrow
    read fewer rows without complaint, and xent stops on it."""
    dump = generate_dump(tmp_path / "dump", rows=4000, classes=4, shards=1, row_group_rows=1000, seed=6)
    file = Path(dump.files[0])
    data, base = _footer(file)
    # Find the first row group's num_rows (RowGroup field 3, a zigzag varint) in the footer.
    reader = _Compact(data[base:-8])
    for field_id, kind in reader.fields():
        if field_id == 4:
            reader.list_header()
            for group_field, group_kind in reader.fields():
                if group_field == 3:
                    position = base + reader.pos
                    break
                reader.field_value(group_kind)
            break
        reader.field_value(kind)
    first_byte = data[position]
    bit = next(b for b in range(1, 7) if first_byte >> b & 1)  # clearing it lowers the count
    flip(file, position, bit)
    assert pq.ParquetFile(file).metadata.row_group(0).num_rows == 1000 - (1 << (bit - 1))
    assert pq.read_table(file).num_rows < 4000  # pyarrow reads fewer rows, no error
    assert main(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect"]) == 1
    err = capsys.readouterr().err
    assert f"{file}: its footer says 4000 rows but its row groups hold {4000 - (1 << (bit - 1))}" in err


@pytest.mark.slow
def test_footer_flip_that_aborts_pyarrow_metadata_is_a_data_error(tmp_path):
    """A label column flipped from optional to required in the footer's schema makes
    pyarrow's RowGroupMetaData.column() abort the process (a C++ exception it does not
    catch); xent never calls it, and reports a data error."""
    dump = generate_dump(tmp_path / "dump", rows=2000, classes=3, shards=1, null_labels=0.1, seed=7)
    file = Path(dump.files[0])
    data, base = _footer(file)
    reader = _Compact(data[base:-8])
    for field_id, kind in reader.fields():
        if field_id == 2:  # FileMetaData.schema: SchemaElement 3 = repetition_type, 4 = name
            size, _ = reader.list_header()
            for _ in range(size):
                element = {}
                for element_field, element_kind in reader.fields():
                    if element_field == 3:
                        element["at"] = base + reader.pos
                    element[element_field] = reader.field_value(element_kind)
                if element.get(4) == b"label":
                    position = element["at"]
            break
        reader.field_value(kind)
    assert data[position] == 2  # OPTIONAL (1) as a zigzag varint
    flip(file, position, 1)  # REQUIRED (0)
    probe = subprocess.run([sys.executable, "-c", f"import pyarrow.parquet as pq; "
                            f"pq.ParquetFile({str(file)!r}).metadata.row_group(0).column(1)"],
                           capture_output=True, text=True, env=child_env(), timeout=60)
    assert probe.returncode < 0 and "histogram size mismatch" in probe.stderr, (
        "pyarrow no longer aborts here; flows.integrity could read offsets from pyarrow's metadata")
    result = run_cli(["eval", dump.root, "--out", str(tmp_path / "out"), "--no-prefect"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{file}:" in result.stderr and "histogram size mismatch" in result.stderr


# --------------------------------------------------------------------------- the detector


def _table(n: int) -> pa.Table:
    rng = np.random.default_rng(8)
    logits = pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * 4).astype(np.float32)), 4)
    return pa.table({
        "id": pa.array(np.arange(n)),
        "label": pa.array(rng.integers(0, 4, n), mask=rng.random(n) < 0.05),
        "logits": logits,
        "model": pa.array(np.array(["a", "b", "c"])[rng.integers(0, 3, n)]),
    })


@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("dictionary", [True, False])
def test_detector_agrees_with_pyarrow(tmp_path, checksums, compression, dictionary):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(6000), path, row_group_size=2000, compression=compression, use_dictionary=dictionary,
                   write_page_checksum=checksums, data_page_size=8192)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 3
    found = pages(path)
    assert any(p["type"] == 2 for p in found) == dictionary
    assert len([p for p in found if p["column"] == "logits.list.element"]) > 3 * 2  # several pages per chunk
    data = path.read_bytes()
    for page in found:
        assert (page["crc"] is not None) == checksums
        assert header_has_crc(data[page["header"] : page["header"] + 64]) == checksums
    assert inspect(path) == checksums
    assert inspect(path, ["label"]) == checksums

    # The footer decoder finds the offsets pyarrow reports (on a healthy file).
    fs, fs_path = filesystem(str(path))
    decoded = first_row_group_chunks(pq.ParquetFile(path), fs, fs_path, str(path))
    for i, chunk in enumerate(decoded):
        expected = metadata.row_group(0).column(i)
        assert chunk[9] == expected.data_page_offset and chunk[7] == expected.total_compressed_size
        assert chunk.get(11) == (expected.dictionary_page_offset if expected.has_dictionary_page else None)

    # pyarrow itself: a flipped byte in a page's data fails its checksum exactly when there is one
    # (without, a compressed page may still fail to decompress, or be read changed).
    for page in found[:: max(1, len(found) // 8)]:
        copy = tmp_path / "flipped.parquet"
        shutil.copy(path, copy)
        flip(copy, (page["start"] + page["end"]) // 2, 2)
        try:
            pq.ParquetFile(copy, page_checksum_verification=True).read()
            crc_failed = False
        except (OSError, pa.ArrowException) as error:
            crc_failed = "CRC checksum verification failed" in str(error)
        assert crc_failed == checksums, page


def test_files_without_rows(tmp_path):
    """An empty table is written as one row group of empty chunks, judged by their
    dictionary pages; a file without row groups has no page and counts as checksummed."""
    for checksums in (True, False):
        path = tmp_path / f"empty-{checksums}.parquet"
        pq.write_table(_table(0), path, write_page_checksum=checksums)
        assert pq.ParquetFile(path).metadata.num_row_groups == 1
        assert inspect(path) == checksums
    path = tmp_path / "no-groups.parquet"
    pq.ParquetWriter(path, _table(0).schema).close()
    assert pq.ParquetFile(path).metadata.num_row_groups == 0
    assert inspect(path)


# --------------------------------------------------------------------------- what xent writes


@pytest.mark.parametrize("layout", ["fixed_size_list", "list", "wide", "binary"])
def test_generated_dumps_carry_checksums(tmp_path, layout):
    dump = generate_dump(tmp_path / "dump", rows=3000, classes=2 if layout == "binary" else 5, shards=3,
                         layout=layout, slices={"model": ["a", "b"]}, weights=True, string_labels=layout != "binary",
                         hive={"date": ["d1"]}, row_group_rows=500, bad_shards={"nan": 1}, seed=9)
    for file in dump.files:
        assert inspect(Path(file))
        assert all(p["crc"] is not None for p in pages(Path(file)))
