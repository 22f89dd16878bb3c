"""A token pair state's report: the paired differences and the KL lower bound per
slice, per position bucket and per frequency bucket, with paired jackknife intervals
over document buckets, and the per-token differences (definitions:
:mod:`xent_kernels.token_pairs`).

Every table row holds, for metric m of ``PAIRED_TOKEN_METRICS``: ``m_baseline``,
``m_candidate``, ``m_diff`` (candidate - baseline) with ``m_diff_lo``/``m_diff_hi`` and
``m_verdict``; and the KL columns of ``KL_COLUMNS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .intervals import DEFAULT_LEVEL, jackknife_bounds
__all__ = ["KL_BINS", "KL_EDGES", "KL_FLOOR", "KL_QUANTILES", "PAIRED_TOKEN_METRICS", "PAIR_FIELDS",
           "PERCENTILE_ERROR", "TokenPairReport", "kl_quantiles"]

PAIR_FIELDS = (
    "tokens",  # tokens finite on both sides
    "ce_baseline",  # Σ -ln p_t
    "ce_candidate",  # Σ -ln q_t
    "bytes",  # Σ target_bytes
    "wins",  # candidate CE lower beyond the tie tolerance
    "ties",
    "losses",
    "target_dp",  # Σ q_t - p_t
    "listed_tokens",  # tokens with a top-k list on both sides
    "top1_baseline",  # of those: the target is the baseline's top-1
    "top1_candidate",
    "top1_agree",  # both sides' top-1 ids agree
    "kl_tokens",  # of the listed: a finite KL_c
    "kl",  # Σ KL_c(p‖q)
    "kl_reverse",  # Σ KL_c(q‖p)
    "mass_baseline",  # Σ p over the known ids
    "mass_candidate",
    "kl_infinite",  # listed tokens whose KL_c(p‖q) is infinite (a known id with q = 0 < p)
    "kl_reverse_tokens",  # of the listed: a finite KL_c(q‖p)
)
P = {name: i for i, name in enumerate(PAIR_FIELDS)}

# A tail's mass is known only to the rounding of the listed log-probs (float32 dumps:
# about 1e-7): as a divisor it is taken as at least this. p ln(p/q) falls as q grows, so
# this can only lower the bound, and rounding never makes it infinite.
TAIL_FLOOR = 1e-6
KL_FLOOR = 1e-9  # nats: the histogram's first edge; below it one bin
KL_PER_DECADE = 100
KL_DECADES = 13  # up to 1e4 nats; above it one bin
KL_EDGES = KL_FLOOR * 10.0 ** (np.arange(KL_DECADES * KL_PER_DECADE + 1) / KL_PER_DECADE)
KL_CEILING = float(KL_EDGES[-1])
KL_BINS = len(KL_EDGES) + 1  # [0, floor), the log bins, [1e4, inf)




class TokenPairState(Protocol):
    """What the report reads of a ``TokenPairStats`` (whose module imports this one)."""

    slice_keys: tuple[tuple, ...]
    position_edges: tuple[int, ...]
    frequency_edges: tuple[int, ...]
    cells: np.ndarray
    cells_comp: np.ndarray
    hist_position: np.ndarray
    hist_frequency: np.ndarray
    kl_max: np.ndarray
    left_out: np.ndarray
    token_sums: np.ndarray
    token_base: np.ndarray
    has_bytes: bool


# metric -> (numerator field per side, denominator field, +1 higher is better / -1 lower)
PAIRED_TOKEN_METRICS = {
    "ce_mean": (("ce_baseline", "ce_candidate"), "tokens", -1),
    "perplexity": (("ce_baseline", "ce_candidate"), "tokens", -1),
    "bits_per_byte": (("ce_baseline", "ce_candidate"), "bytes", -1),
    "top1_accuracy": (("top1_baseline", "top1_candidate"), "listed_tokens", +1),
}
KL_QUANTILES = {"median": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
PERCENTILE_ERROR = 10 ** (1 / (2 * KL_PER_DECADE)) - 1  # relative, of a percentile read from the histogram


def _divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _jackknife(theta, sums: np.ndarray, used: np.ndarray, level: float):
    """Value and jackknife bounds of ``theta(totals)`` for rows of (K, F) bucket sums."""
    total = sums.sum(axis=1)
    value = theta(total)
    leave_one_out = theta(total[:, None] - sums)
    lo, hi = jackknife_bounds(value, leave_one_out, used, level)
    return value, lo, hi


def _verdicts(lo: np.ndarray, hi: np.ndarray, better: int) -> np.ndarray:
    up, down = ("better", "worse") if better > 0 else ("worse", "better")
    out = np.full(len(lo), "no_significant_difference", dtype=object)
    out[lo > 0] = up
    out[hi < 0] = down
    out[np.isnan(lo) | np.isnan(hi)] = None
    return out


def _rows(sums: np.ndarray, hist: np.ndarray, kl_max: np.ndarray, scale: float, level: float,
          has_bytes: bool) -> dict[str, np.ndarray]:
    """The columns of rows of (K, F) sums, their KL histograms and largest KL."""
    total = sums.sum(axis=1)
    out: dict[str, np.ndarray] = {name: total[:, P[name]].astype(np.int64)
                                  for name in ("tokens", "wins", "ties", "losses", "listed_tokens", "kl_tokens",
                                               "kl_infinite")}
    for metric, ((base, cand), denominator, better) in PAIRED_TOKEN_METRICS.items():
        if metric == "bits_per_byte" and not has_bytes:
            continue
        unit = {"ce_mean": scale, "bits_per_byte": 1 / math.log(2)}.get(metric, 1.0)
        transform = np.exp if metric == "perplexity" else (lambda x: x)

        def side(x, field):
            return transform(_divide(x[..., P[field]], x[..., P[denominator]]) * unit)

        value, lo, hi = _jackknife(lambda x: side(x, cand) - side(x, base), sums, sums[..., P[denominator]] > 0, level)
        out[f"{metric}_baseline"], out[f"{metric}_candidate"] = side(total, base), side(total, cand)
        out[f"{metric}_diff"], out[f"{metric}_diff_lo"], out[f"{metric}_diff_hi"] = value, lo, hi
        out[f"{metric}_verdict"] = _verdicts(lo, hi, better)
    out["target_p_diff"], out["target_p_diff_lo"], out["target_p_diff_hi"] = _jackknife(
        lambda x: _divide(x[..., P["target_dp"]], x[..., P["tokens"]]), sums, sums[..., P["tokens"]] > 0, level)
    listed = sums[..., P["listed_tokens"]] > 0
    out["top1_agreement"], out["top1_agreement_lo"], out["top1_agreement_hi"] = _jackknife(
        lambda x: _divide(x[..., P["top1_agree"]], x[..., P["listed_tokens"]]), sums, listed, level)
    for side in ("baseline", "candidate"):
        out[f"{side}_known_mass"] = _divide(total[:, P[f"mass_{side}"]], total[:, P["listed_tokens"]])
    finite = sums[..., P["kl_tokens"]] > 0
    value, lo, hi = _jackknife(lambda x: _divide(x[..., P["kl"]], x[..., P["kl_tokens"]]) * scale, sums, finite, level)
    out["kl_lower_bound_mean"], out["kl_lower_bound_mean_lo"], out["kl_lower_bound_mean_hi"] = value, lo, hi
    quantiles = kl_quantiles(hist, kl_max, tuple(KL_QUANTILES.values())) * scale
    for j, name in enumerate(KL_QUANTILES):
        out[f"kl_lower_bound_{name}"] = quantiles[:, j]
    out["kl_lower_bound_max"] = np.where(total[:, P["kl_tokens"]] > 0, kl_max * scale, np.nan)
    value, lo, hi = _jackknife(lambda x: _divide(x[..., P["kl_reverse"]], x[..., P["kl_reverse_tokens"]]) * scale,
                               sums, sums[..., P["kl_reverse_tokens"]] > 0, level)
    out["kl_lower_bound_reverse_mean"] = value
    out["kl_lower_bound_reverse_mean_lo"], out["kl_lower_bound_reverse_mean_hi"] = lo, hi
    return out


@dataclass
class TokenPairReport:
    """The finalized comparison: ``rows`` (one per slice — index -1 for all slices — and
    scope: ``all``, ``position`` buckets by ``bucket_from``, ``frequency`` buckets by
    rank ``bucket_from``..``bucket_to``) and ``per_token`` (per target id)."""

    rows: dict[str, np.ndarray]
    per_token: dict[str, np.ndarray]
    units: str
    left_out: np.ndarray  # (S + 1,): tokens with a -inf log-prob on either side, per slice and overall

    @classmethod
    def of(cls, state: TokenPairState, base="e", level: float = DEFAULT_LEVEL) -> "TokenPairReport":
        scale = 1.0 / math.log(2) if base == 2 else 1.0
        cells = state.cells + state.cells_comp  # (S, P, Q, K, F)
        s, p, q = cells.shape[:3]
        slice_index = np.append(np.arange(s), -1)
        with_all = np.concatenate([cells, cells.sum(axis=0, keepdims=True)], axis=0)  # (S+1, P, Q, K, F)
        hist_p = np.concatenate([state.hist_position, state.hist_position.sum(axis=0, keepdims=True)], axis=0)
        hist_q = np.concatenate([state.hist_frequency, state.hist_frequency.sum(axis=0, keepdims=True)], axis=0)
        kl_max = np.concatenate([state.kl_max, state.kl_max.max(axis=0, keepdims=True, initial=0.0)], axis=0)
        position_edges = np.array(state.position_edges, dtype=np.int64)
        frequency_edges = np.array(state.frequency_edges, dtype=np.int64)
        parts = [
            ("all", np.repeat(slice_index, 1), np.full(s + 1, -1), np.full(s + 1, -1), with_all.sum(axis=(1, 2)),
             hist_p.sum(axis=1), kl_max.max(axis=(1, 2), initial=0.0)),
            ("position", np.repeat(slice_index, p), np.tile(position_edges, s + 1),
             np.tile(np.append(position_edges[1:] - 1, -1), s + 1), with_all.sum(axis=2).reshape(-1, *cells.shape[3:]),
             hist_p.reshape(-1, hist_p.shape[-1]), kl_max.max(axis=2, initial=0.0).reshape(-1)),
            ("frequency", np.repeat(slice_index, q), np.tile(frequency_edges, s + 1),
             np.tile(np.append(frequency_edges[1:] - 1, -1), s + 1), with_all.sum(axis=1).reshape(-1, *cells.shape[3:]),
             hist_q.reshape(-1, hist_q.shape[-1]), kl_max.max(axis=1, initial=0.0).reshape(-1)),
        ]
        columns: dict[str, list[np.ndarray]] = {}
        for scope, slices, start, stop, sums, hist, largest in parts:
            part = {"slice": slices, "scope": np.full(len(slices), scope, dtype=object), "bucket_from": start,
                    "bucket_to": stop, **_rows(sums, hist, largest, scale, level, state.has_bytes)}
            for name, values in part.items():
                columns.setdefault(name, []).append(values)
        rows = {name: np.concatenate(values) for name, values in columns.items()}

        token_n = state.token_sums[..., 0]
        seen = np.flatnonzero(token_n.sum(axis=1))
        pair = np.stack([token_n[seen], state.token_sums[seen, :, 1] + state.token_sums[seen, :, 2]], axis=-1)
        diff, lo, hi = _jackknife(lambda x: _divide(x[..., 1], x[..., 0]) * scale, pair, pair[..., 0] > 0, level)
        n = token_n[seen].sum(axis=1)
        baseline = _divide(state.token_base[seen, 0] + state.token_base[seen, 1], n) * scale
        per_token = {"target": seen, "tokens": n.astype(np.int64), "ce_mean_baseline": baseline,
                     "ce_mean_candidate": baseline + diff, "ce_mean_diff": diff, "ce_mean_diff_lo": lo,
                     "ce_mean_diff_hi": hi}
        left_out = np.append(state.left_out, state.left_out.sum())
        return cls(rows, per_token, "bits" if base == 2 else "nats", left_out)


def kl_quantiles(hist: np.ndarray, maximum: np.ndarray, quantiles: tuple[float, ...]) -> np.ndarray:
    """Quantiles of the values counted in `hist` (..., KL_BINS) with largest value
    `maximum` (...): for each q the value of the smallest rank r with r >= q·n (numpy's
    ``inverted_cdf``), read as its bin's geometric middle (0 below ``KL_FLOOR``; never
    above `maximum`). NaN where nothing is counted. Shape (..., len(quantiles))."""
    hist = np.asarray(hist)
    counts = hist.sum(axis=-1)
    cumulative = np.cumsum(hist, axis=-1)
    middle = np.concatenate([[0.0], np.sqrt(KL_EDGES[:-1] * KL_EDGES[1:]), [np.inf]])
    out = np.full((*counts.shape, len(quantiles)), np.nan)
    for j, q in enumerate(quantiles):
        rank = np.maximum(np.ceil(q * counts), 1)
        where = (cumulative < rank[..., None]).sum(axis=-1)  # the first bin reaching the rank
        value = middle[np.minimum(where, KL_BINS - 1)]
        out[..., j] = np.where(counts > 0, np.minimum(value, maximum), np.nan)
    return out
