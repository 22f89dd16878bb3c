"""Converters from vLLM and OpenAI log-prob outputs to token dumps (issue #18, section 1):
the objects and JSONL lines these tools produce, as they produce them, turned into
Parquet shards of the token-rows layout, and bad input refused with one line, nothing
written. The conversion streams: shards are staged as they fill, memory stays about one
shard, and a failure or a kill at any record publishes nothing."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import math
import os
import signal
import threading
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import child_env, start_process, stopping, wait_until, xent_command
from flows.cli.commands import build_parser, main
from flows.convert import write_openai_dump, write_vllm_dump
from flows.errors import EXIT_DATA, EXIT_OK, EXIT_USAGE, DataError
from flows.inputs.integrity import inspect_integrity
from flows.inputs.sources import list_inputs
from flows.inputs.token_convert import (
    DEFAULT_ROWS_PER_SHARD,
    OPENAI_ABSENT,
    VOCAB_TABLE,
    TablesInMemory,
    TokenDump,
    convert_openai,
    convert_vllm,
    stream_vllm,
)
from flows.report.writing import MANIFEST, read_manifest, write_tables_atomically

VOCAB_FILE = f"{VOCAB_TABLE}.parquet"


# --------------------------------------------------------------------------- vLLM shapes


@dataclass
class Logprob:
    """vLLM's ``vllm.sequence.Logprob``: the same attribute names."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class RequestOutput:
    """The fields of vLLM's ``RequestOutput`` that the converter reads."""

    request_id: str
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None]


TEXTS = {11: "The", 12: " cat", 13: " sat", 14: " é", 15: " on", 16: " mat", 17: "."}


def vllm_output(request_id: str, token_ids: list[int], seed: int, k: int = 3) -> RequestOutput:
    """What vLLM returns with prompt_logprobs=k: position 0 None, then the top k of each
    position plus the prompt token (so k or k + 1 entries)."""
    rng = np.random.default_rng(seed)
    logprobs: list[dict[int, Logprob] | None] = [None]
    for token in token_ids[1:]:
        ids = [int(i) for i in rng.choice(list(TEXTS), size=k, replace=False)]
        values = sorted(float(v) for v in np.log(rng.dirichlet(np.ones(k + 3)))[:k])[::-1]
        entries = {i: Logprob(v, rank + 1, TEXTS[i]) for rank, (i, v) in enumerate(zip(ids, values))}
        if token not in entries:
            entries[token] = Logprob(values[-1] - 1.5, 40, TEXTS[token])
        logprobs.append(entries)
    return RequestOutput(request_id, token_ids, logprobs)


def as_json(output: RequestOutput, with_request_id: bool = True) -> dict:
    """One line of a JSONL dump of vLLM outputs: JSON object keys are strings."""
    record = {"prompt_token_ids": output.prompt_token_ids, "prompt_logprobs": [
        None if entries is None else {str(i): vars(e) for i, e in entries.items()} for entries in output.prompt_logprobs]}
    return {"request_id": output.request_id, **record} if with_request_id else record


def write_jsonl(path: Path, records: list, opener=open) -> Path:
    with opener(path, "wt") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path


def written(dump: TokenDump, out: Path) -> Path:
    """The dump written as `xent convert` writes it."""
    write_tables_atomically(dump.tables, str(out))
    return out


def read_dump(root) -> pa.Table:
    files = [f.url for f in list_inputs([str(root)])]
    return pa.concat_tables(pq.read_table(f) for f in files)


def expected_vllm_rows(outputs: list[RequestOutput], doc_ids: list) -> list[dict]:
    rows = []
    for doc_id, output in zip(doc_ids, outputs):
        for position in range(1, len(output.prompt_token_ids)):
            target = output.prompt_token_ids[position]
            entries = output.prompt_logprobs[position]
            ranked = sorted(entries.items(), key=lambda item: (-item[1].logprob, item[0]))
            rows.append({"doc_id": doc_id, "position": position, "target": target,
                         "target_logprob": entries[target].logprob, "topk_ids": [i for i, _ in ranked],
                         "topk_logprobs": [e.logprob for _, e in ranked],
                         "target_bytes": len(TEXTS[target].encode())})
    return rows


