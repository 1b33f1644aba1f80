"""Commands that use a checkpoint: evaluate, robustness, predict (and merge, for its sharded parts), calibrate, export, serve."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..views.limits import DEFAULT_MAX_PIXELS, SERVE_MAX_PIXELS
from ._app import app, console
from ._app import fail as _fail


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
    """Evaluate a checkpoint: accuracy, AUC, AP, F1, EER, TPR@FPR, ECE ... as JSON plus reliability, ROC and PR plots."""
    from ..evaluation.evaluate import evaluate as run_eval

    try:
        res = run_eval(checkpoint, data, split, draws, out, batch_size, workers, device, threads, seed, bootstrap, not quiet,
                       degrade=degrade)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    degraded = f", degraded: {res['degrade']}" if res.get("degrade", "none") != "none" else ""
    table = Table(title=f"{checkpoint} on {res['split']} (n={res['n']}{degraded})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    from ..evaluation.metrics import REPORT_KEYS

    for key in REPORT_KEYS + (("target_fpr",) if "target_fpr" in res else ()):
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
    from ..evaluation.robustness import markdown
    from ..evaluation.robustness import robustness as run_robustness

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
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the table here (default: stdout); appended batch by batch, each batch written whole and synced."),
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl. Columns: path, fake_probability, decision, crops, draws, spread, error (+ sha256 with --dedupe)."),
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
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in --out (a partial last row is cut away) and score only the paths without one; each path gets one row."),
    shard: str = typer.Option("auto", "--shard", help="I/N: score only shard I (from 0) of N, by a hash of each path, into OUT.part-0000I-of-0000N. 'auto' (with --out): from RANK/WORLD_SIZE or SLURM_ARRAY_TASK_ID/COUNT when there are more than 1; 'off': never."),
    dedupe: bool = typer.Option(False, "--dedupe", help="Add a sha256 column (of each file's bytes); with --resume, a file whose content already has a row is not scored again: its row is copied."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    engine: str = typer.Option("local", "--engine", help="local, or ray: decode in Ray tasks and score in an actor pool on a Ray cluster (pip install 'glassdetect\\[ray]'; --workers/--threads do not apply; no --explain or --dedupe yet; docs/ray.md)."),
    address: Optional[str] = typer.Option(None, "--address", help="--engine ray: the cluster ('auto', 'ray://HEAD:10001'; default: RAY_ADDRESS or a local Ray for this run)."),
    num_gpus_per_worker: Optional[float] = typer.Option(None, "--num-gpus-per-worker", help="--engine ray: GPUs per model actor (default: 1 if the cluster has GPUs, else 0)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="--engine ray: model actors (default: one per GPU, or 1 without GPUs)."),
) -> None:
    """Score images: one row per input (CSV or JSON Lines). A file that fails gets an error row; exit code 1 if any did.

    For archives: --resume continues an interrupted run, --shard splits one over processes or array tasks, and
    `glassdetect merge` joins the part files (docs/scanning.md)."""
    from ..inference.predict import FORMATS, Scan, columns_for
    from ..views.sampling import MODES
    from ..inference.shards import rank_device, resolve_shard

    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}")
    if mode is not None and mode not in MODES:
        _fail(f"--mode must be {', '.join(MODES[:-1])} or {MODES[-1]}")
    if not (checkpoint / "config.json").is_file():
        _fail(f"{checkpoint}: not a checkpoint directory (no config.json)")
    if resume and out is None:
        _fail("--resume needs --out (the file to continue)")
    if out is None and shard.strip().lower() == "auto":
        shard = "off"  # rows on stdout: sharded only when asked for by --shard I/N
    try:
        scan = Scan(shard=resolve_shard(shard), hash_content=dedupe)
    except ValueError as exc:
        _fail(str(exc))
    options = dict(batch_size=batch_size, workers=workers, device=rank_device(device), threads=threads, seed=seed, draws=draws,
                   mode=mode, threshold=threshold, unsure=False if unsure is None else unsure, explain_dir=explain,
                   max_pixels=max_pixels, progress=False if quiet else None)
    batches = None  # the local engine
    if engine == "ray":
        from ..inference.ray_engine import RayOptions
        from ..inference.ray_engine import engine as ray_engine

        try:
            batches = ray_engine(RayOptions(address, num_gpus_per_worker, concurrency, progress=not quiet and sys.stderr.isatty()),
                                 explain, dedupe)
        except ValueError as exc:
            _fail(str(exc))  # the message names glassdetect[ray]: _fail prints it literally
    elif engine != "local":
        _fail("--engine must be local or ray")
    failed, total = _predict_rows(checkpoint, inputs, out, fmt, columns_for(dedupe), resume, scan, options, batches)
    if failed:
        console.print(f"[yellow]{failed} of {total} file(s) failed[/yellow] (see the error column)")
    raise typer.Exit(1 if failed else 0)


def _predict_rows(checkpoint: Path, inputs: list[str], out: Optional[Path], fmt: str, columns: tuple[str, ...],
                  resume: bool, scan, options: dict, batches=None) -> tuple[int, int]:
    """Run `predict` into stdout or (shard part of) ``out``, one write per batch; (failed, total) rows written.
    ``batches``: the engine (default :func:`glassdetect.inference.predict.predict_batches`)."""
    from ..inference.predict import RowFormatter, predict_batches
    from ..inference.shards import open_output, part_path

    target = part_path(out, scan.shard) if out is not None else None
    if scan.shard is not None:
        console.print(f"{scan.shard}" + (f": writing {target}" if target else ": rows to stdout"), markup=False, soft_wrap=True)
    formatter = RowFormatter(fmt, columns)
    sink = None
    failed = total = 0
    try:
        if target is not None:
            sink, existing = open_output(target, fmt, columns, resume, keep_hashes=scan.hash_content)
            if resume:
                scan.done, scan.known = existing.paths, existing.by_hash
                cut = ", a partial last row cut away" if existing.partial else ""
                console.print(f"resuming {target}: {existing.rows} row(s) already there{cut}", markup=False, soft_wrap=True)
        else:
            sys.stdout.write(formatter.header())
        for rows in (batches or predict_batches)(checkpoint, inputs, scan=scan, **options):
            total += len(rows)
            failed += sum(bool(r.error) for r in rows)
            if sink is not None:
                sink.append(formatter.lines(rows))
            else:
                sys.stdout.write(formatter.lines(rows))
                sys.stdout.flush()
    except ValueError as exc:
        _fail(str(exc))
    finally:
        if sink is not None:
            sink.close()
    if target is not None:
        notes = [f"{n} {what}" for n, what in ((scan.skipped, "already there"), (scan.elsewhere, "for other shards")) if n]
        console.print(f"wrote {total} row(s) to {target}" + (f" (inputs skipped: {', '.join(notes)})" if notes else ""),
                      markup=False, soft_wrap=True)
    return failed, total


@app.command()
def merge(
    parts: list[Path] = typer.Argument(..., help="Part files of a sharded predict (OUT.part-00000-of-00008 ...), CSV or JSON Lines, in the order to write them."),
    out: Path = typer.Option(..., "--out", "-o", help="The merged table (written atomically, header once)."),
    inputs: Optional[list[str]] = typer.Option(None, "--inputs", help="What predict was given (files, folders, globs, CSV lists; repeat the option): every path must have a row."),
    force: bool = typer.Option(False, "--force", help="Write --out even when rows are missing or duplicated (the exit code is still 1)."),
) -> None:
    """Join the part files of a sharded `predict` into one table; checks that no path has two rows, that no
    numbered part is missing or cut short, and (with --inputs) that every input has a row. Exit code 1 if not."""
    from ..inference.predict import iter_inputs
    from ..inference.shards import MergeError, merge_parts

    listed = None if not inputs else (str(p) for p in iter_inputs(inputs))
    try:
        report = merge_parts(parts, out, listed, force=force)
    except MergeError as exc:
        report = exc.report
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    for line in report.lines():
        console.print(line, style="yellow", markup=False, soft_wrap=True, highlight=False)
    if report.ok or force:
        console.print(f"wrote {report.rows} row(s) from {report.parts} part(s) to {out}", markup=False, soft_wrap=True)
    else:
        console.print(f"{out} not written (--force writes it anyway)", style="red", markup=False, soft_wrap=True)
    raise typer.Exit(0 if report.ok else 1)


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
    from ..evaluation.calibrate import calibrate as run_calibrate

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
    from ..inference.export import export_onnx

    try:
        path = export_onnx(checkpoint, onnx, opset=opset)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@app.command()
def serve(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all: give access tokens too)."),
    port: int = typer.Option(8000),
    concurrency: int = typer.Option(2, help="Inferences (forward passes) running at once, in worker threads."),
    max_batch: int = typer.Option(0, "--max-batch", help="Concurrent requests share one forward pass of up to this many images; 1 = one pass per request; 0 = auto: 8 on a GPU, 1 on the CPU (where a batch is no faster per image)."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="How long a batch waits for requests still building their views (ms)."),
    max_waiting: int = typer.Option(64, "--max-waiting", help="Requests inside the service at once (decoding, queued or in a forward pass); more get 503 with Retry-After."),
    threads: int = typer.Option(0, help="Torch threads (0 = auto)."),
    device: str = typer.Option("auto"),
    max_mb: float = typer.Option(20.0, "--max-mb", help="Largest upload in MiB (413 above)."),
    max_pixels: int = typer.Option(SERVE_MAX_PIXELS, help="Largest image in pixels (422 above)."),
    threshold: Optional[float] = typer.Option(None, help="Override the checkpoint's decision threshold."),
    unsure: Optional[str] = typer.Option(None, help="Override the 'unsure' band: 'lo,hi' or 'none'."),
    draws: int = typer.Option(1, help="Stratified crop draws averaged per image."),
    mode: Optional[str] = typer.Option(None, help="Crop mode: stratified, grid or random."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", envvar="GLASSDETECT_TOKEN_FILE", help="Access tokens, one per line (NAME:TOKEN names its holder); also read from $GLASSDETECT_TOKENS (comma-separated). Requests then need 'Authorization: Bearer TOKEN'; /healthz, /readyz and the page stay open."),
    rate_limit: float = typer.Option(0.0, "--rate-limit", help="Requests per second each client (token, or address without tokens) may send to /v1/detect; 429 above; 0 = no limit."),
    rate_burst: int = typer.Option(0, "--rate-burst", help="Requests a client may send at once within --rate-limit (0 = the rate, at least 1)."),
    request_timeout: float = typer.Option(60.0, "--request-timeout", help="Seconds a request may take from its arrival: 408 when its body is still arriving, 503 after; 0 = none."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", help="On SIGTERM: seconds the requests in flight get to finish (new connections are refused at once)."),
    log_format: str = typer.Option("text", "--log-format", help="text (uvicorn's lines) or json (every line a JSON object, one per request: id, status, timings, image size, verdict)."),
    log_level: str = typer.Option("info"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log"),
) -> None:
    """Serve the model over HTTP: POST /v1/detect, GET /healthz, /readyz, /metrics, and an upload page at /
    (docs/service.md)."""
    try:
        from ..service.auth import Tokens, exposure_warning
        from ..service.ops import OpsConfig
        from ..service.serve import serve as run_serve
    except ImportError as exc:
        _fail(f"{exc.name} is missing: pip install 'glassdetect[serve]'")
    if not (checkpoint / "config.json").is_file():
        _fail(f"{checkpoint}: not a checkpoint directory (no config.json)")
    try:
        ops = OpsConfig(tokens=Tokens.load(token_file), rate_limit=rate_limit, rate_burst=rate_burst,
                        request_timeout_s=request_timeout)
    except ValueError as exc:
        _fail(str(exc))
    warning = exposure_warning(host, ops.tokens)
    if warning:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    try:
        run_serve(checkpoint, host, port, device=device, threads=threads, concurrency=concurrency,
                  max_bytes=int(max_mb * 2**20), max_pixels=max_pixels, threshold=threshold,
                  unsure=False if unsure is None else unsure, draws=draws, mode=mode, log_level=log_level,
                  access_log=access_log, max_batch=max_batch, max_wait_ms=max_wait_ms, max_waiting=max_waiting,
                  ops=ops, log_format=log_format, shutdown_timeout_s=shutdown_timeout)
    except ValueError as exc:
        _fail(str(exc))
