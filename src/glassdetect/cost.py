"""``glassdetect cost`` moved to :mod:`glassdetect.bench.cost`; this name stays importable."""
from .bench.cost import (  # noqa: F401
    FIT_KEYS, PeakMemory, Phase, line_fit, measure_cost, measure_model, parse_crops, plot_cost,
)

__all__ = ["FIT_KEYS", "PeakMemory", "Phase", "line_fit", "measure_cost", "measure_model", "parse_crops", "plot_cost"]
