#!/usr/bin/env bash
# ModelZoo: ResNet-50 on CIFAR-100, 1 card x batch 32 (global batch 32), full: 200 epochs of configs/resnet50_cifar100_cos.yaml (lr 0.2, cosine to 0).
# Usage: bash test/train_full_1p_bs32.sh [--data_path=DIR] [trainer flags...]; see test/common.sh.
MODE=full RANK_SIZE=1 BATCH_PER_DEVICE=32 RECIPE=resnet50_cifar100_cos.yaml
source "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/common.sh"
modelzoo_main "$@"
