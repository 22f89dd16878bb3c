"""``xent convert``: vLLM or OpenAI log-prob outputs to a token dump, streamed shard by
shard and published all-or-nothing (:mod:`flows.convert`)."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import write_openai_dump, write_vllm_dump
    from ..inputs.token_convert import VOCAB_TABLE

    shards = {"rows_per_shard": args.rows_per_shard} if args.rows_per_shard is not None else {}
    if args.format == "vllm":
        if args.vocab:
            raise UsageError("--vocab is for openai: vLLM outputs carry their token ids")
        dump = write_vllm_dump(args.input, args.out, **shards)
    else:
        dump = write_openai_dump(args.input, args.out, vocab=args.vocab, **shards)
    vocab = f", token ids in {dump.paths[VOCAB_TABLE]}" if VOCAB_TABLE in dump.paths else ""
    print(f"wrote {dump.tokens:,} tokens of {dump.documents:,} documents in {len(dump.shards)} shards under "
          f"{args.out}{vocab}")
    return 0
