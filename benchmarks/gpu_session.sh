#!/usr/bin/env bash
# Everything a lent GPU should measure, in one call of about 10 minutes (hard limits inside):
#   1. gpu_throughput.sh: eager, compiled and --graph img/s (bs512 bf16 cl; the seed's bs16/32)
#   2. graph_check.py: 50 graphed vs 50 eager steps, fp32 and fp16 AMP, largest differences
#   3. the trainer itself, 1p bs16 and bs32 with --graph: summary.json's fps, to compare with
#      the benchmark's figure for the same case (goal: within 5 %)
#   4. the mix recipe at 1p bs256 (resnet50_cifar100_bs256_mix.yaml, the package's 3,938 FPS
#      row on 910B) through the trainer, and the same run unmixed: fps of each and their ratio
# Usage (see README.md here for carrying pytorch-ignite to a machine without it):
#   PYTHONPATH=$PWD/build/benchdeps bash benchmarks/gpu_session.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp/gpu_session}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
bash benchmarks/gpu_throughput.sh 2>&1 | tee "$out/gpu_throughput.txt"
timeout 150 python benchmarks/graph_check.py --device cuda 2>&1 | tee "$out/graph_check.txt"
for batch in 16 32; do
    timeout 120 python -m ignite_rn50.run --device cuda --graph --dataset synthetic \
        --synthetic-image-size 32 --synthetic-classes 100 --synthetic-train-size $((batch * 400)) \
        --synthetic-test-size 1000 --depth 50 --batch-size "$batch" --epochs 2 --loggers \
        --progress-bar off --print-freq 100 --output-dir "$out/trainer_bs${batch}_graph" \
        >"$out/trainer_bs${batch}_graph.log" 2>&1
    python - "$out/trainer_bs${batch}_graph/summary.json" "$batch" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    print(f"trainer_1p_bs{sys.argv[2]}_graph summary fps={s['fps']:.1f} "
          f"precision={s['precision']!r} graph={s['graph']}")
except (OSError, ValueError, KeyError) as exc:
    print(f"trainer_1p_bs{sys.argv[2]}_graph failed: {exc}")
PY
done 2>&1 | tee "$out/trainer.txt"
for mix in mixed unmixed; do
    flags=()
    [ "$mix" = unmixed ] && flags=(--mixup-alpha 0 --mixup-prob 0 --cutmix-alpha 0 --cutmix-prob 0 \
        --label-smoothing 0)
    timeout 150 python -m ignite_rn50.run --config configs/resnet50_cifar100_bs256_mix.yaml \
        --device cuda --dataset synthetic --synthetic-image-size 32 --synthetic-classes 100 \
        --synthetic-train-size 51200 --synthetic-test-size 1000 --epochs 2 "${flags[@]}" \
        --loggers --progress-bar off --output-dir "$out/trainer_bs256_$mix" \
        >"$out/trainer_bs256_$mix.log" 2>&1
done
python - "$out" <<'PY' 2>&1 | tee "$out/mix.txt"
import json, sys
fps = {}
for mix in ("mixed", "unmixed"):
    try:
        s = json.load(open(f"{sys.argv[1]}/trainer_bs256_{mix}/summary.json"))
        fps[mix] = s["fps"]
        print(f"trainer_1p_bs256_{mix} summary fps={s['fps']:.1f} precision={s['precision']!r}")
    except (OSError, ValueError, KeyError) as exc:
        print(f"trainer_1p_bs256_{mix} failed: {exc}")
if len(fps) == 2:
    print(f"bs256 mixed/unmixed ratio={fps['mixed'] / fps['unmixed']:.4f}")
PY
