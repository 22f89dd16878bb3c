"""Synthetic prediction dumps for demos, tests and benchmarks: classifier dumps
(:mod:`flows.generate.dump`) and language-model token dumps (:mod:`flows.generate.tokens`)."""

from .dump import BAD_KINDS, GeneratedDump, PlantedDefect, generate_dump
from .tokens import TokenDump, generate_token_dump

__all__ = ["BAD_KINDS", "GeneratedDump", "PlantedDefect", "TokenDump", "generate_dump", "generate_token_dump"]
