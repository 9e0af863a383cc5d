"""Fit a recurrent network to recorded data: ``task=recorded task.path=<file.npz>`` (docs/data.md).

A data-constrained RNN: the recording's stimuli are the network's inputs and its measured
activity (firing rates, spike counts) or behaviour are the targets (Rajan, Harvey & Tank, Neuron
2016; Perich et al., bioRxiv 2021 for the method; Pandarinath et al., Nature Methods 2018 for a
Poisson likelihood of counts).

The file (``numpy.savez``), trial-major as recordings usually are:

    inputs   [trials, T, I]        what the network sees at each step
    targets  [trials, T, O]        what it must output (rates, counts, or class probabilities)
    mask     [trials, T] or [trials, T, O], optional   1 where a target counts, 0 where it is
             missing (NaN targets are allowed there) or the trial has ended
    rates    [trials, T, O], optional   the true rates when the data were simulated (per bin,
             like the targets): the same metrics are then reported for them as ``eval/oracle_*``
    dt       scalar, optional      the bin width (the network's ``dt`` when ``task.dt`` is null)
    input_names, output_names      optional string arrays naming the channels

Losses (``task.loss``; the summed loss is the mean over trials of the masked sum over steps and
outputs, divided by the mean number of unmasked entries per trial):

- ``mse``: squared error of the output itself (rates).
- ``poisson``: the network's outputs are log-rates per bin, ``λ = exp(y)``, and the loss is the
  Poisson negative log-likelihood of the counts in nats, ``λ − k log λ + log k!``, with the
  closed-form curvature ``diag(w λ)/B`` (``PoissonLogRate``).
- ``xent``: targets are one-hot (or probabilities) over the outputs; softmax cross-entropy in nats;
  the mask must then be ``[trials, T]``.

Held-out metrics, per output (``eval/<metric>_<output name>``) and averaged or pooled:

- ``r2``: ``1 − Σ (k − ŷ)² / Σ (k − k̄)²`` over held-out trials and steps (``ŷ = λ`` for poisson);
  ``explained_variance``: the same with the residual's mean removed.
- ``bits_per_spike`` (poisson): ``(log L(λ) − log L(λ̄)) / (n_spikes ln 2)``, the log-likelihood
  gained over a constant rate (each output's mean held-out rate), in bits per spike, pooled over
  outputs as in the Neural Latents Benchmark (Pei et al., NeurIPS Datasets and Benchmarks 2021).
- ``accuracy`` (xent): argmax of the output equals the target's at unmasked steps.

Every check happens at construction, before anything trains, and fails in one line naming the
array: a missing file or array, shapes that disagree, NaN/inf outside the mask, an empty split.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.losses import LOSSES
from sofo_lab.core.system import Batch
from sofo_lab.tasks.trial_pool import TrialPool, per_trial_mask, split_trials, weighted_mean

LOSS_CHOICES = ("mse", "poisson", "xent")
LN2 = math.log(2.0)


class PoissonLogRate(NamedTuple):
    """Poisson negative log-likelihood of counts ``k`` given log-rates ``y`` (nats):
    ``loss = (1/B) Σ_b Σ_o w_bo (exp(y_bo) − k_bo y_bo + log k_bo!)``, ``H_b = (1/B) diag(w_b exp(y_b))``.

    The closed form of ``PerSampleLoss(poisson)`` (sofo_lab/core/losses.py), with per-output weights
    (a mask per neuron); tests/test_recorded.py checks both agree. ``log k!`` is a constant that
    makes the value the true negative log-likelihood.
    """

    kind: str = "poisson"

    @staticmethod
    def _w(w, y):
        w = jnp.asarray(w, y.dtype)
        return w[:, None] if w.ndim == 1 else w

    def value(self, y, target, w):
        nll = jnp.exp(y) - target * y + jax.scipy.special.gammaln(target + 1.0)
        return jnp.sum(self._w(w, y) * nll) / y.shape[0]

    def ggn(self, y, target, w, tangents):
        del target
        scaled = tangents * (self._w(w, y) * jnp.exp(y) / y.shape[0])
        return jnp.einsum("kbo,lbo->kl", scaled, tangents)


def _names(data, key: str, n: int, default: str, label) -> tuple[str, ...]:
    if key not in data:
        return tuple(f"{default}_{i}" for i in range(n))
    names = [str(s) for s in np.asarray(data[key]).reshape(-1)]
    if len(names) != n or len(set(names)) != n:
        raise ConfigError("task.path", label, f"array '{key}' must hold {n} distinct names, one per channel; it "
                          f"holds {names}")
    return tuple(names)


def load_arrays(path) -> dict:
    """The arrays of ``path`` (a ``.npz``), or ``ConfigError`` naming what is wrong with the file."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        where = "" if p.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ConfigError("task.path", str(path), f"no such file{where}; pass the .npz of your recording "
                          "(python scripts/make_recorded_example.py writes an example)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as err:  # noqa: BLE001 - zipfile, pickle, OS errors: all mean "not a readable .npz"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError("task.path", str(path), f"cannot be read as a .npz of arrays ({reason}); write it with "
                          "numpy.savez(path, inputs=..., targets=...)") from None


