"""neurogym's cognitive tasks: ``task=neurogym task.env=<id>`` (docs/tasks.md).

neurogym (Molano-Mazón et al., *NeuroGym: An open resource for developing and sharing
neuroscience tasks*, 2022; github.com/neurogym/neurogym) defines trial-based tasks as Gymnasium
environments: each ``new_trial()`` fills ``env.ob [T_trial, I]`` (the observations) and ``env.gt``
(the ground-truth action per step: an integer label for a discrete action space, a vector for a
continuous one), with named periods (``env.start_ind``/``env.end_ind``: fixation, stimulus,
delay, decision, ...), named channels (``observation_space.name``, ``action_space.name``) and a
step ``env.dt`` in ms.

What this task does with them:

- **A fixed pool** of ``n_trials`` trials (default 2000) is generated once, at construction, from
  ``env.seed(task.seed)``; ``holdout`` of them (default 20 %, 400) are the held-out set of every
  evaluation. Training batches are made on the host, ahead of the update (tasks/trial_pool.py,
  sofo_lab/train/host_batches.py): by default from the pool's training part (at most
  ``n_trials − held-out`` distinct trials; for these tasks' small trial spaces 1600 are plenty,
  docs/tasks.md), or with ``fresh: true`` as B new environment trials every batch, as neurogym's
  own ``Dataset`` gives, seeded by ``(task.seed, the run's seed, the iteration)``.
- **Fixed length** ``n_steps``: shorter trials are padded (weight 0, ``valid`` steps marked),
  longer ones cropped (one warning with the count). ``null``: the longest trial of the pool.
- **Loss**: a discrete action space gives softmax cross-entropy on the one-hot ``gt`` at every
  step of the trial, fixation included (label 0 outside the response), as neurogym's supervised
  ``Dataset`` trains; ``decision_weight``/``fixation_weight`` reweight the decision periods and
  the other steps (Yang et al., Nat. Neurosci. 2019 weight the response 5×). A continuous action
  space gives MSE on ``gt``. Weights are normalized so the loss is the mean per real step.
- **Held-out metrics**: ``accuracy``, the choice (argmax of the output) at the last decision step
  against ``gt`` there, as neurogym's supervised examples score a trial; ``response_accuracy``, the
  environment's reward rule for PDM-style tasks: the first non-fixation action in the decision
  period is the correct one (no response is correct only when the correct action is to fixate);
  ``decision_step_accuracy`` and ``fixation_accuracy`` per step; ``chance_accuracy``, the most
  frequent correct choice (a constant: a reference line in sofo-compare). Continuous: ``mse``.
- **dt** comes from the environment (``task.kwargs={dt: 20}`` changes it); the rate network's
  time constant is ``tau`` (ms, default 100 as in Yang et al. 2019), so α = dt/τ.

``env`` is a registered neurogym id (``PerceptualDecisionMaking-v0``) or the dotted path of a
class with the same interface (``mylab.envs.MyTask``, built with ``kwargs``; a neurogym
``TrialEnv`` subclass of your own), which needs no registration and, if it does not import
neurogym, not neurogym either (tests/test_neurogym.py uses a tiny one).
"""
from __future__ import annotations

import warnings
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import LOSSES
from sofo_lab.core.system import Batch
from sofo_lab.tasks.trial_pool import TrialPool, split_trials, weighted_mean

INSTALL = "pip install -e '.[neurogym]' (or pip install 'neurogym>=2.2,<2.3')"
_POOLS: dict = {}   # the pools built in this process (the pre-check and the run build the task twice)


def make_env(env: str, kwargs: dict):
    """The environment ``env`` names (a neurogym id or a dotted class path), unwrapped."""
    if "." in env or ":" in env:
        from hydra.utils import get_object

        try:
            cls = get_object(env.replace(":", "."))
        except Exception as err:  # noqa: BLE001 - import errors of the user's module
            raise ConfigError("task.env", env, f"cannot be imported ({str(err).splitlines()[0]}); a dotted path "
                              "must name an importable environment class, else give a neurogym id") from None
        try:
            made = cls(**kwargs)
        except TypeError as err:
            raise ConfigError("task.kwargs", kwargs, f"{env} does not take them ({err})") from None
    else:
        try:
            import neurogym
        except ImportError as err:
            if getattr(err, "name", "") == "torch" or "torch" in str(err):
                raise ConfigError("task.env", env, "neurogym 2.3 imports torch, which is not installed: "
                                  "pip install 'neurogym>=2.2,<2.3' (or install torch)") from None
            raise ConfigError("task.env", env, f"needs neurogym, which is not installed: {INSTALL}") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                made = neurogym.make(env, **kwargs)
            except TypeError as err:
                raise ConfigError("task.kwargs", kwargs, f"{env} does not take them "
                                  f"({str(err).split(' was raised')[0]})") from None
            except Exception as err:  # noqa: BLE001 - gymnasium's NameNotFound, VersionNotFound, ...
                from neurogym.envs.registration import all_envs

                raise ConfigError("task.env", env, f"is not a neurogym environment ({str(err).splitlines()[0]}); "
                                  f"choose one of {sorted(all_envs())}") from None
    env_obj = getattr(made, "unwrapped", made)
    for attr in ("new_trial", "seed"):
        if not callable(getattr(env_obj, attr, None)):
            raise ConfigError("task.env", env, f"has no {attr}(): it must be a trial-based environment "
                              "(neurogym's TrialEnv: new_trial() filling ob and gt)")
    return env_obj


