"""Commands that train: train, tune, final (one declaration of the options they share)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..views.limits import DEFAULT_MAX_PIXELS
from ._app import app, console
from ._app import fail as _fail

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
    "split_seed": (0, "--split-seed"),
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
    "split_seed": "Seed of the grouped, stratified train/val/test split of data without one (and of the val "
                  "carve-out of data with only train and test); independent of --seed, so the same data and "
                  "split seed always give the same test set.",
}
# Options whose TrainConfig field has another name (and value: see _train_fields).
_RENAMED = {"classes": "class_names", "split": "split_fractions", "quiet": "progress"}


def _train_option(name: str, help: Optional[str] = None, default: Any = None) -> Any:
    """The ``typer.Option`` of training setting ``name`` as train and tune declare it (``default``:
    a command's own default instead of the shared one)."""
    shared, *decls = _TRAIN_OPTIONS[name]
    return typer.Option(shared if default is None else default, *decls, help=help or _SAME_HELP.get(name))


def _train_fields(data: Path, out: Path, classes: str, split: str, quiet: bool, **same: Any) -> dict[str, Any]:
    """TrainConfig fields from train's / tune's options (``same``: the options named as their field)."""
    return dict(data=str(data), out=str(out), class_names=tuple(c.strip() for c in classes.split(",")),
                split_fractions=tuple(float(x) for x in split.split(",")), progress=not quiet, **same)


def _interpolation(value: Optional[str]) -> Optional[str]:
    """--interpolation: refused before anything is written when it is not a resize filter the views know."""
    from ..views.build import INTERPOLATIONS

    if value is not None and value not in INTERPOLATIONS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(INTERPOLATIONS)}")
    return value


