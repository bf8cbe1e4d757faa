#!/usr/bin/env bash
# The GPU rows of bench/README.md in one short run (~5 min on an H100/H200): BLIP-2 OPT-2.7B-shaped backbone
# (random weights, bf16) latency eager vs CUDA graph, SAC updates/s on its cached features vs re-encoding, SFT step throughput.
# Needs python3 with torch (CUDA), transformers, peft, safetensors; irevla_ros from this checkout (ROS-free core).
#   bash bench/gpu.sh [OUT_DIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/irevla_gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/card.txt"
"$py" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/card.txt"
timeout 120 "$py" -m pytest -q -p no:cacheprovider --noconftest test/test_model_cuda.py test/test_rl_cuda.py 2>&1 | tee "$out/test_cuda.txt"
timeout 140 "$py" bench/policy_tick.py --gpu-only --gpu-iters 30 2>&1 | tee "$out/policy_tick.txt"
timeout 140 "$py" bench/learner.py --device cuda --preset blip2-2.7b-shape --batch 64 --updates 40 --rounds 1 \
    --threads 1 --skip-memory 2>&1 | tee "$out/learner.txt"
timeout 140 "$py" bench/sft.py --device cuda --preset blip2-2.7b-shape --dtype bf16 --modes head,lora \
    --batch-sizes 8 --steps 10 --warmup 3 --sequential 2>&1 | tee "$out/sft.txt"
