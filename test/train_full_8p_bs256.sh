#!/usr/bin/env bash
# ModelZoo: ResNet-50 on CIFAR-100, 8 card(s) x batch 256 (global batch 2048), full: 200 epochs of configs/resnet50_cifar100_8p_bs2048_mix.yaml (mixup + cutmix, label smoothing 0.1, lr 1.6, cosine after a 20-epoch warm-up).
# Usage: bash test/train_full_8p_bs256.sh [--data_path=DIR] [trainer flags...]; see test/common.sh.
MODE=full RANK_SIZE=8 BATCH_PER_DEVICE=256 RECIPE=resnet50_cifar100_8p_bs2048_mix.yaml
source "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/common.sh"
modelzoo_main "$@"
