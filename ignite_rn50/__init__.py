"""ResNet / CIFAR-100 trainer on PyTorch-Ignite for NPU (torch_npu), CUDA and CPU."""

__version__ = "0.1.0"
