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
    batch: Optional[int] = typer.Option(None, help="Images per step (default 8; --quick: 2). The paper's cost figure is at --batch 32."),
    steps: Optional[int] = typer.Option(None, help="Measured repetitions (median; default 5, --quick: 2)."),
    warmup: Optional[int] = typer.Option(None, help="Unmeasured repetitions first (default 2, --quick: 1)."),
    shared_backbone: bool = typer.Option(False, "--shared-backbone"),
    patch: int = typer.Option(224, help="Crop side."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA."),
    threads: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/cost"), "--out", help="cost.json and cost.png."),
    quick: bool = typer.Option(False, "--quick", help="Small defaults for a fast look (or a test)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Also train GLASS at each K on this data and report validation accuracy/AUC per K."),
    epochs: int = typer.Option(3, help="With --data: training epochs at each K."),
    weights: Optional[str] = typer.Option(None, help="With --data: the backbone's starting weights (e.g. offline:efficientnet_lite0.pypi_in1k; default random)."),
    train_batch: Optional[int] = typer.Option(None, help="With --data: training batch (default: --batch)."),
    freeze: int = typer.Option(0, help="With --data: leading parameter groups of each backbone kept frozen."),
    workers: int = typer.Option(1, help="With --data: data-loading worker processes."),
) -> None:
    """Peak memory (above the start and absolute) and time per training step / inference image against K,
    with line fits, next to the baseline; with --data also validation accuracy against K."""
    from ..bench.cost import measure_cost, parse_crops
    from ..bench.cost_accuracy import AccuracyConfig

    try:
        ks = parse_crops(crops or ("1,2,4" if quick else "1-16"))
    except ValueError as exc:
        _fail(str(exc))
    batch = batch or (2 if quick else 8)
    accuracy = None
    if data is not None:
        if not data.exists():
            _fail(f"--data {data}: not found")
        accuracy = AccuracyConfig(data=str(data), out=str(out), backbone=backbone, weights=weights or None,
                                  epochs=epochs, batch_size=train_batch or batch, patch=patch,
                                  shared_backbone=shared_backbone, freeze=freeze, workers=workers, threads=threads,
                                  device=device)
    try:
        res = measure_cost(backbone, ks, device=device, batch=batch, steps=steps or (2 if quick else 5),
                           warmup=warmup if warmup is not None else (1 if quick else 2), patch=patch,
                           shared_backbone=shared_backbone, amp=amp, threads=threads, out=out,
                           progress=lambda m: console.print(f"measuring {m}"), accuracy=accuracy)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    Console().print(_cost_table(res))
    for key, fit in res["fits"].items():
        if fit:
            console.print(f"{key}: {fit['intercept']:.4g} + {fit['slope']:.4g}·K  (R² {fit['r2']:.3f})")
    console.print(f"wrote {out / 'cost.json'} and {out / 'cost.png'}")


