"""A run: building it once from the config (trainer.prepare, assemble), the host loop (trainer.Trainer)
and its duties as callbacks (callbacks.py), the jitted update (steps.py), loggers, its run directory,
checkpoints, resources, profiling, preemption and what it leaves behind (reporting).
Imports the engine (core, models, optim, tasks), never analysis or cli."""
