"""Synthetic prediction dumps for demos, tests and benchmarks."""

from .dump import BAD_KINDS, BadShard, GeneratedDump, generate_dump, load_arrays

__all__ = ["BAD_KINDS", "BadShard", "GeneratedDump", "generate_dump", "load_arrays"]
