"""`glassdetect predict --engine ray`: the same rows as the local engine (same columns, same
probabilities, same order, bad files as error rows) on a local Ray cluster the tests start with
2 CPUs; options the Ray engine does not support are refused; the driver restores input order."""
import csv
import io
import logging
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_checkpoint, make_image
from glassdetect.cli import app
from glassdetect.inference.predict import RowFormatter, predict
from glassdetect.inference.ray_engine import RayOptions, in_input_order, refuse_unsupported

FAST = ["--threads", "1", "--quiet", "--device", "cpu", "--batch-size", "3"]
RAY_ENV = {  # quiet and offline, for the test's own Ray only
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ray") / "ckpt", 3, k=2, patch=96, global_size=96)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """6 good images of different sizes and formats, a truncated JPEG and a text file named .jpg."""
    d = tmp_path_factory.mktemp("ray_imgs")
    for i, (h, w) in enumerate([(120, 150), (200, 96), (97, 260), (150, 150), (64, 80), (230, 200)]):
        make_image(d / ("sub" if i % 2 else "") / f"img{i}.{('png', 'jpg', 'webp')[i % 3]}", h, w, seed=i)
    make_image(d / "whole.jpg", 200, 240, seed=9)
    data = (d / "whole.jpg").read_bytes()
    (d / "whole.jpg").unlink()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "text.jpg").write_text("not an image\n" * 10)
    return d


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for this module, shut down after it."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'glassdetect[ray]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'glassdetect[ray]'")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
        try:
            yield ray
        finally:
            ray.shutdown()


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_ray_cli_writes_the_local_engines_file(ray_cluster, ckpt, images, tmp_path):
    inputs = [images, images / "missing.png"]
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    r_local = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, inputs), "-o", str(local), "--draws", "2",
                                       "--workers", "0", *FAST])
    r_ray = CliRunner().invoke(app, ["predict", str(ckpt), *map(str, inputs), "-o", str(remote), "--draws", "2",
                                     "--engine", "ray", "--concurrency", "1", *FAST])
    assert r_local.exit_code == 1 and r_ray.exit_code == 1, (r_local.output, r_ray.output)  # bad files: exit 1, not a crash
    assert remote.read_bytes() == local.read_bytes()
    rows = _csv_rows(remote)
    assert len(rows) == 9 and rows[-1]["path"] == str(images / "missing.png")
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["decision"] == "error"}
    assert set(errors) == {"truncated.jpg", "text.jpg", "missing.png"} and all(errors.values())
    good = [row for row in rows if not row["error"]]
    assert len(good) == 6 and all(row["draws"] == "2" and row["crops"] == "2" for row in good)
    assert len({row["fake_probability"] for row in good}) > 1


def test_ray_resumes_a_local_run(ray_cluster, ckpt, images, tmp_path):
    """--resume with the Ray engine: the rows already written are kept, the rest appended in input order."""
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    args = ["predict", str(ckpt), str(images), "--format", "jsonl", *FAST]
    assert CliRunner().invoke(app, [*args, "-o", str(full), "--workers", "0"]).exit_code == 1
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]))
    r = CliRunner().invoke(app, [*args, "-o", str(part), "--resume", "--engine", "ray", "--concurrency", "1"])
    assert r.exit_code == 1, r.output
    assert part.read_text() == full.read_text() and len(lines) == 8


def test_ray_api_grid_mode_decisions_and_jsonl(ray_cluster, ckpt, images):
    """Grid mode (a different crop count per image: ragged arrays between the stages), decision
    overrides and JSON Lines: the same text as the local engine's."""
    from glassdetect.inference.ray_engine import predict_batches

    paths = sorted(str(p) for p in images.rglob("*.*"))
    random.Random(0).shuffle(paths)  # input order is not name order
    opts = dict(mode="grid", threshold=0.3, unsure="0.45,0.55")
    local = list(predict(ckpt, paths, 4, 0, "cpu", 1, 0, **opts))
    batches = list(predict_batches(ckpt, paths, 4, "cpu", 0, ray_options=RayOptions(concurrency=1), **opts))
    remote = [row for rows in batches for row in rows]
    fmt = RowFormatter("jsonl")
    assert fmt.lines(remote) == fmt.lines(local)
    assert [row.path for row in remote] == paths
    assert len({row.crops for row in remote if not row.error}) > 1  # grid: crop counts differ per image


def test_decode_runs_in_tasks_not_in_the_actors(ray_cluster, ckpt, capsys):
    """Ray Data would fuse decoding into the model actors when their resources match; they stay apart."""
    import ray

    from glassdetect.inference.api import Detector
    from glassdetect.inference.ray_engine import build_dataset

    ds = build_dataset(ray, [(0, "a.png")], str(ckpt), Detector.from_pretrained(ckpt, "cpu").spec(), 2, "cpu",
                       dict(seed=0, draws=1, mode=None, threshold=None, unsure_band=False, max_pixels=None),
                       (1, 0.0), (1.0, 2**28))
    if not hasattr(ds, "explain"):
        pytest.skip("this Ray has no Dataset.explain()")
    ds.explain()
    optimized = capsys.readouterr().out.split("Physical Plan (Optimized)")[-1]
    assert "TaskPoolMapOperator[MapBatches(decode_views)]" in optimized
    assert "ActorPoolMapOperator[MapBatches(Scorer)]" in optimized


@pytest.mark.parametrize("extra, named", [(["--explain", "maps"], "--explain"), (["--dedupe"], "--dedupe")])
def test_ray_refuses_what_it_does_not_support(ckpt, images, tmp_path, extra, named):
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "x.csv"), "--engine", "ray",
                                 *extra, *FAST])
    said = " ".join(r.output.split())  # the console wraps long lines
    assert r.exit_code == 2 and f"does not support {named}" in said and "use --engine local" in said, r.output
    assert not (tmp_path / "x.csv").exists()


