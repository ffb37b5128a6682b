"""After training: the ONNX graph, onnxruntime's check of it and the AIPP config for
Ascend's ATC (``onnx.py``)."""
