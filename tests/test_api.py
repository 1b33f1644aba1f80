"""The Python API: Detector.from_pretrained / predict / save_pretrained, crop scores, lazy import."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_checkpoint, make_image
from glassdetect.inference.api import Detector, decide, parse_band
from glassdetect.data.splits import Sample
from glassdetect.pipeline import ViewDataset
from glassdetect.pipeline import infer, make_loader
from glassdetect.views.build import ImageError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("api") / "ckpt", 0, k=3, patch=96, global_size=96)


@pytest.fixture(scope="module")
def det(ckpt):
    return Detector.from_pretrained(ckpt, "cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    p = tmp_path_factory.mktemp("api_img") / "photo.png"
    make_image(p, 330, 410, seed=7)
    return p


def test_import_glassdetect_is_cheap():
    code = "import sys, glassdetect; assert 'torch' not in sys.modules, 'torch imported'; print(glassdetect.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import glassdetect

    assert glassdetect.Detector is Detector and "Detector" in dir(glassdetect)
    with pytest.raises(AttributeError):
        glassdetect.NoSuchThing


def test_predict_result(det, photo):
    r = det.predict(photo)
    assert 0.0 <= r.probability <= 1.0
    assert r.decision == ("fake" if r.probability >= 0.5 else "real")
    assert r.image_size == (330, 410) and r.draws == 1 and r.spread == 0.0 and r.ok
    assert len(r.crops) == 3 and r.crops_per_draw == 3
    assert sum(c.weight for c in r.crops) == pytest.approx(1.0, abs=1e-5)
    for c in r.crops:
        x0, y0, x1, y1 = c.box
        assert x1 - x0 == 96 and y1 - y0 == 96 and 0 <= x0 <= 410 - 96 and 0 <= y0 <= 330 - 96
        assert 0.0 <= c.score <= 1.0
    d = r.to_dict()
    json.dumps(d)
    assert d["fake_probability"] == r.probability and "thumbnail" not in d


def test_same_image_any_input_kind_same_score(det, photo):
    """Deterministic by default; a path and its bytes are the same image; so are a PIL image and its array."""
    by_path = det.predict(photo)
    assert det.predict(photo).probability == by_path.probability
    by_bytes = det.predict(photo.read_bytes())
    assert by_bytes.probability == by_path.probability and by_bytes.crops == by_path.crops
    pil = Image.open(photo).convert("RGB")
    by_pil, by_arr = det.predict(pil), det.predict(np.asarray(pil))
    assert by_pil.probability == by_arr.probability and by_pil.crops == by_arr.crops
    assert 0 <= by_pil.probability <= 1


def test_matches_the_evaluation_pipeline(ckpt, det, photo):
    """Detector and evaluate's runtime.infer see the same crops and give the same probability."""
    ds = ViewDataset([Sample(str(photo), 0, "g", "k")], det.cfg.view_spec(), seed=0)
    preds = infer(det.model, make_loader(ds, 1, 0), torch.device("cpu"))
    r = det.predict(photo)
    assert r.probability == pytest.approx(float(preds.prob_fake[0]), abs=1e-6)
    assert [c.box[:2] for c in r.crops] == [(int(left), int(top)) for top, left in preds.boxes[0]]
    assert [c.weight for c in r.crops] == pytest.approx(preds.attention[0].tolist(), abs=1e-6)


