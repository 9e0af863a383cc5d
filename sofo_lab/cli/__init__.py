"""The commands: ``sofo-run`` (run.py, with its --help page in help.py, the sweep summary in
sweep.py and the SLURM checks in slurm.py) and ``sofo-compare`` (compare.py). The top layer:
nothing below imports it."""
