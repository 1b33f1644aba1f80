"""The goals ``glassdetect bench`` checks, and the verdict for each from a results dict."""
from __future__ import annotations

from typing import Any

from .common import GOAL_SIZES

GOALS = {
    "views_speedup_vs_naive": ">= 6x faster than naive at 12-24 MP",
    "views_ratio_to_decode": "<= 1.25x the fastest full decode at 12-24 MP",
    "views_memory_ratio": "peak memory <= 1/6 of naive at 12-24 MP",
    "views_flat_in_megapixels": "cost beyond decode flat in megapixels: ours/decode <= 1.25 from 4 to 48 MP",
    "model_fraction_of_peak": ">= 70% of the measured matmul peak (ResNet-50, ConvNeXt-T; automatic layout; "
                              "worst K at batch 8)",
    "predict_overlap_efficiency": ">= 0.9 for 12 MP JPEGs with 2 workers",
    "train_speedup": ">= 3x the training images/s of the demo's recipe as it runs today (fast recipe, same run)",
}
GOAL_BACKBONES = ("resnet50", "convnext_tiny")


def _views_goals(views: dict[str, Any]) -> dict[str, Any]:
    goals: dict[str, Any] = {}
    at = [views[s] for s in GOAL_SIZES if s in views]
    if at:
        sp = min(r["speedup_vs_naive"] for r in at)
        goals["views_speedup_vs_naive"] = {"measured": sp, "met": sp >= 6}
        rd = max(r["ratio_to_decode"] for r in at)
        goals["views_ratio_to_decode"] = {"measured": rd, "met": rd <= 1.25}
        if all(r.get("memory_ratio_vs_naive") is not None for r in at):
            mr = max(r["memory_ratio_vs_naive"] for r in at)
            goals["views_memory_ratio"] = {"measured": mr, "met": mr <= 1 / 6}
    flat = [r["ratio_to_decode"] for r in views.values() if r["format"] == "jpg" and r["megapixels"] >= 3.9]
    if len(flat) >= 2:
        goals["views_flat_in_megapixels"] = {"measured": max(flat), "min": min(flat), "met": max(flat) <= 1.25}
    return goals


def _model_goal(model: dict[str, Any]) -> dict[str, Any] | None:
    """Worst fraction of the peak over K at the largest batch, automatic configuration (what the project
    runs); beside it the worst at any batch and, where measured, with all views in one backbone call."""
    big = max(r["batch"] for r in model["runs"])  # the batch predict and evaluation use (8)
    fr: dict[str, list[float]] = {}
    every: dict[str, list[float]] = {}
    whole: dict[str, list[float]] = {}
    for r in model["runs"]:
        if r["backbone"] not in GOAL_BACKBONES:
            continue
        if r["auto"]:
            every.setdefault(r["backbone"], []).append(r["fraction_of_peak"])
            if r["batch"] == big:
                fr.setdefault(r["backbone"], []).append(r["fraction_of_peak"])
        elif r["layout"].endswith("whole-batch") and r["batch"] == big:
            whole.setdefault(r["backbone"], []).append(r["fraction_of_peak"])
    if not fr:
        return None
    worst = min(min(v) for v in fr.values())
    return {"measured": worst, "batch": big, "by_backbone": {b: min(v) for b, v in fr.items()},
            "worst_any_batch": min(min(v) for v in every.values()),
            "whole_batch": {b: min(v) for b, v in whole.items()}, "met": worst >= 0.7}


def evaluate_goals(res: dict[str, Any]) -> dict[str, Any]:
    """Each goal: target, measured value and met / not met (absent when that part was not run)."""
    goals = _views_goals(res.get("views") or {})
    if res.get("model"):
        model_goal = _model_goal(res["model"])
        if model_goal is not None:
            goals["model_fraction_of_peak"] = model_goal
    pred = res.get("predict")
    if pred:
        goals["predict_overlap_efficiency"] = {"measured": pred["overlap_efficiency"], "met": pred["overlap_efficiency"] >= 0.9}
    fast = next((v for v in (res.get("train") or {}).get("variants", []) if v["name"] == "fast"), None)
    if fast is not None and fast["speedup_vs_reference"] is not None:
        goals["train_speedup"] = {"measured": fast["speedup_vs_reference"], "rounds": fast["speedup_rounds"],
                                  "met": fast["speedup_vs_reference"] >= 3}
    for key, g in goals.items():
        g["target"] = GOALS[key]
    return goals
