"""What K buys: validation accuracy and AUC of GLASS trained at each K, for ``glassdetect cost --data``.

The cost study measures time and memory against K on synthetic batches; with ``--data D
--epochs E`` it also trains GLASS at every K of ``--crops`` on D (the same backbone, patch and
shared-backbone setting as the cost measurement; ``--weights`` for the backbone's starting
weights) for E epochs with the same seed, and reports the best epoch's validation accuracy and
AUC — the validation split only, as model selection does; the test split is never touched. Each
K's run lives in ``OUT/accuracy/k<K>/`` and is reused when its finished ``summary.json`` was made
with the same settings (a re-run of the study does not retrain).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass
class AccuracyConfig:
    data: str
    out: str  # the study's output folder; runs go to OUT/accuracy/k<K>
    backbone: str
    weights: str | None = None
    pretrained: bool = False
    epochs: int = 3
    batch_size: int = 8
    patch: int = 224
    shared_backbone: bool = False
    freeze: int = 0
    lr_global: float = 1e-4
    lr_local: float = 1e-4
    lr_head: float = 1e-3
    seed: int = 0
    workers: int = 1
    threads: int = 0
    device: str = "auto"

    def train_config(self, k: int):
        from ..training.train import TrainConfig

        return TrainConfig(
            data=self.data, out=str(Path(self.out) / "accuracy" / f"k{k}"), arch="glass", backbone=self.backbone,
            pretrained=self.pretrained, weights=self.weights, shared_backbone=self.shared_backbone, k=k,
            patch=self.patch, epochs=self.epochs, batch_size=self.batch_size, freeze=self.freeze,
            lr_global=self.lr_global, lr_local=self.lr_local, lr_head=self.lr_head, seed=self.seed,
            workers=self.workers, threads=self.threads, device=self.device, progress=False,
        )


def _key(tc) -> dict:
    skip = ("out", "progress", "resume", "workers", "threads")
    return json.loads(json.dumps({k: v for k, v in asdict(tc).items() if k not in skip}, default=str))


def _train_k(tc, say: Callable[[str], None]) -> dict:
    """Train (or reuse) one K's run; its summary."""
    from ..training.train import train

    out = Path(tc.out)
    key_path, summary_path = out / "cost_key.json", out / "summary.json"
    same = key_path.exists() and json.loads(key_path.read_text()) == _key(tc)
    if same and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if len(summary.get("history", [])) == tc.epochs:
            say(f"accuracy K={tc.k}: reusing {out}")
            return summary
    out.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    key_path.write_text(json.dumps(_key(tc), indent=2))
    tc.resume = same  # an interrupted run with the same settings continues
    say(f"accuracy K={tc.k}: training {tc.epochs} epochs")
    return train(tc)


def best_epoch(summary: dict) -> dict:
    """The epoch the checkpoint keeps: the first with the highest validation accuracy (as training selects)."""
    hist = summary.get("history") or []
    if not hist:
        raise ValueError(f"{summary.get('out')}: the run has no finished epoch")
    return max(hist, key=lambda h: (h["val_accuracy"] if h["val_accuracy"] is not None else -1.0, -h["epoch"]))


def accuracy_vs_k(cfg: AccuracyConfig, ks: Sequence[int], progress: Callable[[str], None] | None = None) -> dict:
    """Train GLASS at every K in ``ks``; per K the best epoch's validation accuracy and AUC, and training time."""
    if cfg.epochs < 1:
        raise ValueError(f"--epochs {cfg.epochs}: training at each K needs at least one epoch")
    say = progress or (lambda _msg: None)
    rows = []
    for k in ks:
        summary = _train_k(cfg.train_config(k), say)
        best = best_epoch(summary)
        rows.append({
            "k": k, "val_accuracy": best["val_accuracy"], "val_auc": best["val_auc"], "best_epoch": best["epoch"],
            "train_s": sum(h["seconds"] for h in summary["history"]),
            "n_train": summary.get("n_train"), "n_val": summary.get("n_val"),
        })
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out",)}
    return {"settings": settings, "split": "val", "rows": rows}
