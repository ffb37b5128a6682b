"""The network: the CIFAR ResNet (``resnet.py``) and the weights it loads and saves, ours
and mmcls 0.x's (``weights.py``)."""