@app.command()
def train(
    ctx: typer.Context,
    data: Path = _train_option("data", "ImageFolder-style tree (real/, fake/), a manifest CSV, or a folder with manifest.csv."),
    out: Path = typer.Option(..., "--out", help="Run directory: best/, last/, metrics.jsonl, curves.png, split.csv."),
    arch: str = _train_option("arch", "glass (global + K crops) or standard (resize-only baseline)."),
    backbone: str = _train_option("backbone", "Any timm model name, or tv:NAME for torchvision's model and weights "
                                  "(paper: tv:resnet50, tv:convnext_tiny, tv:vit_b_16; see docs/backbones.md)."),
    pretrained: bool = _train_option("pretrained"),
    weights: Optional[str] = _train_option("weights", "Local weights (.safetensors or .pth, loaded weights-only) or offline:<source>."),
    shared_backbone: bool = _train_option("shared_backbone"),
    k: int = _train_option("k", "Local crops per image."),
    sampling: str = _train_option("sampling", "Crop sampling: stratified, grid or random."),
    local_input: str = typer.Option("rgb", "--local-input", help="What the local backbone sees of each crop: rgb (the "
                                    "paper), residual (its Laplacian high-pass: the upsampling trace; docs/backbones.md) "
                                    "or hessian (luma's three second differences d_xx, d_yy, d_xy as three channels)."),
    local_depth: int = typer.Option(0, "--local-depth", min=0, max=64, help="Cut GLASS's local backbone after its "
                                    "first N feature levels (timm's feature_info; EfficientNet-Lite0: 3 = stride 8, 40 "
                                    "channels) and pool there; 0 = the whole backbone (the paper)."),
    crop_align: int = typer.Option(1, "--crop-align", min=1, max=4096, help="Crop offsets on multiples of N (1 = the "
                                   "paper's uniform offsets; 12 = every crop at the same phase of a ×2/×3/×4 upscaler's "
                                   "pattern). Saved in the checkpoint: evaluation and prediction place crops the same way."),
    interpolation: Optional[str] = typer.Option(None, callback=_interpolation, help="Global-view resize filter: bilinear "
                                                "(the paper), bicubic, nearest, lanczos or box (default: the weights' own)."),
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
    bn_eval: bool = typer.Option(False, "--bn-eval", help="BatchNorm layers normalise with their running "
                                 "statistics during training too and stop updating them; their scale and shift still "
                                 "train (off = the paper's recipe)."),
    label_smoothing: float = _train_option("label_smoothing"),
    crop_loss: float = typer.Option(0.0, "--crop-loss", help="GLASS: weight W of an auxiliary loss, the mean "
                                    "cross-entropy of each crop's own logits (shared head on [g; f_i]) against the "
                                    "image's label, added to the image loss (0 = the paper's model)."),
    ema: float = typer.Option(0.0, "--ema", min=0.0, max=0.9999, help="Decay per optimizer step of an exponential "
                              "moving average of the weights, which validation then scores and the checkpoints hold "
                              "(warmed up as min(D, (1+t)/(10+t)); 0 = off, the paper's recipe)."),
    paired: bool = typer.Option(False, "--paired", help="Train on aligned pairs: a real and the fake made from it "
                                "(same source group, same file path but for the class folder) go into one batch "
                                "side by side with the same window, crops and augmentation (off = the paper's recipe)."),
    pair_loss: float = typer.Option(0.0, "--pair-loss", min=0.0, help="With --paired: weight W of a ranking loss, "
                                    "softplus(s_real - s_fake) over each batch's pairs (s: the fake-minus-real logit), "
                                    "added to the image loss (0 = off)."),
    classes: str = _train_option("classes", "Class folder names / labels, negative first."),
    split: str = _train_option("split", "train,val,test fractions for data without splits."),
    max_pixels: int = _train_option("max_pixels", "Refuse images larger than this many pixels."),
    augment: str = typer.Option("none", help="Degrade training images before their views: a preset (none; standard = "
                                "blur σ~U[0,3] p=0.5 + JPEG q~U[30,100] p=0.5, the CNNDetection recipe; strong = standard "
                                "+ resize, noise, WebP, social) or a spec like 'blur:sigma=0-3,p=0.5+jpeg:q=30-100,p=0.5'. "
                                "Validation stays clean."),
    seed: int = _train_option("seed", "Training seed: initialisation, order, crops, dropout (not the split)."),
    split_seed: int = _train_option("split_seed"),
    workers: int = _train_option("workers", "DataLoader workers (one thread each)."),
    threads: int = _train_option("threads", "Torch threads in the main process (0 = one per physical core, -1 = "
                                 "every logical CPU: training is compute-bound, see docs/performance.md)."),
    device: str = _train_option("device", "auto, cpu, cuda, cuda:1 ..."),
    amp: bool = _train_option("amp", "Mixed precision on CUDA."),
    cpu_amp: bool = typer.Option(False, "--cpu-amp", help="bf16 autocast for the training steps on a CPU: about a third "
                                 "less memory, about fp32's speed where the CPU has bf16 units (validation stays fp32)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last with identical state."),
    config: Optional[Path] = typer.Option(None, help="JSON file of training options (command-line values win when given)."),
    quiet: bool = _train_option("quiet"),
    sync_bn: bool = typer.Option(False, "--sync-bn", help="Under torchrun: BatchNorm statistics over the global batch."),
) -> None:
    """Train GLASS or the resize-only baseline.

    Multi-GPU / multi-node: run the same command under ``torchrun --nproc_per_node N --no-python glassdetect train ...``
    (--batch-size is then the global batch, split evenly over the N processes; see docs/search-and-scale.md).
    """
    from ..training.train import TrainConfig
    from ..training.train import train as run_train

    opts = _train_fields(
        data, out, classes, split, quiet, arch=arch, backbone=backbone, pretrained=pretrained, weights=weights,
        shared_backbone=shared_backbone, k=k, sampling=sampling, local_input=local_input, local_depth=local_depth,
        crop_align=crop_align,
        interpolation=interpolation, epochs=epochs, batch_size=batch_size, accum=accum,
        lr_global=lr_global, lr_local=lr_local, lr_head=lr_head, wd_global=wd_global, wd_local=wd_local,
        wd_head=wd_head, dropout=dropout, freeze=freeze, bn_eval=bn_eval, label_smoothing=label_smoothing, crop_loss=crop_loss,
        ema=ema, paired=paired, pair_loss=pair_loss, max_pixels=max_pixels,
        augment=augment, seed=seed, split_seed=split_seed, workers=workers, threads=threads, device=device, amp=amp,
        cpu_amp=cpu_amp, resume=resume, sync_bn=sync_bn,
    )
    if config is not None:
        _merge_config_file(ctx, opts, config)
    try:
        summary = run_train(TrainConfig.from_dict(opts))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _report_run(summary, out)


