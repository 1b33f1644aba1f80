"""``glassdetect bench serve`` on a tiny model: both services measured, the JSON and Markdown complete.
No timing assertions (the numbers depend on the machine and its load)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from glassdetect.bench import to_markdown  # noqa: E402
from glassdetect.bench.run import run_bench  # noqa: E402
from glassdetect.bench.serve import MODES, ServeBenchConfig, bench_serve, serve_markdown  # noqa: E402

TINY = ServeBenchConfig(backbone="test_resnet", k=2, patch=64, global_size=64, images=3, size=(200, 150),
                        clients=(1, 4), requests=4, rounds=2, warmup=2, max_batch=4, max_wait_ms=20, threads=1, device="cpu")


def test_bench_serve_measures_both_services(tmp_path):
    res = bench_serve(tmp_path, TINY)
    assert [r["clients"] for r in res["runs"]] == [1, 4]
    for row in res["runs"]:
        assert row["requests"] == 2 * TINY.n_requests(row["clients"]) == 2 * max(4, 3 * row["clients"])
        for mode in MODES:
            r = row[mode]
            assert r["requests"] == row["requests"] and r["requests_per_s"] > 0 and 0 < r["p50_ms"] <= r["p95_ms"]
            assert len(r["requests_per_s_by_round"]) == 2 and r["rounds"] == 2
            assert r["healthz_probes"] >= 1 and r["healthz_p95_ms"] > 0
        assert row["unbatched"]["mean_batch"] == 1.0 and 1.0 <= row["batched"]["mean_batch"] <= TINY.max_batch
        assert row["speedup"] == pytest.approx(row["batched"]["requests_per_s"] / row["unbatched"]["requests_per_s"])
    assert res["backbone"] == "test_resnet" and res["max_batch"] == 4 and res["torch_threads"] == 1
    assert set(res["forward_s_per_image"]) == {"1", "2", "4"} and min(res["forward_s_per_image"].values()) > 0
    json.dumps(res)  # JSON-ready
    md = "\n".join(serve_markdown(res))
    assert "| 4 | 24 |" in md and "max_batch 4" in md and "test_resnet K=2" in md and "batch 4 " in md


def test_run_bench_knows_serve(monkeypatch, tmp_path):
    from glassdetect.bench import run

    seen = {}

    def fake_bench_serve(workdir, cfg):  # the dispatch only; the measurement is tested above
        seen["cfg"] = cfg
        return bench_serve(workdir, TINY)

    monkeypatch.setattr(run, "bench_serve", fake_bench_serve)
    res = run_bench("serve", quick=True, device="cpu", threads=1, workdir=tmp_path)
    assert set(res) >= {"serve", "environment", "goals", "elapsed_s"} and "views" not in res
    assert seen["cfg"].device == "cpu" and seen["cfg"].requests == 12
    text = to_markdown(res)
    assert "glassdetect bench serve --quick" in text and "## serve: unbatched vs batched" in text
    with pytest.raises(ValueError, match="serve"):
        run_bench("nonsense")
