#!/usr/bin/env bash
# A second Python stack beside ours, for benchmarks/mmcls_parity/driver.py: mmcls 0.24.1 on
# mmcv 1.7.2 (the ModelZoo package's framework) with the same torch as ours, scikit-learn for
# a small real data set, and what our trainer imports (pytorch-ignite, pyyaml, tqdm; its
# trackers stay off there). Not part of the test suite: it installs ~6 GB (torch's CUDA
# wheels come with it) in about 3 minutes on our 2-core machines.
#
# Usage: bash benchmarks/mmcls_parity/setup.sh [VENV]   (default: ../mmcls-venv beside the repo)
set -euo pipefail
repo="$(CDPATH='' cd -- "$(dirname -- "$0")/../.." && pwd -P)"
venv="${1:-$(dirname "$repo")/mmcls-venv}"
started=$(date +%s)
python3 -m venv "$venv"
pip="$venv/bin/pip"
# torch 2.14.1 needs setuptools >= 77.0.3; mmcv 1.7.2's setup.py needs pkg_resources, which
# setuptools 81 dropped
"$pip" install -q torch==2.14.1 torchvision==0.29.1 'setuptools>=77.0.3,<81' wheel matplotlib
MMCV_WITH_OPS=0 "$pip" install -q --no-build-isolation mmcv==1.7.2
"$pip" install -q --no-deps mmcls==0.24.1
"$pip" install -q scikit-learn 'pytorch-ignite>=0.5.5,<0.6' pyyaml tqdm
"$venv/bin/python" -c "import mmcls, mmcv, ignite, sklearn; from mmcls.apis import train_model; \
print('mmcls', mmcls.__version__, 'mmcv', mmcv.__version__, 'ignite', ignite.__version__)"
echo "ready in $(( $(date +%s) - started )) s: $venv/bin/python benchmarks/mmcls_parity/driver.py"