def assert_rows(table: pa.Table, expected: list[dict]) -> None:
    got = table.to_pylist()
    assert len(got) == len(expected)
    for row, want in zip(got, expected):
        assert row.keys() == want.keys()
        for name, value in want.items():
            if name.endswith("logprobs"):
                np.testing.assert_array_equal(np.float32(row[name]), np.float32(value))
            elif name.endswith("logprob"):
                assert row[name] == np.float32(value), name
            else:
                assert row[name] == value, name


OUTPUTS = [vllm_output("req-a", [11, 12, 13, 14, 15, 16, 17], seed=1),
           vllm_output("req-b", [11, 16, 14], seed=2, k=5),
           vllm_output("req-c", [11], seed=3)]  # one token: nothing scored


def test_vllm_objects_round_trip_with_positions_top_k_and_bytes(tmp_path):
    dump = convert_vllm(OUTPUTS)
    assert (dump.tokens, dump.documents, dump.shards, list(dump.tables)) == (8, 3, ["part-00000"], ["part-00000"])
    table = read_dump(written(dump, tmp_path / "dump"))
    assert table.schema == pa.schema({"doc_id": pa.string(), "position": pa.int32(), "target": pa.int32(),
                                      "target_logprob": pa.float32(), "topk_ids": pa.list_(pa.int32()),
                                      "topk_logprobs": pa.list_(pa.float32()), "target_bytes": pa.int32()})
    assert_rows(table, expected_vllm_rows(OUTPUTS, ["req-a", "req-b", "req-c"]))
    # The target is in every list: k entries when it is among the top k, else k + 1.
    assert {len(ids) for ids in table["topk_ids"].to_pylist()} <= {3, 4, 5, 6}
    assert table.filter(pa.compute.equal(table["target"], 14))["target_bytes"].to_pylist()[0] == 3  # " é"


def test_vllm_jsonl_file_without_request_ids_keys_documents_by_index(tmp_path):
    source = write_jsonl(tmp_path / "outputs.jsonl", [as_json(o, with_request_id=False) for o in OUTPUTS])
    table = read_dump(written(convert_vllm(str(source)), tmp_path / "dump"))
    assert table.schema.field("doc_id").type == pa.int64()
    assert_rows(table, expected_vllm_rows(OUTPUTS, [0, 1, 2]))


def test_vllm_jsonl_with_request_ids_equals_the_objects(tmp_path):
    source = write_jsonl(tmp_path / "outputs.jsonl.gz", [as_json(o) for o in OUTPUTS], opener=gzip.open)
    assert convert_vllm(source).tables["part-00000"].equals(convert_vllm(OUTPUTS).tables["part-00000"])


def test_a_named_pipe_streams_like_a_file(tmp_path):
    """``xent convert vllm <(zcat outputs.jsonl.gz)`` reads a pipe, which cannot seek."""
    fifo = tmp_path / "outputs.jsonl"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=write_jsonl, args=(fifo, [as_json(o) for o in OUTPUTS]), daemon=True)
    feeder.start()
    try:
        assert main(["convert", "vllm", str(fifo), "--out", str(tmp_path / "dump")]) == EXIT_OK
    finally:
        if feeder.is_alive():  # the conversion failed before reading: let the feeder finish
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        feeder.join(10)
    assert_rows(read_dump(tmp_path / "dump"), expected_vllm_rows(OUTPUTS, ["req-a", "req-b", "req-c"]))


def test_minus_inf_is_a_log_prob_and_rounding_above_zero_is_zero(tmp_path):
    output = RequestOutput("r", [11, 12, 13], [None, {12: Logprob(4e-7, 1, " cat"), 13: Logprob(-math.inf, 2, " sat")},
                                               {13: Logprob(-math.inf, 9, " sat"), 12: Logprob(-0.01, 1, " cat")}])
    table = read_dump(written(convert_vllm([output]), tmp_path / "dump"))
    assert table["target_logprob"].to_pylist() == [0.0, -math.inf]
    assert table["topk_ids"].to_pylist() == [[12, 13], [12, 13]]


