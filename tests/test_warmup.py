"""``xent warmup`` fills Numba's cache and the page bundle: a fresh process's first
eval, drift and compare, and ``dask worker`` processes sharing the cache folder, then
compile nothing (Numba's own cache log says so)."""

from __future__ import annotations

import re

import pytest

from support import cli_env, dask_cluster, run_cli
from flows.generate import generate_dump

# NUMBA_DEBUG_CACHE=1 makes Numba print a line per cache event on stdout.
SAVED = "[cache] data saved to"
LOADED = "[cache] data loaded from"


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    """An environment with an empty HOME and cache folder, after `xent warmup` in it."""
    folder = tmp_path_factory.mktemp("warmup")
    home, cache = folder / "home", folder / "cache"
    env = cli_env(folder / "prefect", HOME=str(home), XDG_CACHE_HOME=None, XENT_CACHE_DIR=str(cache),
                  NUMBA_CACHE_DIR=None, NUMBA_DEBUG_CACHE="1")
    warmup = run_cli(["warmup"], env=env, timeout=1800)
    assert warmup.returncode == 0, warmup.stdout[-3000:] + warmup.stderr
    compiled = re.search(r"kernels: (\d+) specialisations compiled", warmup.stdout)
    assert compiled and int(compiled[1]) > 0, warmup.stdout
    assert any(cache.rglob("*.nbi")), "nothing in the cache folder"
    bundles = list((home / ".cache" / "xent").glob("vega-embed-*.js"))
    assert len(bundles) == 1 and bundles[0].stat().st_size > 100_000, bundles
    return env


def saved_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(SAVED)]


@pytest.mark.slow
def test_after_warmup_a_fresh_process_compiles_nothing(warmed, tmp_path):
    generate_dump(tmp_path / "plain", rows=2000)  # the defaults of `xent generate`
    like = dict(rows=1500, classes=40, layout="list", dtype="float64", weights=True, slices={"region": ["eu", "us"]},
                shards=3, seed=7)
    generate_dump(tmp_path / "ref", **like)
    generate_dump(tmp_path / "cur", **like, drift=0.2, shuffle=True)
    options = ["--slice-by", "region", "--weight-col", "weight", "--no-prefect"]
    runs = {
        "eval": ["eval", str(tmp_path / "plain"), "--out", str(tmp_path / "r1"), "--no-prefect"],
        "drift": ["drift", "--reference", str(tmp_path / "ref"), "--current", str(tmp_path / "cur"),
                  "--out", str(tmp_path / "r2"), *options],
        "compare": ["compare", "--baseline", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cur"),
                    "--out", str(tmp_path / "r3"), *options],
    }
    for name, args in runs.items():
        result = run_cli(args, env=warmed, timeout=600)
        assert result.returncode in (0, 3), (name, result.stderr)
        assert not saved_lines(result.stdout), name
        assert LOADED in result.stdout, name  # the log is on: it names what was loaded
        assert (tmp_path / args[args.index("--out") + 1] / "report.html").exists(), name


@pytest.mark.slow
@pytest.mark.cluster
def test_dask_workers_sharing_the_warmed_cache_compile_nothing(warmed, tmp_path, monkeypatch):
    for key in ("HOME", "XENT_CACHE_DIR", "NUMBA_DEBUG_CACHE"):
        monkeypatch.setenv(key, warmed[key])  # the workers' environment
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    generate_dump(tmp_path / "dump", rows=4000, classes=12, dtype="float64", layout="list", shards=8)
    with dask_cluster(tmp_path / "cluster", n_workers=2, nanny=False) as cluster:
        result = run_cli(["eval", str(tmp_path / "dump"), "--out", str(tmp_path / "report"), "--no-prefect",
                          "--scheduler", cluster.address], env=warmed, timeout=600)
        assert result.returncode == 0, result.stderr
        logs = [worker.log.read_text() for worker in cluster.workers]
    assert all(LOADED in log for log in logs), cluster.logs()  # both workers ran kernels
    assert not any(saved_lines(log) for log in logs), [saved_lines(log) for log in logs]
