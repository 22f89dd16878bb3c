"""``xent warmup`` fills Numba's cache and the page bundle: a fresh process's first
eval, drift and compare then compile nothing (Numba's own cache log says so)."""

from __future__ import annotations

import re

import pytest

from support import cli_env, run_cli
from flows.generate import generate_dump

# NUMBA_DEBUG_CACHE=1 makes Numba print a line per cache event on stdout.
SAVED = "[cache] data saved to"
LOADED = "[cache] data loaded from"


@pytest.mark.slow
def test_after_warmup_a_fresh_process_compiles_nothing(tmp_path):
    home, cache = tmp_path / "home", tmp_path / "cache"
    env = cli_env(tmp_path / "prefect", HOME=str(home), XDG_CACHE_HOME=None, XENT_CACHE_DIR=str(cache),
                  NUMBA_CACHE_DIR=None, NUMBA_DEBUG_CACHE="1")
    warmup = run_cli(["warmup"], env=env, timeout=1800)
    assert warmup.returncode == 0, warmup.stdout[-3000:] + warmup.stderr
    compiled = re.search(r"kernels: (\d+) specialisations compiled", warmup.stdout)
    assert compiled and int(compiled[1]) > 0, warmup.stdout
    assert any(cache.rglob("*.nbi")), "nothing in the cache folder"
    bundles = list((home / ".cache" / "xent").glob("vega-embed-*.js"))
    assert len(bundles) == 1 and bundles[0].stat().st_size > 100_000, bundles

    generate_dump(tmp_path / "plain", rows=2000)  # the defaults of `xent generate`
    like = dict(rows=1500, classes=40, layout="list", dtype="float64", weights=True, slices={"region": ["eu", "us"]},
                shards=3, seed=7)
    generate_dump(tmp_path / "ref", **like)
    generate_dump(tmp_path / "cur", **like, drift=0.2, shuffle=True)
    wide = ["--slice-by", "region", "--weight-col", "weight", "--no-prefect"]
    runs = {
        "eval": ["eval", str(tmp_path / "plain"), "--out", str(tmp_path / "r1"), "--no-prefect"],
        "drift": ["drift", "--reference", str(tmp_path / "ref"), "--current", str(tmp_path / "cur"),
                  "--out", str(tmp_path / "r2"), *wide],
        "compare": ["compare", "--baseline", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cur"),
                    "--out", str(tmp_path / "r3"), *wide],
    }
    for name, args in runs.items():
        result = run_cli(args, env=env, timeout=600)
        assert result.returncode in (0, 3), (name, result.stderr)
        saved = [line for line in result.stdout.splitlines() if line.startswith(SAVED)]
        assert not saved, (name, saved)
        assert LOADED in result.stdout, name  # the log is on: it names what was loaded
        assert (tmp_path / args[args.index("--out") + 1] / "report.html").exists(), name
