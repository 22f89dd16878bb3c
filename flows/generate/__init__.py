"""Synthetic prediction dumps for demos, tests and benchmarks (see :mod:`flows.generate.dump`)."""

from .dump import BAD_KINDS, GeneratedDump, PlantedDefect, generate_dump

__all__ = ["BAD_KINDS", "GeneratedDump", "PlantedDefect", "generate_dump"]
