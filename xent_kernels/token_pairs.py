"""Two language models' log-probs of the same tokens: a mergeable state of the paired
differences and of the teacher–student KL, bounded below from top-k lists.

The baseline is the teacher p, the candidate the student q. For each token scored by
both, with the same target t:

* CE of each side, -ln p_t and -ln q_t; the paired differences of token-weighted CE,
  perplexity, bits per byte and top-1 accuracy; wins, ties and losses of the
  candidate's per-token CE; Δp, the mean of q_t - p_t;
* with a top-k list on both sides, the vocabulary is cut into the ids whose log-prob
  both sides know (the ids listed on both, and t) plus one tail bin holding the rest of
  each side's mass, and

      KL_c = Σ_known p_i ln(p_i / q_i) + p_tail ln(p_tail / q_tail).

  Merging ids into one bin can only lose information (the log-sum inequality), so KL_c
  never exceeds the true KL(p‖q), and equals it when both lists are the whole
  vocabulary: it is a **lower bound**, named so everywhere. The reverse direction
  KL_c(q‖p) uses the same bins. Beside it: each side's mass on the known ids (how much
  of the distributions the bound sees) and the share of tokens whose top-1 ids agree.
  A token whose bound is infinite (an id the teacher gives mass that the student gives
  a log-prob of -inf) is counted and left out of the KL sums.

The KL distribution's percentiles come from a fixed-edge log histogram (:data:`KL_EDGES`):
exact counts that merge by addition; a percentile read from it lies within a factor
10^(1/200) (±1.16%) of the exact one (numpy's ``inverted_cdf``) at or above
``KL_FLOOR``, and within ``KL_FLOOR`` of it below; the largest value is kept exactly.

Sums are per (slice, position bucket, frequency bucket, jackknife bucket), compensated
float64; a token's jackknife bucket is its document's, on both sides, so intervals are
paired jackknife intervals over document buckets. Histograms are per (slice, position
bucket) and per (slice, frequency bucket). Per target id the state holds the tokens,
the CE difference per bucket (for the tokens that got worse most, with intervals) and
the baseline's CE sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import numpy as np

from ._numba import strict_kernel
from .intervals import DEFAULT_LEVEL
from .merge_rules import two_sum
from .token_documents import neumaier
from .token_pair_report import KL_BINS, KL_CEILING, KL_FLOOR, KL_PER_DECADE, P, PAIR_FIELDS, TAIL_FLOOR, TokenPairReport
from .tokens import ABSENT_LOGPROB

__all__ = ["TokenPairStats", "kl_bin", "take_lists", "token_pairs_partial"]

# the cells' fields, by name (Numba reads these module ints as constants)
TOKENS = P["tokens"]
CE_BASELINE = P["ce_baseline"]
CE_CANDIDATE = P["ce_candidate"]
BYTES = P["bytes"]
WINS = P["wins"]
TIES = P["ties"]
LOSSES = P["losses"]
TARGET_DP = P["target_dp"]
LISTED_TOKENS = P["listed_tokens"]
TOP1_BASELINE = P["top1_baseline"]
TOP1_CANDIDATE = P["top1_candidate"]
TOP1_AGREE = P["top1_agree"]
KL_TOKENS = P["kl_tokens"]
KL = P["kl"]
KL_REVERSE = P["kl_reverse"]
MASS_BASELINE = P["mass_baseline"]
MASS_CANDIDATE = P["mass_candidate"]
KL_INFINITE = P["kl_infinite"]
KL_REVERSE_TOKENS = P["kl_reverse_tokens"]

@strict_kernel
def _add(sums, comps, row, col, x):
    sums[row, col], error = neumaier(sums[row, col], x)
    comps[row, col] += error


@strict_kernel
def kl_bin(kl):
    """The histogram bin of a KL value >= 0."""
    if kl < KL_FLOOR:
        return 0
    if kl >= KL_CEILING:
        return KL_BINS - 1
    b = 1 + int(math.floor(math.log10(kl / KL_FLOOR) * KL_PER_DECADE))
    return min(max(b, 1), KL_BINS - 1)


@strict_kernel
def _top1(own_lp, target, offsets, ids, lps, i):
    """(the top-1 id, whether the target is it) of token i's list and target."""
    best_id = target
    best = own_lp
    greater = 0
    for j in range(offsets[i], offsets[i + 1]):
        v = lps[j]
        u = ids[j]
        if v <= ABSENT_LOGPROB or u == target:
            continue
        if v > own_lp:
            greater += 1
        if v > best or (v == best and u < best_id):
            best = v
            best_id = u
    return best_id, greater == 0


