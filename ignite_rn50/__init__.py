"""ResNet / CIFAR-100 trainer on PyTorch-Ignite for NPU (torch_npu), CUDA and CPU.

The package is a house of rooms, one concern each, in layers: a room imports only from the
rooms below it (and from the two base modules), never from one above or beside it on its own
floor; ``tests/test_structure.py`` keeps it so. From the bottom up:

1. ``errors``, ``events``: what every room may raise or fire;
2. ``system/``: the device seam (npu, cuda, cpu), processes and signals;
3. ``data/``, ``model/``, ``optim/``, ``outputs/``, ``deploy/``: data and mixing, the network
   and its weights, the lr policies, what a run leaves for people, the ONNX export;
4. ``config/``: the declared options, which list the registries of the rooms below as
   choices, and the specs those rooms take, made from a Config;
5. ``training/``: one run put together from all of the above;
6. the entry points: ``run``, ``evaluate``, ``export``, ``predict``, ``modelzoo`` (with
   ``cli``, the one runner they share, and ``__main__``).
"""

__version__ = "0.1.0"
