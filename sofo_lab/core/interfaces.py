"""The interfaces the engine relies on, written down as ``typing.Protocol`` classes.

Nothing has to inherit from these: any object with these attributes works (structural typing),
so a user's task, model or optimizer from their own files is built and run exactly as a built-in
one (docs/library.md, "Your own task from the command line"). A task is an ``EpisodicTask``
(``sample``) or a ``StreamTask`` (``init_data``/``next_batch``); ``sofo_lab.tasks.base.Task`` is a
base class that implements every optional part of ``Task`` with its default.

Shape letters: T time, B batch, I inputs, N hidden, O outputs, K tangents, P parameters.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

Params = Any      # a pytree (dict) of arrays
State = Any       # a pytree of [B, ...] arrays
Batch = Any       # sofo_lab.core.system.Batch or GeneratedBatch (time-major)
StepInput = Any   # sofo_lab.core.system.StepInput(u [B, I], noise [B, N] or None)


@runtime_checkable
class Loss(Protocol):
    """A per-step loss with the exact output-space curvature SOFO's Gauss-Newton block needs
    (sofo_lab/core/losses.py: ``MeanSquaredError``, ``SoftmaxCrossEntropy``, ``PerSampleLoss``)."""

    def value(self, y, target, w) -> Any:
        """Scalar loss of one step: ``y``, ``target`` [B, O], weights ``w`` [B] or [B, O]."""


@runtime_checkable
class System(Protocol):
    """What every optimizer trains: a pure, deterministic, jit-able step plus a per-step loss.

    Contract:

    - ``step(params, state, x) -> (state', y)`` is one time step for the whole batch
      (``x.u`` [B, I], ``y`` [B, O]); it draws no randomness: noise the dynamics use comes in
      through ``x.noise``, sampled beforehand by ``sample_noise``, so SOFO's K tangents and
      UORO's jvp/vjp see the primal's noise.
    - The loss of a batch is ``Σ_t loss.value(y_t, target_t, w_t)``.
    - ``init_state(params, B)`` is the state every episodic trial starts from (it may depend on
      params: a learned initial state); streams carry the state across windows instead.
    - ``sample_noise(key, T, B)`` returns ``[T, B, N]`` noise factors or ``None``.

    A model on its own is a system through ``sofo_lab.core.system.ModelSystem``; a closed-loop task
    wraps the model with a differentiable plant (``sofo_lab.tasks.plants.arm.ArmSystem``).
    """

    loss: Loss

    def init_params(self, key) -> Params: ...

    def init_state(self, params: Params, batch_size: int) -> State: ...

    def step(self, params: Params, state: State, x: StepInput) -> tuple[State, Any]: ...

    def sample_noise(self, key, n_steps: int, batch_size: int) -> Any: ...


@runtime_checkable
class Model(Protocol):
    """A recurrent network (conf/model/*.yaml); built with ``n_inputs``, ``n_outputs`` from the task,
    the YAML's keys and those of the task's ``model_settings()`` it takes. Same methods as a
    ``System`` without the loss."""

    n_inputs: int
    n_outputs: int

    def init_params(self, key) -> Params: ...

    def init_state(self, params: Params, batch_size: int) -> State: ...

    def step(self, params: Params, state: State, x: StepInput) -> tuple[State, Any]: ...

    def sample_noise(self, key, n_steps: int, batch_size: int) -> Any: ...


@runtime_checkable
class Plant(Protocol):
    """A differentiable body a model drives in closed loop (``sofo_lab.core.system.ClosedLoop``):
    the two-joint arm (``sofo_lab.tasks.plants.arm.Arm``) or a user's own.

    Contract: no parameters; every method acts trial by trial (row b of an output depends only on
    row b of the inputs), which lets SOFO's fast path use one per-trial Jacobian for all K tangents.

    - ``init_state(B, dtype) -> [B, S]``: the plant at the start of every trial;
    - ``feedback(s) -> [B, F]``: what the network sees of it (``n_feedback`` = F);
    - ``step(s, command [B, C]) -> (s' [B, S], y [B, O])``: one step driven by the model's output;
      ``y`` is what the loss sees.
    """

    n_feedback: int

    def init_state(self, batch_size: int, dtype) -> Any: ...

    def feedback(self, state) -> Any: ...

    def step(self, state, command) -> tuple[Any, Any]: ...


@runtime_checkable
class Task(Protocol):
    """What every task provides, episodic or stream (conf/task/*.yaml): a pure, key-driven source of
    batches with named channels, a loss, metrics and plots. A task is an ``EpisodicTask`` or a
    ``StreamTask`` (below), which add how its batches are drawn. ``sofo_lab.tasks.base.Task``
    implements every optional part with its default; a task of your own subclasses it and writes
    ``sample`` (episodic) or ``init_data``/``next_batch`` (a stream).

    Contract:

    - Fixed shapes, so batches are made inside ``jit``: ``Batch(inputs [T, B, I], targets
      [T, B, O], weights [T, B] or [T, B, O])``, time-major, T = ``n_steps``.
    - ``episodic``: True, each batch holds B independent trials and the state resets every batch;
      False, B endless streams consumed window by window, the system state carried across windows.
    - ``make_system(model)`` is the system the optimizers train (the model with ``loss``, or a
      closed loop); ``needs_model`` False: the task is its own system and ignores the model.
    - ``model_settings()``: settings the network should take (``dt``, ``tau``,
      ``noise_amplitude``); the engine passes each to a model that takes it.
    - The trainer draws every batch through ``init_data``/``next_batch`` and applies
      ``online_metrics`` after each update; an episodic task's defaults make them ``sample``'s.
    - Reporting, with defaults in the base class: ``eval_batch`` (the held-out batch, None: no
      evaluation), ``evaluate`` (its metrics), ``plot``, ``plot_history`` (figures over the run),
      ``describe``; ``headline_metric`` (the logged metric ``sofo-compare`` shows next to the loss,
      e.g. ``"eval/within_1cm"``; None: found from the logs) and ``references`` (``{metric:
      {label: level}}``: levels drawn as dotted lines, e.g. a solved threshold; default none).
    """

    name: ClassVar[str]
    episodic: ClassVar[bool]
    needs_model: ClassVar[bool]
    headline_metric: ClassVar[str | None]
    references: ClassVar[dict[str, dict[str, float]]]
    n_steps: int
    loss: Loss
    model_n_inputs: int
    model_n_outputs: int

    def make_system(self, model: Model | None) -> System: ...

    def model_settings(self) -> dict: ...

    def check_batch_size(self, batch_size: int) -> None: ...

    def init_data(self, key, batch_size: int) -> Any: ...

    def next_batch(self, data_state, key, batch_size: int) -> tuple[Any, Batch]: ...

    def online_metrics(self, data_state, metrics: dict, params: Params) -> tuple[Any, dict]: ...

    def eval_batch(self, key, batch_size: int) -> Batch | None: ...

    def evaluate(self, batch: Batch, ys) -> dict: ...

    def plot(self, out_dir: str, batch: Batch, ys) -> list[str]: ...

    def plot_history(self, out_dir: str, history: list[dict]) -> list[str]: ...

    def describe(self, final: dict) -> str: ...


@runtime_checkable
class EpisodicTask(Task, Protocol):
    """A task of independent trials (``episodic = True``: reach, Kalman, a user's flip-flop): each
    batch is B trials of T steps from the system's initial state, so it must provide

    - ``sample(key, B) -> Batch``: B fresh trials, pure in ``key`` (``next_batch`` defaults to it);

    and may provide, with defaults in the base class, ``step_source`` (the same draw one step at
    a time: forward-mode memory then stays flat in T, data included; None: whole batches only)
    and, with ``host_batches = True``, ``host_batch(seed, i, B)`` (batch i made on the host in
    numpy, prefetched on a thread: recorded data, neurogym). ``eval_batch`` defaults to a sample.
    """

    def sample(self, key, batch_size: int) -> Batch: ...

    def step_source(self, key, batch_size: int) -> tuple[Any, Callable] | None: ...


@runtime_checkable
class StreamTask(Task, Protocol):
    """A task of B endless streams (``episodic = False``: aⁿbⁿ, brackets, influence balancing),
    consumed in windows of T steps; the network state (and UORO's s̃, θ̃) carries across windows.
    It must provide

    - ``init_data(key, B)``: the streams' generator state before the first window;
    - ``next_batch(data_state, key, B) -> (data_state', Batch)``: the next window of every stream;

    and may provide ``online_metrics`` (running scores, each symbol scored before the update that
    uses it, jit-ed with the update; tasks/streams.py). It has no held-out batch by default
    (``eval_batch`` None) and no ``sample``.
    """


@runtime_checkable
class Optimizer(Protocol):
    """An optax-style pair of pure functions (``sofo_lab.optim.Optimizer`` is the NamedTuple):

        init(params)                                  -> opt_state
        update(params, opt_state, batch, key, carry)  -> (params, opt_state, carry, metrics)

    ``carry`` is None for episodic tasks (each trial starts from ``system.init_state``) and the
    system state carried from the previous window for streams; ``metrics`` is a flat dict of
    scalars that always holds ``loss``, the summed per-step loss of the batch evaluated before
    (or, for online methods, while) updating. ``update`` must be jit-able; ``key`` is the
    iteration's own randomness (SOFO's tangents, UORO's signs), independent of the data's.

    ``init`` reads P and every shape from ``params`` (a system need not have ``init_params``) and
    may refuse them in one ``ConfigError`` (SOFO's K > P with an orthonormal basis).

    A config names the factory that builds one (conf/optim/*.yaml, ``_target_``); it is called
    with ``system``, the YAML's keys and those of the run's ``iterations``, ``batch_size`` and the
    task's ``n_steps``, ``episodic`` that it names as arguments.
    """

    init: Callable[[Params], Any]
    update: Callable[..., tuple]
