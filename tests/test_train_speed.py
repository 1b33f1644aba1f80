"""The fast training recipe changes the runtime only, and its thread setting is honoured and undone."""
from __future__ import annotations

import os
from dataclasses import fields

import torch

from glassdetect.runtime import cpu_has_bf16, resolve_threads
from glassdetect.training.config import Recipe, fast_recipe
from glassdetect.training.train import TrainConfig, train, training_threads

from synth import make_checker_tree

RUNTIME = {"threads", "workers", "device", "cpu_amp"}


def test_fast_recipe_keeps_the_model_data_and_optimisation():
    ref, fast = Recipe(), fast_recipe(device="cpu")
    differ = {f.name for f in fields(Recipe) if getattr(ref, f.name) != getattr(fast, f.name)}
    assert differ <= RUNTIME and fast.threads == -1 and fast.workers == 1
    assert fast.cpu_amp == cpu_has_bf16() and not Recipe().cpu_amp  # bf16 steps only where the CPU has bf16 units
    assert fast_recipe(device="cpu", k=8).k == 8  # overrides win


def test_training_threads():
    assert training_threads(-1) == os.cpu_count()
    assert training_threads(0) == resolve_threads(0) and training_threads(3) == 3


def test_a_run_on_every_cpu_trains_and_gives_the_callers_threads_back(tmp_path):
    data = make_checker_tree(tmp_path / "d", n_groups=8, size=256)
    before = torch.get_num_threads()
    seen = []
    summary = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), backbone="test_resnet", k=2, epochs=1,
                                batch_size=4, pretrained=False, workers=0, threads=-1, progress=False, device="cpu"),
                    on_epoch_end=lambda e, rec: seen.append(torch.get_num_threads()))
    assert seen == [os.cpu_count()] and summary["history"][0]["train_images"] > 0
    assert torch.get_num_threads() == before
