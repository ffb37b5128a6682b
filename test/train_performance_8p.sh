#!/usr/bin/env bash
# ModelZoo: ResNet-50 on CIFAR-100, 8 cards x batch 16 (global batch 128), performance: 2 epochs of configs/resnet50_cifar100.yaml.
# Usage: bash test/train_performance_8p.sh [--data_path=DIR] [trainer flags...]; see test/common.sh.
MODE=performance RANK_SIZE=8 BATCH_PER_DEVICE=16 RECIPE=resnet50_cifar100.yaml
source "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/common.sh"
modelzoo_main "$@"
