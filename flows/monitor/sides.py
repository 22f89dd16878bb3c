"""The two sides of a two-sided run (drift, compare), evaluated and joined.

Both kinds evaluate the dump in ``sources`` and the other dump with the same read
settings, check they have the same classes, then join their rows on the key columns
with the kind's :class:`~flows.monitor.join.Pairing`. What each makes of the result
(drift's metric rows, compare's paired differences) stays in its own module.
"""

from __future__ import annotations

from typing import Any

from distributed import Client

from ..config import EvalConfig, JoinSettings
from ..engine import Progress, evaluate_source
from ..errors import DataError
from ..inputs.tokens import TokenSpec
from .join import EvaluatedSide, JoinResult, Pairing, join_sides, prepare_join


def evaluate_sides(config: EvalConfig, client: Client, progress: Progress | None, names: tuple[str, str],
                   other: list[str], data: dict[str, Any]) -> dict[str, EvaluatedSide]:
    """Evaluate the second side (the config's ``sources``), then the first (the `other`
    paths), each from its in-memory data in `data` when not None; both must have the
    same number of classes. `names` are (first, second), as the pairing names them."""
    first, second = names
    second_evaluation = evaluate_source(config, client, data[second], progress)
    first_evaluation = evaluate_source(config.model_copy(update={"sources": other}), client, data[first], progress)
    first_spec, second_spec = first_evaluation.spec, second_evaluation.spec
    if isinstance(second_spec, TokenSpec):  # token dumps: joined on their document key and positions
        _check_same_document_key(first, first_spec, second, second_spec)
    elif first_spec.n_classes != second_spec.n_classes:
        raise DataError(f"{first} has {first_spec.n_classes} classes ({first_spec.reference_file}), "
                        f"{second} has {second_spec.n_classes} ({second_spec.reference_file})")
    return {first: EvaluatedSide(first_evaluation, data[first]), second: EvaluatedSide(second_evaluation, data[second])}


def _check_same_document_key(first: str, first_spec: TokenSpec, second: str, second_spec: TokenSpec) -> None:
    if first_spec.doc_cols != second_spec.doc_cols:
        raise DataError(f"the {first} dump's documents are keyed by {list(first_spec.doc_cols)} "
                        f"({first_spec.reference_file}), the {second} dump's by {list(second_spec.doc_cols)}: set "
                        "tokens.doc_cols to columns both dumps have")


def join_evaluated(config: EvalConfig, settings: JoinSettings, sides: dict[str, EvaluatedSide], client: Client,
                   pairing: Pairing, *, n_bins: int = 1, require_match: bool = False,
                   key: tuple[str, ...] | None = None) -> tuple[tuple[str, ...], JoinResult]:
    """The join key (`key`, else the settings') and both sides' rows joined on it and
    reduced by `pairing` (key columns read with `n_bins` confidence bins); with
    `require_match`, a join that matched no row is a DataError naming both dumps and the
    setting to change."""
    key = key or settings.join_key(config.slice_by)
    joins = prepare_join(config, key, sides, client, pairing, n_bins=n_bins)
    joined = join_sides(config, settings, joins, client, pairing)
    if require_match and joined.matched == 0:
        first, second = pairing.names
        raise DataError(
            f"no row of the {second} dump ({sides[second].evaluation.spec.reference_file}) has its key "
            f"({', '.join(key)}) in the {first} dump ({sides[first].evaluation.spec.reference_file}): "
            f"set {pairing.setting} (or --id-cols) to columns both dumps share"
        )
    return key, joined
