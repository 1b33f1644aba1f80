"""The demo's pipeline end to end on a tiny synthetic benchmark: audit, augmentation selection on
validation, training, clean evaluation per generator and pixel history, robustness sweep, report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from glassdetect.runtime import cpu_has_bf16
from glassdetect.studies import offline_bench as ob
from glassdetect.views.degrade import parse
from glassdetect.studies.demo import DemoConfig, demo_config, run_demo
from synth import bicubic_upscaler, camera_photos


@pytest.mark.timeout(600)
def test_demo_end_to_end_on_a_tiny_benchmark(tmp_path: Path) -> None:
    spec = ob.BenchSpec(name="tiny", photos=(), generators=("bicubic-x2", "bicubic-x4"),
                        histories=(ob.History("native", 1, (240, 240), match_jpeg=True),
                                   ob.History("halved", 1, (240, 240), prescale=2)))
    bench = tmp_path / "bench"
    photos = camera_photos(tmp_path, 10, (520, 500), (8, 4), packages=2, seed=11)
    ups = {f"bicubic-x{s}": bicubic_upscaler(f"bicubic-x{s}", s) for s in (2, 4)}
    ob.build_bench(bench, photos, spec, 0, ups, progress=False)
    before = {p: p.read_bytes() for p in bench.rglob("*.png")}
    cfg = demo_config(2, out=str(tmp_path / "demo"), bench=str(bench), seeds=(0, 1), backbone="test_convnext",
                     weights=None, epochs=1, batch_size=4, workers=0, threads=1, device="cpu", bootstrap=20,
                     augment_candidates=("none", "jpeg:q=60-90"), select_sweep="jpeg:q=70",
                     sweep="jpeg:q=50;blur:sigma=1")
    res = run_demo(cfg)
    out = tmp_path / "demo"
    assert json.loads((out / "results.json").read_text())["meta"]["version"] == ob.BENCH_VERSION
    sel = res["augment_selection"]
    assert sel["chosen"] in ("none", "jpeg:q=60-90") and set(sel["candidates"]) == {"none", "jpeg:q=60-90"}
    assert all(len(c["val_auc"]) == 2 for c in sel["candidates"].values())  # clean + one degradation
    for arch in ("glass", "standard"):
        clean = res[arch]["clean"]
        assert len(clean["auc"]["values"]) == 2 and set(clean["per_history"]) == {"native", "halved"}
        assert set(clean["per_generator"]) == {"bicubic-x2", "bicubic-x4"}
        assert len(res["robustness"]["models"][arch]["checkpoints"]) == 2
        # every final run trained with the chosen augmentation
        for ckpt in res["robustness"]["models"][arch]["checkpoints"]:
            summary = json.loads((Path(ckpt).parent / "summary.json").read_text())
            assert summary["augment"] == parse(sel["chosen"]).name
    assert [p["name"] for p in res["robustness"]["points"]] == ["none", "jpeg:q=50", "blur:sigma=1"]
    assert res["audit"]["verdict"]
    for ckpt in res["robustness"]["checkpoints"]:  # decision rule fitted on validation reals
        meta = json.loads((Path(ckpt) / "config.json").read_text())
        assert meta["calibration"]["split"] == "val" and meta["calibration"]["target_fpr"] == 0.1
        assert meta["calibration"]["fpr"] <= 0.1 and meta["calibration"]["n_real"] > 0
        assert 0.0 < meta["model"]["threshold"] <= 1.0
    md = (out / "results.md").read_text()
    assert "Robustness sweep" in md and "Augmentation selection" in md and "Shortcut audit" in md
    assert {p: p.read_bytes() for p in bench.rglob("*.png")} == before  # the benchmark is only read


def test_per_history_uses_the_given_threshold(tmp_path: Path) -> None:
    from glassdetect.studies.demo import per_history

    (tmp_path / "manifest.csv").write_text(
        "path,label,history\na.png,real,native\nb.png,fake,native\nc.png,real,halved\nd.png,fake,halved\n")
    rows = [("a.png", "real", 0.6), ("b.png", "fake", 0.9), ("c.png", "real", 0.2), ("d.png", "fake", 0.7)]
    csv_path = tmp_path / "pred.csv"
    csv_path.write_text("path,label,fake_probability\n" + "".join(
        f"{(tmp_path / p).resolve()},{lab},{prob}\n" for p, lab, prob in rows))
    low = per_history(csv_path, tmp_path / "manifest.csv", 0.5)
    high = per_history(csv_path, tmp_path / "manifest.csv", 0.65)
    assert set(low) == {"native", "halved"} and low["native"]["auc"] == 1.0
    assert low["native"]["real_accuracy"] == 0.0 and high["native"]["real_accuracy"] == 1.0
    assert low["halved"]["fake_accuracy"] == high["halved"]["fake_accuracy"] == 1.0


@pytest.mark.timeout(600)
def test_demo_on_a_version3_benchmark_reports_seen_and_left_out_families(tmp_path: Path) -> None:
    from dataclasses import replace

    from glassdetect.studies.offline_bench import v3, v3plan

    gens = ("spanx4_ch48", "realesr-animevideov3-x2", "realcugan-se-up2x-no-denoise", "srmdnf-x3",
            "waifu2x-upconv7-photo-x2", "waifu2x-cunet-x2")
    spec = replace(v3plan.V3_SPECS["pilot"], generators=gens, region_px=40_000, min_side=120, eval_side=120)
    src = v3.MappingSource({g: bicubic_upscaler(g, ob.GENERATORS[g].scale) for g in gens}, "bicubic")
    photos = camera_photos(tmp_path, 10, (300, 260), (24, 12))
    bench = tmp_path / "bench"
    v3.build_bench_v3(bench, photos, spec, 0, src, workers=1, cache_root=tmp_path / "cache", progress=False)
    cfg = DemoConfig(out=str(tmp_path / "demo"), bench=str(bench), bench_version=3, window="window:side=96-128",
                     seeds=(0,), backbone="test_convnext", weights=None, epochs=1, batch_size=4, workers=0,
                     threads=1, device="cpu", bootstrap=0, augment="none", sweep="jpeg:q=50")
    res = run_demo(cfg)
    assert res["meta"]["version"] == 3 and res["meta"]["bench"]["test"] and res["meta"]["heldout"]
    for arch in ("glass", "standard"):
        clean = res[arch]["clean"]
        assert set(clean["per_family_seen"]) == {"yes", "no"}  # a training family and a left-out one
        assert {"waifu2x-upconv7", "waifu2x-cunet"} - set(clean["per_family"]) == {"waifu2x-upconv7"}  # test: cunet
        assert set(clean["per_package"]) and all(0.0 <= g["auc"]["mean"] <= 1.0 for g in clean["per_package"].values())
        for ckpt in res["robustness"]["models"][arch]["checkpoints"]:
            summary = json.loads((Path(ckpt).parent / "summary.json").read_text())
            assert summary["augment"] == parse("window:side=96-128").name  # fresh windows of the regions
    ref = res["reference"]
    assert 0.0 <= ref["auc"] <= 1.0 and set(ref["per_group"]["family_seen"]) == {"yes", "no"}
    md = (tmp_path / "demo" / "results.md").read_text()
    assert "left out of it" in md and "reference (2×2-phase" in md and "Per photo package" in md


def test_demo_config_per_benchmark_version() -> None:
    v3 = demo_config(3, device="cpu")
    assert (v3.bench_version, v3.size, v3.epochs, v3.freeze, v3.local_input, v3.local_depth, v3.augment) == (
        3, "pilot", 10, 0, "residual", 4, "none")
    assert (v3.threads, v3.workers) == (-1, 1)  # fast_recipe's CPU runtime: every logical CPU + one decode worker
    assert v3.cpu_amp == cpu_has_bf16()  # bf16 training steps where the CPU has bf16 units
    assert v3.train_config("glass", 0, Path("m.csv"), v3.augment).augment == v3.window  # the fresh window only
    v2 = demo_config(2, device="cpu", epochs=3, augment="select")
    assert (v2.size, v2.epochs, v2.freeze, v2.local_input, v2.local_depth, v2.augment) == ("small", 3, 2, "rgb", 0, None)
    assert v2.train_config("glass", 0, Path("m.csv"), "mild").augment == "mild"  # no window on version 2
    assert demo_config(3, device="cpu").train_config("glass", 0, Path("m.csv"), "standard").local_input == "residual"
    assert demo_config(3, device="cpu").train_config("glass", 0, Path("m.csv")).local_depth == 4
    assert DemoConfig().local_input == demo_config(3, device="cpu").local_input  # the class defaults are version 3's
    with pytest.raises(ValueError, match="version 4"):
        demo_config(4)


def test_demo_lets_go_of_the_evaluated_model_before_training(tmp_path, monkeypatch):
    """The model the last evaluation cached is not kept under the next training's peak."""
    import glassdetect.evaluation.evaluate as ev
    import glassdetect.studies.demo as demo
    from glassdetect.training.config import TrainConfig

    ev._LAST[("some/checkpoint", "cpu", ())] = (object(), {})
    seen = []
    monkeypatch.setattr(demo, "train", lambda tc: seen.append(dict(ev._LAST)) or {"history": []})
    demo._train_once(TrainConfig(out=str(tmp_path / "run")))
    assert seen == [{}]
