"""Shortcut audit (glassdetect.data.audit, `glassdetect data audit`): small synthetic trees only."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glassdetect.data.audit import (
    audit,
    estimate_jpeg_quality,
    format_report,
    image_properties,
    jpeg_grid_alignment,
    jpeg_grid_strength,
    noise_sigma,
    resampling_score,
)


def texture(h: int, w: int, seed: int, noise: float = 2.0) -> np.ndarray:
    """Natural-ish RGB texture: 1/f-filtered random fields (shared + per channel) plus mild noise."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2) + 1.0 / max(h, w)

    def field(alpha: float) -> np.ndarray:
        x = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((h, w))) / f**alpha, s=(h, w))
        return x / x.std()

    base = field(1.3)
    out = np.empty((h, w, 3))
    for c in range(3):
        x = 0.8 * base + 0.3 * field(1.5)
        out[..., c] = 128 + 40 * x / x.std()
    out += rng.standard_normal((h, w, 3)) * noise
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def jpeg_roundtrip(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def luma(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114


def hidden_grid(seed: int, size: int = 256, quality: int = 90, off: tuple[int, int] = (3, 5)) -> np.ndarray:
    """A JPEG (quality q) decoded and cropped at an offset that is not a multiple of 8."""
    a = texture(size + 16, size + 16, seed)
    return jpeg_roundtrip(a, quality)[off[0]:off[0] + size, off[1]:off[1] + size]


def save(a: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)


def bases(report) -> set[str]:
    return set(report.flagged_bases)


# ----------------------------------------------------------------------------- estimators

@pytest.mark.parametrize("q", [50, 75, 90])
def test_jpeg_quality_reads_back(tmp_path, q):
    p = tmp_path / f"q{q}.jpg"
    save(texture(96, 128, q), p, quality=q)
    row = image_properties(p)
    assert row["format"] == "JPEG" and row["jpeg_quality_known"]
    assert abs(row["jpeg_quality"] - q) <= 2
    with Image.open(p) as im:
        assert abs(estimate_jpeg_quality(im.quantization[0]) - q) <= 2


def test_png_has_no_jpeg_quality(tmp_path):
    p = tmp_path / "x.png"
    save(texture(64, 80, 1), p)
    row = image_properties(p)
    assert row["format"] == "PNG" and row["jpeg_quality"] is None and not row["jpeg_quality_known"]
    assert row["bit_depth"] == 8 and row["mode"] == "RGB" and row["exif"] is False
    assert row["aspect"] == pytest.approx(80 / 64) and row["megapixels"] == pytest.approx(64 * 80 / 1e6)


def test_jpeg_grid_separates_offgrid_jpeg_crop_from_never_compressed(tmp_path):
    never = [jpeg_grid_strength(luma(texture(256, 256, s))) for s in range(3)]
    q90 = [jpeg_grid_strength(luma(hidden_grid(s, quality=90))) for s in range(3)]
    q95 = [jpeg_grid_strength(luma(hidden_grid(s, quality=95, off=(7, 2)))) for s in range(3)]
    assert max(never) < 0.05
    assert min(q90) > 0.3 and min(q95) > 0.08
    assert min(q95) > 3 * max(never)
    # Area-downscaling a JPEG by 2 removes the (period-8) grid.
    down = np.asarray(Image.fromarray(jpeg_roundtrip(texture(512, 512, 9), 90)).reduce(2))
    assert jpeg_grid_strength(luma(down)) < 0.05
    # The grid's alignment is found: crop offset (3, 5) puts block starts at rows ≡ 5, columns ≡ 3.
    assert jpeg_grid_alignment(luma(hidden_grid(0)))[1] == (5, 3)
    # ... and reported in file coordinates, also through a PNG written to disk.
    p = tmp_path / "g.png"
    save(hidden_grid(1), p)
    row = image_properties(p)
    assert row["jpeg_grid_offset"] == "5,3" and row["jpeg_grid"] > 0.3


def test_noise_estimate_grows_with_gaussian_noise():
    rng = np.random.default_rng(0)
    flat = np.full((200, 200), 128.0)
    for sigma in (1.0, 4.0, 10.0):
        est = noise_sigma(flat + rng.normal(0, sigma, flat.shape))
        assert est == pytest.approx(sigma, rel=0.1)
    base = luma(texture(200, 200, 3, noise=0.0)).astype(np.float64)
    ests = [noise_sigma(base + rng.normal(0, s, base.shape)) for s in (0.0, 3.0, 6.0, 12.0)]
    assert all(b > a for a, b in zip(ests, ests[1:])), ests


def test_resampling_score_high_for_interpolated_upscale():
    a = texture(300, 300, 4)
    orig = resampling_score(luma(a[:256, :256]))
    up = np.asarray(Image.fromarray(a[:200, :200]).resize((300, 300), Image.BICUBIC))
    assert orig < 8
    assert resampling_score(luma(up)) > 3 * orig


# ------------------------------------------------------------------------------- audits

def test_format_only_difference_is_flagged(tmp_path):
    root = tmp_path / "fmt"
    for i in range(8):
        save(texture(256, 256, i), root / "real" / f"r{i}.jpg", quality=95)
        save(texture(256, 256, 100 + i), root / "fake" / f"f{i}.png")
    r = audit(root, progress=False, workers=1)
    assert len(r.rows) == 16 and not r.errors
    assert "format" in bases(r) and "jpeg_quality_known" in bases(r)
    msgs = "\n".join(r.warnings)
    assert "WARNING: format=JPEG alone separates real from fake on split all (AUC 1.00, more common in real)" in msgs
    assert r.verdict.startswith("flagged")
    doc = r.to_json()
    json.dumps(doc, allow_nan=False)  # strictly valid JSON (NaN -> null)
    assert doc["n_images"] == 16 and doc["flags"] and len(doc["rows"]) == 16
    md = format_report(r)
    assert "| format=JPEG | all | 8 / 8 | 1.000 | 0.000 | 1.00 |" in md and "**FLAG**" in md


def test_hidden_jpeg_grid_is_flagged_but_not_format(tmp_path):
    root = tmp_path / "grid"  # ROOT/{train,test}/{real,fake}: every split is audited on its own too
    for i in range(12):
        split = "train" if i < 6 else "test"
        save(hidden_grid(i, quality=90, off=(3 + i % 4, 1 + i % 7)), root / split / "real" / f"r{i}.png")
        if i % 2:
            fake = texture(256, 256, 100 + i)  # never JPEG-compressed
        else:  # JPEG'd, then area-downscaled by 2: the grid is gone
            fake = np.asarray(Image.fromarray(jpeg_roundtrip(texture(512, 512, 100 + i), 90)).reduce(2))
        save(fake, root / split / "fake" / "gen" / f"f{i}.png")
    r = audit(root, progress=False, workers=2)
    assert r.splits == ["train", "test", "all"]
    assert "jpeg_grid" in bases(r)
    assert not {"format", "mode", "bit_depth", "exif", "jpeg_quality_known"} & bases(r)
    grid_flags = {f["split"]: f for f in r.flags if f["property"] == "jpeg_grid"}
    assert set(grid_flags) == {"train", "test", "all"}
    flag = grid_flags["train"]
    assert flag["separability"] == 1.0 and flag["direction"] == "higher in real"
    assert flag["message"] == "WARNING: jpeg_grid alone separates real from fake on split train (AUC 1.00, higher in real)"
    real = [row["jpeg_grid"] for row in r.rows if row["label"] == "real"]
    fake = [row["jpeg_grid"] for row in r.rows if row["label"] == "fake"]
    assert min(real) > 0.3 and max(fake) < 0.05
    # one split only
    rt = audit(root, split="test", progress=False, workers=1)
    assert len(rt.rows) == 12 and rt.splits == ["test", "all"] and "jpeg_grid" in bases(rt)
    with pytest.raises(ValueError):
        audit(root, split="nonsense", progress=False)


def test_balanced_tree_is_clean(tmp_path):
    """Both classes from the same process (sizes, noise, half of each a hidden JPEG grid): no flags."""
    root = tmp_path / "bal"
    rng = np.random.default_rng(42)
    lines = ["path,label,group"]
    for i in range(128):
        label = "real" if i % 2 == 0 else "fake"
        h, w = (int(v) for v in rng.integers(112, 176, 2))
        a = texture(h + 16, w + 16, 1000 + i, noise=float(rng.uniform(1, 4)))
        if rng.random() < 0.5:
            a = jpeg_roundtrip(a, int(rng.integers(85, 96)))
        oy, ox = (int(v) for v in rng.integers(0, 16, 2))
        save(a[oy:oy + h, ox:ox + w], root / "img" / f"{i:03d}.png")
        lines.append(f"img/{i:03d}.png,{label},g{i}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    r = audit(root, progress=False, workers=1)
    assert r.splits == ["all"] and len(r.rows) == 128
    assert r.flags == [] and r.verdict == "clean", r.warnings
    grid = next(e for e in r.summary if e["property"] == "jpeg_grid")
    assert grid["n_real"] == 64 and grid["n_fake"] == 64 and grid["separability"] < 0.65
    assert "**Verdict: clean**" in format_report(r)


def test_threshold_min_per_class_and_bad_images(tmp_path):
    root = tmp_path / "small"
    for i in range(3):  # too few per class to flag anything
        save(texture(128, 128, i), root / "real" / f"r{i}.jpg", quality=90)
        save(texture(128, 128, 50 + i), root / "fake" / f"f{i}.png")
    (root / "fake" / "broken.png").write_bytes(b"definitely not a png")
    (root / "real" / "trunc.jpg").write_bytes((root / "real" / "r0.jpg").read_bytes()[:300])
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    r = audit(root, progress=False, workers=1)
    assert {e["key"] for e in r.errors} == {"fake/broken.png", "real/trunc.jpg"}
    assert all(e["reason"] for e in r.errors) and len(r.rows) == 6
    assert r.flags == []  # 3 per class < min_per_class
    sep = next(e for e in r.summary if e["property"] == "format=JPEG")["separability"]
    assert sep == 1.0
    assert audit(root, progress=False, min_per_class=3, alpha=1.0).flags  # now it flags
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # read-only
    csv_path = tmp_path / "rows.csv"
    r.write_csv(csv_path)
    with open(csv_path, newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6


def test_cli_data_audit(tmp_path):
    from typer.testing import CliRunner

    from glassdetect.cli import app

    root = tmp_path / "tiny"
    for i in range(6):
        save(hidden_grid(i, size=160), root / "real" / f"r{i}.png")
        save(texture(160, 160, 70 + i), root / "fake" / f"f{i}.png")
    (root / "fake" / "bad.png").write_bytes(b"nope")
    out = tmp_path / "rep" / "audit.json"
    res = CliRunner().invoke(app, ["data", "audit", str(root), "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "WARNING: jpeg_grid alone separates real from fake on split all (AUC 1.00, higher in real)" in res.output
    assert "| property | split |" in res.output and "fake/bad.png" in res.output
    doc = json.loads(out.read_text())
    assert "jpeg_grid" in doc["flagged"] and doc["n_errors"] == 1
    assert out.with_suffix(".md").read_text().startswith("# Shortcut audit")
    assert out.with_suffix(".csv").exists()
    strict = CliRunner().invoke(app, ["data", "audit", str(root), "--quiet", "--strict"])
    assert strict.exit_code == 1
    lax = CliRunner().invoke(app, ["data", "audit", str(root), "--quiet", "--strict", "--threshold", "1.01"])
    assert lax.exit_code == 0 and "verdict: clean" in lax.output
    missing = CliRunner().invoke(app, ["data", "audit", str(tmp_path / "nowhere"), "--quiet"])
    assert missing.exit_code == 2
