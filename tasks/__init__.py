"""Task catalogue: one task per module. ``TASKS`` maps the config name to the class path."""
import importlib

TASKS = {
    "kalman": "tasks.kalman:Kalman",
    "reach": "tasks.reach:Reach",
    "double_reach": "tasks.double_reach:DoubleReach",
    "influence": "tasks.influence:Influence",
    "brackets": "tasks.brackets:Brackets",
    "anbn": "tasks.anbn:AnBn",
}


def task_class(name: str):
    from sofo_lab.errors import ConfigError

    if name not in TASKS:
        raise ConfigError("task.name", name, f"choose one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
