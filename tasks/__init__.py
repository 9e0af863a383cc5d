"""The task catalogue, one task per module, installed as ``sofo_lab.tasks`` (pyproject.toml).

Each task's YAML (conf/task/*.yaml) names its class with ``_target_``; a task of your own is a
class like these in your own files with a YAML of its own (docs/library.md).
"""
