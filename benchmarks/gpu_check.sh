#!/usr/bin/env bash
# One short, prepared GPU check (run on a CUDA machine from the repo root; needs torch + timm there).
#   - GLASS and the baseline train with mixed precision on CUDA, write best/last, resume, evaluate;
#   - the synthetic native-resolution task is learned by GLASS on a paper backbone;
#   - `glassdetect bench model` on CUDA (AMP), for the performance table;
#   - `glassdetect bench predict --device cuda --workers auto`: images/s end to end with the decode workers needed.
# Each step reports and the script goes on, so one failure does not hide the others.
export PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
W=/tmp/gpu_work
rm -rf "$W" && mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

step() { echo "=== $1"; shift; local t0=$SECONDS; if "$@"; then echo "=== ok ($((SECONDS - t0)) s)"; else echo "=== FAILED ($((SECONDS - t0)) s)"; fi; }

step "synthetic data" python3 -c "from pathlib import Path; from synth import make_checker_tree; make_checker_tree(Path('$W/data'), n_groups=96)"
for arch in glass standard; do
  step "train $arch resnet50 cuda amp" python3 -m glassdetect.cli train --data "$W/data" --arch "$arch" --backbone resnet50 \
    --no-pretrained -k 4 --epochs 4 --batch-size 16 --lr-global 3e-4 --lr-local 3e-4 --lr-head 1e-3 \
    --out "$W/run_$arch" --device cuda --workers 6 --quiet
  step "evaluate $arch" python3 -m glassdetect.cli evaluate "$W/run_$arch/best" --data "$W/data" --out "$OUT/eval_$arch.json" \
    --device cuda --workers 6 --quiet
done
step "resume (extend glass to 5 epochs)" python3 - <<PY
import json
from glassdetect.training.train import TrainConfig, train
cfg = json.load(open("$W/run_glass/last/config.json"))["train"]
cfg.update(epochs=5, resume=True, progress=False)
s = train(TrainConfig.from_dict(cfg))
assert len(s["history"]) == 5, s["history"]
print("resumed to epoch", len(s["history"]), "val acc", s["history"][-1]["val_accuracy"])
PY
cp "$W/run_glass/metrics.jsonl" "$OUT/glass_metrics.jsonl" 2>/dev/null
cp "$W/run_standard/metrics.jsonl" "$OUT/standard_metrics.jsonl" 2>/dev/null
step "bench model cuda" python3 -m glassdetect.cli bench model --device cuda --json "$OUT/bench_model_cuda.json" --md "$OUT/bench_model_cuda.md"
step "bench predict cuda (12 MP JPEGs, decode workers: as many as keep the GPU busy)" python3 -m glassdetect.cli bench predict \
  --device cuda --workers auto --json "$OUT/bench_predict_cuda.json" --md "$OUT/bench_predict_cuda.md"
python3 - <<PY
import json
for a in ("glass", "standard"):
    try:
        r = json.load(open("$OUT/eval_%s.json" % a))
        print(a, "test accuracy", r["accuracy"], "auc", r["auc"], "s/img", round(r["seconds_per_image"], 4))
    except Exception as e:
        print(a, "no result:", e)
PY
