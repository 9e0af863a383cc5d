"""The commands: ``sofo-run`` (run.py, with its pre-check in precheck.py, its flags in command.py,
its --help page in help.py, the sweep summary in sweep.py and the SLURM checks in slurm.py) and ``sofo-compare`` (compare.py). The top layer:
nothing below imports it."""