@strict_kernel
def _pair_pass(group, hist_pos_row, hist_freq_row, bucket, target, lp_b, lp_c, n_bytes, has_bytes, b_off, b_ids,
               b_lps, c_off, c_ids, c_lps, has_lists, tie, n_buckets, cells, cells_comp, hist_pos, hist_freq, kl_max,
               token_sums, token_base, stamp, stamp_lp):
    """Fold aligned token pairs into the state arrays; returns the tokens left out for base_lp
    -inf log-prob on either side, per group."""
    n = target.shape[0]
    left_out = np.zeros(kl_max.shape[0], dtype=np.int64)
    for i in range(n):
        g = group[i]
        k = bucket[i]
        t = target[i]
        base_lp = lp_b[i]
        cand_lp = lp_c[i]
        if base_lp == -np.inf or cand_lp == -np.inf:
            left_out[g] += 1
            continue
        base_lp = min(base_lp, 0.0)
        cand_lp = min(cand_lp, 0.0)
        row = g * n_buckets + k
        ce_base = -base_lp
        ce_cand = -cand_lp
        _add(cells, cells_comp, row, TOKENS, 1.0)
        _add(cells, cells_comp, row, CE_BASELINE, ce_base)
        _add(cells, cells_comp, row, CE_CANDIDATE, ce_cand)
        if has_bytes:
            _add(cells, cells_comp, row, BYTES, float(n_bytes[i]))
        delta = ce_cand - ce_base
        if abs(delta) <= tie:
            _add(cells, cells_comp, row, TIES, 1.0)
        elif delta < 0.0:
            _add(cells, cells_comp, row, WINS, 1.0)
        else:
            _add(cells, cells_comp, row, LOSSES, 1.0)
        _add(cells, cells_comp, row, TARGET_DP, math.exp(cand_lp) - math.exp(base_lp))
        token_sums[t, k, 0] += 1.0
        token_sums[t, k, 1], error = neumaier(token_sums[t, k, 1], delta)
        token_sums[t, k, 2] += error
        token_base[t, 0], error = neumaier(token_base[t, 0], ce_base)
        token_base[t, 1] += error
        if not has_lists or b_off[i + 1] == b_off[i] or c_off[i + 1] == c_off[i]:
            continue
        _add(cells, cells_comp, row, LISTED_TOKENS, 1.0)
        top_candase, right_candase = _top1(base_lp, t, b_off, b_ids, b_lps, i)
        top_cand, right_cand = _top1(cand_lp, t, c_off, c_ids, c_lps, i)
        if right_candase:
            _add(cells, cells_comp, row, TOP1_BASELINE, 1.0)
        if right_cand:
            _add(cells, cells_comp, row, TOP1_CANDIDATE, 1.0)
        if top_candase == top_cand:
            _add(cells, cells_comp, row, TOP1_AGREE, 1.0)
        # the known ids: the target, and the ids listed on both sides
        for j in range(b_off[i], b_off[i + 1]):
            u = b_ids[j]
            if b_lps[j] > ABSENT_LOGPROB and u != t:
                stamp[u] = i
                stamp_lp[u] = min(b_lps[j], 0.0)
        p_known = math.exp(base_lp)
        q_known = math.exp(cand_lp)
        forward = p_known * (base_lp - cand_lp) if p_known > 0.0 else 0.0
        reverse = q_known * (cand_lp - base_lp) if q_known > 0.0 else 0.0
        for j in range(c_off[i], c_off[i + 1]):
            u = c_ids[j]
            v = c_lps[j]
            if v <= ABSENT_LOGPROB or u == t or stamp[u] != i:
                continue
            v = min(v, 0.0)
            w = stamp_lp[u]
            p = math.exp(w)
            q = math.exp(v)
            p_known += p
            q_known += q
            if p > 0.0:
                forward += np.inf if q == 0.0 else p * (w - v)
            if q > 0.0:
                reverse += np.inf if p == 0.0 else q * (v - w)
        p_tail = max(1.0 - p_known, 0.0)
        q_tail = max(1.0 - q_known, 0.0)
        if p_tail > 0.0:
            forward += p_tail * math.log(p_tail / max(q_tail, TAIL_FLOOR))
        if q_tail > 0.0:
            reverse += q_tail * math.log(q_tail / max(p_tail, TAIL_FLOOR))
        _add(cells, cells_comp, row, MASS_BASELINE, min(p_known, 1.0))
        _add(cells, cells_comp, row, MASS_CANDIDATE, min(q_known, 1.0))
        if forward == np.inf:
            _add(cells, cells_comp, row, KL_INFINITE, 1.0)
            continue
        forward = max(forward, 0.0)  # rounding below 0: the bound is 0
        _add(cells, cells_comp, row, KL_TOKENS, 1.0)
        _add(cells, cells_comp, row, KL, forward)
        if reverse < np.inf:
            _add(cells, cells_comp, row, KL_REVERSE, max(reverse, 0.0))
            _add(cells, cells_comp, row, KL_REVERSE_TOKENS, 1.0)
        where = kl_bin(forward)
        hist_pos[hist_pos_row[i], where] += 1
        hist_freq[hist_freq_row[i], where] += 1
        if forward > kl_max[g]:
            kl_max[g] = forward
    return left_out


