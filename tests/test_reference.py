"""The training-free reference detector (2×2-phase residual statistic) and `glassdetect reference`."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import photo_array
from glassdetect.cli import app
from glassdetect.evaluation.evaluate import evaluate
from glassdetect.evaluation.reference import evaluate_reference, phase_means, phase_score
from glassdetect.models import ModelConfig, create_model, save_checkpoint


def _upsampled(img: np.ndarray, resample: int) -> np.ndarray:
    """``img`` area-halved and brought back to its size by ``resample``: same content, upsampled pixels."""
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).reduce(2).resize((w, h), resample))


@pytest.mark.parametrize("resample", [Image.NEAREST, Image.BILINEAR, Image.BICUBIC])
def test_upsampled_image_scores_higher_than_its_original(resample):
    for seed in range(3):
        original = photo_array(256, 320, seed)
        up = _upsampled(original, resample)
        assert phase_score(up) > 10 * phase_score(original) and phase_score(up) > 0.05, seed


def test_constant_image_scores_zero_and_strips_do_not_matter():
    assert phase_score(np.full((40, 50, 3), 90, np.uint8)) == 0.0
    assert phase_score(np.zeros((3, 3, 3), np.uint8)) == 0.0  # too small for a residual: no evidence
    img = photo_array(203, 157, 4)
    whole = phase_means(img, strip=10_000)
    for strip in (1, 2, 7, 64):
        assert np.array_equal(phase_means(img, strip=strip), whole), strip
    with pytest.raises(ValueError, match="uint8"):
        phase_score(img.astype(np.float32))


def _bench(root):
    """12 source photos: a real and a bilinear-upsampled fake each, 2 generators/families, 2 histories, splits."""
    rows = []
    for i in range(12):
        real = photo_array(96, 128, seed=i)
        split = "train" if i < 4 else "val" if i < 8 else "test"
        gen, fam = ("bil", "interp") if i % 2 else ("nea", "copy")
        history = "native" if i % 3 else "halved"
        for label, pixels in (("real", real), ("fake", _upsampled(real, Image.BILINEAR if i % 2 else Image.NEAREST))):
            name = f"{label}/{i:02d}.png"
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name)
            rows.append(dict(path=name, label=label, group=f"p{i}", generator=gen if label == "fake" else "",
                             split=split, history=history, family=fam))  # a real carries its partner's family
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_metrics_have_the_evaluate_keys_and_are_deterministic(tmp_path):
    data = _bench(tmp_path / "data")
    res = evaluate_reference(data, "test", tmp_path / "ref.json")
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", create_model(ModelConfig(arch="standard", backbone="test_resnet",
                                                                       global_size=64)))
    glass = evaluate(ckpt, data, split="test", workers=0, device="cpu", progress=False)
    assert set(glass) - {"plots"} <= set(res)
    assert res["n"] == 8 and res["split"] == "test" and res["auc"] == 1.0
    assert set(res["per_generator"]) == {"bil", "nea"} and set(res["per_family"]) == {"copy", "interp"}
    assert set(res["per_history"]) == {"halved", "native"}
    assert res["per_generator"]["nea"]["n_fake"] == 2
    # the threshold is fitted on the 4 validation reals (10 % FPR: none of them may be called fake)
    assert res["threshold_fitted_on"] == "4 validation reals" and res["real_accuracy"] >= 0.5
    again = json.loads(json.dumps(evaluate_reference(data, "test")))
    saved = json.loads((tmp_path / "ref.json").read_text())
    for key in ("auc", "ap", "accuracy", "threshold", "per_generator", "per_family", "per_history"):
        assert again[key] == saved[key], key
    preds = list(csv.DictReader(open(tmp_path / "ref.predictions.csv")))
    assert len(preds) == 8 and {"family", "history", "fake_probability"} <= set(preds[0])


def test_degraded_scoring_and_the_cli(tmp_path):
    data = _bench(tmp_path / "data")
    out = tmp_path / "q75.json"
    r = CliRunner().invoke(app, ["reference", str(data), "--split", "test", "--out", str(out), "--degrade",
                                 "jpeg:q=75", "--quiet"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["degrade"] == "jpeg:q=75" and res["arch"] == "reference-2x2-phase"
    assert res["auc"] != evaluate_reference(data, "test")["auc"] or res["auc"] == 1.0
    again = evaluate_reference(data, "test", degrade="jpeg:q=75")
    assert again["auc"] == res["auc"] and again["per_generator"] == res["per_generator"]
    bad = CliRunner().invoke(app, ["reference", str(data), "--split", "holdout", "--quiet"])
    assert bad.exit_code == 2 and "no images in that split" in bad.output
    bad = CliRunner().invoke(app, ["reference", str(data), "--degrade", "jpeg:q=500", "--quiet"])
    assert bad.exit_code == 2 and "degrade" in bad.output
