#!/usr/bin/env bash
# Ours (not a ModelZoo script): ResNet-50 on CIFAR-100, 1 card x batch 2048 as 8 accumulated micro-batches of 256, full: 200 epochs of configs/resnet50_cifar100_1p_bs2048_accum_mix.yaml (the 8p bs256 scripts' recipe: mixup + cutmix, label smoothing 0.1, lr 1.6, cosine after a 20-epoch warm-up).
# Usage: bash test/train_full_1p_bs2048_accum.sh [--data_path=DIR] [trainer flags...]; see test/common.sh.
MODE=full RANK_SIZE=1 BATCH_PER_DEVICE=2048 RECIPE=resnet50_cifar100_1p_bs2048_accum_mix.yaml
source "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/common.sh"
modelzoo_main "$@"
