"""``glassdetect bench train`` on a tiny model: schema, FLOPs, ratios, Markdown, goal. No timing assertions."""
from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from glassdetect import bench as B
from glassdetect.bench.train import conv_backward_flops, flop_counter
from glassdetect.cli import app
from glassdetect.runtime import resolve_threads

TINY = dict(images=8, size=256, warmup=1, steps=1, rounds=2, variants=("reference", "fast"), device="cpu",
            offline_weights=False, overrides={"backbone": "test_resnet", "k": 2, "batch_size": 2, "workers": 0})


def test_bench_train_times_each_recipe_side_by_side(tmp_path):
    res = B.bench_train(tmp_path, B.TrainBenchConfig(**TINY))
    ref, fast = res["variants"]
    assert (ref["name"], fast["name"]) == ("reference", "fast")
    assert ref["threads"] == resolve_threads(0)  # the demo's recipe: threads 0, one per physical core
    assert fast["threads"] == os.cpu_count()  # fast_recipe: every logical CPU
    for v in (ref, fast):
        assert len(v["images_per_s_rounds"]) == 2 and v["images_per_s"] > 0
        assert v["gflop_per_image"] > 0 and v["fraction_of_peak"] > 0
        assert v["gflops"] == pytest.approx(v["gflop_per_image"] * v["images_per_s"])
        assert 0 <= v["wait_fraction"] <= 1 and v["cpu_s_per_image"] > 0 and v["fraction_of_core_peak_cpu_time"] > 0
    assert ref["speedup_rounds"] == [1.0, 1.0]
    assert fast["speedup_rounds"] == pytest.approx([a / b for a, b in zip(fast["images_per_s_rounds"],
                                                                          ref["images_per_s_rounds"])])
    full = {"train": res, "command": "glassdetect bench train"}
    goals = B.evaluate_goals(full)
    assert goals["train_speedup"]["measured"] == fast["speedup_vs_reference"]
    md = B.to_markdown({**full, "goals": goals})
    assert "## Training throughput" in md and "| fast |" in md and "train_speedup" in md


def test_training_flops_count_depthwise_backward_as_depthwise():
    """torch's own convolution-backward formula counts a grouped convolution as a dense one."""
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    fwd = 2 * 2 * 32 * 16 * 16 * 9  # multiply-adds of the forward pass, 2 FLOPs each
    counter = flop_counter()
    with counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == 3 * fwd  # forward, the input's gradient, the weight's gradient
    assert conv_backward_flops([2, 32, 16, 16], [2, 32, 16, 16], [32, 1, 3, 3], None, 1, 1, 1, False, 0, 32,
                               [False, True, False]) == fwd


def test_cli_bench_train_refuses_an_unknown_recipe(tmp_path):
    r = CliRunner().invoke(app, ["bench", "train", "--train-variants", "reference,turbo", "--workdir", str(tmp_path)])
    assert r.exit_code != 0 and "turbo" in r.output


def test_cli_bench_train_writes_json_and_markdown(tmp_path, monkeypatch):
    import glassdetect.bench.run as run

    monkeypatch.setattr(run, "train_bench_defaults", lambda quick, device: B.TrainBenchConfig(**TINY))
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["bench", "train", "--train-rounds", "1", "--json", str(out), "--md",
                                 str(tmp_path / "r.md"), "--workdir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["train"]["rounds"] == 1 and "train_speedup" in res["goals"]
    assert "Training throughput" in (tmp_path / "r.md").read_text()
