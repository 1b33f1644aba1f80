"""Studies and measurements: cost, demo, bench."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ._app import app, console
from ._app import fail as _fail


@app.command()
def cost(
    backbone: str = typer.Option("resnet50", help="Any timm model name (random weights: cost does not depend on them)."),
    crops: Optional[str] = typer.Option(None, help="K values: 1-16, 1,2,4,8 ... (default 1-16; --quick: 1,2,4)."),
    device: str = typer.Option("auto"),
    batch: Optional[int] = typer.Option(None, help="Images per step (default 8; --quick: 2)."),
    steps: Optional[int] = typer.Option(None, help="Measured repetitions (median; default 5, --quick: 2)."),
    warmup: Optional[int] = typer.Option(None, help="Unmeasured repetitions first (default 2, --quick: 1)."),
    shared_backbone: bool = typer.Option(False, "--shared-backbone"),
    patch: int = typer.Option(224, help="Crop side."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA."),
    threads: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/cost"), "--out", help="cost.json and cost.png."),
    quick: bool = typer.Option(False, "--quick", help="Small defaults for a fast look (or a test)."),
) -> None:
    """Peak memory and time per training step / inference image against K, with line fits, next to the baseline."""
    from ..bench.cost import measure_cost, parse_crops

    try:
        ks = parse_crops(crops or ("1,2,4" if quick else "1-16"))
    except ValueError as exc:
        _fail(str(exc))
    res = measure_cost(backbone, ks, device=device, batch=batch or (2 if quick else 8), steps=steps or (2 if quick else 5),
                       warmup=warmup if warmup is not None else (1 if quick else 2), patch=patch,
                       shared_backbone=shared_backbone, amp=amp, threads=threads, out=out,
                       progress=lambda m: console.print(f"measuring {m}"))
    table = Table(title=f"{backbone} on {res['device']} (batch {res['batch']})")
    for col in ("K", "train step (s)", "train peak (MB)", "infer (s/img)", "infer peak (MB)"):
        table.add_column(col, justify="right")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [("baseline", res["standard"])] + [(str(r["k"]), r) for r in res["glass"]]
    for name, r in rows:
        table.add_row(name, fmt(r["train_step_s"], ".4f"), fmt(r["train_peak_mb"], ".1f"),
                      fmt(r["infer_s_per_image"], ".5f"), fmt(r["infer_peak_mb"], ".1f"))
    Console().print(table)
    for key, fit in res["fits"].items():
        if fit:
            console.print(f"{key}: {fit['intercept']:.4g} + {fit['slope']:.4g}·K  (R² {fit['r2']:.3f})")
    console.print(f"wrote {out / 'cost.json'} and {out / 'cost.png'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output directory: bench/, <arch>/seed<N>/, results.json, results.md."),
    size: str = typer.Option("small", help="Benchmark size: small (the demo budget) or full."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    epochs: Optional[int] = typer.Option(None, help="Override the demo's epochs."),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Override the demo's crop count."),
    augment: Optional[str] = typer.Option(None, help="Training augmentation (preset or spec); default: chosen on the validation split among --augment-candidates."),
    augment_candidates: str = typer.Option("mild,standard", help="Comma-separated augmentation presets to choose from on validation."),
    sweep: str = typer.Option("demo", help="Robustness sweep on the test split (preset or ';'-separated specs)."),
    workers: int = typer.Option(1),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """The offline demo: GLASS vs the resize-only baseline, pretrained EfficientNet-Lite0, several seeds,
    on the shortcut-free benchmark, with the training augmentation chosen on validation and a robustness sweep."""
    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(out=str(out), size=size, seeds=tuple(int(s) for s in seeds.split(",")), workers=workers,
                     threads=threads, device=device, augment=augment, sweep=sweep,
                     augment_candidates=tuple(c.strip() for c in augment_candidates.split(",") if c.strip()))
    if epochs is not None:
        cfg.epochs = epochs
    if k is not None:
        cfg.k = k
    run_demo(cfg)


@app.command()
def bench(
    what: str = typer.Argument("all", help="views, model, predict or all."),
    quick: bool = typer.Option(False, "--quick", help="Views at 12 and 24 MP, one backbone, fewer images (under 3 minutes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the raw results as JSON here."),
    md: Optional[Path] = typer.Option(None, "--md", help="Write the Markdown tables here."),
    device: str = typer.Option("auto", help="Model and predict device: auto (CUDA with AMP when present), cpu, cuda ..."),
    threads: int = typer.Option(0, help="Torch threads for the model (0 = auto); view building always uses one, as a worker."),
    workdir: Optional[Path] = typer.Option(None, help="Where the generated images go (default: the system temp folder)."),
) -> None:
    """Measure view building (ours vs naive vs decode-only), model forward (GFLOP/s vs matmul peak) and predict overlap."""
    from ..bench import run_bench, to_markdown

    try:
        res = run_bench(what, quick=quick, device=device, threads=threads, workdir=workdir)
    except ValueError as exc:
        _fail(str(exc))
    text = to_markdown(res)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2) + "\n")
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text + "\n")
    print(text)
    console.print(f"bench finished in {res['elapsed_s']:.0f} s")
