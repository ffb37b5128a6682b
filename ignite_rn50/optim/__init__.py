"""How the parameters move besides the optimiser itself: the learning-rate policies
(``schedule.py``). The optimiser is the device seam's (``system/precision.py``): which SGD
runs depends on the device."""
