"""Offline benchmark, the camera photos: which (:data:`PHOTOS`), fetching them from Debian packages,
decoding them upright, and their camera-JPEG traces (read with :func:`jpeg_traces`, replayed on a
fake with :func:`match_jpeg`)."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ...fetch import FetchError, fetch_debian_package


@dataclass(frozen=True)
class PhotoRef:
    """One camera photo inside a Debian package: ``id`` is the group name used in the manifest."""

    id: str
    package: str
    path: str


_LOMIRI = "lomiri-wallpapers-16.04"
_MATE = "mate-backgrounds"
_PLASMA = "plasma-workspace-wallpapers"
PHOTOS: tuple[PhotoRef, ...] = (
    *(
        PhotoRef(f"lomiri-{n}", _LOMIRI, f"usr/share/backgrounds/{n}.jpg")
        for n in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
            "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
            "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi", "sunset_by_Aitzol_Berasategi",
            "analogpattern_by_Peter_Nerlich", "free_by_Peter_Nerlich", "greentock_by_Peter_Nerlich",
            "seeding_by_Clements_Engelhardt",
        )
    ),
    *(
        PhotoRef(f"mate-{n}", _MATE, f"usr/share/backgrounds/mate/nature/{n}.jpg")
        for n in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
            "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower",
        )
    ),
    *(
        PhotoRef(f"plasma-{n}", _PLASMA, f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg")
        for n in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
            "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
        )
    ),
)

# ------------------------------------------------------------------------------- JPEG traces


@dataclass(frozen=True)
class JpegTraces:
    """How a source photo was JPEG-encoded: enough to give a fake the same traces.

    ``origin`` is where the encoder's 16x16 MCU grid starts in the upright image (x, y), after
    the EXIF orientation: flipping an axis of length L moves it to L mod 16.
    """

    qtables: tuple[tuple[int, ...], ...]
    subsampling: int  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, -1 = greyscale
    mode: str  # "RGB" or "L"
    origin: tuple[int, int] = (0, 0)


def jpeg_traces(img: Image.Image, upright_size: tuple[int, int]) -> JpegTraces | None:
    """The :class:`JpegTraces` of an opened file, or ``None`` if it is not a JPEG."""
    if img.format not in ("JPEG", "MPO") or not getattr(img, "quantization", None):
        return None
    from PIL import JpegImagePlugin

    o = img.getexif().get(0x0112, 1)
    w, h = upright_size
    origin = (w % 16 if o in (2, 3, 6, 7) else 0, h % 16 if o in (3, 4, 7, 8) else 0)
    tables = tuple(tuple(int(v) for v in img.quantization[k]) for k in sorted(img.quantization))
    return JpegTraces(tables, int(JpegImagePlugin.get_sampling(img)), "L" if img.mode == "L" else "RGB", origin)


def match_jpeg(img: Image.Image, traces: JpegTraces, left: int, top: int) -> Image.Image:
    """``img`` (a crop whose top-left pixel sits at ``(left, top)`` of the source photo) encoded
    once as the source was: same tables and subsampling, on the same block grid.

    The crop is padded on the left/top (edge pixels) so that its blocks line up with the source
    photo's, encoded and decoded in memory, and the padding is cut off again.
    """
    px, py = (left - traces.origin[0]) % 16, (top - traces.origin[1]) % 16
    arr = np.asarray(img.convert("RGB"))
    padded = np.pad(arr, ((py, 0), (px, 0), (0, 0)), mode="edge")
    src = Image.fromarray(padded, "RGB").convert(traces.mode)
    buf = io.BytesIO()
    params: dict[str, object] = {"qtables": [list(t) for t in traces.qtables]}
    if traces.mode == "RGB" and traces.subsampling >= 0:
        params["subsampling"] = traces.subsampling
    src.save(buf, format="JPEG", **params)
    with Image.open(buf) as dec:
        out = dec.convert("RGB")
    return out.crop((px, py, px + img.width, py + img.height))


# ------------------------------------------------------------------------------------ photos


@dataclass(frozen=True)
class SourcePhoto:
    """A photo to cut crops from: ``size`` is the upright (EXIF-transposed) size, ``load`` decodes it.

    ``jpeg``: how the file was JPEG-encoded (``None`` for a lossless source).
    """

    id: str
    source: str
    size: tuple[int, int]
    load: Callable[[], Image.Image]
    stratum: str = ""
    jpeg: JpegTraces | None = None
    digest: str = ""  # sha256 of the file's bytes (a content key for caches); "" when unknown


def open_photo(path: Path) -> Image.Image:
    """Decode a photo upright (EXIF orientation applied) as 8-bit RGB."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def photo_from_file(ref: PhotoRef, path: Path) -> SourcePhoto:
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            w, h = h, w
        traces = jpeg_traces(im, (w, h))
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return SourcePhoto(ref.id, f"{ref.package}:{ref.path}", (w, h), lambda: open_photo(path), ref.package, traces,
                       digest)


def prescaled(img: Image.Image, factor: int) -> Image.Image:
    """The whole photo area-downscaled by an integer ``factor`` (box average; removes the 8x8 grid
    for ``factor >= 2``). The edge rows/columns that do not fill a whole box are dropped."""
    if factor <= 1:
        return img
    w, h = img.size
    return img.crop((0, 0, w - w % factor, h - h % factor)).reduce(factor)


def fetch_photos(refs: Sequence[PhotoRef]) -> list[SourcePhoto]:
    """Fetch the Debian packages holding ``refs`` (cached) and describe each photo."""
    trees = {pkg: fetch_debian_package(pkg) for pkg in dict.fromkeys(r.package for r in refs)}
    photos = []
    for r in refs:
        path = trees[r.package] / r.path
        if not path.is_file():
            raise FetchError(f"Debian package {r.package} has no {r.path}")
        photos.append(photo_from_file(r, path))
    return photos
