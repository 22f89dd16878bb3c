"""``xent convert``: vLLM or OpenAI log-prob outputs to a token dump, written all-or-nothing."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def cmd_convert(args: argparse.Namespace) -> int:
    from ..inputs.sources import filesystem, is_local
    from ..inputs.token_convert import VOCAB_TABLE, convert_openai, convert_vllm
    from ..report.writing import MANIFEST, read_manifest, write_tables_atomically

    # The write swaps the whole folder: never over files that a person put there.
    fs, path = filesystem(args.out)
    occupied = fs.exists(path) and (not fs.isdir(path) or fs.ls(path))
    if is_local(fs) and occupied and read_manifest(args.out) is None:
        raise UsageError(f"{args.out} holds files without a {MANIFEST}, so xent did not write them; converting would "
                         "replace the whole folder: choose a new folder, or empty this one")
    shards = {"rows_per_shard": args.rows_per_shard} if args.rows_per_shard is not None else {}
    if args.format == "vllm":
        if args.vocab:
            raise UsageError("--vocab is for openai: vLLM outputs carry their token ids")
        dump = convert_vllm(args.input, **shards)
    else:
        dump = convert_openai(args.input, vocab=args.vocab, **shards)
    written = write_tables_atomically(dump.tables, args.out)
    vocab = f", token ids in {written[VOCAB_TABLE]}" if VOCAB_TABLE in written else ""
    print(f"wrote {dump.tokens:,} tokens of {dump.documents:,} documents in {len(dump.shards)} shards under "
          f"{args.out}{vocab}")
    return 0