def _cost_table(res: dict) -> Table:
    """One row per K (and the baseline): time, peak memory above the start and absolute; validation metrics with --data."""
    table = Table(title=f"{res['backbone']} on {res['device']} (batch {res['batch']})")
    cols = ["K", "train step (s)", "train peak (MB)", "train peak abs (MB)", "infer (s/img)", "infer peak (MB)",
            "infer peak abs (MB)"]
    acc = {r["k"]: r for r in (res.get("accuracy") or {}).get("rows", [])}
    if acc:
        cols += ["val acc", "val AUC"]
    for col in cols:
        table.add_column(col, justify="right")
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [("baseline", res["standard"], None)] + [(str(r["k"]), r, acc.get(r["k"])) for r in res["glass"]]
    for name, r, a in rows:
        cells = [name, fmt(r["train_step_s"], ".4f"), fmt(r["train_peak_mb"], ".1f"), fmt(r["train_peak_total_mb"], ".1f"),
                 fmt(r["infer_s_per_image"], ".5f"), fmt(r["infer_peak_mb"], ".1f"), fmt(r["infer_peak_total_mb"], ".1f")]
        if acc:
            cells += [fmt(a and a["val_accuracy"], ".3f"), fmt(a and a["val_auc"], ".3f")]
        table.add_row(*cells)
    return table


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output directory: bench/, <arch>/seed<N>/, results.json, results.md."),
    bench: Optional[Path] = typer.Option(None, help="A finished offline benchmark to use as it is (default: build one in OUT/bench)."),
    size: Optional[str] = typer.Option(None, help="Benchmark size; version 3: pilot (default, the demo's hour), small or full; version 2: small (default) or full."),
    bench_version: int = typer.Option(3, "--bench-version", help="Offline benchmark version: 3 (whole regions, six families, two left out of training; docs/benchmark-v3.md) or 2 (crop pairs, the earlier demo)."),
    heldout_families: Optional[str] = typer.Option(None, "--heldout-families", help="Version 3: VAL,TEST families left out of training (default: the builder's)."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    epochs: Optional[int] = typer.Option(None, help="Override the version's epochs (3: 10, 2: 7)."),
    k: Optional[int] = typer.Option(None, "-k", "--k", help="Override the demo's crop count (4)."),
    freeze: Optional[int] = typer.Option(None, help="Override the leading parameter groups kept frozen (3: 0, 2: 2)."),
    local_input: Optional[str] = typer.Option(None, "--local-input", help="Override GLASS's local input: rgb (the paper), residual (version 3's default) or hessian."),
    local_depth: Optional[int] = typer.Option(None, "--local-depth", min=0, max=64, help="Override GLASS's local backbone depth in feature levels (3: 4; 0 = the whole backbone, the paper's and version 2's)."),
    augment: Optional[str] = typer.Option(None, help="Training augmentation (preset or spec), or 'select' to choose it on the validation split among --augment-candidates; default: version 3 none (the fresh training window only), version 2 select."),
    augment_candidates: str = typer.Option("mild,standard", help="Comma-separated augmentation presets to choose from on validation."),
    sweep: str = typer.Option("demo", help="Robustness sweep on the test split (preset or ';'-separated specs)."),
    workers: Optional[int] = typer.Option(None, help="DataLoader decode workers (default: 1 on the CPU, one per CPU beside a GPU)."),
    threads: Optional[int] = typer.Option(None, help="Torch threads (default: every logical CPU on the CPU; -1 all, 0 one per physical core)."),
    cpu_amp: Optional[bool] = typer.Option(None, "--cpu-amp/--no-cpu-amp", help="bf16 autocast for the CPU training steps (default: version 3 on where the CPU has bf16 units; version 2 off)."),
    device: str = typer.Option("auto"),
) -> None:
    """The offline demo: GLASS vs the resize-only baseline, pretrained EfficientNet-Lite0, several seeds,
    on the shortcut-free benchmark, per generator family (seen in training or left out), with a robustness sweep."""
    from ..studies.demo import demo_config, run_demo

    given = dict(bench=str(bench) if bench else None, size=size, workers=workers, threads=threads, augment=augment, epochs=epochs, k=k, freeze=freeze,
                 local_input=local_input, local_depth=local_depth, cpu_amp=cpu_amp, heldout_families=tuple(heldout_families.split(",")) if heldout_families else None)
    cfg = demo_config(bench_version, out=str(out), seeds=tuple(int(s) for s in seeds.split(",")), device=device,
                      sweep=sweep, augment_candidates=tuple(c.strip() for c in augment_candidates.split(",") if c.strip()),
                      **{key: value for key, value in given.items() if value is not None})
    run_demo(cfg)


@app.command()
def bench(
    what: str = typer.Argument("all", help="views, model, predict, serve (the HTTP service, unbatched vs batched), train (training images/s, the demo's recipe vs the fast one) or all (views, model, predict)."),
    quick: bool = typer.Option(False, "--quick", help="Views at 12 and 24 MP, one backbone, fewer images (under 3 minutes)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the raw results as JSON here."),
    md: Optional[Path] = typer.Option(None, "--md", help="Write the Markdown tables here."),
    device: str = typer.Option("auto", help="Model and predict device: auto (CUDA with AMP when present), cpu, cuda ..."),
    threads: int = typer.Option(0, help="Torch threads for the model (0 = auto); view building always uses one, as a worker."),
    workdir: Optional[Path] = typer.Option(None, help="Where the generated images go (default: the system temp folder)."),
    workers: str = typer.Option("2", help="predict's decode workers, or 'auto': as many as keep the model busy (e.g. a GPU), at most the CPU count."),
    train_variants: Optional[str] = typer.Option(None, "--train-variants", help="train: comma-separated recipes to time "
                                                 "(reference, fast, all-cpus-no-worker, all-cpus-2-workers; default "
                                                 "reference,all-cpus-no-worker,fast; --quick: reference,fast)."),
    train_rounds: Optional[int] = typer.Option(None, "--train-rounds", help="train: rounds of turns (default 3; --quick: 2)."),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="train: steps timed per round (default 4; --quick: 2)."),
) -> None:
    """Measure view building (ours vs naive vs decode-only), model forward (GFLOP/s vs matmul peak), predict overlap,
    the service's throughput (serve) or training throughput (train: the demo's recipe vs the fast one)."""
    from ..bench import run_bench, to_markdown

    try:
        if workers != "auto" and not workers.isdigit():
            raise ValueError(f"--workers must be a count or 'auto', got {workers!r}")
        n_workers: int | str = workers if workers == "auto" else int(workers)
        train = _train_bench_config(quick, device, train_variants, train_rounds, train_steps)
        res = run_bench(what, quick=quick, device=device, threads=threads, workdir=workdir, workers=n_workers,
                        train=train)
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


