"""One training run: what a process is set up with (``runtime.py``), its data
(``dataflow.py``), model and optimiser (``assembly.py``), the step and engines (``step.py``,
``graph.py``), the handlers, checkpoints and summary.json, and the process that runs it
all (``process.py``, the table of contents)."""
