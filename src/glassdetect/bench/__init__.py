"""Stage 8 — ``glassdetect bench``: where the time and the memory go, measured side by side in one run.
It may import every library stage (views up to the service), never studies or the CLI.

Parts, each a function returning plain JSON-ready dicts, on images and models made here
(no data, no network):

``views`` (:func:`bench_views`, :mod:`.views`)
    Per image, for photo-like JPEGs of 1, 4, 12, 24 and 48 MP and one 12 MP PNG (:mod:`.synth`):
    ``ours`` (:func:`glassdetect.views.build.build_views`), ``naive`` (float CHW like torchvision's
    ``ToTensor``, float resize, crops from it) and ``decode`` (the fastest full decode), plus the
    decode into a reused buffer, ours on Pillow's decoder and Pillow's decode (:mod:`.pipelines`);
    peak memory in a fresh subprocess per (pipeline, image) (:mod:`.memory`); the cost of the
    training augmentation presets (:func:`bench_augment`).
``model`` (:func:`bench_model`, :mod:`.model`)
    Forward time per image for each backbone and K (0 = the resize-only baseline), batch 1 and 8,
    FLOPs and the fraction of a matmul peak measured in the same run, for the model as the project
    runs it (automatic layout, micro-batched views on the CPU) and for convnets in the other
    layout, with BatchNorm folded and with all views in one backbone call.
``train`` (:func:`bench_train`, :mod:`.train`; on its own, not in ``all``)
    Training images/s through the real step path (loader with decode, augmentation and views,
    forward, backward, AdamW), FLOPs per image and the fraction of the matmul peak, for the demo's
    recipe as it runs today beside the fast recipe and single levers, in alternating rounds.
``predict`` (:func:`bench_predict`, :mod:`.predict`)
    :func:`glassdetect.inference.predict.predict` over a folder of 12 MP JPEGs with 2 DataLoader workers
    against the model alone on the same batches (``overlap_efficiency``).

:func:`run_bench` runs the parts, :func:`evaluate_goals` (:mod:`.goals`) checks the goals and
:func:`to_markdown` (:mod:`.report`) writes the tables. ``glassdetect cost`` lives in :mod:`.cost`.
"""
from __future__ import annotations

from .common import AUGMENT_BENCH, BACKBONES, GOAL_SIZES, JPEG_SIZES, PARTS, PNG_SIZE
from .goals import GOALS, evaluate_goals
from .model import (
    bench_model, count_flops, fold_batchnorm, layout_name, make_model, matmul_peak, random_views, time_forward,
)
from .pipelines import PIPELINES, decode_only, decode_reuse_only, naive_views, ours_pillow_views, ours_views
from .predict import bench_predict
from .report import to_markdown
from .run import environment, run_bench
from .synth import photo_like, write_image
from .train import VARIANTS as TRAIN_VARIANTS, TrainBenchConfig, bench_train
from .views import bench_augment, bench_views

__all__ = [
    "AUGMENT_BENCH", "BACKBONES", "GOAL_SIZES", "JPEG_SIZES", "PARTS", "PNG_SIZE", "GOALS", "evaluate_goals",
    "bench_model", "count_flops", "fold_batchnorm", "layout_name", "make_model", "matmul_peak", "random_views",
    "time_forward", "PIPELINES", "decode_only", "decode_reuse_only", "naive_views", "ours_pillow_views", "ours_views",
    "bench_predict", "to_markdown", "environment", "run_bench", "photo_like", "write_image", "bench_augment",
    "bench_views", "TRAIN_VARIANTS", "TrainBenchConfig", "bench_train",
]