def channel_names(space, n: int, default: str) -> tuple[str, ...]:
    """Names from a neurogym space's ``name`` dict ({'fixation': 0, 'choice': [1, 2]} →
    fixation, choice_1, choice_2); ``<default>_<i>`` where none is given."""
    names = [f"{default}_{i}" for i in range(n)]
    for key, where in (getattr(space, "name", None) or {}).items():
        idx = [where] if isinstance(where, (int, np.integer)) else list(where)
        for j, i in enumerate(idx):
            if 0 <= int(i) < n:
                names[int(i)] = key if len(idx) == 1 else f"{key}_{j + 1}"
    return tuple(names)


def generate_pool(env_obj, n_trials: int, seed: int) -> dict:
    """``n_trials`` trials from ``env_obj`` seeded with ``seed``: lists of ob, gt and the periods."""
    env_obj.seed(seed)
    obs, gts, periods = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_trials):
            env_obj.new_trial()
            ob, gt = np.asarray(env_obj.ob, np.float32), np.asarray(env_obj.gt)
            if ob.ndim != 2 or gt.shape[0] != ob.shape[0]:
                raise ConfigError("task.env", type(env_obj).__name__, f"gives ob {ob.shape} and gt {gt.shape}: "
                                  "they must be [T_trial, I] and [T_trial] (labels) or [T_trial, O]")
            obs.append(ob)
            gts.append(gt)
            periods.append({k: (int(env_obj.start_ind[k]), int(env_obj.end_ind[k])) for k in env_obj.start_ind})
    return {"ob": obs, "gt": gts, "periods": periods}


