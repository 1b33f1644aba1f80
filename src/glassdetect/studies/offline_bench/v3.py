"""Offline benchmark version 3, the builder: runs a :mod:`.v3plan` plan on a process pool (one ncnn
thread per worker), caches every super-resolved region by content hash, applies each pair's
post-processing to both members, and writes the files, the manifest and ``bench.json``."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np
from PIL import Image

from ...cache import cache_dir
from ...fsutil import write_text_atomic
from .build import MANIFEST_COLUMNS, SPLITS, _rng, save_jpeg75, save_png
from .histories import PreScale, apply_post
from .sources import SourcePhoto, fetch_photos, match_jpeg
from .superres import GENERATORS, Upscaler, make_fake, model_files, ncnn_upscaler
from .v3plan import DEFAULT_HELDOUT, V3_SPECS, PairTask, V3Spec, check_heldout, plan_v3

MANIFEST_COLUMNS_V3 = (*MANIFEST_COLUMNS, "package", "family", "family_seen", "post")
CACHE_FORMAT = 1  # bump when what a cached region means changes


class UpscalerSource(Protocol):
    """Where a build gets its super-resolvers: one per name, its factor, and a content digest."""

    def make(self, name: str) -> Upscaler: ...
    def scale(self, name: str) -> int: ...
    def digest(self, name: str) -> str: ...


@dataclass(frozen=True)
class NcnnSource:
    """The ncnn models of :data:`.superres.GENERATORS` (digest: sha256 of ``.param`` + ``.bin``)."""

    num_threads: int = 1
    tile: int = 128
    pad: int = 10

    def make(self, name: str) -> Upscaler:
        return ncnn_upscaler(name, num_threads=self.num_threads, tile=self.tile, pad=self.pad)

    def scale(self, name: str) -> int:
        return GENERATORS[name].scale

    def digest(self, name: str) -> str:
        h = hashlib.sha256(f"{name}|tile={self.tile}|pad={self.pad}".encode())
        for path in model_files(GENERATORS[name]):
            h.update(path.read_bytes())
        return h.hexdigest()


@dataclass(frozen=True)
class MappingSource:
    """Given :class:`Upscaler` s (tests, stand-ins); ``tag`` names them in the cache key."""

    upscalers: Mapping[str, Upscaler]
    tag: str = "mapping"

    def make(self, name: str) -> Upscaler:
        return self.upscalers[name]

    def scale(self, name: str) -> int:
        return self.upscalers[name].scale

    def digest(self, name: str) -> str:
        return f"{self.tag}:{name}:x{self.upscalers[name].scale}"


def sr_cache_key(model: str, photo: SourcePhoto, hist: PreScale, task: PairTask) -> str:
    """Content hash of one super-resolved region: model files, photo bytes, pre-scale, region."""
    photo_key = photo.digest or hashlib.sha256(np.asarray(photo.load()).tobytes()).hexdigest()
    payload = {"format": CACHE_FORMAT, "model": model, "photo": photo_key, "history": asdict(hist),
               "region": asdict(task.region), "generator": task.generator}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- the workers

_STATE: dict = {}  # per process: what _make_pair needs (inherited by forked workers)


def _init_worker(state: dict) -> None:
    _STATE.clear()
    _STATE.update(state, upscalers={}, photo=(-1, {}))


def _scaled(task: PairTask) -> Image.Image:
    """The task's photo pre-scaled by its history (the last photo's versions are kept)."""
    idx, versions = _STATE["photo"]
    if idx != task.photo:
        photo: SourcePhoto = _STATE["photos"][task.photo]
        img = photo.load()
        if img.size != photo.size:
            raise ValueError(f"{photo.id}: decoded size {img.size} != expected {photo.size}")
        versions = {"": img}
        _STATE["photo"] = (task.photo, versions)
    if task.history not in versions:
        versions[task.history] = _STATE["histories"][task.history].apply(versions[""])
    return versions[task.history]


KEEP_UPSCALERS = 2  # per worker: an ncnn net keeps its memory pools (0.3-0.5 GB each on a 1.5 MP region)


def _upscaler(name: str) -> Upscaler:
    """The named super-resolver, loaded on first use; only the last :data:`KEEP_UPSCALERS` stay loaded
    (loading one costs far less than running it on a region; keeping all ten took 5.4 GB)."""
    ups: dict[str, Upscaler] = _STATE["upscalers"]
    if name not in ups:
        while len(ups) >= KEEP_UPSCALERS:
            del ups[next(iter(ups))]
        ups[name] = _STATE["source"].make(name)
    else:
        ups[name] = ups.pop(name)  # most recently used last
    return ups[name]


def _fake_region(task: PairTask, real: Image.Image, hist: PreScale) -> tuple[Image.Image, bool]:
    """The super-resolved region from the cache, or made now and cached; and whether SR ran."""
    photo: SourcePhoto = _STATE["photos"][task.photo]
    key = sr_cache_key(_STATE["digests"][task.generator], photo, hist, task)
    path = Path(_STATE["cache"]) / key[:2] / f"{key}.png"
    if path.exists():
        with Image.open(path) as im:
            return im.convert("RGB"), False
    fake = make_fake(real, _upscaler(task.generator))
    save_png(fake, path)
    return fake, True


def _make_pair(task: PairTask) -> dict:
    """Write one pair's real and fake files (skipped when both exist); returns what happened."""
    out = Path(_STATE["out"])
    real_path, fake_path = out / task.rel("real"), out / task.rel("fake")
    if real_path.exists() and fake_path.exists():
        return {"stem": task.stem, "sr": False, "skipped": True, "seconds": 0.0}
    t0 = time.process_time()
    hist: PreScale = _STATE["histories"][task.history]
    photo: SourcePhoto = _STATE["photos"][task.photo]
    real = _scaled(task).crop(task.region.box)
    fake, ran = _fake_region(task, real, hist)
    if hist.match_jpeg and photo.jpeg is not None:
        fake = match_jpeg(fake, photo.jpeg, task.region.left, task.region.top)
    rng = _rng(_STATE["seed"], "post-noise", task.stem)
    save_png(apply_post(real, task.post, rng), real_path)
    save_png(apply_post(fake, task.post, rng), fake_path)
    return {"stem": task.stem, "sr": ran, "skipped": False, "seconds": time.process_time() - t0}