def test_shards_hold_at_most_rows_per_shard_tokens_with_page_checksums_and_a_manifest(tmp_path):
    outputs = [vllm_output(f"r{i}", [11, *([12, 13, 15] * 9)], seed=i) for i in range(9)]  # 27 tokens each
    dump = convert_vllm(outputs, rows_per_shard=100)
    assert dump.tokens == 243
    files = sorted(written(dump, tmp_path / "dump").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [100, 100, 43]
    for path in files:
        parquet = pq.ParquetFile(path)
        assert inspect_integrity(parquet, str(path), parquet.schema_arrow.names, {})
    manifest = read_manifest(str(tmp_path / "dump"))
    assert sorted(entry["file"] for entry in manifest["files"]) == [f.name for f in files]
    # The same tokens as in one shard, in the same order; a document may continue in the next shard.
    assert read_dump(tmp_path / "dump").equals(convert_vllm(outputs).tables["part-00000"])


def test_a_new_conversion_replaces_the_old_dump_whole(tmp_path, capsys):
    outputs = [vllm_output(f"r{i}", [11, 12, 13, 15, 16], seed=i) for i in range(5)]
    source = write_jsonl(tmp_path / "in.jsonl", [as_json(o) for o in outputs])
    assert main(["convert", "vllm", str(source), "--out", str(tmp_path / "dump"), "--rows-per-shard", "4"]) == EXIT_OK
    assert len(list((tmp_path / "dump").glob("*.parquet"))) == 5
    write_jsonl(source, [as_json(outputs[0])])
    assert main(["convert", "vllm", str(source), "--out", str(tmp_path / "dump")]) == EXIT_OK
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == [MANIFEST, "part-00000.parquet"]
    assert read_dump(tmp_path / "dump").num_rows == 4


# --------------------------------------------------------------------------- OpenAI shapes


def openai_item(token: str, logprob: float, top: list[tuple[str, float]], raw: list[int] | None | str = "utf-8") -> dict:
    """One ``choices[].logprobs.content[]`` item, as the API returns it."""
    def encoded(text):
        return list(text.encode()) if raw == "utf-8" else raw
    return {"token": token, "logprob": logprob, "bytes": encoded(token),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}


def openai_response(response_id: str, choices: list[list[dict]]) -> dict:
    return {"id": response_id, "object": "chat.completion", "created": 1767225600, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(t["token"] for t in content),
                                                 "refusal": None},
                         "logprobs": {"content": content, "refusal": None}, "finish_reason": "stop"}
                        for i, content in enumerate(choices)],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}, "system_fingerprint": "fp_0"}


RESPONSES = [
    openai_response("chatcmpl-1", [
        [openai_item("Hello", -0.25, [("Hello", -0.25), ("Hi", -1.75), ("Hey", OPENAI_ABSENT)]),
         openai_item("!", -0.5, [("!", -0.5), (",", -1.0)])],
        [openai_item("Hi", -1.75, [("Hello", -0.25), ("Hi", -1.75)])],
    ]),
    openai_response("chatcmpl-2", [[openai_item("é", -0.125, [("x", -0.0625), ("é", -0.125)]),
                                    openai_item("\\xe2\\x80", -2.0, [("Hello", -1.0)], raw=[226, 128]),
                                    openai_item("<|end|>", -0.03125, [], raw=None)]]),
]


def test_openai_tokens_keyed_by_a_vocabulary_beside_the_dump(tmp_path):
    dump = convert_openai(RESPONSES)
    assert (dump.tokens, dump.documents, dump.shards) == (6, 3, ["part-00000"])
    vocab = pq.read_table(written(dump, tmp_path / "dump") / VOCAB_FILE).to_pylist()
    # Numbered as met, the target before its top-k list; the sentinel entry "Hey" is not met.
    assert [(v["id"], v["token"], v["bytes"]) for v in vocab] == [
        (0, "Hello", b"Hello"), (1, "Hi", b"Hi"), (2, "!", b"!"), (3, ",", b","), (4, "\u00e9", "é".encode()),
        (5, "x", b"x"), (6, "\\xe2\\x80", b"\xe2\x80"), (7, "<|end|>", None)]
    table = read_dump(tmp_path / "dump")  # the reader's listing leaves _vocab.parquet out
    assert "topk_ids" in table.column_names and table.schema.field("doc_id").type == pa.string()
    assert_rows(table, [
        dict(doc_id="chatcmpl-1:0", position=0, target=0, target_logprob=-0.25, topk_ids=[0, 1],
             topk_logprobs=[-0.25, -1.75], target_bytes=5),
        dict(doc_id="chatcmpl-1:0", position=1, target=2, target_logprob=-0.5, topk_ids=[2, 3],
             topk_logprobs=[-0.5, -1.0], target_bytes=1),
        dict(doc_id="chatcmpl-1:1", position=0, target=1, target_logprob=-1.75, topk_ids=[0, 1],
             topk_logprobs=[-0.25, -1.75], target_bytes=2),
        dict(doc_id="chatcmpl-2:0", position=0, target=4, target_logprob=-0.125, topk_ids=[5, 4],
             topk_logprobs=[-0.0625, -0.125], target_bytes=2),
        # The target outside its top-k list stays outside: the list says it was not in the top k.
        dict(doc_id="chatcmpl-2:0", position=1, target=6, target_logprob=-2.0, topk_ids=[0],
             topk_logprobs=[-1.0], target_bytes=2),
        dict(doc_id="chatcmpl-2:0", position=2, target=7, target_logprob=-0.03125, topk_ids=[],
             topk_logprobs=[], target_bytes=0),
    ])