def test_draws_average_and_spread(det, tmp_path):
    big = tmp_path / "big.jpg"
    make_image(big, 900, 1000, seed=3)
    one = det.predict(big)
    r = det.predict(big, draws=4)
    assert r.draws == 4 and len(r.draw_probabilities) == 4 and len(r.crops) == 12
    assert r.draw_probabilities[0] == pytest.approx(one.probability, abs=1e-6)
    assert r.probability == pytest.approx(float(np.mean(r.draw_probabilities)))
    assert r.spread == pytest.approx(float(np.std(r.draw_probabilities)))
    assert r.spread > 0  # different crops per draw on a large image
    assert {c.draw for c in r.crops} == {0, 1, 2, 3}
    grid = det.predict(big, mode="grid", draws=4)  # grid is deterministic: one draw, every cell
    assert grid.draws == 1 and len(grid.crops) == min(900 // 96, 8) ** 2


def test_crop_scores_definition(det):
    """crop_scores: same logits as forward, and crop i's logits = head([g; f_i]) from the same features."""
    model = det.model
    g = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    c = torch.randint(0, 256, (2, 3, 3, 96, 96), dtype=torch.uint8)
    with torch.inference_mode():
        logits, weights = model(g, c)
        logits2, weights2, crop_logits = model.crop_scores(g, c)
        gf, f = model.encode(g, c)
        manual = torch.stack([model.head(torch.cat([gf, f[:, i]], -1)) for i in range(3)], 1)
        # all weight on one crop == that crop's score: make every crop identical
        same = c[:, :1].expand(-1, 3, -1, -1, -1).contiguous()
        l_same, _, cl_same = model.crop_scores(g, same)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(weights2, weights)
    torch.testing.assert_close(crop_logits, manual)
    torch.testing.assert_close(cl_same[:, 0], l_same, atol=1e-5, rtol=1e-5)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with torch.inference_mode():
        _, w, cl = model.crop_scores(g, c, mask)
    assert w[0, 2] == 0 and torch.isnan(cl[0, 2]).all() and not torch.isnan(cl[1]).any()


def test_save_pretrained_round_trip(det, ckpt, photo, tmp_path):
    det2 = Detector.from_pretrained(ckpt / "config.json", "cpu", threshold=0.3, unsure_band="0.2,0.25")
    out = det2.save_pretrained(tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["threshold"] == 0.3 and cfg["model"]["unsure_band"] == [0.2, 0.25]
    again = Detector.from_pretrained(out, "cpu")
    assert again.threshold == 0.3 and again.unsure_band == (0.2, 0.25)
    assert again.predict(photo).probability == det.predict(photo).probability
    # the override did not leak into the caller's other detector
    assert det.threshold == 0.5 and det.unsure_band is None


def test_save_pretrained_never_touches_the_models_config(ckpt, tmp_path, monkeypatch):
    import glassdetect.inference.api as api

    det2 = Detector.from_pretrained(ckpt, "cpu", threshold=0.3, unsure_band="0.2,0.25")
    before = det2.model.cfg.to_dict()
    seen = []
    real = api.save_checkpoint

    def spy(directory, model, *args, **kwargs):  # the model's config while the checkpoint is written
        seen.append(model.cfg.to_dict())
        return real(directory, model, *args, **kwargs)

    monkeypatch.setattr(api, "save_checkpoint", spy)
    det2.save_pretrained(tmp_path / "hf")
    assert seen == [before] and det2.model.cfg.to_dict() == before
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model"]["threshold"] == 0.3


GLOBAL_STATE_SCRIPT = r"""
import os, sys
from PIL import Image
import torch

torch.set_num_threads(3)  # the caller's own choice
env, guard = os.environ.get("OMP_WAIT_POLICY"), Image.MAX_IMAGE_PIXELS
import glassdetect
import glassdetect.cli, glassdetect.runtime, glassdetect.inference.predict, glassdetect.evaluation.evaluate
from glassdetect import Detector
from glassdetect.evaluation.evaluate import evaluate
from glassdetect.inference.predict import predict

ckpt, photo, tree = sys.argv[1:4]
assert os.environ.get("OMP_WAIT_POLICY") == env, "importing glassdetect changed OMP_WAIT_POLICY"
det = Detector.from_pretrained(ckpt, "cpu")
det.predict(photo)
det.predict_batch([photo, photo])
assert torch.get_num_threads() == 3, ("Detector", torch.get_num_threads())
for row in predict(ckpt, [photo, photo], threads=1, workers=0):
    assert not row.error and torch.get_num_threads() == 3, ("while a row is held", torch.get_num_threads())
assert torch.get_num_threads() == 3, ("predict", torch.get_num_threads())
evaluate(ckpt, tree, split="all", workers=0, device="cpu", threads=1, progress=False)
assert torch.get_num_threads() == 3, ("evaluate", torch.get_num_threads())
assert Image.MAX_IMAGE_PIXELS == guard and guard is not None, (guard, Image.MAX_IMAGE_PIXELS)
assert os.environ.get("OMP_WAIT_POLICY") == env
assert not torch.jit.onednn_fusion_enabled(), "the CPU graphs left TorchScript's oneDNN fusion switched on"
assert det.model.cpu_graphs._graphs, "the Detector ran without its CPU graphs"
print("unchanged")
"""


def test_library_calls_leave_the_hosts_global_state_alone(ckpt, photo, tmp_path):
    """Importing glassdetect and predicting / evaluating as a library leaves Pillow's guard, the
    caller's torch thread count, OMP_WAIT_POLICY (only the CLI entry point sets it) and TorchScript's
    oneDNN fusion switch (on only while a CPU graph runs) as they were."""
    import os

    for label, i in (("real", 0), ("fake", 1)):
        make_image(tmp_path / "tree" / label / f"img{i}.png", 80, 90, seed=i)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", GLOBAL_STATE_SCRIPT, str(ckpt), str(photo), str(tmp_path / "tree")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and "unchanged" in out.stdout, out.stderr[-3000:]


def test_the_cli_entry_point_sets_the_omp_default():
    """The `glassdetect` command owns its process: cli.main (not an import) defaults OMP_WAIT_POLICY."""
    import os

    code = ("import os, sys; import glassdetect.cli as c; assert 'OMP_WAIT_POLICY' not in os.environ\n"
            "sys.argv = ['glassdetect', '--help']\ntry:\n    c.main()\nexcept SystemExit:\n    pass\n"
            "print('policy', os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "policy PASSIVE" in out.stdout, out.stderr[-3000:]


def test_bad_inputs_raise_clear_errors(det, tmp_path):
    with pytest.raises(ImageError, match="not a recognised image"):
        det.predict(b"definitely not an image")
    with pytest.raises(ImageError, match="file not found"):
        det.predict(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="uint8"):
        det.predict(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ImageError, match="arrays must be"):
        det.predict(np.zeros((5, 50, 50, 3), np.uint8))
    with pytest.raises(TypeError, match="unsupported image input"):
        det.predict(12345)
    small = Detector(det.model, det.meta, max_pixels=100)
    with pytest.raises(ImageError, match="pixel limit"):
        small.predict(Image.new("RGB", (20, 20)))
    rs = det.predict_batch([b"junk", Image.new("RGB", (120, 100), (9, 90, 200)), tmp_path / "nope.png"])
    assert [r.ok for r in rs] == [False, True, False] and rs[0].decision == "error" and rs[0].probability is None


def test_grayscale_rgba_and_tiny_arrays(det):
    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 256, (120, 150), dtype=np.uint8), rng.integers(0, 256, (120, 150, 4), dtype=np.uint8),
                rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)):
        r = det.predict(arr)
        assert 0 <= r.probability <= 1 and len(r.crops) == 3


def test_decision_rule():
    names = ("real", "fake")
    assert decide(0.7, 0.5, None, names) == "fake" and decide(0.49, 0.5, None, names) == "real"
    assert decide(0.5, 0.5, None, names) == "fake"  # at the threshold counts as fake
    assert decide(0.45, 0.5, (0.4, 0.6), names) == "unsure" and decide(0.6, 0.5, (0.4, 0.6), names) == "unsure"
    assert decide(0.61, 0.5, (0.4, 0.6), names) == "fake" and decide(0.39, 0.5, (0.4, 0.6), names) == "real"
    assert parse_band("0.4, 0.6") == (0.4, 0.6) and parse_band("none") is None and parse_band(None) is None
    for bad in ("0.6,0.4", "0.4", "a,b", "-0.1,0.5"):
        with pytest.raises(ValueError):
            parse_band(bad)


def test_evidence_map_from_api(det, photo):
    r = det.predict(photo, explain=True, thumbnail=200)
    img = r.evidence_map()
    assert img.width == 200 and img.height > 200 * 330 / 410
    buf = io.BytesIO()
    img.save(buf, "PNG")
    with pytest.raises(ValueError, match="explain=True"):
        det.predict(photo).evidence_map()
