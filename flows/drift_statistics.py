"""The table of drift statistics: every metric of ``drift.parquet`` declared once, as data.

The twin of :data:`xent_kernels.statistics.STATISTICS` for drift: each
:class:`DriftStatistic` says what a ``metric`` value of ``drift.parquet`` means, whether
it is information (in nats, or the config's units: divided by
:func:`flows.config.nats_per_unit`) or a count, where it has rows, and its page label.
The config's threshold check (``DRIFT_METRICS``), the conversion to units, the terminal,
the page and the docs' reference read this table; ``tests/test_drift_statistics.py``
checks it against what a drift run writes. Pure data: importing it imports nothing of xent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DriftStatistic:
    """One ``metric`` of ``drift.parquet``.

    Attributes
    ----------
    name : str
        The value of the ``metric`` column.
    description : str
        One line for readers of a report.
    role : "metric" or "count"
        "metric": a divergence, in `value`, that thresholds apply to (``drift.thresholds``);
        "count": a count of joined rows, in `value` as a float.
    units : "information" or "unitless"
        "information": computed in nats and reported in the config's units.
    per_class : bool
        Also one row per (slice, class), with ``class``, ``n`` and ``kl_mean`` set.
    overall_only : bool
        Only on the overall row (the join's counts).
    per_sample : bool
        Only with ``drift.per_sample`` (rows joined on the key columns).
    label : str
        How pages name it (default: its name).
    kinds : "classifier", "tokens" or "any"
        The dumps it is measured on: classifier predictions, language-model token dumps, or both.
    """

    name: str
    description: str
    role: Literal["metric", "count"] = "metric"
    units: Literal["information", "unitless"] = "information"
    per_class: bool = False
    overall_only: bool = False
    per_sample: bool = False
    label: str = ""
    kinds: Literal["classifier", "tokens", "any"] = "classifier"

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)


def _divergences(kind: str, what: str) -> tuple[DriftStatistic, ...]:
    return (
        DriftStatistic(f"{kind}_kl", f"KL(reference‖current) of {what}, smoothed (drift.smoothing)"),
        DriftStatistic(f"{kind}_js", f"Jensen-Shannon divergence of {what}, smoothed (drift.smoothing)"),
        DriftStatistic(f"{kind}_psi", f"population stability index Σ (c − r) ln(c / r) of {what}, smoothed"),
    )


TOP1_IDS = 100  # token dumps: the predicted top-1 marginal's bins, one per id, and one for the rest

DRIFT_STATISTICS: tuple[DriftStatistic, ...] = (
    DriftStatistic("kl_per_sample", "mean KL(reference‖current) over rows joined on the key columns; per class too "
                   "(`kl_mean`), with `n_infinite_kl`", per_class=True, per_sample=True),
    *_divergences("marginal", "the predicted class marginals (Σ w·p per class)"),
    *_divergences("confidence", "the top-probability histograms, binned at the reference's quantiles "
                                "(drift.confidence_bins)"),
    DriftStatistic("kl_lower_bound_per_token", "mean per token of a lower bound of KL(reference‖current), from the "
                   "top-k lists, over tokens joined on document key and position (the same prompts scored twice); "
                   "`n`: the tokens with a bound", per_sample=True, kinds="tokens"),
    *(DriftStatistic(f"top1_marginal_{name}", f"{what} of the predicted top-1 token ids (the listed id or the target "
                     f"with the largest log-prob): the reference's {TOP1_IDS} most predicted ids and one bin for the rest, "
                     "smoothed (drift.smoothing); over all slices only", overall_only=True, kinds="tokens")
      for name, what in (("kl", "KL(reference‖current)"), ("js", "Jensen-Shannon divergence"),
                         ("psi", "population stability index"))),
    DriftStatistic("ce_shift", "token-weighted cross-entropy of the current dump minus the reference's", kinds="tokens"),
    DriftStatistic("position_ce_shift_max", "the largest increase of token-weighted cross-entropy over position "
                   "buckets with at least drift.min_bucket_tokens tokens on both sides", kinds="tokens"),
    DriftStatistic("frequency_ce_shift_max", "the largest increase of token-weighted cross-entropy over the "
                   "frequency buckets of the targets (ranked by the reference's counts) with at least "
                   "drift.min_bucket_tokens tokens on both sides; over all slices only", overall_only=True,
                   kinds="tokens"),
    DriftStatistic("n_matched", "rows joined: their key is in both dumps (tokens: document key and position)",
                   role="count", units="unitless", overall_only=True, per_sample=True, kinds="any"),
    DriftStatistic("n_only_reference", "rows of the reference whose key is not in the current dump", role="count",
                   units="unitless", overall_only=True, per_sample=True, kinds="any"),
    DriftStatistic("n_only_current", "rows of the current dump whose key is not in the reference", role="count",
                   units="unitless", overall_only=True, per_sample=True, kinds="any"),
)
DRIFT_STATISTIC = {s.name: s for s in DRIFT_STATISTICS}

# The divergences, which thresholds apply to (`drift.thresholds`, `drift.slice_thresholds`).
DRIFT_METRICS = tuple(s.name for s in DRIFT_STATISTICS if s.role == "metric")


def drift_metrics(tokens: bool) -> tuple[str, ...]:
    """The metrics of drift on token dumps (`tokens`) or on classifier predictions."""
    kind = "tokens" if tokens else "classifier"
    return tuple(s.name for s in DRIFT_STATISTICS if s.role == "metric" and s.kinds in (kind, "any"))

INFINITE_KL = "n_infinite_kl"

# The columns of drift.parquet after the slice columns: their Arrow types and meaning.
DRIFT_COLUMNS: dict[str, tuple[str, str]] = {
    "overall": ("bool_", "true on the rows over all slices (the slice columns are null there)"),
    "metric": ("string", "a drift statistic (the table above)"),
    "class": ("int32", "the class of a per-class row of `kl_per_sample`; null elsewhere"),
    "n": ("int64", "joined rows of a `kl_per_sample` row; null elsewhere"),
    "value": ("float64", "the statistic: information in the config's `units`, counts as floats"),
    "kl_mean": ("float64", "`value` again on per-class rows (null on the others)"),
    INFINITE_KL: ("int64", "joined rows whose exact KL is infinite (smoothed or not), on `kl_per_sample` rows"),
    "threshold": ("float64", "the threshold that applied (a matching slice override, else the global one); null: none"),
    "breached": ("bool_", "`value` is above `threshold` (NaN breaches too)"),
}