class Recorded(TrialPool):
    """Recorded trials from a ``.npz`` (module docstring); ``path=None`` uses the example data set
    of ``scripts/make_recorded_example.py`` (``example_dataset()``, generated in memory)."""

    name: ClassVar[str] = "recorded"
    headline_metric: ClassVar[str] = "eval/r2"

    def __init__(self, path: str | None = None, loss: str = "poisson", holdout: float = 0.2, split_seed: int = 0,
                 n_steps: int | None = None, dt: float | None = None, tau: float | None = None,
                 per_output: bool = True):
        if loss not in LOSS_CHOICES:
            raise ConfigError("task.loss", loss, f"choose one of {list(LOSS_CHOICES)} (rates: mse, spike counts: "
                              "poisson, one-hot labels: xent)")
        self.path, self.loss_kind, self.per_output = path, loss, bool(per_output)
        data = example_dataset() if path is None else load_arrays(path)
        label = "example" if path is None else str(path)
        inputs, targets, mask, rates = self._check(data, loss, label)
        n, T = targets.shape[:2]
        if n_steps is not None:
            if isinstance(n_steps, bool) or not isinstance(n_steps, int) or not 2 <= n_steps <= T:
                raise ConfigError("task.n_steps", n_steps, f"must be null (the recording's T = {T}) or an integer "
                                  f"in [2, {T}]: the first n_steps steps of each trial")
            inputs, targets, mask = inputs[:, :n_steps], targets[:, :n_steps], mask[:, :n_steps]
            rates = None if rates is None else rates[:, :n_steps]
        self.n_steps = int(targets.shape[1])
        self.input_names = _names(data, "input_names", inputs.shape[2], "input", label)
        self.output_names = _names(data, "output_names", targets.shape[2], "output", label)
        file_dt = float(data["dt"]) if "dt" in data else None
        self.dt = float(dt if dt is not None else file_dt if file_dt is not None else 1.0)
        self.tau = float(tau if tau is not None else 5.0 * self.dt)
        if not (self.dt > 0 and self.tau > 0):
            raise ConfigError("task.dt" if self.dt <= 0 else "task.tau", self.dt if self.dt <= 0 else self.tau,
                              "must be a positive number")
        train, held = split_trials(n, holdout, split_seed)
        for part, index in (("training", train), ("held-out", held)):
            if not np.any(mask[index] > 0):
                raise ConfigError("task.holdout", holdout, f"the {part} trials have no unmasked target (mask is 0 "
                                  "on all of them); choose another split or fix the mask")
        # weights: the mask over the mean number of unmasked entries per trial (module docstring)
        per_trial = mask.reshape(n, -1).sum(axis=1).mean()
        weights = mask / per_trial
        tm = lambda a: np.swapaxes(a, 0, 1)   # noqa: E731 - trial-major -> time-major
        aux = {} if rates is None else {"rates": tm(rates)}
        self._set_pool(tm(inputs), tm(targets), tm(weights), tm(mask), aux, train, held)

    @property
    def loss(self):
        return PoissonLogRate() if self.loss_kind == "poisson" else LOSSES[self.loss_kind]

    def model_settings(self) -> dict:
        """The bin width and the network's time constant (``task.tau``, default 5 bins: α = 0.2)."""
        return {"dt": self.dt, "tau": self.tau}

    # --- checks -----------------------------------------------------------------------------
    @staticmethod
    def _check(data: dict, loss: str, label: str):
        """Inputs, targets, mask (float, ``[n, T, O]`` or ``[n, T]`` for xent) and rates, validated."""
        for name in ("inputs", "targets"):
            if name not in data:
                raise ConfigError("task.path", label, f"array '{name}' is missing (the file holds {sorted(data)}); "
                                  "save inputs [trials, T, I] and targets [trials, T, O] with numpy.savez")
        arrays = {}
        for name in ("inputs", "targets", "mask", "rates"):
            if name not in data:
                continue
            a = np.asarray(data[name])
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise ConfigError("task.path", label, f"array '{name}' has dtype {a.dtype}: it must be numbers")
            arrays[name] = a.astype(np.float64)
        inputs, targets = arrays["inputs"], arrays["targets"]
        for name in ("inputs", "targets"):
            a = arrays[name]
            if a.ndim != 3 or 0 in a.shape:
                raise ConfigError("task.path", label, f"array '{name}' has shape {a.shape}: it must be "
                                  f"[trials, T, {'I' if name == 'inputs' else 'O'}] with no empty axis (one "
                                  "channel is [trials, T, 1])")
        n, T, O = targets.shape
        if inputs.shape[:2] != (n, T):
            raise ConfigError("task.path", label, f"array 'inputs' has shape {inputs.shape} but 'targets' has "
                              f"{targets.shape}: trials and T (the first two axes) must agree")
        if T < 2:
            raise ConfigError("task.path", label, f"arrays 'inputs' and 'targets' have T = {T} step: at least 2 needed")
        if "mask" in arrays:
            mask = arrays["mask"]
            allowed = [(n, T)] + ([(n, T, O)] if loss != "xent" else [])
            if mask.shape not in allowed:
                want = "[trials, T]" + (" or [trials, T, O]" if loss != "xent" else " (task.loss=xent: one mask "
                                        "per step)")
                raise ConfigError("task.path", label, f"array 'mask' has shape {mask.shape}: it must be {want} = "
                                  f"{' or '.join(str(s) for s in allowed)}")
            if not np.all(np.isfinite(mask)) or np.any(mask < 0):
                raise ConfigError("task.path", label, "array 'mask' must be finite and >= 0 (1: the target counts, "
                                  "0: it does not)")
        else:
            mask = np.ones((n, T) if loss == "xent" else (n, T, O))
        if loss != "xent" and mask.ndim == 2:
            mask = np.broadcast_to(mask[..., None], (n, T, O)).copy()
        if "rates" in arrays and arrays["rates"].shape != targets.shape:
            raise ConfigError("task.path", label, f"array 'rates' has shape {arrays['rates'].shape}: it must match "
                              f"'targets' {targets.shape}")
        if not np.all(np.isfinite(inputs)):
            bad = np.argwhere(~np.isfinite(inputs))[0]
            raise ConfigError("task.path", label, f"array 'inputs' has {int(np.sum(~np.isfinite(inputs)))} NaN/inf "
                              f"values (first at trial {bad[0]}, step {bad[1]}, channel {bad[2]}); inputs must "
                              "be finite everywhere")
        full = mask if mask.ndim == 3 else np.broadcast_to(mask[..., None], targets.shape)
        bad_t = ~np.isfinite(targets) & (full > 0)
        if np.any(bad_t):
            bad = np.argwhere(bad_t)[0]
            raise ConfigError("task.path", label, f"array 'targets' has {int(bad_t.sum())} NaN/inf values where "
                              f"mask > 0 (first at trial {bad[0]}, step {bad[1]}, output {bad[2]}); set mask to 0 "
                              "there (missing data) or remove them")
        targets = np.where(full > 0, targets, 0.0)
        rates = arrays.get("rates")
        if rates is not None and not np.all(np.isfinite(rates)):
            raise ConfigError("task.path", label, "array 'rates' has NaN/inf values: the true rates must be finite")
        if loss == "poisson":
            if np.any(targets < 0):
                raise ConfigError("task.loss", loss, "needs counts >= 0 in 'targets' (it holds negative values); "
                                  "use task.loss=mse for rates that can be negative")
            if rates is not None and np.any(rates <= 0):
                raise ConfigError("task.path", label, "array 'rates' must be > 0 with task.loss=poisson")
        if loss == "xent":
            sums = targets.sum(axis=-1)
            if np.any(targets < 0) or np.any(np.abs(sums - 1.0)[mask > 0] > 1e-4):
                raise ConfigError("task.loss", loss, "needs one-hot (or probability) targets over the outputs, "
                                  "each summing to 1 where mask > 0; use task.loss=mse for other targets")
        return inputs, targets, mask, rates

    # --- metrics ----------------------------------------------------------------------------
    def _prediction(self, ys):
        return jnp.exp(ys) if self.loss_kind == "poisson" else ys

    def _fit(self, pred_out, batch: Batch, prefix: str = "") -> dict:
        """Per-output and overall fit of network outputs ``pred_out [T, B, O]`` on the held-out batch."""
        k, m = batch.targets, per_trial_mask(batch.extras, batch.targets)
        out = {}
        if self.loss_kind == "xent":
            hit = (jnp.argmax(pred_out, -1) == jnp.argmax(k, -1)).astype(jnp.float32)
            out[f"{prefix}accuracy"] = weighted_mean(hit, m[..., 0])
            return out
        pred = self._prediction(pred_out)
        axes = (0, 1)
        mean_k = weighted_mean(k, m, axes)
        sst = jnp.sum(m * (k - mean_k) ** 2, axes)
        sse = jnp.sum(m * (k - pred) ** 2, axes)
        r2 = 1.0 - sse / jnp.maximum(sst, 1e-12)
        resid = k - pred
        var_res = weighted_mean((resid - weighted_mean(resid, m, axes)) ** 2, m, axes)
        ev = 1.0 - var_res / jnp.maximum(sst / jnp.maximum(jnp.sum(m, axes), 1e-12), 1e-12)
        out[f"{prefix}r2"], out[f"{prefix}explained_variance"] = jnp.mean(r2), jnp.mean(ev)
        per = {"r2": r2}
        if self.loss_kind == "poisson":
            gl = jax.scipy.special.gammaln(k + 1.0)
            ll = jnp.sum(m * (k * pred_out - pred - gl), axes)
            rate0 = jnp.maximum(mean_k, 1e-12)
            ll0 = jnp.sum(m * (k * jnp.log(rate0) - rate0 - gl), axes)
            spikes = jnp.sum(m * k, axes)
            out[f"{prefix}bits_per_spike"] = jnp.sum(ll - ll0) / (jnp.maximum(jnp.sum(spikes), 1e-12) * LN2)
            per["bits_per_spike"] = (ll - ll0) / (jnp.maximum(spikes, 1e-12) * LN2)
        if self.per_output and not prefix:
            for metric, values in per.items():
                for i, name in enumerate(self.output_names):
                    out[f"{metric}_{name}"] = values[i]
        return out

    def evaluate(self, batch: Batch, ys) -> dict:
        metrics = self._fit(ys, batch)
        rates = batch.extras.aux.get("rates") if batch.extras is not None else None
        if rates is not None and self.loss_kind != "xent":
            oracle = jnp.log(rates) if self.loss_kind == "poisson" else rates
            metrics.update(self._fit(oracle, batch, prefix="oracle_"))
            # how close the network's rates are to the true ones (simulated data: the recovery)
            m = per_trial_mask(batch.extras, rates)
            pred, mean_r = self._prediction(ys), weighted_mean(rates, m, (0, 1))
            sse, sst = jnp.sum(m * (pred - rates) ** 2, (0, 1)), jnp.sum(m * (rates - mean_r) ** 2, (0, 1))
            metrics["true_rates_r2"] = jnp.mean(1.0 - sse / jnp.maximum(sst, 1e-12))
        return metrics

    def describe(self, final: dict) -> str:
        parts = []
        for key, label in (("r2", "R²"), ("bits_per_spike", "bits/spike"), ("accuracy", "accuracy")):
            if f"eval/{key}" in final:
                text = f"held-out {label} {final[f'eval/{key}']:.3f}"
                if f"eval/oracle_{key}" in final:
                    text += f" (true rates {final[f'eval/oracle_{key}']:.3f})"
                parts.append(text)
        if "eval/true_rates_r2" in final:
            parts.append(f"R² of the network's rates to the true rates {final['eval/true_rates_r2']:.3f}")
        return "   ".join(parts)

    # --- plots ------------------------------------------------------------------------------
    def plot(self, out_dir, batch: Batch, ys) -> list[str]:
        """Predicted against recorded traces: a few held-out trials (rows) × outputs (columns)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ys = np.asarray(ys)
        k, valid = np.asarray(batch.targets), np.asarray(batch.extras.valid)
        trials = np.flatnonzero(valid > 0)[:3]
        outs = list(range(min(4, k.shape[2])))
        mask = np.asarray(per_trial_mask(batch.extras, batch.targets))
        rates = batch.extras.aux.get("rates")
        rates = None if rates is None else np.asarray(rates)
        if self.loss_kind == "xent":
            pred, ylabel = np.asarray(jax.nn.softmax(ys, -1)), "probability"
        else:
            pred = np.exp(ys) if self.loss_kind == "poisson" else ys
            ylabel = "count per bin" if self.loss_kind == "poisson" else "target"
        fig, axes = plt.subplots(len(trials), len(outs), figsize=(3.2 * len(outs), 2.2 * len(trials)),
                                 sharex=True, squeeze=False)
        t = np.arange(k.shape[0]) * self.dt
        trial_ids = np.asarray(batch.extras.trial)
        for r, b in enumerate(trials):
            for c, o in enumerate(outs):
                ax = axes[r, c]
                keep = mask[:, b, o] > 0
                style = dict(ms=2, color="0.55") if self.loss_kind == "poisson" else dict(lw=1, color="k")
                ax.plot(t[keep], k[keep, b, o], "." if self.loss_kind == "poisson" else "-",
                        label="recorded", **style)
                if rates is not None:
                    ax.plot(t, rates[:, b, o], color="tab:green", lw=1, label="true rate")
                ax.plot(t, pred[:, b, o], color="tab:red", lw=1.2, label="network")
                if r == 0:
                    ax.set_title(self.output_names[o], fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"trial {trial_ids[b]}\n{ylabel}", fontsize=8)
        axes[0, 0].legend(fontsize=7, loc="upper right")
        for ax in axes[-1]:
            ax.set_xlabel("time" + (" (s)" if self.dt != 1.0 else " (steps)"))
        fig.suptitle(f"held-out trials: recorded targets and the network's prediction (task.loss={self.loss_kind})",
                     fontsize=9)
        fig.tight_layout()
        path = f"{out_dir}/recorded_traces.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]


# --- the example data set ---------------------------------------------------------------------

def example_dataset(n_trials: int = 240, n_steps: int = 100, n_neurons: int = 12, n_hidden: int = 16,
                    n_conditions: int = 8, dt: float = 0.01, tau: float = 0.05, seed: int = 0) -> dict:
    """Spike counts of ``n_neurons`` neurons driven by a known rate network (scripts/make_recorded_example.py).

    The teacher is exactly a ``model=rnn`` network with ``nonlinearity=tanh`` and α = dt/τ (0.2):
    ``z_{t+1} = (1−α) z_t + α(tanh(z_t) W_rec + u_t W_in + b)``, log-rate per bin
    ``y_t = tanh(z_{t+1}) W_out + b_out``, counts ``k_t ~ Poisson(exp(y_t))``. Each trial shows one of
    ``n_conditions`` stimulus directions (cos θ, sin θ) for 0.3 s from 0.1 s, then a go cue for 50 ms
    at 0.6 s. ``rates`` holds the true ``exp(y)``, so a fit can be scored against the truth.
    """
    rng = np.random.default_rng(seed)
    N, I, O, T = n_hidden, 3, n_neurons, n_steps
    alpha = dt / tau
    W_in = rng.normal(0.0, 1.5 / math.sqrt(I), (I, N))
    W_rec = rng.normal(0.0, 1.3 / math.sqrt(N), (N, N))
    b = rng.normal(0.0, 0.1, N)
    W_out = rng.normal(0.0, 1.6 / math.sqrt(N), (N, O))
    b_out = math.log(0.15) + rng.normal(0.0, 0.2, O)
    cond = rng.integers(0, n_conditions, n_trials)
    theta = 2 * math.pi * cond / n_conditions
    u = np.zeros((n_trials, T, I))
    on, off, go = int(round(0.1 / dt)), int(round(0.4 / dt)), int(round(0.6 / dt))
    u[:, on:off, 0], u[:, on:off, 1] = np.cos(theta)[:, None], np.sin(theta)[:, None]
    u[:, go:go + max(1, int(round(0.05 / dt))), 2] = 1.0
    z = np.zeros((n_trials, N))
    y = np.zeros((n_trials, T, O))
    for t in range(T):
        z = (1 - alpha) * z + alpha * (np.tanh(z) @ W_rec + u[:, t] @ W_in + b)
        y[:, t] = np.tanh(z) @ W_out + b_out
    rates = np.exp(y)
    counts = rng.poisson(rates)
    return {"inputs": u.astype(np.float32), "targets": counts.astype(np.float32), "rates": rates.astype(np.float32),
            "condition": cond, "dt": np.float64(dt),
            "input_names": np.array(["stimulus_cos", "stimulus_sin", "go_cue"]),
            "output_names": np.array([f"neuron_{i}" for i in range(O)]),
            "teacher_W_in": W_in, "teacher_W_rec": W_rec, "teacher_b": b, "teacher_W_out": W_out,
            "teacher_b_out": b_out}
