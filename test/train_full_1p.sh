#!/usr/bin/env bash
# ModelZoo: ResNet-50 on CIFAR-100, 1 card x batch 16 (global batch 16), full: 200 epochs of configs/resnet50_cifar100.yaml (SGD lr 0.1, x0.2 at 60/120/160).
# Usage: bash test/train_full_1p.sh [--data_path=DIR] [trainer flags...]; see test/common.sh.
MODE=full RANK_SIZE=1 BATCH_PER_DEVICE=16 RECIPE=resnet50_cifar100.yaml
source "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/common.sh"
modelzoo_main "$@"
