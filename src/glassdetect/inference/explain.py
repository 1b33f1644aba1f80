"""Evidence maps: which crops the model looked at, how much attention each got, what each says.

For an image the map is a PNG — the image, downscaled, with every crop's box shaded by its
attention weight (more opaque = more weight) and labelled with that crop's own fake score —
plus a JSON with the same boxes (in original-image pixels), weights and scores.

A crop's score is the fake probability the classifier gives to ``[g; f_i]``: the prediction the
model would make if its attention put all of the weight on that crop (see :mod:`glassdetect.inference.api`).
The box colour goes from green (score 0, looks real) to red (score 1, looks fake).
"""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any, Protocol, Sequence

from PIL import Image, ImageDraw, ImageFont

SCHEMA = "glassdetect.evidence/1"
CROP_SCORE_DEFINITION = (
    "fake probability of the classifier applied to [g; f_i] (global feature next to this crop's feature), "
    "i.e. the prediction if attention put all its weight on this crop; temperature-scaled"
)


class Explainable(Protocol):
    """What an evidence map reads of a :class:`glassdetect.inference.api.Detection`.

    A protocol, so this module needs nothing from :mod:`glassdetect.inference.api` (which imports this one).
    """

    probability: float | None
    decision: str
    crops: Sequence[Any]  # glassdetect.inference.api.Crop: box (x0, y0, x1, y1), weight, score, draw
    draws: int
    spread: float | None
    image_size: tuple[int, int] | None  # (H, W)
    source: str
    thumbnail: Image.Image | None


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _colour(score: float) -> tuple[int, int, int]:
    s = min(max(score, 0.0), 1.0)
    return int(round(40 + 200 * s)), int(round(190 - 150 * s)), 60


def render_evidence(det: Explainable) -> Image.Image:
    """Draw ``det``'s crops on its thumbnail (``predict(..., explain=True)`` keeps one)."""
    if det.thumbnail is None or det.image_size is None:
        raise ValueError("no thumbnail: call predict(..., explain=True) to get an evidence map")
    base = det.thumbnail.convert("RGB")
    h, w = det.image_size
    sx, sy = base.width / w, base.height / h
    caption_h = max(22, base.width // 28)
    canvas = Image.new("RGB", (base.width, base.height + caption_h), (24, 24, 28))
    canvas.paste(base, (0, 0))
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    wmax = max((c.weight for c in det.crops), default=1.0) or 1.0
    font = _font(max(10, min(base.width, base.height) // 28))
    # Least attention first, so the most important boxes end up on top.
    for c in sorted(det.crops, key=lambda c: c.weight):
        x0, y0, x1, y1 = c.box
        box = (round(x0 * sx), round(y0 * sy), round(x1 * sx) - 1, round(y1 * sy) - 1)
        r, g, b = _colour(c.score)
        alpha = int(round(25 + 150 * c.weight / wmax))
        draw.rectangle(box, fill=(r, g, b, alpha), outline=(r, g, b, 255), width=2)
        label = f"{c.score:.2f}"
        tx, ty = max(box[0], 0) + 3, max(box[1], 0) + 2
        tb = draw.textbbox((tx, ty), label, font=font)
        draw.rectangle((tb[0] - 2, tb[1] - 1, tb[2] + 2, tb[3] + 1), fill=(0, 0, 0, 170))
        draw.text((tx, ty), label, fill=(255, 255, 255, 255), font=font)
    canvas.paste(Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB"), (0, 0))
    cap = ImageDraw.Draw(canvas)
    cap_font = _font(max(10, caption_h - 10))
    prob = "n/a" if det.probability is None else f"{det.probability:.3f}"
    text = f"{det.decision}  p(fake)={prob}"
    legend = f"{text}  ·  shade = attention, label = crop's own fake score"
    if cap.textlength(legend, font=cap_font) <= base.width - 12:
        text = legend
    cap.text((6, base.height + 4), text, fill=(235, 235, 235), font=cap_font)
    return canvas


def evidence_record(det: Explainable, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON side of the map: boxes (original pixels, x0 y0 x1 y1), weights and crop scores."""
    rec = {
        "schema": SCHEMA,
        "source": det.source,
        "image_size": list(det.image_size) if det.image_size else None,
        "fake_probability": det.probability,
        "decision": det.decision,
        "draws": det.draws,
        "spread": det.spread,
        "box_format": "x0,y0,x1,y1 in pixels of the EXIF-oriented image; boxes may extend past the border (zero-padded)",
        "score_definition": CROP_SCORE_DEFINITION,
        "crops": [{"draw": c.draw, "box": list(c.box), "weight": c.weight, "score": c.score} for c in det.crops],
    }
    rec.update(extra or {})
    return rec


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_url(img: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def _safe_stem(source: str) -> str:
    stem = Path(source).stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:100] or "image"


class ExplainWriter:
    """Writes ``STEM.png`` + ``STEM.json`` per image into a folder; repeated stems get ``-2``, ``-3`` ..."""

    def __init__(self, directory: str | Path, extra: dict[str, Any] | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra or {}
        self.used: set[str] = set()

    def write(self, det: Explainable) -> tuple[Path, Path]:
        stem = _safe_stem(det.source)
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}"
        self.used.add(name)
        png, js = self.dir / f"{name}.png", self.dir / f"{name}.json"
        img = render_evidence(det)
        img.save(png, format="PNG")
        rec = evidence_record(det, {**self.extra, "map": png.name, "map_scale": det.thumbnail.width / det.image_size[1]})
        js.write_text(json.dumps(rec, indent=2))
        return png, js
