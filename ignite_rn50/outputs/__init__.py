"""What a run leaves behind for people: the run folder and its lock (``rundir.py``), the
log and its environment lines (``logs.py``), curves.png (``plots.py``) and the experiment
trackers (``trackers.py``)."""
