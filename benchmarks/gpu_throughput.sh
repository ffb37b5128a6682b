#!/usr/bin/env bash
# Training img/s of our step on one NVIDIA GPU, in under 7 minutes (hard limit: 400 s):
# ResNet-50-CIFAR (32x32, 100 classes) bs512 bf16 channels_last, eager and torch.compile'd,
# and the seed's 1p configurations bs16 and bs32 (fp16 autocast + GradScaler, as the trainer),
# each eager and with the trainer's --graph (the whole step captured and replayed).
# Extra arguments pass through, e.g. --steps 200, --cases 1p_bs16_fp16_amp, --gpu... ;
# a CPU check here: bash benchmarks/gpu_throughput.sh --device cpu --quick
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader || true
exec timeout 400 python benchmarks/gpu_throughput.py --device cuda "$@"
