"""Resident memory kept by CPU inference graphs that are rebuilt because the weights changed.

    OMP_NUM_THREADS=1 python benchmarks/memory/graph_leak.py graphs   # CpuGraphs, rebuilt every pass
    OMP_NUM_THREADS=1 python benchmarks/memory/graph_leak.py eager    # models.common.eager_backbones
    OMP_NUM_THREADS=1 python benchmarks/memory/graph_leak.py trace    # a bare torch.jit.trace per pass

Eight passes of the demo's GLASS (EfficientNet-Lite0, K = 4, batch 8) in inference mode, each after
an in-place weight update (what an optimizer step does between validation passes); prints the
process's RSS (GiB) after each pass and a full garbage collection + malloc_trim.
"""
import gc
import sys
import warnings

import torch

from glassdetect.models import ModelConfig, create_model
from glassdetect.models.common import eager_backbones
from glassdetect.runtime import release_memory


def rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**30


torch.set_num_threads(1)
warnings.simplefilter("ignore")
mode = sys.argv[1]
model = create_model(ModelConfig(arch="glass", backbone="efficientnet_lite0", k=4, local_input="residual")).eval()
g = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8)
c = torch.randint(0, 256, (8, 4, 3, 224, 224), dtype=torch.uint8)
for i in range(8):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-4)
    with torch.inference_mode():
        if mode == "graphs":
            model(g, c)
        elif mode == "eager":
            with eager_backbones(model):
                model(g, c)
        elif mode == "trace":
            torch.jit.trace(model.global_backbone, model.prep(g[:1]), check_trace=False)
        else:
            raise SystemExit(f"unknown mode {mode!r}: graphs, eager or trace")
    gc.collect()
    release_memory()
    print(mode, i, f"{rss_gib():.3f}", flush=True)
