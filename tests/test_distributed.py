"""DistributedDataParallel: two CPU processes (gloo) follow the single-process run with the same
global batch, only rank 0 writes, and an interrupted DDP run resumes exactly."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from safetensors.torch import load_file

from glassdetect.training import distributed as ddp
from glassdetect.models import create_model
from glassdetect.training.train import TrainConfig, train
from synth import make_checker_tree

# No BatchNorm (ConvNeXt: LayerNorm) and no dropout, so two half batches are the same computation as one
COMMON = dict(backbone="test_convnext", arch="glass", k=2, epochs=2, batch_size=4, dropout=0.0, lr_global=1e-3,
              lr_local=1e-3, lr_head=1e-3, seed=5, pretrained=False, workers=0, threads=1, progress=False,
              device="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n", [12, 13])
def test_shard_sampler_splits_the_single_process_batches(n):
    """Rank r takes positions r, r+W, ... of the single-process order: with a per-rank batch of
    B/W, the ranks' i-th batches together are the single process's i-th batch of B."""
    seed, world, batch = 7, 2, 4
    order = list(ddp.ShardSampler(n, 0, 1, lambda e: seed + e))  # what a single process visits
    assert sorted(order) == list(range(n))
    single = [order[i:i + batch] for i in range(0, n, batch)]
    shards = [list(ddp.ShardSampler(n, r, world, lambda e: seed + e)) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == -(-n // world)  # equal step counts on every rank
    per_rank = [[s[i:i + batch // world] for i in range(0, len(s), batch // world)] for s in shards]
    for i, full in enumerate(single):
        together = sorted(per_rank[0][i] + per_rank[1][i])
        if len(full) == batch:
            assert together == sorted(full)
        else:  # the last, short batch is padded by wrapping around (as DistributedSampler does)
            assert set(full) <= set(together)
    sampler = ddp.ShardSampler(n, 0, world, lambda e: seed + e)
    sampler.set_epoch(1)
    assert list(sampler) != shards[0]  # a new order every epoch


@pytest.fixture(scope="module")
def split_data(tmp_path_factory):
    """6 source groups for training, 3 for validation (train/ and val/ folders)."""
    root = tmp_path_factory.mktemp("ddp_data")
    make_checker_tree(root / "train", n_groups=9, size=256, seed=1)
    for cls in ("real", "fake"):
        (root / "val" / cls).mkdir(parents=True)
        for i in (6, 7, 8):
            (root / "train" / cls / f"s{i:03d}.png").rename(root / "val" / cls / f"s{i:03d}.png")
    return root


class Interrupt(Exception):
    pass


def _stop(epoch, rec):
    raise Interrupt


def _worker(rank: int, world: int, ports: tuple[int, int], data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    from typer.testing import CliRunner

    from glassdetect.cli import app

    # 1. the train command itself, as under torchrun: it starts and ends the process group
    args = ["train", "--data", data, "--out", f"{out}/ddp", "--no-pretrained", "--quiet"]
    for key, value in COMMON.items():
        if key not in ("pretrained", "progress"):
            args += [f"--{key.replace('_', '-')}", str(value)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    assert not ddp.is_initialized()

    # 2. interrupted after epoch 1, then resumed, inside one process group
    os.environ["MASTER_PORT"] = str(ports[1])
    assert ddp.init(torch.device("cpu"))
    try:
        cfg = TrainConfig(data=data, out=f"{out}/cut", **COMMON)
        try:
            train(cfg, on_epoch_end=_stop)
        except Interrupt:
            pass
        summary = train(TrainConfig(**{**cfg.__dict__, "resume": True}))
        assert summary["world_size"] == 2 and len(summary["history"]) == 2
    finally:
        ddp.cleanup()


def test_two_process_ddp_matches_single_process_and_resumes(split_data, tmp_path):
    import torch.multiprocessing as mp

    single = train(TrainConfig(data=str(split_data), out=str(tmp_path / "single"), **COMMON))
    mp.spawn(_worker, args=(2, (_free_port(), _free_port()), str(split_data), str(tmp_path)), nprocs=2, join=True)

    hist = lambda run: [json.loads(line) for line in open(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    h1, h2 = hist("single"), hist("ddp")
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert a["train_images"] == b["train_images"] == 12
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["val_accuracy"] == a["val_accuracy"] and b["train_accuracy"] == a["train_accuracy"]
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "ddp" / "last" / "config.json").read_text())["world_size"] == 2
    assert (tmp_path / "ddp" / "split.csv").read_text() == (tmp_path / "single" / "split.csv").read_text()

    # weights: the DDP run's update from the (shared) initial weights is the single run's, up to float noise
    torch.manual_seed(COMMON["seed"])
    init = {k: v.detach().clone() for k, v in
            create_model(TrainConfig(**COMMON).model_config(), pretrained=False).state_dict().items()}
    w1, w2 = load_file(str(tmp_path / "single/last/model.safetensors")), load_file(str(tmp_path / "ddp/last/model.safetensors"))
    assert w1.keys() == w2.keys()
    diff = sum(float((w1[k].double() - w2[k].double()).norm() ** 2) for k in w1) ** 0.5
    update = sum(float((w1[k].double() - init[k].double()).norm() ** 2) for k in w1) ** 0.5
    assert update > 0 and diff / update < 1e-2, (diff, update)

    # resume under DDP: bit-identical to the uninterrupted DDP run
    w3 = load_file(str(tmp_path / "cut/last/model.safetensors"))
    assert all(torch.equal(w2[k], w3[k]) for k in w2)
    assert [(h["train_loss"], h["val_accuracy"]) for h in hist("cut")] == [(h["train_loss"], h["val_accuracy"]) for h in h2]
    assert single["n_train"] == 12
