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
                        clients=(1, 4), requests=4, rounds=2, warmup=2, max_batch=4, max_wait_ms=20, threads=1, device="cpu",
                        hostile=None)


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


def test_hostile_mix_small(tmp_path):
    """The hostile mix's code path on a tiny model, one pass over every class: no 5xx, each class answered
    as expected, the server's /metrics agree, SIGTERM exits 0 (no timing asserted)."""
    from conftest import make_checkpoint, make_image

    from glassdetect.bench.serve_hostile import CLASSES, MIX, HostileConfig, bench_hostile, hostile_markdown

    ckpt = make_checkpoint(tmp_path / "ckpt", 3, k=2, patch=64, global_size=64)
    jpegs = []
    for i in range(2):
        make_image(tmp_path / f"{i}.jpg", 240, 300, seed=i)
        jpegs.append((tmp_path / f"{i}.jpg").read_bytes())
    cfg = HostileConfig(clients=(1, 4), requests=len(MIX), slow_chunks=3, slow_delay_s=0.02, max_mb=1, oversize_mb=2)
    res = bench_hostile(ckpt, jpegs, cfg, threads=1)
    assert [r["clients"] for r in res["runs"]] == [1, 4] and res["shutdown_exit_code"] == 0
    for row in res["runs"]:
        assert row["requests"] == len(MIX) and row["errors_5xx"] == 0 and row["unexpected"] == 0, row
        assert row["no_answer"] == 0 and row["healthz_probes"] >= 1 and row["peak_rss_mb"] > 0
        assert set(row["classes"]) == set(CLASSES) and all(c["requests"] > 0 for c in row["classes"].values())
        assert row["classes"]["valid"]["statuses"] == {"200": MIX.count("valid")}
        assert row["classes"]["oversize"]["statuses"] == {"413": MIX.count("oversize")}
    seen_413 = sum(r["classes"]["oversize"]["requests"] for r in res["runs"])
    assert res["server_rejections"]["413"] == seen_413 and res["server_rejections"]["503"] == 0
    json.dumps(res)
    md = "\n".join(hostile_markdown(res))
    assert "| 4 | 20 |" in md and "Exit code after SIGTERM: 0" in md
