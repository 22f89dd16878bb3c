"""``xent drift`` on token dumps (issue #19): a current language model's token dump
against a reference dump.

Per slice and overall, in the config's units, each checked against its threshold as
classifier drift is (:mod:`flows.monitor.drift`):

* ``top1_marginal_kl``, ``_js``, ``_psi``: of the predicted top-1 ids (with top-k
  lists on both sides), over the reference's ``TOP1_IDS`` most predicted ids and one bin
  for the rest (a vocabulary-wide histogram would drown in its smoothing), over all
  slices only (the state counts top-1 ids per id, not per slice and id);
* ``ce_shift``: the token-weighted CE of the current dump minus the reference's;
* ``position_ce_shift_max``: the largest such increase over the position buckets, and
  ``frequency_ce_shift_max`` over the frequency buckets of the targets ranked by the
  reference's counts (over all slices only: a token dump's state counts tokens per id,
  not per slice and id), each over buckets with at least ``drift.min_bucket_tokens``
  tokens on both sides, so that a handful of tokens cannot raise the alarm;
* with ``drift.per_sample`` (the same prompts scored twice): tokens joined on document
  key and position, and ``kl_lower_bound_per_token``, the mean lower bound of
  KL(reference‖current) from the top-k lists (:mod:`xent_kernels.token_pairs`), with the
  join's counts.

``drift_distributions`` holds the values compared: kind ``position_ce`` or
``frequency_ce``, ``bin`` the bucket, [``lo``, ``hi``] its first and last position or
rank (``hi`` null: open), ``weight`` the side's token-weighted CE in nats there; kind
``top1_marginal``, ``lo`` the bin's token id (null: the other ids), ``weight`` the
side's tokens predicting it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from distributed import Client

from xent_kernels.drift import histogram_divergences
from xent_kernels.token_report import TokenReport

from ..config import DriftConfig
from ..drift_statistics import TOP1_IDS
from ..engine import Evaluation, Progress
from ..report.metric_values import MetricKey, MetricValue
from .sides import evaluate_sides, join_evaluated
from .token_compare import token_pairing

SIDES = ("reference", "current")


def _slice_keys(evaluation: Evaluation, indexes: np.ndarray) -> list[tuple | None]:
    """The slice key of each slice index of a token report (-1: None, all slices)."""
    keys = evaluation.result.stats.slice_keys
    return [None if i < 0 else tuple(keys[i]) for i in indexes]


def _largest_increase(reference: dict[Any, tuple[float, int]], current: dict[Any, tuple[float, int]],
                      min_tokens: int) -> float:
    """The largest current - reference CE over the buckets both hold with at least `min_tokens` tokens (NaN: none)."""
    shifts = [ce - reference[bucket][0] for bucket, (ce, n) in current.items()
              if n >= min_tokens and bucket in reference and reference[bucket][1] >= min_tokens]
    return max(shifts) if shifts else math.nan


def bucket_values(report: TokenReport, evaluation: Evaluation) -> dict[str, dict]:
    """Per slice key (None overall): {"summary": (ce, tokens), "position": {edge: (ce, tokens)}};
    and under None also "frequency": {rank edge: (ce, tokens)}."""
    out: dict[Any, dict] = {}
    summary = report.summary
    for key, ce, n in zip(_slice_keys(evaluation, summary["slice"]), summary["ce_mean"], summary["tokens"]):
        out[key] = {"summary": (float(ce), int(n)), "position": {}}
    positions = report.positions
    for key, edge, ce, n in zip(_slice_keys(evaluation, positions["slice"]), positions["position_from"],
                                positions["ce_mean"], positions["tokens"]):
        if n:
            out[key]["position"][int(edge)] = (float(ce), int(n))
    frequency = report.frequency
    out[None]["frequency"] = {int(edge): (float(ce), int(n)) for edge, ce, n in
                              zip(frequency["rank_from"], frequency["ce_mean"], frequency["tokens"]) if n}
    out[None]["frequency_edges"] = tuple(int(edge) for edge in frequency["rank_from"])
    return out


def token_drift_values(config: DriftConfig, client: Client, progress: Progress | None, reference: Any,
                       current: Any) -> tuple[list[MetricValue], list[dict], Evaluation, Evaluation]:
    """Every token drift metric in nats (before thresholds), the per-bucket values
    compared (``drift_distributions`` entries) and both evaluations."""
    # Drift reads no intervals: one jackknife bucket.
    plain = config.model_copy(update={"n_buckets": 1})
    sides = evaluate_sides(plain, client, progress, SIDES, config.reference, {"reference": reference, "current": current})
    evaluations = {name: sides[name].evaluation for name in SIDES}
    reference_stats = evaluations["reference"].result.stats
    counts = reference_stats.token_sums[..., 0].sum(axis=1)  # both sides' frequency buckets ranked alike
    buckets = {name: bucket_values(evaluations[name].result.stats.finalize(counts=counts), evaluations[name])
               for name in SIDES}
    settings = config.drift
    values, entries = [], []
    sliced = bool(evaluations["current"].spec.slice_by)
    for key, current_side in buckets["current"].items():
        if key is not None and not sliced:  # one slice: its rows are the overall rows
            continue
        reference_side = buckets["reference"].get(key)
        shift = position_shift = math.nan
        if reference_side is not None:
            shift = current_side["summary"][0] - reference_side["summary"][0]
            position_shift = _largest_increase(reference_side["position"], current_side["position"],
                                               settings.min_bucket_tokens)
        values.append(MetricValue(MetricKey("ce_shift", key), shift, n=current_side["summary"][1]))
        values.append(MetricValue(MetricKey("position_ce_shift_max", key), position_shift))
        if key is None:
            values.append(MetricValue(MetricKey("frequency_ce_shift_max"), _largest_increase(
                reference_side["frequency"], current_side["frequency"], settings.min_bucket_tokens)))
        for kind, edges in (("position", tuple(reference_stats.position_edges)),
                            ("frequency", current_side.get("frequency_edges"))):
            if kind not in current_side:
                continue
            for side, by_bucket in (("reference", (reference_side or {}).get(kind, {})), ("current", current_side[kind])):
                entries += [{"key": key, "side": side, "kind": f"{kind}_ce", "bin": edges.index(edge), "lo": edge,
                             "hi": _last(edge, edges), "weight": ce} for edge, (ce, _) in sorted(by_bucket.items())]
    top1 = {name: evaluations[name].result.stats.token_top1 for name in SIDES}
    if top1["reference"].sum() and top1["current"].sum():  # both have top-k lists
        ids, bins = top1_bins(top1["reference"], top1["current"])
        values += [MetricValue(MetricKey(f"top1_marginal_{name}"), value)
                   for name, value in histogram_divergences(*bins, settings.smoothing).items()]
        entries += [{"key": None, "side": side, "kind": "top1_marginal", "bin": i, "lo": None if i == len(ids) else ids[i],
                     "hi": None, "weight": float(weight)} for side, counts_of in zip(SIDES, bins)
                    for i, weight in enumerate(counts_of)]
    if settings.per_sample:
        pairing = token_pairing(SIDES, counts)
        spec = evaluations["current"].spec
        _, joined = join_evaluated(config, settings, sides, client, pairing, key=spec.doc_cols)
        values += [MetricValue(MetricKey(name), float(count)) for name, count in (
            ("n_matched", joined.matched), ("n_only_reference", joined.only_first),
            ("n_only_current", joined.only_second))]
        rows = joined.stats.finalize().rows
        keys = [None if i < 0 else tuple(joined.stats.slice_keys[i]) for i in rows["slice"]]
        for i, key in enumerate(keys):
            if rows["scope"][i] == "all" and (key is None or spec.slice_by):
                values.append(MetricValue(MetricKey("kl_lower_bound_per_token", key),
                                          float(rows["kl_lower_bound_mean"][i]), n=int(rows["kl_tokens"][i])))
    return values, entries, evaluations["reference"], evaluations["current"]


def top1_bins(reference: np.ndarray, current: np.ndarray) -> tuple[list[int], tuple[np.ndarray, np.ndarray]]:
    """The ids of the predicted top-1 marginal's bins (the reference's `TOP1_IDS` most
    predicted, ties by id) and both sides' counts in them, the last bin all other ids."""
    size = max(len(reference), len(current))
    reference, current = (np.pad(c.astype(np.float64), (0, size - len(c))) for c in (reference, current))
    order = np.lexsort((np.arange(size), -reference))
    ids = [int(i) for i in order[:TOP1_IDS] if reference[i] > 0]
    return ids, tuple(np.append(c[ids], c.sum() - c[ids].sum()) for c in (reference, current))


def _last(edge: int, edges: tuple[int, ...]) -> int | None:
    """The last position or rank of the bucket starting at `edge` (None: the open last one)."""
    i = edges.index(edge)
    return edges[i + 1] - 1 if i + 1 < len(edges) else None
