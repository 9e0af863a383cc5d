"""sofo-lab: train recurrent networks on neuroscience tasks with SOFO, UORO, Adam and TBPTT.

The methods are also a library for your own model written as plain JAX functions
(docs/library.md)::

    import sofo_lab
    opt = sofo_lab.sofo(step, "mse", init_state=jnp.zeros(64), learning_rate=0.3)

Names are imported on first use, so ``sofo-run --help`` does not pay for JAX.
"""
import importlib

__version__ = "0.1.0"

_WHERE = {
    # methods for plain functions (sofo_lab/library.py)
    "sofo": "library", "fgd": "library", "uoro": "library", "rtrl": "library",
    "value_and_sofo_direction": "library", "value_and_fgd_direction": "library",
    "RecurrentOptimizer": "library", "RecurrentOptState": "library",
    "make_system": "library", "make_batch": "library",
    # per-step losses (sofo_lab/core/losses.py)
    "MeanSquaredError": "core.losses", "SoftmaxCrossEntropy": "core.losses", "PerSampleLoss": "core.losses",
    # running a system (sofo_lab/core/system.py)
    "Batch": "core.system", "StepInput": "core.system", "Trajectory": "core.system", "simulate": "core.system",
    "rollout": "core.system", "ClosedLoop": "core.system", "Plant": "core.interfaces",
    # trained runs as data (sofo_lab/analysis/runs.py, sofo_lab/train/checkpoint.py)
    "Run": "analysis.runs", "load_run": "analysis.runs",
    "save_params_npz": "train.checkpoint", "load_params_npz": "train.checkpoint",
    "ConfigError": "core.errors",
    # what a trained network computes (sofo_lab/analysis/fixed_points.py, population.py; docs/analysis.md)
    "fixed_points": "analysis.fixed_points", "FixedPoints": "analysis.fixed_points",
    "starting_states": "analysis.fixed_points", "network_inputs": "analysis.fixed_points",
    "condition_average": "analysis.population", "ConditionAverage": "analysis.population",
    "pca": "analysis.population", "PCA": "analysis.population", "project": "analysis.population",
}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"sofo_lab.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sofo_lab' has no attribute {name!r}")


def __dir__():
    return __all__