def test_openai_vocab_of_an_earlier_conversion_keeps_its_ids(tmp_path):
    first = written(convert_openai(RESPONSES[:1]), tmp_path / "day1") / VOCAB_FILE
    later = [openai_response("chatcmpl-3", [[openai_item("new", -0.5, [("Hi", -0.7)]),
                                             openai_item("Hello", -0.1, [])]])]
    written(convert_openai(later, vocab=str(first)), tmp_path / "day2")
    vocab = pq.read_table(tmp_path / "day2" / VOCAB_FILE)
    assert vocab["token"].to_pylist() == ["Hello", "Hi", "!", ",", "new"]
    assert read_dump(tmp_path / "day2")["target"].to_pylist() == [4, 0]


def test_openai_jsonl_and_batch_api_lines_give_the_same_dump(tmp_path):
    plain = write_jsonl(tmp_path / "chat.jsonl", RESPONSES)
    batch = write_jsonl(tmp_path / "batch.jsonl", [
        {"id": f"batch_req_{i}", "custom_id": f"request-{i}", "error": None,
         "response": {"status_code": 200, "request_id": f"r{i}", "body": response}}
        for i, response in enumerate(RESPONSES)])
    objects = convert_openai(RESPONSES).tables
    for dump in (convert_openai(plain), convert_openai(str(batch))):
        assert dump.tables.keys() == objects.keys()
        assert all(dump.tables[name].equals(objects[name]) for name in objects)


def test_openai_without_top_logprobs_writes_no_top_k_columns(tmp_path):
    response = openai_response("c", [[openai_item("a", -0.5, []), openai_item("b", -1.5, [])]])
    assert convert_openai([response]).tables["part-00000"].column_names == ["doc_id", "position", "target", "target_logprob", "target_bytes"]


# --------------------------------------------------------------------------- bad input


def _vllm_bad(change) -> dict:
    record = as_json(vllm_output("req-a", [11, 12, 13, 14], seed=5))
    change(record)
    return record


