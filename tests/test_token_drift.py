"""``xent drift`` on token dumps (#19): the CE shift overall, per slice and per bucket,
and the KL lower bound of the same tokens scored twice, against float64 numpy on the
dense distributions the dumps were written from; thresholds of the kind."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

import flows
from flows.errors import UsageError
from support import token_side_table, two_token_models, write_token_shards


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    m = two_token_models(21, n=4000, vocab=25, k=4, docs=90)
    folder = tmp_path_factory.mktemp("token-drift")
    return m, write_token_shards(token_side_table(m, "teacher"), folder / "reference", 3, 0), \
        write_token_shards(token_side_table(m, "student"), folder / "current", 2, 1)


def values(result) -> dict:
    frame = result.table
    return {(row.metric, None if row.overall else row.source): row.value for row in frame.itertuples()}


@pytest.mark.slow
def test_ce_shift_and_kl_bound_against_numpy(dumps):
    m, reference, current = dumps
    got = values(flows.drift(reference, current, kind="tokens", slice_by=["source"],
                             drift={"min_bucket_tokens": 1}))
    n = len(m["target"])
    ce_ref = -m["teacher"][np.arange(n), m["target"]]
    ce_cur = -m["student"][np.arange(n), m["target"]]
    assert_allclose(got[("ce_shift", None)], ce_cur.mean() - ce_ref.mean(), rtol=1e-12)
    web = m["slice"] == 0
    assert_allclose(got[("ce_shift", "web")], ce_cur[web].mean() - ce_ref[web].mean(), rtol=1e-12)
    # positions are each document's token order (token_side_table): buckets 0, 1, 2-3, 4-7, ...
    from support import positions_of

    position = positions_of(m["doc"])
    bucket = np.where(position == 0, 0, np.floor(np.log2(np.maximum(position, 1))) + 1)  # 0, 1, 2-3, 4-7, ...
    shifts = [ce_cur[bucket == b].mean() - ce_ref[bucket == b].mean() for b in np.unique(bucket)]
    assert_allclose(got[("position_ce_shift_max", None)], max(shifts), rtol=1e-12)
    assert got[("n_matched", None)] == n
    # the bound from the dense distributions: known ids (listed on both sides, and the target) plus one tail bin
    t_off, t_ids, _ = m["teacher_topk"]
    s_off, s_ids, _ = m["student_topk"]
    bound = []
    for i in range(n):
        known = sorted((set(t_ids[t_off[i]:t_off[i + 1]]) & set(s_ids[s_off[i]:s_off[i + 1]])) | {m["target"][i]})
        p, q = np.exp(m["teacher"][i, known]), np.exp(m["student"][i, known])
        p, q = np.append(p, 1 - p.sum()), np.append(q, 1 - q.sum())
        bound.append(np.sum(p * np.log(p / q)))
    assert_allclose(got[("kl_lower_bound_per_token", None)], np.mean(bound), rtol=1e-10)


@pytest.mark.slow
def test_a_token_threshold_breach_exits_3(dumps, tmp_path):
    _, reference, current = dumps
    config = tmp_path / "drift.yaml"
    config.write_text("kind: tokens\ndrift: {thresholds: {ce_shift: 0.01, kl_lower_bound_per_token: 10}}\n")
    run = subprocess.run([sys.executable, "-m", "flows.cli", "drift", "--config", str(config), "--reference", reference,
                          "--current", current, "--out", str(tmp_path / "out"), "--no-prefect"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr
    assert "ce_shift" in run.stderr and "kl_lower_bound_per_token" not in run.stderr.split("breached")[-1]


def test_thresholds_of_the_other_kind_are_refused():
    with pytest.raises(UsageError, match="not measured on token dumps"):
        flows.drift("a", "b", kind="tokens", drift={"thresholds": {"marginal_js": 0.1}})
    with pytest.raises(UsageError, match="not measured on classifier predictions"):
        flows.drift("a", "b", drift={"thresholds": {"ce_shift": 0.1}})


@pytest.mark.slow
def test_predicted_top1_marginal_against_scipy(dumps):
    m, reference, current = dumps
    got = values(flows.drift(reference, current, kind="tokens", drift={"smoothing": 1e-4, "per_sample": False}))
    # each side's top-k list is its own k best, so its predicted top-1 is the dense argmax
    ref = np.bincount(np.argmax(m["teacher"], axis=1), minlength=25).astype(float)
    cur = np.bincount(np.argmax(m["student"], axis=1), minlength=25).astype(float)
    seen = ref > 0  # fewer than 100 ids: a bin each, and the "other" bin holds the ids the reference never predicted
    ref, cur = np.append(ref[seen], ref[~seen].sum()), np.append(cur[seen], cur[~seen].sum())
    r, c = ((h / h.sum() + 1e-4) / (1 + len(h) * 1e-4) for h in (ref, cur))
    from scipy.special import rel_entr
    from scipy.spatial.distance import jensenshannon

    assert_allclose(got[("top1_marginal_kl", None)], rel_entr(r, c).sum(), rtol=1e-10)
    assert_allclose(got[("top1_marginal_js", None)], jensenshannon(r, c) ** 2, rtol=1e-10)
    assert_allclose(got[("top1_marginal_psi", None)], ((c - r) * np.log(c / r)).sum(), rtol=1e-10)
