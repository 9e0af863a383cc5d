"""A run: building it from the config (assemble), the training loop (runner), its run directory,
checkpoints, resources, profiling, preemption, loggers and what it leaves behind (reporting).
Imports the engine (core, models, optim, tasks), never analysis or cli."""
