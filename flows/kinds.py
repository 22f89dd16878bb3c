"""The kinds of prediction numbers a dump can hold, and the columns they go by.

Plain Python, so the command line can offer the choices without importing pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindColumns:
    """The default prediction column names of one kind, by layout."""

    list_column: str  # one list column of C values per row: "logits"
    wide_prefix: str  # C float columns "logit_0" .. "logit_{C-1}"
    binary_column: str  # one float column, for a binary model: "logit"


# xent_kernels' KIND_CODES has the same names (it cannot import flows).
KINDS: dict[str, KindColumns] = {
    "logits": KindColumns("logits", "logit_", "logit"),
    "probs": KindColumns("probs", "prob_", "prob"),
    "log_probs": KindColumns("log_probs", "log_prob_", "log_prob"),
}

# Language-model token dumps: a scored token per row (or per list entry), not a class
# row, so they have their own columns (flows.config.TokenColumns) and state.
TOKENS = "tokens"
