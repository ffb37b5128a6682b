#!/usr/bin/env bash
# ModelZoo: ResNet-50 on CIFAR-100, 1 card x batch 16 (global batch 16), performance: 2 epochs of configs/resnet50_cifar100.yaml.
# Usage: bash test/train_performance_1p.sh [--data_path=DIR] [trainer flags...]; see test/common.sh.
MODE=performance RANK_SIZE=1 BATCH_PER_DEVICE=16 RECIPE=resnet50_cifar100.yaml
source "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/common.sh"
modelzoo_main "$@"
