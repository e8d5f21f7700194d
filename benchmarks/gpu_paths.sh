#!/usr/bin/env bash
# The GPU paths on a CUDA machine: `mobilenets bench --device cuda`, torch eager vs CUDA graphs (fp32, fp16)
# beside torchvision's own models, and ONNX Runtime's CUDA provider where onnxruntime-gpu is installed;
# batch 1, every cell in one interleaved run. Figures go to $OUT (default: benchmarks/results).
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())"
PYTHONPATH=$PWD timeout "${LIMIT:-150}" python3 -c 'from mobilenets.cli import main; main()' bench \
  mobilenet_v2 mobilenet_v3_large mobilenet_v3_small --device cuda --backend torch,cudagraphs,onnxruntime \
  --precision fp32,fp16 --peers --warmup 20 --iters 300 --rounds 5 -o "$OUT/gpu_paths.json"
