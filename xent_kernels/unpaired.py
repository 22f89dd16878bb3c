"""A run against a baseline run on different rows: unpaired differences with intervals.

Two evaluations of different rows (today's dump and an earlier day's) are independent
samples, so the variance of a difference is the sum of the two variances. For every
statistic with ``interval=True`` in :mod:`xent_kernels.statistics`, each side's value
and jackknife standard error come from its own state and buckets
(:func:`xent_kernels.intervals.jackknife_se`); the difference θ_cand - θ_base has

    SE_diff = sqrt(SE_cand² + SE_base²),  interval diff ± t_{min(K'_cand, K'_base) - 1} · SE_diff

with K' the buckets that hold weight on each side. Taking the smaller side's degrees
of freedom is conservative: the Welch–Satterthwaite degrees of freedom lie between
min(K') - 1 and K'_cand + K'_base - 2, so this interval is never narrower than Welch's
(at K = 20 at most about 3.5% wider), and a gate on it never fires on noise Welch would
call noise. Statistics whose interval is analytic (AUC: its ROC histograms have no
bucket axis) get their difference but a NaN interval, and so no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import _checks as C
from .intervals import DEFAULT_LEVEL, jackknife_se, t_quantile
from .paired import PairedReport, _aligned, add_difference
from .statistics import CELL_FIELDS, Totals, scoped_rules, used_buckets
from .stats import ClassStats, SliceKey, _key_order


@dataclass(frozen=True, eq=False)
class UnpairedStats:
    """The states of two evaluations of different rows, each with its own buckets: each
    side is merged on its own, so this pair only finalizes (:mod:`xent_kernels.mergeable`)."""

    baseline: ClassStats
    candidate: ClassStats

    def collapse_slices(self, key: SliceKey = ()) -> "UnpairedStats":
        """Each side's slices merged into one slice named `key` (the overall rows)."""
        return UnpairedStats(self.baseline.collapse_slices(key), self.candidate.collapse_slices(key))

    def finalize(self, base: Literal["e", 2] = "e", level: float = DEFAULT_LEVEL) -> PairedReport:
        """The differences candidate - baseline of every interval metric, with unpaired
        intervals and verdicts, per (slice, class) and per slice, in nats or bits.

        The columns are those of :meth:`xent_kernels.paired.PairedStats.finalize` without the
        outcome counts, plus ``n_baseline``: cells and slices with rows on either side,
        NaN differences where one side has none.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        if self.baseline.n_classes != self.candidate.n_classes:
            raise ValueError(f"baseline has {self.baseline.n_classes} classes, candidate {self.candidate.n_classes}")
        divisor = C.log_base(base)
        keys = tuple(sorted(set(self.baseline.slice_keys) | set(self.candidate.slice_keys), key=_key_order))
        states = {"baseline": _aligned(self.baseline, keys), "candidate": _aligned(self.candidate, keys)}
        buckets = {name: Totals.by_bucket(state) for name, state in states.items()}
        totals = {name: Totals.of(state, buckets[name]) for name, state in states.items()}
        cells = np.nonzero((totals["baseline"].values["counts"] > 0) | (totals["candidate"].values["counts"] > 0))
        totals = {name: Totals(t.n_classes, t.values, cells) for name, t in totals.items()}
        slice_index, class_index = cells
        per_class: dict[str, np.ndarray] = {"slice": slice_index.astype(np.int64), "class": class_index.astype(np.int32)}
        per_slice: dict[str, np.ndarray] = {"slice": np.arange(len(keys), dtype=np.int64)}
        for name, column in (("candidate", "n"), ("baseline", "n_baseline")):
            per_class[column] = totals[name].values["counts"][cells]
            per_slice[column] = totals[name].values["counts"].sum(axis=1)
        # Per side: its leave-one-bucket-out totals and the buckets that hold weight.
        left_out, used = {}, {}
        for name, state in states.items():
            if state.n_buckets > 1:
                left_out[name] = Totals.leave_one_out(state, buckets[name], totals[name])
                used[name] = used_buckets(buckets[name]["cell"][..., CELL_FIELDS.index("weight")], cells)
        metrics: dict[str, list[str]] = {"per_class": [], "per_slice": []}
        columns_of = {"per_class": per_class, "per_slice": per_slice}
        for statistic, scope, rule, scale in scoped_rules(False, divisor, intervals_only=True):
            metrics[scope].append(statistic.name)
            values = {name: rule(totals[name]) / scale for name in states}
            diff = values["candidate"] - values["baseline"]
            if len(left_out) == 2 and statistic.standard_error is None:
                se, k = {}, {}
                for name, state in states.items():
                    theta = rule(left_out[name]).reshape(len(diff), state.n_buckets) / scale
                    se[name], k[name] = jackknife_se(theta, used[name][scope])
                half = t_quantile(np.minimum(k["candidate"], k["baseline"]) - 1, level) * np.hypot(
                    se["candidate"], se["baseline"])
                lo, hi = diff - half, diff + half
            else:
                lo = hi = np.full(len(diff), np.nan)
            add_difference(columns_of[scope], statistic.name, values, lo, hi)
        return PairedReport(keys, "nats" if divisor == 1.0 else "bits", per_class, per_slice,
                            {scope: tuple(names) for scope, names in metrics.items()}, level)