def test_without_ray_the_error_says_what_to_install(ckpt, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(images), "-o", str(tmp_path / "x.csv"), "--engine", "ray",
                                 *FAST])
    assert r.exit_code == 2 and "pip install 'glassdetect[ray]'" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "x.csv").exists()


def test_unknown_engine_and_bad_ray_options(ckpt, images):
    r = CliRunner().invoke(app, ["predict", str(ckpt), str(images), "--engine", "spark", *FAST])
    assert r.exit_code == 2 and "--engine must be local or ray" in r.output
    with pytest.raises(ValueError, match="--concurrency"):
        RayOptions(concurrency=0)
    with pytest.raises(ValueError, match="--num-gpus-per-worker"):
        RayOptions(num_gpus_per_worker=-1)
    with pytest.raises(ValueError, match="--explain"):
        refuse_unsupported({"explain_dir": "maps"})
    refuse_unsupported({"explain_dir": None, "dedupe": False, "workers": 4})


def _scored(indices):
    n = len(indices)
    return {"index": np.asarray(indices, np.int64), "path": np.asarray([f"p{i}" for i in indices], dtype=object),
            "fake_probability": np.asarray([i / 10 for i in indices]), "decision": np.asarray(["real"] * n, dtype=object),
            "crops": np.full(n, 2), "draws": np.ones(n, np.int64), "spread": np.zeros(n),
            "error": np.asarray([""] * n, dtype=object)}


def test_rows_come_back_in_input_order():
    order = [5, 1, 7, 3, 0]  # input positions (a resumed or sharded run skips some)
    lists = list(in_input_order([_scored([7, 0]), _scored([1]), _scored([5, 3])], order))
    assert [[row.path for row in rows] for rows in lists] == [["p5", "p1", "p7", "p3", "p0"]]
    lists = list(in_input_order([_scored([5]), _scored([1, 3]), _scored([7, 0])], order))
    assert [[row.path for row in rows] for rows in lists] == [["p5"], ["p1"], ["p7", "p3", "p0"]]
    with pytest.raises(RuntimeError, match="no row for 1 input"):
        list(in_input_order([_scored([5, 1, 7, 3])], order))