def _set(path: list, value):
    def change(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _first_other_key(record, position):
    entries = record["prompt_logprobs"][position]
    target = str(record["prompt_token_ids"][position])
    return next(key for key in entries if key != target)


VLLM_BAD = {
    "missing prompt_logprobs": (lambda r: r.pop("prompt_logprobs"), "line 2 (request_id 'req-a'): field 'prompt_logprobs' is missing"),
    "positive": (lambda r: r["prompt_logprobs"][2][str(r["prompt_token_ids"][2])].update(logprob=0.3),
                 "line 2 (request_id 'req-a'), prompt_logprobs[2]['13'].logprob: log-prob 0.3"),
    "nan": (lambda r: r["prompt_logprobs"][1][_first_other_key(r, 1)].update(logprob=math.nan), "logprob: log-prob nan"),
    "none at a scored position": (_set(["prompt_logprobs", 3], None), "prompt_logprobs[3]: None at a scored position"),
    "lengths": (lambda r: r["prompt_token_ids"].append(15), "prompt_logprobs has 4 entries but prompt_token_ids 5"),
    "target absent": (lambda r: r["prompt_logprobs"][1].pop(str(r["prompt_token_ids"][1])),
                      "prompt_logprobs[1]: no entry for the target token id 12"),
    "first not none": (_set(["prompt_logprobs", 0], {"11": {"logprob": -1.0}}), "prompt_logprobs[0]: expected None"),
    "bad id": (_set(["prompt_token_ids", 2], "x"), "prompt_token_ids[2]: expected a token id"),
}


def assert_refused(args: list[str], out: Path, capsys, message: str) -> str:
    """`xent convert ARGS` exits 1 with one line on stderr holding `message`, and writes nothing."""
    assert main(["convert", *args, "--out", str(out)]) == EXIT_DATA
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xent: error: ") and message in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return err


@pytest.mark.parametrize("case", list(VLLM_BAD))
def test_bad_vllm_lines_are_named_and_nothing_is_written(tmp_path, capsys, case):
    change, message = VLLM_BAD[case]
    good = as_json(vllm_output("req-0", [11, 12, 13], seed=4))
    source = write_jsonl(tmp_path / "in.jsonl", [good, _vllm_bad(change)])
    err = assert_refused(["vllm", str(source)], tmp_path / "dump", capsys, message)
    assert err.startswith(f"xent: error: {source}: line 2")


def test_a_token_id_repeated_in_one_top_k_list_is_refused(tmp_path, capsys):
    entry = '{"logprob": -0.5, "rank": 1, "decoded_token": " cat"}'
    repeated = f'{{"prompt_token_ids": [11, 12], "prompt_logprobs": [null, {{"12": {entry}, "13": {entry}, "12": {entry}}}]}}'
    source = write_jsonl(tmp_path / "in.jsonl", [repeated])
    assert_refused(["vllm", str(source)], tmp_path / "dump", capsys,
                   f"{source}: line 1: key '12' appears twice in one JSON object")
    objects = [RequestOutput("r", [11, 12], [None, {12: Logprob(-0.5), "12": Logprob(-0.7)}])]
    with pytest.raises(DataError, match=r"vLLM output 0 \(request_id 'r'\), prompt_logprobs\[1\]: token id 12 appears twice"):
        convert_vllm(objects)


def test_a_document_seen_twice_and_mixed_request_ids_are_refused(tmp_path, capsys):
    with pytest.raises(DataError, match=r"vLLM output 1 \(request_id 'req-a'\): document 'req-a' was already converted "
                                        r"from vLLM output 0"):
        convert_vllm([OUTPUTS[0], OUTPUTS[0]])
    source = write_jsonl(tmp_path / "in.jsonl", [as_json(OUTPUTS[0]), as_json(OUTPUTS[1], with_request_id=False)])
    assert_refused(["vllm", str(source)], tmp_path / "dump", capsys, f"{source}: line 2: no request_id, unlike the first")


OPENAI_BAD = {
    "no logprobs": (_set(["choices", 0, "logprobs"], None), "choices[0]: field 'logprobs' is null; request the completion with logprobs=true"),
    "no bytes field": (lambda r: r["choices"][0]["logprobs"]["content"][1].pop("bytes"),
                       "choices[0].logprobs.content[1]: field 'bytes' is missing"),
    "positive": (_set(["choices", 0, "logprobs", "content", 0, "top_logprobs", 1, "logprob"], 0.5),
                 "choices[0].logprobs.content[0].top_logprobs[1].logprob: log-prob 0.5"),
    "target absent": (_set(["choices", 0, "logprobs", "content", 1, "logprob"], OPENAI_ABSENT),
                      "choices[0].logprobs.content[1].logprob: -9999.0 is OpenAI's mark for a token outside its top 20"),
    "repeated": (_set(["choices", 0, "logprobs", "content", 0, "top_logprobs", 1], {"token": "Hello", "logprob": -2.0,
                                                                                  "bytes": [72, 101, 108, 108, 111]}),
                 "choices[0].logprobs.content[0].top_logprobs[1]: token 'Hello' appears twice"),
    "bad bytes": (_set(["choices", 0, "logprobs", "content", 0, "bytes"], [72, 999]), "content[0].bytes: expected a list of integers"),
}


@pytest.mark.parametrize("case", list(OPENAI_BAD))
def test_bad_openai_lines_are_named_and_nothing_is_written(tmp_path, capsys, case):
    change, message = OPENAI_BAD[case]
    bad = json.loads(json.dumps(RESPONSES[0]))
    change(bad)
    source = write_jsonl(tmp_path / "chat.jsonl", [RESPONSES[1], bad])
    err = assert_refused(["openai", str(source)], tmp_path / "dump", capsys, message)
    assert err.startswith(f"xent: error: {source}: line 2 (id 'chatcmpl-1'), choices[0]")


def test_a_line_that_is_not_json_a_missing_file_and_an_empty_input(tmp_path, capsys):
    source = write_jsonl(tmp_path / "chat.jsonl", [RESPONSES[0], '{"id": "chatcmpl-2", "choices": ['])
    assert_refused(["openai", str(source)], tmp_path / "dump", capsys, f"{source}: line 2: not JSON")
    assert_refused(["openai", str(tmp_path / "absent.jsonl")], tmp_path / "dump", capsys, "absent.jsonl: no such file")
    empty = write_jsonl(tmp_path / "empty.jsonl", [as_json(OUTPUTS[2]), ""])
    assert_refused(["vllm", str(empty)], tmp_path / "dump", capsys, "no scored token in the input")


def test_a_vocab_that_xent_did_not_write_is_refused(tmp_path, capsys):
    pq.write_table(pa.table({"id": pa.array([0, 2], pa.int32()), "token": ["a", "b"], "bytes": [b"a", b"b"]}),
                   tmp_path / "vocab.parquet")
    source = write_jsonl(tmp_path / "chat.jsonl", RESPONSES)
    assert_refused(["openai", str(source), "--vocab", str(tmp_path / "vocab.parquet")], tmp_path / "dump", capsys,
                   "vocab.parquet: row 1: expected id 1 and a token not seen before, found id 2 for 'b'")


# --------------------------------------------------------------------------- command line


def test_cli_converts_vllm_and_openai(tmp_path, capsys):
    vllm = write_jsonl(tmp_path / "vllm.jsonl", [as_json(o) for o in OUTPUTS])
    assert main(["convert", "vllm", str(vllm), "--out", str(tmp_path / "v"), "--rows-per-shard", "5"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"wrote 8 tokens of 3 documents in 2 shards under {tmp_path / 'v'}"
    openai = write_jsonl(tmp_path / "chat.jsonl", RESPONSES)
    assert main(["convert", "openai", str(openai), "--out", str(tmp_path / "o")]) == EXIT_OK
    assert capsys.readouterr().out.strip() == (f"wrote 6 tokens of 3 documents in 1 shards under {tmp_path / 'o'}, "
                                               f"token ids in {tmp_path / 'o' / VOCAB_FILE}")
    assert read_dump(tmp_path / "o").equals(convert_openai(RESPONSES).tables["part-00000"])
    assert pq.read_table(tmp_path / "o" / VOCAB_FILE).equals(convert_openai(RESPONSES).tables[VOCAB_TABLE])


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    source = write_jsonl(tmp_path / "vllm.jsonl", [as_json(OUTPUTS[0])])
    assert main(["convert", "vllm", str(source), "--out", str(tmp_path / "v"), "--vocab", "x.parquet"]) == EXIT_USAGE
    assert "--vocab is for openai" in capsys.readouterr().err
    assert main(["convert", "vllm", str(source), "--out", str(tmp_path / "v"), "--rows-per-shard", "0"]) == EXIT_USAGE
    assert "rows_per_shard must be a whole number of at least 1" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["convert", "vllm", str(source), "--out", str(tmp_path / "mine")]) == EXIT_USAGE
    assert "holds files without a _manifest.json, so xent did not write them" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "llamacpp", str(source), "--out", str(tmp_path / "v")])
    assert exit_.value.code == EXIT_USAGE
    assert not (tmp_path / "v").exists()


