"""Task catalogue: one task per module. ``TASKS`` maps the config name to the class path."""
import importlib

TASKS = {
    "kalman": "sofo_lab.tasks.kalman:Kalman",
    "reach": "sofo_lab.tasks.reach:Reach",
    "double_reach": "sofo_lab.tasks.double_reach:DoubleReach",
    "influence": "sofo_lab.tasks.influence:Influence",
    "brackets": "sofo_lab.tasks.brackets:Brackets",
    "anbn": "sofo_lab.tasks.anbn:AnBn",
}


def task_class(name: str):
    from sofo_lab.errors import ConfigError

    if name not in TASKS:
        raise ConfigError("task.name", name, f"choose one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
