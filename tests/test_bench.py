"""``glassdetect bench`` on tiny inputs: JSON schema, ratios computed, Markdown written. No timing assertions."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from glassdetect import bench as B
from glassdetect.views import build as V
from glassdetect.views.build import ViewSpec, build_views

VIEW_KEYS = {"ours_s", "naive_s", "decode_s", "ours_mb", "naive_mb", "speedup_vs_naive", "memory_ratio_vs_naive",
             "ratio_to_decode"}


def test_photo_like_is_photo_like():
    a = B.photo_like(300, 400, seed=1)
    assert a.shape == (300, 400, 3) and a.dtype == np.uint8
    assert 20 < a.std() < 100  # not flat, not noise-only
    assert not np.array_equal(a, B.photo_like(300, 400, seed=2))


def test_pipelines_agree_on_views(tmp_path):
    path = B.write_image(tmp_path / "x.jpg", B.photo_like(600, 800, seed=3))
    spec = ViewSpec(k=4)
    ours = B.ours_views(path, spec)
    slow = B.ours_pillow_views(path, spec)
    g, crops = B.naive_views(path, spec)
    assert np.array_equal(ours.crops, slow.crops) and np.array_equal(ours.global_view, slow.global_view)
    # the naive pipeline computes the same views in float: crops exactly, the global view within rounding
    assert torch.equal((crops * 255).round().to(torch.uint8), torch.from_numpy(ours.crops))
    assert (g * 255 - torch.from_numpy(ours.global_view).float()).abs().max() <= 2.5
    assert B.ours_views(path, spec).boxes == build_views(path, spec).boxes


@pytest.mark.skipif(V.simplejpeg is None, reason="simplejpeg is not installed (the decode floor is then Pillow's)")
def test_decode_only_floor_is_simplejpeg(tmp_path):
    path = B.write_image(tmp_path / "x.jpg", B.photo_like(600, 800, seed=3))
    pixels = B.decode_only(path)
    assert isinstance(pixels, np.ndarray) and pixels.shape == (600, 800, 3) and pixels.dtype == np.uint8


def test_bench_views_schema(tmp_path):
    res = B.bench_views(tmp_path, sizes=("1MP",), png=False, rounds=1, size_override={"1MP": (160, 120)})
    r = res["1MP"]
    assert VIEW_KEYS <= set(r)
    assert r["width"] == 160 and r["height"] == 120 and r["format"] == "jpg"
    assert r["speedup_vs_naive"] == pytest.approx(r["naive_s"] / r["ours_s"])
    assert r["ratio_to_decode"] == pytest.approx(r["ours_s"] / r["decode_s"])
    assert r["memory_ratio_vs_naive"] == pytest.approx(r["ours_mb"] / r["naive_mb"])
    assert r["ours_mb"] >= 0 and r["naive_mb"] > 0
    assert "VmHWM" in r["memory_method"] or "ru_maxrss" in r["memory_method"]
    assert len(r["times_s"]["ours"]) == 1


def test_bench_views_png_without_memory(tmp_path):
    res = B.bench_views(tmp_path, sizes=(), png=True, rounds=1, memory=False, size_override={"12MP-png": (90, 70)})
    r = res["12MP-png"]
    assert r["format"] == "png" and r["decoder"] == "pillow" and "ours_mb" not in r
    assert r["ratio_to_decode"] > 0


def test_bench_model_schema():
    res = B.bench_model(("test_resnet", "test_vit"), ks=(0, 2), batches=(1, 2), device="cpu", threads=1, budget_s=0.0,
                        peak_sizes=(256,))
    assert res["device"] == "cpu" and res["peak_gflops"] > 0 and res["micro_batch"] == 4
    assert res["backbones"]["test_resnet"] == {"convnet": True, "auto_layout": "channels_last", "frozen_graph": True}
    assert res["backbones"]["test_vit"]["auto_layout"] == "nchw"
    runs = res["runs"]
    # the automatic configuration (factory layout, the model's own CPU micro-batches) for K in (0, 2) x batch
    # (1, 2); the other layout, BN folding and whole batches only at K=4 (not measured here)
    assert {(r["backbone"], r["layout"], r["k"], r["batch"]) for r in runs} == {
        (b, lay, k, n) for b, lay in (("test_resnet", "channels_last+frozen-graph+micro-batch-4"),
                                      ("test_vit", "nchw+micro-batch-4"))
        for k in (0, 2) for n in (1, 2)}
    for r in runs:
        assert r["auto"] and r["views_per_image"] == 1 + r["k"]
        assert r["gflops"] == pytest.approx(r["gflop_per_image"] / r["s_per_image"])
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / res["peak_gflops"])
        assert r["fraction_of_peak_cpu_time"] == pytest.approx(r["gflops_cpu_time"] / res["peak_gflops_cpu_time"])
    flops = {(r["backbone"], r["k"]): r["gflop_per_image"] for r in runs}
    assert flops[("test_resnet", 2)] > 2.5 * flops[("test_resnet", 0)]  # three views vs one


def test_bench_model_variants():
    res = B.bench_model(("test_convnext",), ks=(0,), batches=(1,), device="cpu", threads=1, other_layout_ks=(0,), budget_s=0.0,
                        peak_sizes=(256,))
    layouts = {(r["layout"], r["auto"]) for r in res["runs"]}
    # a frozen graph automatically, the eager model beside it; no BatchNorm to fold; batch 1: no whole-batch comparison
    assert layouts == {("channels_last+frozen-graph+micro-batch-4", True), ("channels_last+micro-batch-4", False),
                       ("nchw+micro-batch-4", False)}
    res = B.bench_model(("test_resnet",), ks=(2,), batches=(1, 3), device="cpu", threads=1, other_layout_ks=(2,),
                        budget_s=0.0, peak_sizes=(256,), micro_batch=2, whole_batch_ks=(2,))
    got = {(r["layout"], r["batch"], r["auto"]) for r in res["runs"]}
    # BatchNorm backbone on the CPU: the automatic rows are frozen graphs, timed next to the eager model
    assert got == {(lay, b, lay == "channels_last+frozen-graph+micro-batch-2") for lay in (
        "channels_last+frozen-graph+micro-batch-2", "channels_last+micro-batch-2", "nchw+micro-batch-2",
        "channels_last+bn-folded+micro-batch-2") for b in (1, 3)} | {("channels_last+whole-batch", 3, False)}
    assert res["backbones"]["test_resnet"]["frozen_graph"]
    assert len(res["peak_measurements"]) == 2 and res["peak_gflops"] == max(p["peak_gflops"] for p in res["peak_measurements"])


def test_bench_model_variants_compute_the_same():
    import copy

    cpu = torch.device("cpu")
    whole, _ = B.make_model("test_resnet", 2, cpu, micro_batch=0)
    assert whole.cpu_microbatch == 0 and B.make_model("test_resnet", 2, cpu)[0].cpu_microbatch == 4
    g, c = B.random_views(3, 2, 64, cpu)
    chunked, folded = copy.deepcopy(whole), copy.deepcopy(whole)
    chunked.cpu_microbatch = 2
    assert B.fold_batchnorm(folded) > 0
    with torch.inference_mode():
        want = whole(g, c)[0]
        assert torch.allclose(chunked(g, c)[0], want, atol=1e-5)
        assert torch.allclose(folded(g, c)[0], want, atol=1e-4)
    assert B.layout_name(True, False, 4, cpu) == "channels_last+micro-batch-4"
    assert B.layout_name(True, True, 0, cpu) == "channels_last+bn-folded+whole-batch"
    assert B.layout_name(True, False, 4, cpu, graphs=True) == "channels_last+frozen-graph+micro-batch-4"
    assert not B.make_model("test_resnet", 2, cpu, graphs=False)[0].cpu_graphs
    assert B.layout_name(False, False, 4, torch.device("cuda")) == "nchw"  # no micro-batches off the CPU


def test_bench_predict_schema(tmp_path):
    res = B.bench_predict(tmp_path, n_images=3, size=(160, 120), backbone="test_resnet", k=2, batch_size=2, workers=0,
                          device="cpu", threads=1)
    assert res["images"] == 3
    assert res["overlap_efficiency"] == pytest.approx(res["predict_images_per_s"] / res["model_images_per_s"])
    assert res["prepare_s_per_image"] > 0
    assert res["workers_needed"] >= 1 and res["workers"] == 0
    auto = B.bench_predict(tmp_path / "auto", n_images=3, size=(160, 120), backbone="test_resnet", k=2, batch_size=2,
                           workers="auto", device="cpu", threads=1)
    # "auto": the decode workers that keep the model busy, at most the CPUs
    assert auto["workers"] == min(auto["workers_needed"], os.cpu_count()) and auto["images"] == 3


def test_goals_and_markdown():
    views = {s: {"format": "jpg", "megapixels": mp, "width": 1, "height": 1, "file_mb": 1.0, "decode_with": "x",
                 "ours_s": 0.1, "naive_s": 0.8, "decode_s": 0.09, "ours_mb": 40.0, "naive_mb": 400.0, "decode_mb": 36.0,
                 "speedup_vs_naive": 8.0, "ratio_to_decode": 0.1 / 0.09, "memory_ratio_vs_naive": 0.1,
                 "beyond_decode_ms": 10.0}
             for s, mp in (("4MP", 4.0), ("12MP", 12.0), ("24MP", 24.0))}
    model = {"device": "cpu", "threads": 1, "amp": False, "peak_gflops": 100.0, "runs": [
        {"backbone": "resnet50", "layout": "channels_last+micro-batch-4", "auto": True, "k": 4, "batch": 8,
         "s_per_image": 0.5, "s_per_view": 0.1, "gflop_per_image": 41.0, "gflops": 82.0, "fraction_of_peak": 0.82},
        {"backbone": "convnext_tiny", "layout": "channels_last+micro-batch-4", "auto": True, "k": 4, "batch": 8,
         "s_per_image": 0.6, "s_per_view": 0.12, "gflop_per_image": 45.0, "gflops": 65.0, "fraction_of_peak": 0.65},
        {"backbone": "convnext_tiny", "layout": "channels_last+whole-batch", "auto": False, "k": 4, "batch": 8,
         "s_per_image": 0.7, "s_per_view": 0.14, "gflop_per_image": 45.0, "gflops": 55.0, "fraction_of_peak": 0.55}]}
    pred = {"images": 8, "width": 4000, "height": 3000, "backbone": "resnet50", "k": 4, "batch_size": 8, "workers": 2,
            "device": "cpu", "predict_images_per_s": 1.9, "model_images_per_s": 2.0, "overlap_efficiency": 0.95,
            "prepare_s_per_image": 0.07, "model_s_per_image": 0.5}
    res = {"views": views, "model": model, "predict": pred}
    goals = B.evaluate_goals(res)
    assert goals["views_speedup_vs_naive"]["met"] and goals["views_memory_ratio"]["met"]
    assert goals["views_ratio_to_decode"]["measured"] == pytest.approx(0.1 / 0.09) and goals["views_ratio_to_decode"]["met"]
    assert not goals["model_fraction_of_peak"]["met"] and goals["model_fraction_of_peak"]["measured"] == 0.65
    assert goals["model_fraction_of_peak"]["whole_batch"] == {"convnext_tiny": 0.55}
    assert goals["predict_overlap_efficiency"]["met"]
    res["goals"] = goals
    md = B.to_markdown(res)
    assert "| 12MP" in md and "overlap_efficiency" in md and "NOT met" in md
    json.dumps(res)


def test_cli_bench_writes_json_and_markdown(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from glassdetect.cli import app

    def fake_run(what, quick, device, threads, workdir, workers, train=None):
        assert workers == "auto"
        return {"command": f"glassdetect bench {what}", "quick": quick, "environment": B.environment(),
                "views": B.bench_views(tmp_path / "w", sizes=("1MP",), png=False, rounds=1, memory=False,
                                       size_override={"1MP": (64, 48)}),
                "goals": {}, "elapsed_s": 0.1}
    monkeypatch.setattr(B, "run_bench", fake_run)
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    res = CliRunner().invoke(app, ["bench", "views", "--quick", "--json", str(out_json), "--md", str(out_md),
                                   "--workers", "auto"])
    assert res.exit_code == 0, res.output
    data = json.loads(out_json.read_text())
    assert data["command"] == "glassdetect bench views" and "1MP" in data["views"]
    assert "## Views" in out_md.read_text()


def test_cli_bench_rejects_unknown_part():
    from typer.testing import CliRunner

    from glassdetect.cli import app

    res = CliRunner().invoke(app, ["bench", "nonsense"])
    assert res.exit_code == 2 and "unknown bench part" in res.output


def test_bench_views_times_the_augmentation_presets(tmp_path):
    res = B.bench_views(tmp_path, sizes=("1MP",), png=True, rounds=1, memory=False, augment_draws=2,
                        size_override={"1MP": (96, 64), "12MP-png": (40, 30)})
    r = res["1MP"]
    assert r["augment_standard_s"] > 0 and r["augment_strong_s"] > 0 and r["augment_draws"] == 2
    assert "augment_draws" not in res["12MP-png"]  # JPEGs only
    md = B.to_markdown({"views": res})
    assert "## Training augmentation" in md and "| standard ms | strong ms | ours ms |" in md
    assert "augment_draws" not in B.bench_views(tmp_path, sizes=("1MP",), png=False, rounds=1, memory=False, augment=(),
                                                size_override={"1MP": (48, 32)})["1MP"]
    assert set(B.bench_augment(B.photo_like(40, 50), ("none", "jpeg:q=50"), draws=1)) == {"none", "jpeg:q=50"}