def _train_bench_config(quick: bool, device: str, variants: Optional[str], rounds: Optional[int],
                        steps: Optional[int]):
    """bench train's settings: its defaults (``--quick``'s) with the options given."""
    from dataclasses import replace

    from ..bench.run import train_bench_defaults
    from ..bench.train import VARIANTS

    cfg = train_bench_defaults(quick, device)
    if variants is not None:
        names = tuple(v.strip() for v in variants.split(",") if v.strip())
        unknown = [v for v in names if v not in VARIANTS]
        if unknown or not names:
            raise ValueError(f"--train-variants: unknown {', '.join(unknown) or '(none given)'}; choose from "
                             f"{', '.join(VARIANTS)}")
        cfg = replace(cfg, variants=names)
    if rounds is not None:
        cfg = replace(cfg, rounds=rounds)
    if steps is not None:
        cfg = replace(cfg, steps=steps, images=max(cfg.images, cfg.warmup + steps))
    return cfg


@app.command()
def crossgen(
    data: Path = typer.Option(..., "--data", help="Manifest or folder with generator names (e.g. the offline benchmark)."),
    train_on: Optional[list[str]] = typer.Option(None, "--train-on", help="Generators to train on, comma-separated: one table row; repeat for more rows."),
    top: int = typer.Option(0, "--top", help="Add a row for each of the N generators with the most training fakes (ties by name)."),
    arch: str = typer.Option("both", "--arch", help="glass, baseline or both."),
    seeds: str = typer.Option("0", help="Comma-separated training seeds (mean ± std over them)."),
    reals: str = typer.Option("paired", help="Training/validation reals: paired (each fake's partner) or all (every real of the split)."),
    out: Path = typer.Option(Path("runs/crossgen"), "--out", help="runs/<row>/<arch>/seed<N>/ (cached), results.json, results.md."),
    backbone: str = typer.Option("efficientnet_lite0"),
    weights: Optional[str] = typer.Option("offline:efficientnet_lite0.pypi_in1k", help="Backbone weights ('' or none: --pretrained decides)."),
    pretrained: bool = typer.Option(False, "--pretrained/--no-pretrained", help="timm's pretrained weights when --weights is empty."),
    k: int = typer.Option(4, "-k", "--k"),
    epochs: int = typer.Option(7),
    batch: int = typer.Option(8),
    freeze: int = typer.Option(2, help="Leading parameter groups of each backbone kept frozen."),
    workers: int = typer.Option(1),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
) -> None:
    """Cross-generator protocol: train on the named generators, test on every generator; train × test AUC table."""
    import shlex
    import sys

    from ..studies.crossgen import (
        CrossgenConfig,
        command_line,
        load_split,
        parse_archs,
        parse_rows,
        top_generators,
    )
    from ..studies.crossgen import (
        crossgen as run_crossgen,
    )

    try:
        rows = parse_rows(train_on or [])
        if top > 0:
            rows += [r for r in parse_rows(top_generators(load_split(data), top)) if r not in rows]
        cfg = CrossgenConfig(
            data=str(data), out=str(out), train_on=tuple(rows), archs=parse_archs(arch),
            seeds=tuple(int(s) for s in seeds.split(",") if s.strip()), reals=reals, backbone=backbone,
            weights=None if (weights or "").lower() in ("", "none") else weights, pretrained=pretrained, k=k,
            epochs=epochs, batch_size=batch, freeze=freeze, workers=workers, threads=threads, device=device,
        )
        # the command as typed when run from a shell; else (a test runner) the equivalent one spelled out
        cfg.command = ("glassdetect " + shlex.join(sys.argv[sys.argv.index("crossgen"):])
                       if "crossgen" in sys.argv else command_line(cfg))
        res = run_crossgen(cfg)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    print((out / "results.md").read_text())
    console.print(f"wrote {out / 'results.json'} and {out / 'results.md'} in {res['seconds'] / 60:.1f} min")
