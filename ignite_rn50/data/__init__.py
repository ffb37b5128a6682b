"""Images and labels: the dataset registry (``registry.py``), the file readers
(``readers.py``), the two input pipelines (``pipelines.py``: batched augmentation on the
device, or torchvision's DataLoader) and batch mixing (``mixing.py``)."""