def _key_order(key):
    return tuple((value is None, "" if value is None else value) for value in key)


@dataclass(frozen=True, eq=False)
class TokenPairStats:
    """Sums over token pairs by (slice, position bucket, frequency bucket, bucket), the
    KL histograms and per target id sums: ``empty`` / ``merge`` / ``finalize`` as
    :mod:`xent_kernels.mergeable` says."""

    slice_keys: tuple[tuple, ...]
    position_edges: tuple[int, ...]
    frequency_edges: tuple[int, ...]  # lower frequency-rank edge of each frequency bucket (ranks from 1)
    n_buckets: int
    cells: np.ndarray  # (S, P, Q, K, F) float64
    cells_comp: np.ndarray
    hist_position: np.ndarray  # (S, P, KL_BINS) int64: KL_c(p‖q) histogram
    hist_frequency: np.ndarray  # (S, Q, KL_BINS) int64
    kl_max: np.ndarray  # (S, P, Q) float64, 0 where none
    left_out: np.ndarray  # (S,) int64: a -inf log-prob on either side
    token_sums: np.ndarray  # (V, K, 3): tokens, Σ CE difference (candidate - baseline), its compensation
    token_base: np.ndarray  # (V, 2): Σ baseline CE, its compensation
    has_bytes: bool = False

    @property
    def vocab(self) -> int:
        return self.token_sums.shape[0]

    @classmethod
    def empty(cls, *, slice_keys=(), position_edges=(0,), frequency_edges=(1,), n_buckets: int = 1, vocab: int = 0,
              has_bytes: bool = False) -> Self:
        """No pairs: the identity of :meth:`merge`."""
        s, p, q, k = len(slice_keys), len(position_edges), len(frequency_edges), int(n_buckets)
        return cls(tuple(tuple(key) for key in slice_keys), tuple(int(e) for e in position_edges),
                   tuple(int(e) for e in frequency_edges), k,
                   np.zeros((s, p, q, k, len(PAIR_FIELDS))), np.zeros((s, p, q, k, len(PAIR_FIELDS))),
                   np.zeros((s, p, KL_BINS), np.int64), np.zeros((s, q, KL_BINS), np.int64), np.zeros((s, p, q)),
                   np.zeros(s, np.int64), np.zeros((vocab, k, 3)), np.zeros((vocab, 2)), bool(has_bytes))

    def options(self) -> dict:
        return dict(position_edges=self.position_edges, frequency_edges=self.frequency_edges, n_buckets=self.n_buckets)

    def _on(self, keys: tuple, vocab: int) -> dict[str, np.ndarray]:
        rows = [keys.index(key) for key in self.slice_keys]
        out = {}
        for name in ("cells", "cells_comp", "hist_position", "hist_frequency", "kl_max", "left_out"):
            mine = getattr(self, name)
            full = np.zeros((len(keys), *mine.shape[1:]), dtype=mine.dtype)
            full[rows] = mine
            out[name] = full
        for name in ("token_sums", "token_base"):
            mine = getattr(self, name)
            full = np.zeros((vocab, *mine.shape[1:]))
            full[: mine.shape[0]] = mine
            out[name] = full
        return out

    @classmethod
    def merge(cls, *states: Self) -> Self:
        """One state of all `states`; commutative bit for bit (two_sum is symmetric)."""
        first = states[0]
        if any(state.options() != first.options() for state in states):
            raise ValueError("cannot merge token pair states of different position, frequency or jackknife buckets")
        keys = tuple(sorted(set().union(*(s.slice_keys for s in states)), key=_key_order))
        vocab = max(s.vocab for s in states)
        total = first._on(keys, vocab)
        for other in states[1:]:
            y = other._on(keys, vocab)
            total["cells"], total["cells_comp"] = two_sum(total["cells"], total["cells_comp"], y["cells"], y["cells_comp"])
            for name in ("hist_position", "hist_frequency", "left_out"):
                total[name] = total[name] + y[name]
            total["kl_max"] = np.maximum(total["kl_max"], y["kl_max"])
            mine, theirs = total["token_sums"], y["token_sums"]
            mine[..., 1], mine[..., 2] = two_sum(mine[..., 1], mine[..., 2], theirs[..., 1], theirs[..., 2])
            mine[..., 0] += theirs[..., 0]
            base, other_base = total["token_base"], y["token_base"]
            base[:, 0], base[:, 1] = two_sum(base[:, 0], base[:, 1], other_base[:, 0], other_base[:, 1])
        return cls(keys, first.position_edges, first.frequency_edges, first.n_buckets, **total,
                   has_bytes=any(s.has_bytes for s in states))

    def finalize(self, base="e", level: float = DEFAULT_LEVEL) -> TokenPairReport:
        """The paired report."""
        return TokenPairReport.of(self, base, level)