def test_the_help_states_the_default_shard_size():
    convert = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "convert" in a.choices)
    assert f"(default {DEFAULT_ROWS_PER_SHARD:,})" in convert.choices["convert"].format_help().replace("\n", " ")


def test_vllm_k_travels_with_the_dump_so_an_appended_target_is_outside_the_top_k(tmp_path):
    """vLLM appends the prompt token when it is outside the top k: the converter writes k
    (from the ranks) in the schema, and xent eval counts such targets outside."""
    from flows import evaluate
    from flows.report.writing import write_tables_atomically

    outputs = [vllm_output(f"r{i}", [11, 12, 13, 14, 15, 16, 17], seed=i) for i in range(20)]
    folder = tmp_path / "dump"
    write_tables_atomically(convert_vllm(outputs).tables, str(folder))
    inside = [token in entries and entries[token].rank <= 3 for output in outputs
              for token, entries in zip(output.prompt_token_ids[1:], output.prompt_logprobs[1:])]
    assert 0 < sum(inside) < len(inside)
    summary = evaluate(folder, kind="tokens").summary.iloc[-1]
    assert summary["topk_share"] == pytest.approx(sum(inside) / len(inside), rel=1e-12)


# --------------------------------------------------------------------------- streaming


def long_vllm_lines(documents: int, tokens: int, k: int = 5) -> list[dict]:
    """JSONL records of vLLM outputs, `tokens` scored tokens each, cheap to make in bulk."""
    records = []
    for d in range(documents):
        ids = [100 + (d * 7 + i * 13) % 50 for i in range(tokens + 1)]
        logprobs = [None] + [{str(ids[i] if j == 0 else 200 + j): {"logprob": -0.1 * (j + 1), "rank": j + 1,
                                                                      "decoded_token": "ab"} for j in range(k)}
                             for i in range(1, tokens + 1)]
        records.append({"request_id": f"doc-{d}", "prompt_token_ids": ids, "prompt_logprobs": logprobs})
    return records