def _merge_config_file(ctx: typer.Context, opts: dict, config: Path) -> None:
    """Options from a JSON file fill in every option not given on the command line."""
    from_file = json.loads(config.read_text())
    given = {name for name, src in ((n, ctx.get_parameter_source(n)) for n in ctx.params) if src and src.name == "COMMANDLINE"}
    # command-line names that differ from the TrainConfig field they set
    given |= {f for opt, f in _RENAMED.items() if opt in given}
    opts.update({k_: v for k_, v in from_file.items() if k_ not in given})
    if "split_seed" not in from_file and "split_seed" not in given:
        del opts["split_seed"]  # a config from before split_seed: its split was drawn with its seed


def _report_run(summary: dict, out: Path) -> None:
    from ..training.distributed import env_info

    if not env_info().is_main:  # under torchrun only rank 0 reports
        return
    console.print(f"best validation accuracy {summary['best_val_accuracy']:.4f} → {out / 'best'}")
    if summary["bad_images"]:
        console.print(f"[yellow]{summary['bad_images']} unreadable images skipped[/yellow] (see {out / 'bad_images.csv'})")


@app.command()
def tune(
    data: Path = _train_option("data", "Tree, manifest CSV or folder with manifest.csv (split as for train)."),
    out: Path = typer.Option(Path("runs/tune"), "--out", help="Study folder: study.db, trials/NNNN/, trials.csv, best.json, best_config.json."),
    arch: str = _train_option("arch", "glass or standard."),
    backbone: str = _train_option("backbone", "Any timm model name."),
    trials: Optional[int] = typer.Option(None, help="Trials this worker runs (the study keeps everything already done). "
                                         "Default: the paper's budget, 100 (glass) / 50 (standard) complete + pruned "
                                         "trials for the whole study, so a re-run completes it. Cheaper: --trials 20 "
                                         "--epochs 10."),
    storage: Optional[str] = typer.Option(None, help="Optuna RDB URL (default sqlite:///OUT/study.db); e.g. postgresql://user:pw@host/db to share one study between workers."),
    study: Optional[str] = typer.Option(None, help="Study name (default glassdetect-ARCH-BACKBONE)."),
    space: Optional[Path] = typer.Option(None, help="YAML search space merged over the paper's default (see docs/search-and-scale.md)."),
    worker: int = typer.Option(0, help="Distinct id per parallel worker of one study (enters the sampler seed)."),
    max_trials: Optional[int] = typer.Option(None, help="Stop once the study has this many complete + pruned trials (all workers)."),
    timeout: Optional[float] = typer.Option(None, help="Stop starting new trials after this many seconds."),
    min_resource: Optional[int] = typer.Option(None, help="Hyperband: epochs before a trial can first be pruned "
                                               "(default 5, the paper's; at most --max-resource)."),
    max_resource: Optional[int] = typer.Option(None, help="Hyperband: a full trial's epochs (default --epochs: 25, the paper's)."),
    reduction_factor: int = typer.Option(3, help="Hyperband: keep 1/N of the trials at each rung (paper: 3)."),
    pretrained: bool = _train_option("pretrained"),
    weights: Optional[str] = _train_option("weights", "Local weights or offline:<source>."),
    shared_backbone: bool = _train_option("shared_backbone"),
    k: int = _train_option("k", "Crops per image when K is not searched."),
    sampling: str = _train_option("sampling"),
    epochs: int = _train_option("epochs", "Epochs per trial (Hyperband's maximum resource; paper: 25).", default=25),
    batch_size: int = _train_option("batch_size", "Used when batch_size is not searched."),
    freeze: int = _train_option("freeze"),
    label_smoothing: float = _train_option("label_smoothing"),
    classes: str = _train_option("classes"),
    split: str = _train_option("split", "train,val,test fractions for data without splits (trials share one split)."),
    max_pixels: int = _train_option("max_pixels"),
    seed: int = _train_option("seed", "Training seed of every trial and the sampler's seed."),
    split_seed: int = _train_option("split_seed", "Seed of the data split all trials share (data without one); "
                                    "recorded in best_config.json for train and final."),
    workers: int = _train_option("workers", "DataLoader workers."),
    threads: int = _train_option("threads"),
    device: str = _train_option("device"),
    amp: bool = _train_option("amp"),
    quiet: bool = _train_option("quiet"),
) -> None:
    """Hyperparameter search (Optuna TPE + Hyperband pruning on validation accuracy); writes OUT/best_config.json for train --config."""
    from ..training.train import TrainConfig
    from ..studies.tune import SpaceError
    from ..studies.tune import tune as run_tune

    base = TrainConfig(**_train_fields(
        data, out, classes, split, quiet, arch=arch, backbone=backbone, pretrained=pretrained, weights=weights,
        shared_backbone=shared_backbone, k=k, sampling=sampling, epochs=epochs, batch_size=batch_size, freeze=freeze,
        label_smoothing=label_smoothing, max_pixels=max_pixels, seed=seed, split_seed=split_seed, workers=workers,
        threads=threads, device=device, amp=amp,
    ))
    try:
        res = run_tune(base, out, trials, storage=storage, study_name=study, space=space, worker=worker,
                       max_trials=max_trials, timeout=timeout, reduction_factor=reduction_factor,
                       min_resource=min_resource, max_resource=max_resource)
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
    seeds: str = typer.Option("100,200,300,400,500", help="Comma-separated training seeds (paper: 100,...,500)."),
    holdout: float = typer.Option(0.05, "--holdout", "--val-fraction",
                                  help="Share of train+val held out for model selection (paper: 0.05)."),
    holdout_seed: str = typer.Option("606", help="Seed of that holdout, drawn once for all seeds (paper: 606), or "
                                     "'per-seed' to redraw it with each training seed."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the fixed train/val/test split of data without one "
                                             "(default: the config's split_seed, or its seed if it predates split_seed)."),
    draws: int = typer.Option(1, help="Crop draws averaged per test image."),
    epochs: str = typer.Option("50", help="Epochs per seed (paper: 50), or 'config' for the config's own epochs."),
    name: Optional[str] = typer.Option(None, help="Row name in final.md (default: arch · backbone · K)."),
    workers: int = typer.Option(2),
    threads: int = typer.Option(0),
    device: str = typer.Option("auto"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Final runs, the paper's protocol: train+val merged, 5 % held out once (seed 606) for model selection,
    50 epochs per seed, test-set metrics as mean ± std (final.json, final.md)."""
    from ..studies.final import SUMMARY_METRICS, run_final

    overrides = dict(workers=workers, threads=threads, device=device, progress=not quiet)
    try:
        res = run_final(config, data, out, [int(s) for s in seeds.split(",") if s.strip()], holdout, split_seed,
                        draws, overrides, name, holdout_seed=_int_or(holdout_seed, "per-seed", "--holdout-seed"),
                        epochs=_int_or(epochs, "config", "--epochs"))
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


def _int_or(value: str, keyword: str, option: str) -> Optional[int]:
    """An option that takes a number or one keyword (-> None)."""
    if value.strip().lower() == keyword:
        return None
    try:
        return int(value)
    except ValueError:
        _fail(f"{option}: expected a whole number or '{keyword}', got {value!r}")
        raise  # unreachable: _fail exits
