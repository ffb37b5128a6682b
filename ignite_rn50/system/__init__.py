"""The device seam and the processes: the only room that tells npu, cuda and cpu (and
hccl, nccl, gloo) apart (``device.py``, ``precision.py``, ``distributed.py``), and the
signals a process reacts to (``signals.py``)."""
