"""Markdown tables of a ``glassdetect bench`` results dict."""
from __future__ import annotations

from typing import Any


def _f(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _ms(r: dict[str, Any], key: str) -> str:
    return _f(r.get(key) and r[key] * 1e3, ".1f")


def _header(res: dict[str, Any]) -> list[str]:
    env = res.get("environment", {})
    load = lambda key: "/".join(f"{v:.2f}" for v in env[key]) if env.get(key) else "?"  # noqa: E731
    return [f"# glassdetect bench ({res.get('command', '')})", "",
            f"Machine: {env.get('cpu', '?')}, {env.get('cpus', '?')} CPUs; torch {env.get('torch')}, "
            f"Pillow {env.get('pillow')}, simplejpeg {env.get('simplejpeg') or 'not installed'}; {env.get('date', '')}; "
            f"load average (1/5/15 min) {load('load_average')} at the start, {load('load_average_end')} at the end.", ""]


def _views_time(views: dict[str, Any]) -> list[str]:
    lines = ["## Views: time per image (one thread)", "",
             "| image | file MB | ours ms | naive ms | decode ms | decode, reused buffer ms | ours, Pillow decode ms | "
             "Pillow decode ms | speed-up vs naive | ours / decode | ours / decode (reused buffer) | beyond decode ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in views.items():
        lines.append(
            f"| {name} ({r['width']}×{r['height']} {r['format'].upper()}) | {r['file_mb']:.1f} | {_ms(r, 'ours_s')} | "
            f"{_ms(r, 'naive_s')} | {_ms(r, 'decode_s')} ({r['decode_with']}) | {_ms(r, 'decode_reuse_s')} | "
            f"{_ms(r, 'ours_pillow_s')} | {_ms(r, 'pillow_decode_s')} | {r['speedup_vs_naive']:.1f}× | "
            f"{r['ratio_to_decode']:.2f} | {_f(r.get('ratio_to_decode_reuse'), '.2f')} | {r['beyond_decode_ms']:.1f} |")
    return lines


def _views_memory(views: dict[str, Any]) -> list[str]:
    lines = []
    if any("ours_mb" in r for r in views.values()):
        lines += ["", "## Views: peak memory per image", "",
                  "| image | ours MB | naive MB | decode MB | ours / naive |", "|---|---:|---:|---:|---:|"]
        for name, r in views.items():
            lines.append(f"| {name} | {_f(r.get('ours_mb'), '.1f')} | {_f(r.get('naive_mb'), '.1f')} | "
                         f"{_f(r.get('decode_mb'), '.1f')} | {_f(r.get('memory_ratio_vs_naive'), '.3f')} |")
    method = next((r.get("memory_method") for r in views.values() if r.get("memory_method")), None)
    lines += ["", "Times: medians of interleaved rounds (ours, naive, decode, ... in turn)."
              + (f" Peak memory: a fresh subprocess per measurement, {method}, after a warm-up call." if method else ""), ""]
    return lines


def _augment(views: dict[str, Any]) -> list[str]:
    aug = [k[len("augment_"):-2] for k in next((r for r in views.values() if "augment_draws" in r), {})
           if k.startswith("augment_") and k.endswith("_s")]
    if not aug:
        return []
    draws = next(r["augment_draws"] for r in views.values() if "augment_draws" in r)
    lines = [f"## Training augmentation: time per image on top of the views (one thread; mean of {draws} "
             "seeded draws)", "", "| image | " + " | ".join(f"{a} ms" for a in aug) + " | ours ms |",
             "|---|" + "---:|" * (len(aug) + 1)]
    for name, r in views.items():
        if "augment_draws" in r:
            lines.append(f"| {name} | " + " | ".join(_ms(r, f"augment_{a}_s") for a in aug) + f" | {_ms(r, 'ours_s')} |")
    return lines + [""]


def _model(model: dict[str, Any]) -> list[str]:
    lines = [f"## Model forward ({model['device']}, {model['threads']} thread(s), AMP {model['amp']}; "
             f"matmul peak {model['peak_gflops']:.1f} GFLOP/s)", "",
             "| backbone | layout | K | batch | ms / image | ms / view | GFLOP / image | GFLOP/s | fraction of peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in model["runs"]:
        lines.append(f"| {r['backbone']} | {r['layout']}{' (auto)' if r['auto'] else ''} | {r['k']} | {r['batch']} | "
                     f"{r['s_per_image'] * 1e3:.1f} | {r['s_per_view'] * 1e3:.1f} | {r['gflop_per_image']:.1f} | "
                     f"{r['gflops']:.1f} | {r['fraction_of_peak']:.2f} |")
    return lines + [""]


def _predict(pred: dict[str, Any]) -> list[str]:
    return [f"## predict ({pred['images']} JPEGs of {pred['width']}×{pred['height']}, {pred['backbone']} K={pred['k']}, "
            f"batch {pred['batch_size']}, {pred['workers']} workers, {pred['device']})", "",
            "| predict img/s | model-only img/s | overlap_efficiency | after the first batch | first batch s | "
            "prepare ms / image (1 thread) | model ms / image | decode workers to keep the model busy |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {pred['predict_images_per_s']:.2f} | {pred['model_images_per_s']:.2f} | {pred['overlap_efficiency']:.3f} | "
            f"{_f(pred.get('steady_overlap_efficiency'), '.3f')} | {_f(pred.get('first_batch_s'), '.2f')} | "
            f"{pred['prepare_s_per_image'] * 1e3:.1f} | {pred['model_s_per_image'] * 1e3:.1f} | "
            f"{pred.get('workers_needed', 'n/a')} |", ""]


def _train(tr: dict[str, Any]) -> list[str]:
    peaks = ", ".join(f"{n} thread(s) {p:.1f}" for n, p in tr["peak_gflops"].items() if n != "cpu_time")
    lines = [f"## Training throughput ({tr['device']}, {tr['cpus']} CPUs; GLASS {tr['recipe']} K={tr['k']}, freeze "
             f"{tr['freeze']}; {tr['images']} photo-like {tr['image_size']}² PNGs, augment {tr['augment']}; "
             f"{tr['rounds']} rounds of {tr['steps']} timed steps after {tr['warmup']} warm-up; matmul peak {peaks} "
             "GFLOP/s)", "",
             "| recipe | threads | workers | images/s (median) | per round | step s | waiting for data | "
             "GFLOP / image | GFLOP/s | of the machine's peak | of its threads' peak | CPU s / image | of a core's "
             "peak (CPU time) | speed-up vs reference (per round) |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for v in tr["variants"]:
        rounds = ", ".join(f"{r:.2f}" for r in v["images_per_s_rounds"])
        ratios = ", ".join(f"{r:.2f}" for r in v["speedup_rounds"])
        lines.append(f"| {v['name']} | {v['threads']} | {v['workers']} | {v['images_per_s']:.2f} | {rounds} | "
                     f"{v['step_s_median']:.2f} | {v['wait_fraction']:.1%} | {v['gflop_per_image']:.1f} | "
                     f"{v['gflops']:.1f} | {v['fraction_of_peak']:.2f} | {v['fraction_of_thread_peak']:.2f} | "
                     f"{v['cpu_s_per_image']:.2f} | {_f(v.get('fraction_of_core_peak_cpu_time'), '.2f')} | "
                     f"{_f(v['speedup_vs_reference'], '.2f')}× ({ratios}) |")
    return lines + [""]


def _goals(goals: dict[str, Any]) -> list[str]:
    lines = ["## Goals", "", "| goal | target | measured | met |", "|---|---|---:|---|"]
    for key, g in goals.items():
        lines.append(f"| {key} | {g['target']} | {g['measured']:.3f} | {'met' if g['met'] else 'NOT met'} |")
    return lines + [""]


def to_markdown(res: dict[str, Any]) -> str:
    """The results as Markdown: a header, then a section per part that was run, then the goals."""
    lines = _header(res)
    views = res.get("views")
    if views:
        lines += _views_time(views) + _views_memory(views) + _augment(views)
    if res.get("model"):
        lines += _model(res["model"])
    if res.get("predict"):
        lines += _predict(res["predict"])
    if res.get("serve"):
        from .serve import serve_markdown

        lines += serve_markdown(res["serve"])
    if res.get("train"):
        lines += _train(res["train"])
    if res.get("goals"):
        lines += _goals(res["goals"])
    return "\n".join(lines)