def token_pairs_partial(
    target: np.ndarray,
    baseline_logprob: np.ndarray,
    candidate_logprob: np.ndarray,
    *,
    positions: np.ndarray,
    frequency_bucket: np.ndarray,
    buckets: np.ndarray | None = None,
    slice_ids: np.ndarray | None = None,
    slice_keys=((),),
    target_bytes: np.ndarray | None = None,
    baseline_topk: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    candidate_topk: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    position_edges=(0,),
    frequency_edges=(1,),
    n_buckets: int = 1,
    tie_tolerance: float = 0.0,
) -> TokenPairStats:
    """The state of aligned token pairs (the same target, in the same order on both sides).

    `frequency_bucket` is each token's frequency bucket, an index into `frequency_edges`; `buckets`
    its document's jackknife bucket; the top-k lists are (offsets, ids, log-probs) in
    CSR form, already checked (as an evaluation of each side checks them): the KL
    figures need both. `tie_tolerance` (nats): |ΔCE| at most this is a tie.
    """
    n = len(target)
    target = np.asarray(target, dtype=np.int64)
    keys = tuple(tuple(key) for key in slice_keys)
    edges = np.asarray(position_edges, dtype=np.int64)
    s, p, q = len(keys), len(edges), len(frequency_edges)
    vocab = int(target.max()) + 1 if n else 0
    state = TokenPairStats.empty(slice_keys=keys, position_edges=position_edges, frequency_edges=frequency_edges,
                                 n_buckets=n_buckets,
                                 vocab=vocab, has_bytes=target_bytes is not None)
    slices = np.zeros(n, np.int64) if slice_ids is None else np.asarray(slice_ids, dtype=np.int64)
    position = np.searchsorted(edges, np.asarray(positions, dtype=np.int64), side="right") - 1
    frequency = np.asarray(frequency_bucket, dtype=np.int64)
    group = (slices * p + position) * q + frequency
    has_lists = baseline_topk is not None and candidate_topk is not None
    empty_i, empty_f = np.zeros(1, np.int64), np.zeros(1)
    b_off, b_ids, b_lps = baseline_topk if has_lists else (empty_i, empty_i, empty_f)
    c_off, c_ids, c_lps = candidate_topk if has_lists else (empty_i, empty_i, empty_f)
    largest = max(vocab, int(b_ids.max()) + 1 if len(b_ids) else 0, int(c_ids.max()) + 1 if len(c_ids) else 0)
    cells, comps = state.cells.reshape(-1, len(PAIR_FIELDS)), state.cells_comp.reshape(-1, len(PAIR_FIELDS))
    left_out = _pair_pass(
        group, slices * p + position, slices * q + frequency,
        np.zeros(n, np.int64) if buckets is None else np.asarray(buckets, dtype=np.int64), target,
        np.asarray(baseline_logprob, dtype=np.float64), np.asarray(candidate_logprob, dtype=np.float64),
        empty_i if target_bytes is None else np.asarray(target_bytes, dtype=np.int64), target_bytes is not None,
        *(_as_read(values) for values in (b_off, b_ids, b_lps, c_off, c_ids, c_lps)), has_lists,
        float(tie_tolerance), int(n_buckets), cells, comps, state.hist_position.reshape(-1, KL_BINS),
        state.hist_frequency.reshape(-1, KL_BINS), state.kl_max.reshape(-1), state.token_sums, state.token_base,
        np.full(max(largest, 1), -1, np.int64), np.zeros(max(largest, 1)),
    )
    state.left_out[:] = left_out.reshape(s, p * q).sum(axis=1)
    return state


def _as_read(values) -> np.ndarray:
    """A list column's values as the kernel takes them: int32/int64 or float32/float64
    arrays as they are (no widened copy of the lists), anything else widened."""
    values = np.asarray(values)
    if values.dtype in (np.int32, np.int64, np.float32, np.float64):
        return values
    return values.astype(np.float64 if values.dtype.kind == "f" else np.int64)


@strict_kernel
def take_lists(offsets, ids, logprobs, index):
    """The CSR lists of rows `index`, in that order: (offsets, ids, log-probs)."""
    n = index.shape[0]
    new = np.empty(n + 1, np.int64)
    new[0] = 0
    for r in range(n):
        i = index[r]
        new[r + 1] = new[r] + offsets[i + 1] - offsets[i]
    out_ids = np.empty(new[n], ids.dtype)
    out_lps = np.empty(new[n], logprobs.dtype)
    for r in range(n):
        i = index[r]
        start = offsets[i]
        for j in range(new[r + 1] - new[r]):
            out_ids[new[r] + j] = ids[start + j]
            out_lps[new[r] + j] = logprobs[start + j]
    return new, out_ids, out_lps
