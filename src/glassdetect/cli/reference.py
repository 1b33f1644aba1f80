"""``glassdetect reference``: the training-free 2×2-phase residual detector scored on a data split,
with the metrics JSON ``glassdetect evaluate`` writes (:mod:`glassdetect.evaluation.reference`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ._app import app, console
from ._app import fail as _fail


@app.command()
def reference(
    data: Path = typer.Argument(..., help="Tree, manifest CSV or folder with manifest.csv."),
    split: str = typer.Option("test", help="train, val, test, all, or auto (test when the data names one, else all)."),
    out: Optional[Path] = typer.Option(None, help="Metrics JSON; plots and OUT.predictions.csv are written beside it."),
    degrade: Optional[str] = typer.Option(None, help="Score degraded images, as evaluate --degrade does (e.g. 'jpeg:q=75', "
                                          "'social'; deterministic per image)."),
    threshold: Optional[float] = typer.Option(None, help="Decision threshold on the score (default: fitted on the "
                                              "validation reals for --target-fpr; 0.5 without any)."),
    target_fpr: float = typer.Option(0.1, help="Share of validation reals the fitted threshold may call fake."),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Score DATA with the training-free reference detector (the 2×2-phase spread of the luma Laplacian's
    magnitude over the whole full-resolution image; docs/backbones.md): GLASS's yardstick."""
    from tqdm import tqdm

    from ..evaluation.metrics import REPORT_KEYS
    from ..evaluation.reference import evaluate_reference

    bar = tqdm(desc="reference", unit="img", disable=quiet, leave=False)
    try:
        res = evaluate_reference(data, split, out, degrade, threshold, target_fpr, progress=bar.update)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    finally:
        bar.close()
    degraded = f", degraded: {res['degrade']}" if res["degrade"] != "none" else ""
    table = Table(title=f"reference detector on {res['split']} (n={res['n']}{degraded})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in REPORT_KEYS:
        v = res[key]
        table.add_row(key, "n/a" if v is None else f"{v:.4f}")
    Console().print(table)
    for name in ("per_generator", "per_family", "per_history"):
        if name in res:
            console.print(f"{name}: " + ", ".join(f"{k} {v['auc']:.3f}" if v["auc"] is not None else f"{k} n/a"
                                                  for k, v in res[name].items()))
    if res["errors"]:
        console.print(f"[yellow]{len(res['errors'])} unreadable images skipped[/yellow]")
    if out is not None:
        console.print(f"wrote {out}")