def run_tasks(tasks: Sequence[PairTask], state: dict, workers: int, progress: bool) -> list[dict]:
    """Every task on ``workers`` forked processes (in this process when ``workers <= 1``)."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="bench v3", unit="pair", disable=not progress, smoothing=0.1)
    results = []
    if workers <= 1:
        _init_worker(state)
        for t in tasks:
            results.append(_make_pair(t))
            bar.update(1)
    else:
        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
            for res in pool.imap_unordered(_make_pair, tasks, chunksize=1):
                results.append(res)
                bar.update(1)
    bar.close()
    return results


# ------------------------------------------------------------------------- manifest / meta


def _row_v3(t: PairTask, label: str, photos: Sequence[SourcePhoto], ext: str = "png") -> dict[str, str]:
    """One manifest row; a real's ``family`` / ``family_seen`` are its fake partner's."""
    ph = photos[t.photo]
    return {
        "path": t.rel(label, ext), "label": label, "group": ph.id,
        "generator": t.generator if label == "fake" else "", "source": ph.source, "split": t.split,
        "history": t.history, "version": "3", "package": ph.id.split("-", 1)[0],
        "family": GENERATORS[t.generator].family if t.generator in GENERATORS else "",
        "family_seen": "yes" if t.seen else "no", "post": t.post.name,
    }


def write_manifest_v3(rows: Sequence[Mapping[str, str]], path: Path) -> Path:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS_V3, lineterminator="\n", extrasaction="raise")
    wr.writeheader()
    wr.writerows(rows)
    write_text_atomic(path, buf.getvalue(), fsync=False)
    return path


def distinct_train_pixels(tasks: Sequence[PairTask], photos: Sequence[SourcePhoto],
                          histories: Mapping[str, PreScale]) -> dict[str, int]:
    """Distinct pixels of the train split: reals = the union of the regions of each (photo,
    pre-scale), counted once however many generators share them; fakes = every fake region."""
    real = 0
    by_key: dict[tuple[int, str], list[PairTask]] = {}
    for t in tasks:
        if t.split == "train":
            by_key.setdefault((t.photo, t.history), []).append(t)
    for (idx, hist), ts in by_key.items():
        w, h = histories[hist].size(*photos[idx].size)
        mask = np.zeros((h, w), bool)
        for t in ts:
            l, tp, r, b = t.region.box
            mask[tp:b, l:r] = True
        real += int(mask.sum())
    fake = sum(t.region.pixels for t in tasks if t.split == "train")
    return {"real": real, "fake": fake, "total": real + fake}


def _counts(tasks: Sequence[PairTask], key) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for t in tasks:
        k = key(t)
        out[t.split][k] = out[t.split].get(k, 0) + 1
    return {s: dict(sorted(c.items())) for s, c in out.items()}


def _meta_v3(spec: V3Spec, heldout: tuple[str, str], tasks: Sequence[PairTask], photos: Sequence[SourcePhoto],
             results: Sequence[dict], seconds: float) -> dict:
    fam = {g: GENERATORS[g].family for g in spec.generators if g in GENERATORS}
    return {
        "version": spec.version, "status": "complete",
        "left_out": {"val": heldout[0], "test": heldout[1]},
        "train_families": sorted({f for f in fam.values() if f not in heldout}),
        "encoding": {"format": "PNG", "mode": "RGB", "bits": 8, "note": "both members written by save_png"},
        "fake": "region area-downscaled by the generator's factor, super-resolved back; native: the photo's "
                "JPEG tables re-applied on the region's grid; then the pair's post-processing on both",
        "pairs": _counts(tasks, lambda t: "seen" if t.seen else "left-out"),
        "pairs_by_family": _counts(tasks, lambda t: fam.get(t.generator, t.generator)),
        "pairs_by_generator": _counts(tasks, lambda t: t.generator),
        "pairs_by_history": _counts(tasks, lambda t: t.history),
        "pairs_with_post": _counts(tasks, lambda t: "none" if t.post.name == "none" else
                                   "+".join(p.split(":")[0] for p in t.post.name.split("+"))),
        "photos": {s: sorted({photos[t.photo].id for t in tasks if t.split == s}) for s in SPLITS},
        "train_pixels": distinct_train_pixels(tasks, photos, {h.name: h for h in spec.histories}),
        "build": {"seconds": round(seconds, 1), "sr_runs": sum(r["sr"] for r in results),
                  "pairs_skipped": sum(r["skipped"] for r in results),
                  "worker_cpu_seconds": round(sum(r["seconds"] for r in results), 1)},
    }


def _write_jpeg75_v3(out: Path, tasks: Sequence[PairTask], photos: Sequence[SourcePhoto]) -> None:
    """The test split once more as JPEG q75 (4:2:0) for both classes, with its own manifest."""
    test = [t for t in tasks if t.split == "test"]
    for t in test:
        for label in ("real", "fake"):
            dst = out / "jpeg75" / t.rel(label, "jpg")
            if not dst.exists():
                with Image.open(out / t.rel(label)) as im:
                    save_jpeg75(im, dst)
    write_manifest_v3([_row_v3(t, lb, photos, "jpg") for t in test for lb in ("real", "fake")],
                      out / "jpeg75" / "manifest.csv")


# ------------------------------------------------------------------------------ the builder


def _spec_ident(spec: V3Spec, seed: int, heldout: tuple[str, str]) -> dict:
    return json.loads(json.dumps({"spec": asdict(spec), "seed": seed, "heldout": list(heldout)}))


def build_bench_v3(out: Path, photos: Sequence[SourcePhoto], spec: V3Spec, seed: int, source: UpscalerSource, *,
                   heldout: Sequence[str] = DEFAULT_HELDOUT, workers: int = 2, cache_root: Path | None = None,
                   progress: bool = True) -> Path:
    """Build a version-3 benchmark under ``out`` from given photos and super-resolvers; returns the
    manifest. Pairs already on disk are skipped; super-resolved regions come from ``cache_root``
    (default: the project cache) when an identical one was made before."""
    t0 = time.perf_counter()
    held = check_heldout(heldout, spec.generators)  # before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ident = _spec_ident(spec, seed, held)
    meta_path = out / "bench.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in ident} != ident:
            raise ValueError(f"{out} holds a benchmark built with another spec, seed or held-out families; "
                             "use a fresh directory")
    else:
        write_text_atomic(meta_path, json.dumps({**ident, "status": "building"}, indent=2), fsync=False)
    tasks = plan_v3(photos, spec, seed, held, {g: source.scale(g) for g in spec.generators})
    state = {"photos": list(photos), "histories": {h.name: h for h in spec.histories}, "source": source,
             "digests": {g: source.digest(g) for g in sorted({t.generator for t in tasks})},
             "cache": str(cache_root or cache_dir("offline-bench-v3")), "out": str(out), "seed": seed}
    results = run_tasks(tasks, state, workers, progress)
    rows = [_row_v3(t, label, photos) for t in tasks for label in ("real", "fake")]
    manifest = write_manifest_v3(rows, out / "manifest.csv")
    _write_jpeg75_v3(out, tasks, photos)
    meta = {**ident, **_meta_v3(spec, held, tasks, photos, results, time.perf_counter() - t0)}
    write_text_atomic(meta_path, json.dumps(meta, indent=2), fsync=False)
    return manifest


def build_offline_bench_v3(out: Path, size: str = "pilot", seed: int = 0, *,
                           heldout: Sequence[str] = DEFAULT_HELDOUT, workers: int = 2, num_threads: int = 1,
                           progress: bool = True) -> Path:
    """Fetch the photos and ncnn models and build the version-3 ``size`` benchmark under ``out``."""
    if size not in V3_SPECS:
        raise ValueError(f"unknown version-3 size {size!r}; choose from {', '.join(V3_SPECS)}")
    spec = V3_SPECS[size]
    photos = fetch_photos(spec.photos)
    source = NcnnSource(num_threads=num_threads, tile=spec.tile, pad=spec.tile_pad)
    return build_bench_v3(Path(out), photos, spec, seed, source, heldout=heldout, workers=workers, progress=progress)