class NeuroGym(TrialPool):
    """A neurogym environment's trials as a fixed pool (module docstring)."""

    name: ClassVar[str] = "neurogym"
    headline_metric: ClassVar[str] = "eval/accuracy"

    def __init__(self, env: str = "PerceptualDecisionMaking-v0", kwargs: dict | None = None, n_trials: int = 2000,
                 holdout: float = 0.2, seed: int = 0, n_steps: int | None = None, tau: float = 100.0,
                 decision_periods=("decision",), decision_weight: float = 1.0, fixation_weight: float = 1.0,
                 fresh: bool = False):
        if not isinstance(env, str) or not env:
            raise ConfigError("task.env", env, "must be a neurogym id such as PerceptualDecisionMaking-v0 or the "
                              "dotted path of an environment class")
        kwargs = dict(kwargs or {})
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 2:
            raise ConfigError("task.n_trials", n_trials, "must be an integer >= 2 (the size of the fixed pool)")
        for key, value in (("task.decision_weight", decision_weight), ("task.fixation_weight", fixation_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(key, value, "must be a number >= 0")
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ConfigError("task.tau", tau, "must be a positive number (ms)")
        decision_periods = tuple([decision_periods] if isinstance(decision_periods, str) else decision_periods)
        self.env_id, self.kwargs, self.seed, self.tau = env, kwargs, int(seed), float(tau)
        self.decision_periods = decision_periods
        if not isinstance(fresh, bool):
            raise ConfigError("task.fresh", fresh, "must be true (new environment trials every batch) or false "
                              "(batches from the fixed pool)")
        self.fresh = fresh
        env_obj = make_env(env, kwargs)
        self._env = env_obj   # fresh trials: used by the batch thread only
        self.dt = float(getattr(env_obj, "dt", 1.0))
        cache = (env, repr(sorted(kwargs.items())), n_trials, self.seed)
        if cache not in _POOLS:
            _POOLS.clear()   # one pool kept: the build before the run and the run's own
            _POOLS[cache] = generate_pool(env_obj, n_trials, self.seed)
        pool = _POOLS[cache]
        self.period_names = tuple(dict.fromkeys(k for p in pool["periods"] for k in p))
        missing = [p for p in decision_periods if p not in self.period_names]
        if missing or not decision_periods:
            raise ConfigError("task.decision_periods", list(decision_periods), f"must name periods of {env}: it has "
                              f"{list(self.period_names)}")
        self.discrete = hasattr(getattr(env_obj, "action_space", None), "n")
        self.loss_kind = "xent" if self.discrete else "mse"
        ob0 = pool["ob"][0]
        n_out = int(env_obj.action_space.n) if self.discrete else int(np.prod(pool["gt"][0].shape[1:]) or 1)
        self.input_names = channel_names(getattr(env_obj, "observation_space", None), ob0.shape[1], "input")
        self.output_names = channel_names(getattr(env_obj, "action_space", None), n_out, "action")
        lengths = np.array([len(o) for o in pool["ob"]])
        T = int(lengths.max()) if n_steps is None else n_steps
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ConfigError("task.n_steps", n_steps, f"must be null (the longest trial: {lengths.max()} steps) or "
                              "an integer >= 2")
        self.n_steps, self.trial_lengths = T, lengths
        self._build(pool, T, decision_weight, fixation_weight, n_out, holdout)

    def _arrays(self, pool, T, n_out):
        """Time-major arrays of the trials in ``pool``, padded or cropped to ``T`` steps."""
        n, I = len(pool["ob"]), pool["ob"][0].shape[1]
        inputs = np.zeros((T, n, I), np.float32)
        targets = np.zeros((T, n, n_out), np.float32)
        real = np.zeros((T, n), np.float32)
        decision = np.zeros((T, n), np.float32)
        period = np.full((T, n), -1, np.int32)
        labels = np.zeros((T, n), np.int32)
        cropped = 0
        for b, (ob, gt, periods) in enumerate(zip(pool["ob"], pool["gt"], pool["periods"])):
            L = min(len(ob), T)
            cropped += len(ob) > T
            inputs[:L, b] = ob[:L]
            real[:L, b] = 1.0
            if self.discrete:
                lab = gt[:L].astype(np.int64).reshape(L)
                if lab.min() < 0 or lab.max() >= n_out:
                    raise ConfigError("task.env", self.env_id, f"gives labels outside [0, {n_out}) in gt")
                labels[:L, b] = lab
                targets[np.arange(L), b, lab] = 1.0
            else:
                targets[:L, b] = gt[:L].reshape(L, n_out)
            for i, name in enumerate(self.period_names):
                if name in periods:
                    s, e = periods[name]
                    period[s:min(e, L), b] = i
                    if name in self.decision_periods:
                        decision[s:min(e, L), b] = 1.0
        return inputs, targets, real, decision, period, labels, cropped

    def _step_weights(self, real, decision):
        return real * np.where(decision > 0, self.decision_weight, self.fixation_weight)

    def _build(self, pool, T, decision_weight, fixation_weight, n_out, holdout):
        n = len(pool["ob"])
        self.decision_weight, self.fixation_weight = float(decision_weight), float(fixation_weight)
        inputs, targets, real, decision, period, labels, cropped = self._arrays(pool, T, n_out)
        if cropped:
            warnings.warn(f"task.n_steps={T}: {cropped} of {n} trials are longer and are cropped (the longest has "
                          f"{self.trial_lengths.max()} steps); task.n_steps=null keeps every step", stacklevel=3)
        has_decision = decision.sum(0) > 0
        if not has_decision.any():
            raise ConfigError("task.n_steps", T, f"cuts every trial before its {list(self.decision_periods)} period: "
                              f"raise it (the longest trial has {self.trial_lengths.max()} steps) or set it null")
        weights = self._step_weights(real, decision)
        per_trial = weights.sum(0).mean()
        if per_trial <= 0:
            raise ConfigError("task.decision_weight", decision_weight, "and task.fixation_weight are both 0: nothing "
                              "to train")
        self._per_trial = float(per_trial)   # fresh batches use the pool's normalization: one loss scale
        weights = weights / per_trial
        # the last decision step of each trial (-1: none inside n_steps): where its choice is read
        last = np.where(has_decision, T - 1 - np.argmax(decision[::-1], axis=0), -1).astype(np.int32)
        train, held = split_trials(n, holdout, self.seed)
        aux = {"decision": decision, "period": period, "labels": labels, "last_decision": last[None]}
        self._set_pool(inputs, targets, weights, real, aux, train, held)

    def host_batch(self, seed: int, iteration: int, batch_size: int) -> Batch:
        """With ``fresh``: B new trials from the environment, seeded by ``(task.seed, seed, iteration)``
        (a function of the run's seed and the iteration, so a resumed run sees the same trials);
        else B trials of the pool's training part (tasks/trial_pool.py)."""
        if not self.fresh:
            return super().host_batch(seed, iteration, batch_size)
        trial_seed = int(np.random.SeedSequence((self.seed, seed, iteration)).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trials = generate_pool(self._env, batch_size, trial_seed)
        inputs, targets, real, decision, *_ = self._arrays(trials, self.n_steps, len(self.output_names))
        return Batch(inputs, targets, self._step_weights(real, decision) / self._per_trial)

    @property
    def loss(self):
        return LOSSES[self.loss_kind]

    def model_settings(self) -> dict:
        """dt from the environment (ms), τ = ``task.tau`` (ms)."""
        return {"dt": self.dt, "tau": self.tau}

    def evaluate(self, batch: Batch, ys) -> dict:
        ex = batch.extras
        real = ex.mask * ex.valid[None]
        if not self.discrete:
            err = jnp.sum((ys - batch.targets) ** 2, -1)
            return {"mse": weighted_mean(err, real)}
        aux = ex.aux
        action = jnp.argmax(ys, -1)                                      # [T, B]
        labels, decision = aux["labels"], aux["decision"] * real
        last = aux["last_decision"][0]                                   # [B]
        scored = ex.valid * (last >= 0)
        at = jnp.maximum(last, 0)
        cols = jnp.arange(action.shape[1])
        choice, truth = action[at, cols], labels[at, cols]
        correct = (choice == truth).astype(jnp.float32)
        # the environment's rule: the first non-fixation action in the decision period must be correct
        responded = (action != 0) & (decision > 0)
        first = jnp.argmax(responded, axis=0)
        any_resp = responded.any(axis=0)
        resp_ok = jnp.where(any_resp, action[first, cols] == labels[first, cols], truth == 0).astype(jnp.float32)
        step_ok = (action == labels).astype(jnp.float32)
        counts = jnp.sum(jax.nn.one_hot(truth, ys.shape[-1]) * scored[:, None], axis=0)
        return {
            "accuracy": weighted_mean(correct, scored),
            "response_accuracy": weighted_mean(resp_ok, scored),
            "decision_step_accuracy": weighted_mean(step_ok, decision),
            "fixation_accuracy": weighted_mean(step_ok, real * (1.0 - aux["decision"])),
            "chance_accuracy": jnp.max(counts) / jnp.maximum(jnp.sum(scored), 1.0),
        }

    def describe(self, final: dict) -> str:
        if "eval/accuracy" in final:
            return (f"{self.env_id}: held-out accuracy {final['eval/accuracy']:.3f} (chance "
                    f"{final.get('eval/chance_accuracy', float('nan')):.3f}), first response correct "
                    f"{final.get('eval/response_accuracy', float('nan')):.3f}, fixation held "
                    f"{final.get('eval/fixation_accuracy', float('nan')):.3f}")
        if "eval/mse" in final:
            return f"{self.env_id}: held-out MSE {final['eval/mse']:.4f}"
        return ""

    def plot(self, out_dir, batch: Batch, ys) -> list[str]:
        """A few held-out trials: inputs, the network's action probabilities and the ground truth."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ex = batch.extras
        valid, real = np.asarray(ex.valid), np.asarray(ex.mask)
        trials = np.flatnonzero(valid > 0)[:3]
        ys, u, k = np.asarray(ys), np.asarray(batch.inputs), np.asarray(batch.targets)
        out = np.asarray(jax.nn.softmax(ys, -1)) if self.discrete else ys
        period = np.asarray(ex.aux["period"])
        fig, axes = plt.subplots(2, len(trials), figsize=(4.2 * len(trials), 5.0), sharex="col", squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for c, b in enumerate(trials):
            L = int(real[:, b].sum())
            t = np.arange(L) * self.dt
            for i, name in enumerate(self.input_names):
                axes[0, c].plot(t, u[:L, b, i], lw=1, label=name, color=colors[i % len(colors)])
            for j, name in enumerate(self.output_names):
                col = colors[j % len(colors)]
                axes[1, c].plot(t, out[:L, b, j], lw=1.2, color=col, label=f"network: {name}")
                axes[1, c].plot(t, k[:L, b, j], ls="--", lw=0.9, color=col, label=f"target: {name}")
            for ax in axes[:, c]:
                for i, name in enumerate(self.period_names):
                    steps = np.flatnonzero(period[:L, b] == i)
                    if steps.size and name in self.decision_periods:
                        ax.axvspan(steps[0] * self.dt, (steps[-1] + 1) * self.dt, color="0.9", zorder=0)
            axes[0, c].set_title(f"held-out trial {int(np.asarray(ex.trial)[b])}", fontsize=9)
            axes[1, c].set_xlabel("time (ms; shaded: " + ", ".join(self.decision_periods) + ")")
        axes[0, 0].set_ylabel("input")
        axes[1, 0].set_ylabel("action probability" if self.discrete else "output")
        axes[0, -1].legend(fontsize=7, loc="upper right")
        axes[1, -1].legend(fontsize=6, loc="center right")
        fig.suptitle(f"{self.env_id}: held-out trials after training", fontsize=10)
        fig.tight_layout()
        path = f"{out_dir}/neurogym_trials.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
