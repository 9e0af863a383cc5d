"""What a task is: a pure, key-driven sampler with named channels, a loss kind, metrics, plots
(the ``Task`` protocol, sofo_lab/core/interfaces.py, has the contract).

Episodic tasks (``episodic = True``) draw B independent trials of T steps per batch and the
network state resets every trial. Streaming tasks override ``init_data``/``next_batch`` to
consume B endless streams window by window; the runner then carries the network state across
windows.
"""
from __future__ import annotations

from typing import ClassVar

from sofo_lab.core.losses import LOSSES
from sofo_lab.core.system import Batch, ModelSystem


class Task:
    """Base class of the tasks: every optional part of the ``Task``, ``EpisodicTask`` and
    ``StreamTask`` protocols (sofo_lab/core/interfaces.py) has its default here; an episodic task
    writes ``sample``, a stream ``init_data`` and ``next_batch`` (and sets ``episodic = False``)."""

    name: ClassVar[str]   # plot file names and labels; default: the class name in lower case
    episodic: ClassVar[bool] = True
    headline_metric: ClassVar[str | None] = None   # sofo-compare's headline; None: found from the logs
    references: ClassVar[dict[str, dict[str, float]]] = {}   # {metric: {label: level}}, dotted in figures
    loss_kind: ClassVar[str] = "mse"
    input_names: ClassVar[tuple[str, ...]]
    output_names: ClassVar[tuple[str, ...]]
    needs_model: ClassVar[bool] = True
    host_batches: ClassVar[bool] = False   # True: training batches come from host_batch (numpy), not sample
    n_steps: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls) and not any("name" in vars(c) for c in cls.__mro__[1:-1]):
            cls.name = cls.__name__.lower()

    @property
    def n_inputs(self) -> int:
        return len(self.input_names)

    @property
    def n_outputs(self) -> int:
        return len(self.output_names)

    @property
    def model_n_inputs(self) -> int:
        """Inputs the network sees; a closed-loop task adds plant feedback to the task inputs."""
        return self.n_inputs

    @property
    def model_n_outputs(self) -> int:
        """Network readout size; for a closed-loop task the plant's command (e.g. 2 torques)."""
        return self.n_outputs

    @property
    def loss(self):
        return LOSSES[self.loss_kind]

    def make_system(self, model):
        """The system the optimizers train: by default the model alone with the task's loss."""
        return ModelSystem(model, self.loss)

    def model_settings(self) -> dict:
        """Settings this task gives the network, e.g. ``{"dt": 0.01, "tau": 0.02, "noise_amplitude": 0.28}``.

        The engine passes each one to a model that takes it, unless the model's config sets it
        (a model key left ``null`` takes the task's value); a model without such a setting warns
        in one line that it is not applied (``dt``/``tau`` excepted: a discrete-time model steps
        once per task step).
        """
        return {}

    def check_batch_size(self, batch_size: int) -> None:
        """Raise ``ConfigError`` when the batch size cannot work for this task."""

    # --- data -----------------------------------------------------------------------------
    def sample(self, key, batch_size: int) -> Batch:
        raise TypeError(f"{type(self).__name__} is a streaming task: use next_batch")

    def step_source(self, key, batch_size: int):
        """Optional: the same draw as ``sample(key, batch_size)``, one step at a time.

        Returns ``(state, step_fn)`` with ``step_fn(state, t) -> (state, (u_t [B, I], target_t,
        w_t))``; the runner then trains on a ``GeneratedBatch`` and nothing of length T is ever
        stored (forward-mode optimizers keep memory constant in the horizon, data included).
        ``None`` (the default): the task only samples whole batches.
        """
        return None

    def host_batch(self, seed: int, iteration: int, batch_size: int) -> Batch:
        """Optional (with ``host_batches = True``): training batch ``iteration`` made on the host, numpy
        arrays ``[T, B, ·]``, a function of ``(seed, iteration)`` only, so a resumed run sees the same
        batches. The runner prepares the next ones on a thread while the device trains
        (sofo_lab/train/host_batches.py); the dynamics noise is still drawn inside the update."""
        raise NotImplementedError(f"{type(self).__name__} sets host_batches = True: define host_batch(seed, "
                                  "iteration, batch_size) -> Batch of numpy arrays [T, B, ...]")

    def init_data(self, key, batch_size: int):
        return ()

    def next_batch(self, data_state, key, batch_size: int):
        return data_state, self.sample(key, batch_size)

    def eval_batch(self, key, batch_size: int) -> Batch | None:
        """The fixed held-out batch evaluated every ``eval_every`` iterations (None: no eval)."""
        return self.sample(key, batch_size) if self.episodic else None

    def online_metrics(self, data_state, metrics: dict, params):
        """Running scores updated with every update, inside its jit (streams: online bits/char,
        tasks/streams.py); returns ``(data_state, extra metrics)``. Default: none."""
        return data_state, {}

    # --- reporting ------------------------------------------------------------------------
    def evaluate(self, batch: Batch, ys) -> dict:
        """Scalar metrics of outputs ``ys [T, B, O]`` on ``batch`` (jit-able)."""
        return {}

    def plot(self, out_dir, batch: Batch, ys) -> list[str]:
        """Write PNG figures of a few trials to ``out_dir``; return their paths."""
        return []

    def plot_history(self, out_dir, history: list[dict]) -> list[str]:
        """Figures of the run's logged records (``metrics.jsonl``), e.g. online scores over time."""
        return []

    def describe(self, final: dict) -> str:
        """One line for the end of a run: the key metric next to its references."""
        return ""
