"""One GLASS training step on the CPU, fp32 vs bf16 autocast: seconds per step and peak RSS.

    OMP_NUM_THREADS=1 python benchmarks/memory/bf16_step.py fp32
    OMP_NUM_THREADS=1 python benchmarks/memory/bf16_step.py bf16
    OMP_NUM_THREADS=1 python benchmarks/memory/bf16_step.py bf16 4   # local backbone cut after level 4

The demo's GLASS (EfficientNet-Lite0, K = 4, batch 8, residual crops, unfrozen), random uint8
views, fwd + bwd + AdamW, 4 steps; run each mode in its own process (peak RSS is per process). An
optional second argument is ``ModelConfig.local_depth`` (default 0, the whole local backbone).
"""
import resource
import sys
import time

import torch

from glassdetect.models import ModelConfig, create_model

torch.set_num_threads(1)
mode = sys.argv[1]
depth = int(sys.argv[2]) if len(sys.argv) > 2 else 0
model = create_model(ModelConfig(arch="glass", backbone="efficientnet_lite0", k=4, local_input="residual",
                                 local_depth=depth)).train()
opt = torch.optim.AdamW(model.parameters(), 1e-4)
g = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8)
c = torch.randint(0, 256, (8, 4, 3, 224, 224), dtype=torch.uint8)
y = torch.randint(0, 2, (8,))
times = []
for _ in range(4):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
        logits, _ = model(g, c)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
print(mode, "local depth", depth, "s/step", [round(t, 2) for t in times], "peak RSS GB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