@pytest.mark.slow
def test_memory_holds_about_one_shard_however_long_the_input(tmp_path):
    """The peak of Python allocations (tracemalloc: the rows' arrays, their NumPy copies,
    the Parquet bytes, the parsed JSON line) converting 4N documents is about that of N
    documents. Holding every shard until the end, as the converter once did, made it
    2.9x here; holding one shard gives 1.1x (the rest is one entry per document)."""
    sources = {n: write_jsonl(tmp_path / f"in-{n}.jsonl", long_vllm_lines(n, 100)) for n in (40, 160)}
    write_vllm_dump(str(sources[40]), str(tmp_path / "warm"), rows_per_shard=500)  # lazy imports and caches first
    peaks = {}
    for n, source in sources.items():
        tracemalloc.start()
        try:
            dump = write_vllm_dump(str(source), str(tmp_path / f"out-{n}"), rows_per_shard=500)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (dump.tokens, len(dump.shards)) == (n * 100, n * 100 // 500)
    assert peaks[160] < 1.5 * peaks[40], peaks


def test_each_shard_is_staged_as_soon_as_it_is_full(tmp_path):
    """A generator input looks into the staging folder before each record: by then every
    earlier document (one shard each) is there, and nothing is at the output path."""
    outputs = [vllm_output(f"r{i}", [11, 12, 13, 15, 16], seed=i) for i in range(6)]  # 4 tokens each
    out = tmp_path / "dump"
    seen = []

    def records():
        for output in outputs:
            staged = [p.name for p in tmp_path.glob(".dump.tmp-*/*.parquet")]
            seen.append((len(staged), out.exists()))
            yield output

    dump = write_vllm_dump(records(), str(out), rows_per_shard=4)
    assert seen == [(i, False) for i in range(6)]
    assert dump.shards == [f"part-{i:05d}" for i in range(6)] and (dump.tokens, dump.documents) == (24, 6)
    assert_rows(read_dump(out), expected_vllm_rows(outputs, [o.request_id for o in outputs]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]


def test_bad_input_in_the_last_record_leaves_the_old_dump_and_no_staging(tmp_path, capsys):
    records = [as_json(vllm_output(f"r{i}", [11, 12, 13, 15, 16], seed=i)) for i in range(30)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "dump"
    assert main(["convert", "vllm", str(source), "--out", str(out), "--rows-per-shard", "7"]) == EXIT_OK
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 19  # 120 tokens in 18 shards, and the manifest
    records[-1]["prompt_logprobs"][2] = None
    write_jsonl(source, records)
    assert main(["convert", "vllm", str(source), "--out", str(out), "--rows-per-shard", "7"]) == EXIT_DATA
    assert "line 30 (request_id 'r29'), prompt_logprobs[2]: None at a scored position" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", "in.jsonl"]
    # With nothing at the path before, nothing is there after.
    assert_refused(["vllm", str(source), "--rows-per-shard", "7"], tmp_path / "new", capsys, "None at a scored position")


def test_a_k_or_top_k_lists_first_seen_in_a_later_shard_reach_the_earlier_shards(tmp_path):
    """The k (vLLM's largest rank) and whether an OpenAI dump has top-k lists are known at
    the end: the shards written before are written again, the manifest with them."""
    early = RequestOutput("a", [11, 12, 13], [None, {12: Logprob(-0.5, 1, " cat"), 13: Logprob(-0.9, 2, " sat")},
                                              {13: Logprob(-0.2, 1, " sat")}])
    outputs = [early, vllm_output("b", [11, 12, 13, 14, 15], seed=3, k=4)]  # ranks up to 4 from here
    dump = write_vllm_dump(outputs, str(tmp_path / "v"), rows_per_shard=2)
    assert dump.shards == ["part-00000", "part-00001", "part-00002"]
    for name in dump.shards:
        assert pq.read_schema(dump.paths[name]).metadata[b"xent.topk"] == b"4", name
    assert_rows(read_dump(tmp_path / "v"), expected_vllm_rows(outputs, ["a", "b"]))
    for entry in read_manifest(str(tmp_path / "v"))["files"]:
        data = (tmp_path / "v" / entry["file"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])

    plain = openai_response("c", [[openai_item("a", -0.5, []), openai_item("b", -1.5, [])]])
    dump = write_openai_dump([plain, RESPONSES[0]], str(tmp_path / "o"), rows_per_shard=2)
    table = read_dump(tmp_path / "o")
    assert table.column_names == ["doc_id", "position", "target", "target_logprob", "topk_ids", "topk_logprobs",
                                  "target_bytes"]
    assert table["topk_ids"].to_pylist() == [[], [], [2, 3], [4, 5], [2, 3]]
    assert table["topk_logprobs"].to_pylist() == [[], [], [-0.25, -1.75], [-0.5, -1.0], [-0.25, -1.75]]
    assert all(dump.paths[name].endswith(f"{name}.parquet") for name in [*dump.shards, VOCAB_TABLE])


def test_streaming_into_memory_gives_the_tables_of_convert_vllm():
    outputs = [vllm_output(f"r{i}", [11, 12, 13, 15, 16, 17], seed=i) for i in range(5)]
    sink = TablesInMemory()
    converted = stream_vllm(outputs, sink, rows_per_shard=6)
    assert (converted.shards, converted.tokens, converted.documents) == (list(sink.tables), 25, 5)
    assert all(sink.tables[n].equals(convert_vllm(outputs, rows_per_shard=6).tables[n]) for n in converted.shards)


@pytest.mark.slow
def test_a_conversion_killed_midway_leaves_no_dump_and_the_next_run_succeeds(tmp_path):
    """`xent convert` reads a named pipe: the test writes three shards' worth of records,
    waits until a shard is staged, and SIGKILLs the process while it waits for more."""
    records = [as_json(vllm_output(f"r{i}", [11, 12, 13, 15, 16], seed=i)) for i in range(12)]
    fifo, out = tmp_path / "in.jsonl", tmp_path / "dump"
    os.mkfifo(fifo)
    args = [*xent_command(), "convert", "vllm", str(fifo), "--out", str(out), "--rows-per-shard", "4"]
    with stopping([start_process("xent convert", args, tmp_path / "convert.log", child_env(DASK_SCHEDULER_ADDRESS=None),
                                 cwd=tmp_path)]) as (convert,):
        def writer() -> int | None:
            convert.check_alive()
            try:
                return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:  # no reader yet
                    raise
                return None

        fd = wait_until(writer, 60, "xent convert to open its input")
        try:
            os.set_blocking(fd, True)
            os.write(fd, "".join(json.dumps(r) + "\n" for r in records[:3]).encode())
            staged = wait_until(lambda: convert.check_alive() or list(tmp_path.glob(".dump.tmp-*/part-00002.parquet")),
                                60, "the third shard to be staged")
            os.kill(convert.pid, signal.SIGKILL)
            assert convert.process.wait(30) == -signal.SIGKILL
        finally:
            os.close(fd)
    assert not out.exists() and staged[0].parent.exists()  # what a kill leaves: a hidden staging folder
    os.unlink(fifo)
    write_jsonl(tmp_path / "in.jsonl", records)
    assert main(["convert", "vllm", str(tmp_path / "in.jsonl"), "--out", str(out), "--rows-per-shard", "4"]) == EXIT_OK
    assert_rows(read_dump(out), expected_vllm_rows([vllm_output(f"r{i}", [11, 12, 13, 15, 16], seed=i) for i in range(12)],
                                                   [f"r{i}" for i in range(12)]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convert.log", "dump", "in.jsonl"]  # the staging is gone
