"""Ray Data as the distributed engine of ``glassdetect predict --engine ray`` (extra ``glassdetect[ray]``).

The run is one Ray Dataset, three stages::

    (index, path) items --decode tasks (CPU)--> prepared views --model actors--> scores --driver--> rows

* The driver lists the inputs exactly as the local engine does (:func:`glassdetect.inference.predict.iter_inputs`:
  files, folders, globs, CSV lists; with ``scan``, only this shard's paths and those without a
  row yet), and hands ``(index, path)`` pairs to :func:`ray.data.from_items`.
* :func:`decode_views` runs in Ray tasks: each path becomes one
  :class:`glassdetect.pipeline.ViewDataset` item (global view, crops, boxes, k, draws, size), passed
  on as numpy arrays; a file that cannot be used becomes an ``error`` string, never a failed task.
* :class:`Scorer` is a Ray Data actor: one :class:`~glassdetect.inference.api.Detector` per actor, loaded
  once; it rebuilds the items, batches them with :func:`glassdetect.pipeline.collate` and scores
  them with :meth:`~glassdetect.inference.api.Detector.run_batch` -- the local engine's code, so the same
  image gets the same probability.
* The driver puts the scores back in input order and yields :class:`~glassdetect.inference.predict.PredictionRow`
  lists, like :func:`glassdetect.inference.predict.predict_batches`, so the same writer (CSV / JSON Lines,
  ``--out``, ``--resume``, ``--shard``) writes them.

Not supported yet (refused with an error): evidence maps (``--explain``) and ``--dedupe``. The
local engine's ``--workers`` and ``--threads`` do not apply: Ray schedules the decode tasks on the
cluster's CPUs, and each actor's torch uses the CPUs Ray gives it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .predict import PredictionRow

RAY_MISSING = "the Ray engine needs Ray Data: pip install 'glassdetect[ray]'"
MAX_BLOCKS = 10_000  # input blocks (one decode task each): one model batch each, more for long lists
UNSUPPORTED = {  # predict option -> how the CLI names it; the Ray engine refuses these for now
    "explain_dir": "--explain (evidence maps)",
    "dedupe": "--dedupe (content hashes)",
}


@dataclass
class RayOptions:
    """Where and how wide to run. ``address``: a running cluster (``auto``, ``ray://host:10001``);
    None: ``RAY_ADDRESS`` or a local Ray started for the run (and shut down after it).
    ``num_gpus_per_worker``: GPUs per model actor; None: 1 when the cluster has GPUs, else 0.
    ``concurrency``: model actors; None: one per GPU (at least 1), or 1 on CPUs.
    ``decode_cpus`` / ``decode_memory_mb``: what each decode task reserves (memory > 0 keeps
    decoding out of the actors, see :func:`build_dataset`). ``progress``: Ray Data's progress bars."""

    address: str | None = None
    num_gpus_per_worker: float | None = None
    concurrency: int | None = None
    decode_cpus: float = 1.0
    decode_memory_mb: int = 512
    progress: bool = False

    def __post_init__(self) -> None:
        if self.num_gpus_per_worker is not None and self.num_gpus_per_worker < 0:
            raise ValueError(f"--num-gpus-per-worker must be >= 0, got {self.num_gpus_per_worker}")
        if self.decode_memory_mb <= 0 or self.decode_cpus <= 0:
            raise ValueError("decode tasks need some CPU and memory (decode_cpus, decode_memory_mb > 0)")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")


def refuse_unsupported(options: dict[str, Any]) -> None:
    """ValueError naming the predict options that are set and that the Ray engine does not support yet."""
    bad = [name for key, name in UNSUPPORTED.items() if options.get(key)]
    if bad:
        raise ValueError(f"--engine ray does not support {', '.join(bad)} yet; use --engine local for it")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a ValueError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the 'data' extra (pyarrow, pandas)
    except ImportError as exc:
        raise ValueError(f"{RAY_MISSING} ({exc})") from None
    return ray


# ------------------------------------------------------------------------------ decode (CPU tasks)

def decode_views(batch: dict[str, np.ndarray], spec: Any, seed: int, draws: int) -> dict[str, np.ndarray]:
    """``index`` + ``path`` columns -> the prepared views as numpy columns (a Ray Data batch function).

    Columns out: ``index``, ``path``, ``error`` ('' when the image is good), ``global`` (3, S, S)
    uint8, ``crops`` (D·K, 3, P, P) uint8, ``boxes`` (D·K, 2) int64, ``k``, ``draws``, ``size``
    (H, W). A bad image has an empty global view and no crops."""
    from ..pipeline import ViewDataset

    paths = [str(p) for p in batch["path"]]
    views = ViewDataset(paths, spec, seed=seed, draws=draws)
    cols: dict[str, list] = {key: [] for key in ("error", "global", "crops", "boxes", "k", "draws", "size")}
    for i in range(len(paths)):
        item = views[i]
        bad = "error" in item
        cols["error"].append(item["error"][1] if bad else "")
        cols["global"].append(np.zeros((3, 0, 0), np.uint8) if bad else item["global"].numpy())
        cols["crops"].append(np.zeros((0, 3, spec.patch, spec.patch), np.uint8) if bad else item["crops"].numpy())
        cols["boxes"].append(np.zeros((0, 2), np.int64) if bad else item["boxes"].numpy())
        cols["k"].append(0 if bad else item["k"])
        cols["draws"].append(0 if bad else item["draws"])
        cols["size"].append((0, 0) if bad else item["size"])
    out = {"index": np.asarray(batch["index"], np.int64), "path": np.asarray(paths, dtype=object)}
    out.update(error=np.asarray(cols["error"], dtype=object), k=np.asarray(cols["k"], np.int64),
               draws=np.asarray(cols["draws"], np.int64), size=np.asarray(cols["size"], np.int64).reshape(-1, 2))
    for key in ("global", "crops", "boxes"):  # ragged (bad images, grid mode): object arrays of arrays
        out[key] = _ragged(cols[key])
    return out


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


# ------------------------------------------------------------------------------ score (actors)

def _items(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A decoded batch back as :func:`glassdetect.pipeline.collate` items (the local engine's)."""
    import torch

    items: list[dict[str, Any]] = []
    for i, index in enumerate(batch["index"]):
        path, error = str(batch["path"][i]), str(batch["error"][i])
        if error:
            items.append({"index": int(index), "error": (path, error)})
            continue
        items.append({
            "index": int(index), "name": path, "k": int(batch["k"][i]), "draws": int(batch["draws"][i]),
            "size": tuple(int(v) for v in batch["size"][i]), "label": -1, "thumb": None,
            "global": torch.from_numpy(np.array(batch["global"][i], np.uint8)),  # copies: Ray's arrays are read-only
            "crops": torch.from_numpy(np.array(batch["crops"][i], np.uint8)),
            "boxes": torch.from_numpy(np.array(batch["boxes"][i], np.int64)).view(-1, 2),
        })
    return items


class Scorer:
    """A Ray Data actor: one :class:`~glassdetect.inference.api.Detector` loaded once, scoring decoded batches."""

    def __init__(self, checkpoint: str, device: str, detector_options: dict[str, Any]):
        from .api import Detector

        self.detector = Detector.from_pretrained(checkpoint, device, **detector_options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..pipeline import collate

        paths = {int(i): str(p) for i, p in zip(batch["index"], batch["path"])}
        done = self.detector.run_batch(collate(_items(batch)))
        nan = float("nan")
        return {
            "index": np.asarray([i for i, _ in done], np.int64),
            "path": np.asarray([paths[i] for i, _ in done], dtype=object),
            "fake_probability": np.asarray([nan if d.probability is None else d.probability for _, d in done], np.float64),
            "decision": np.asarray([d.decision for _, d in done], dtype=object),
            "crops": np.asarray([0 if d.error else d.crops_per_draw for _, d in done], np.int64),
            "draws": np.asarray([d.draws for _, d in done], np.int64),
            "spread": np.asarray([nan if d.spread is None else d.spread for _, d in done], np.float64),
            "error": np.asarray([d.error for _, d in done], dtype=object),
        }


def _rows(batch: dict[str, np.ndarray]) -> Iterator[tuple[int, PredictionRow]]:
    """(index, row) of a scored batch; an error row has no probability and no spread, as in the local engine."""
    for i, index in enumerate(batch["index"]):
        error = str(batch["error"][i])
        p, spread = float(batch["fake_probability"][i]), float(batch["spread"][i])
        yield int(index), PredictionRow(str(batch["path"][i]), None if error else p, str(batch["decision"][i]),
                                        int(batch["crops"][i]), error, int(batch["draws"][i]),
                                        None if error else spread)


# ------------------------------------------------------------------------------ the driver

class _Session:
    """Ray for one run: connects to ``address`` (or starts a local Ray) unless Ray is already up in this
    process (a test, a notebook); shuts down only what it started."""

    def __init__(self, ray: Any, opts: RayOptions):
        self.ray, self.opts, self.started = ray, opts, False

    def __enter__(self) -> "_Session":
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=self.opts.address, include_dashboard=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.opts.address}" if self.opts.address else "Ray"
                raise ValueError(f"cannot start or connect to {where}: {exc}") from None
            self.started = True
        context = self.ray.data.DataContext.get_current()
        context.enable_progress_bars = self.opts.progress
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.ray.shutdown()

    def actors(self) -> tuple[int, float]:
        """(model actors, GPUs per actor) for the options and this cluster's resources."""
        gpus = float(self.ray.cluster_resources().get("GPU", 0))
        per = self.opts.num_gpus_per_worker
        per = (1.0 if gpus >= 1 else 0.0) if per is None else float(per)
        if per > gpus:
            raise ValueError(f"--num-gpus-per-worker {per:g}: the Ray cluster has {gpus:g} GPU(s)")
        count = self.opts.concurrency or (max(1, int(gpus // per)) if per else 1)
        return count, per


def _scan_keys(inputs: Iterable[str | Path], scan: Any) -> list[tuple[int, str]]:
    """(position in the input list, path) of each input this run scores (``scan``: shard / resume)."""
    from .predict import iter_inputs

    if scan is None:
        return [(pos, str(p)) for pos, p in enumerate(iter_inputs(inputs))]
    return list(scan.keys(iter_inputs(inputs), {}))


def build_dataset(ray: Any, keys: Sequence[tuple[int, str]], checkpoint: str, spec: Any, batch_size: int,
                  device: str, detector_options: dict[str, Any], actors: tuple[int, float], decode: tuple[float, int]) -> Any:
    """The lazy Ray Dataset: items -> :func:`decode_views` tasks -> :class:`Scorer` actors.
    ``actors``: (count, GPUs each); ``decode``: (CPUs, bytes of memory) each decode task reserves."""
    per_block = max(1, batch_size, math.ceil(len(keys) / MAX_BLOCKS))
    ds = ray.data.from_items([{"index": pos, "path": path} for pos, path in keys],
                             override_num_blocks=math.ceil(len(keys) / per_block))
    seed, draws = detector_options["seed"], detector_options["draws"]
    # Ray Data fuses a task stage into the actor stage after it when their resources match (CPU only):
    # the actors would then decode too, one image at a time each. The decode tasks reserve memory for
    # the decoded image (the actors do not), which keeps them apart, on every CPU of the cluster.
    ds = ds.map_batches(decode_views, batch_size=batch_size, batch_format="numpy", num_cpus=decode[0],
                        memory=decode[1], fn_kwargs={"spec": spec, "seed": seed, "draws": draws})
    count, gpus = actors
    return ds.map_batches(Scorer, batch_size=batch_size, batch_format="numpy", num_gpus=gpus,
                          compute=ray.data.ActorPoolStrategy(size=count),
                          fn_constructor_kwargs={"checkpoint": checkpoint, "device": device,
                                                 "detector_options": detector_options})


def in_input_order(batches: Iterable[dict[str, np.ndarray]], order: Sequence[int]) -> Iterator[list[PredictionRow]]:
    """Rows of scored batches (any order) as lists in the order of ``order`` (input positions): each
    list is the longest run of rows ready since the last one; later rows wait until it is their turn."""
    waiting: dict[int, PredictionRow] = {}
    nxt = 0
    for batch in batches:
        waiting.update(_rows(batch))
        ready = []
        while nxt < len(order) and order[nxt] in waiting:
            ready.append(waiting.pop(order[nxt]))
            nxt += 1
        if ready:
            yield ready
    if nxt < len(order):
        raise RuntimeError(f"the Ray run returned no row for {len(order) - nxt} input(s), e.g. position {order[nxt]}")


def predict_batches(
    checkpoint: str | Path,
    inputs: Iterable[str | Path],
    batch_size: int = 8,
    device: str = "auto",
    seed: int = 0,
    *,
    ray_options: RayOptions | None = None,
    draws: int = 1,
    mode: str | None = None,
    threshold: float | None = None,
    unsure: str | Sequence[float] | None | bool = False,
    max_pixels: int | None = None,
    scan: Any = None,
    **local_only: Any,
) -> Iterator[list[PredictionRow]]:
    """The rows of :func:`glassdetect.inference.predict.predict_batches`, computed on a Ray cluster, in input order.

    Options as in the local engine; ``ray_options``: :class:`RayOptions`. ``scan``
    (:class:`glassdetect.inference.predict.Scan`): shard and resume filters, applied on the driver
    (content hashes are not supported). Of the local engine's other options, ``workers``,
    ``threads``, ``explain_size`` and ``progress`` are accepted and do not apply; ``explain_dir``
    is refused (:func:`refuse_unsupported`)."""
    from .api import Detector

    refuse_unsupported({**local_only, "dedupe": bool(scan is not None and getattr(scan, "hash_content", False))})
    opts = ray_options or RayOptions()
    ray = import_ray()
    detector_options = dict(seed=seed, draws=draws, mode=mode, threshold=threshold, unsure_band=unsure,
                            max_pixels=max_pixels)
    # checks the checkpoint and every option here, before any cluster work; gives the views' spec
    spec = Detector.from_pretrained(checkpoint, "cpu", **detector_options).spec(mode)
    keys = _scan_keys(inputs, scan)
    if not keys:
        return
    order = [pos for pos, _ in keys]
    with _Session(ray, opts) as session:
        ds = build_dataset(ray, keys, str(checkpoint), spec, batch_size, device, detector_options,
                           session.actors(), (opts.decode_cpus, opts.decode_memory_mb * 2**20))
        del keys  # the paths live in the dataset's blocks now
        yield from in_input_order(ds.iter_batches(batch_size=None, batch_format="numpy"), order)


def engine(options: RayOptions, explain_dir: Any = None, dedupe: bool = False) -> Callable[..., Iterator[list[PredictionRow]]]:
    """:func:`predict_batches` bound to ``options``, for ``glassdetect predict --engine ray``: refuses the
    options it does not support and checks that Ray is installed before any output is opened."""
    refuse_unsupported({"explain_dir": explain_dir, "dedupe": dedupe})
    import_ray()
    return functools.partial(predict_batches, ray_options=options)
