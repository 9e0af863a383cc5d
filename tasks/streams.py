"""Shared pieces of the streaming regime (docs/uoro.md).

A streaming task is B endless streams consumed in windows of T = ``task.n_steps`` symbols.
Its ``data_state`` holds the generators' state, the last symbol emitted (the input of the
next window's first step) and the online scores. Each window's loss is computed by the
optimizer before (or, for online methods, while) it updates on it, so the running scores are
*prequential*: every symbol is scored by parameters that have not yet learned from it.

    bits_per_char        = (Σ window losses) / (windows) / ln 2       (cumulative; window loss = mean nats/char)
    bits_per_char_recent : r_t = r_{t−T}(1 − ρ) + ρ L_window/ln 2,  ρ = min(1, T/√t),  t = characters per stream
                           (the authors' per-character average r ← r(1 − 1/√t) + L/√t, one window at a time)

References: Tallec & Ollivier, UORO (ICLR 2018); the authors' ``train.lua`` (docs/uoro.md).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import Batch
from sofo_lab.tasks.base import Task

LN2 = math.log(2.0)


class OnlineScore(NamedTuple):
    chars: jax.Array          # int32: characters consumed per stream so far
    cumulative: jax.Array     # running mean of the window losses, in bits/char
    recent: jax.Array         # moving average (authors' schedule), in bits/char


def init_score() -> OnlineScore:
    return OnlineScore(jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(()))


def update_score(score: OnlineScore, window_bits, n_steps: int) -> OnlineScore:
    """Fold one window's mean bits/char into the cumulative and recent averages."""
    chars = score.chars + n_steps
    windows = (chars // n_steps).astype(jnp.float32)
    cumulative = score.cumulative + (window_bits - score.cumulative) / windows
    # The authors' per-character rate 1/√t, applied once per window of n_steps characters: W/√t
    # (capped at 1), so the average remembers ~√t characters whatever the window length.
    rate = jnp.minimum(1.0, n_steps / jnp.sqrt(chars.astype(jnp.float32)))
    recent = jnp.where(score.chars == 0, window_bits, score.recent * (1.0 - rate) + window_bits * rate)
    return OnlineScore(chars, cumulative, recent)


class StreamState(NamedTuple):
    gen: Any                  # the generators' state, leaves [B, ...]
    prev: jax.Array           # [B] int32: last symbol emitted (next window's first input)
    score: OnlineScore


def check_n_steps(n_steps) -> None:
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ConfigError("task.n_steps", n_steps, "must be a positive integer (symbols per window)")


class CharStream(Task):
    """Next-symbol prediction on B endless symbol streams; subclasses define the generator.

    Subclasses set ``vocabulary`` (sorted characters), ``reference_rates`` (name -> bits/char)
    and implement ``init_gen(key, B)`` and ``emit(gen, key) -> (gen, symbol [B])``.
    """

    episodic: ClassVar[bool] = False
    loss_kind: ClassVar[str] = "xent"
    vocabulary: tuple[str, ...]
    reference_rates: dict

    @property
    def input_names(self):
        return tuple(repr(c)[1:-1] for c in self.vocabulary)

    output_names = input_names

    # --- generator interface: each grammar (tasks/anbn.py, tasks/brackets.py) defines these two;
    # the base class has no generator of its own, so calling them here is a programming error.
    def init_gen(self, key, batch_size: int):
        raise NotImplementedError(f"{type(self).__name__} must define init_gen(key, B) -> generator state")

    def emit(self, gen, key):
        raise NotImplementedError(f"{type(self).__name__} must define emit(gen, key) -> (gen, symbols [B])")

    def symbols(self, gen, key, n: int):
        """``n`` symbols ``[n, B]`` from generator state ``gen``; returns ``(gen, symbols)``."""
        return jax.lax.scan(lambda g, k: self.emit(g, k), gen, jax.random.split(key, n))

    def decode(self, symbols) -> str:
        return "".join(self.vocabulary[int(i)] for i in symbols)

    # --- streaming ----------------------------------------------------------------------------
    def init_data(self, key, batch_size: int) -> StreamState:
        newline = self.vocabulary.index("\n")
        return StreamState(self.init_gen(key, batch_size), jnp.full((batch_size,), newline, jnp.int32),
                           init_score())

    def next_batch(self, data_state: StreamState, key, batch_size: int):
        T, V = self.n_steps, len(self.vocabulary)
        gen, chars = self.symbols(data_state.gen, key, T)                    # [T, B]
        inputs = jnp.concatenate([data_state.prev[None], chars[:-1]], axis=0)
        batch = Batch(inputs=jax.nn.one_hot(inputs, V), targets=jax.nn.one_hot(chars, V),
                      weights=jnp.full((T, batch_size), 1.0 / T), extras=chars)
        return data_state._replace(gen=gen, prev=chars[-1]), batch

    def eval_batch(self, key, batch_size: int):
        return None

    def online_metrics(self, data_state: StreamState, metrics: dict, params):
        """Running scores after the optimizer has scored this window (``metrics['loss']``)."""
        del params
        score = update_score(data_state.score, metrics["loss"] / LN2, self.n_steps)
        extra = {"bits_per_char": score.cumulative, "bits_per_char_recent": score.recent,
                 "characters": score.chars}
        extra.update({f"bits_per_char_{k}": jnp.asarray(v, jnp.float32) for k, v in self.reference_rates.items()})
        return data_state._replace(score=score), extra

    # --- reporting ----------------------------------------------------------------------------
    def describe(self, final: dict) -> str:
        if "train/bits_per_char" not in final:
            return ""
        refs = "   ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in self.reference_rates.items())
        return (f"bits/char cumulative {final['train/bits_per_char']:.3f}   recent "
                f"{final['train/bits_per_char_recent']:.3f}   {refs}")

    def plot_history(self, out_dir, history: list[dict]) -> list[str]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in history if "train/bits_per_char" in r]
        if not rows:
            return []
        chars = [r["train/characters"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(chars, [r["train/bits_per_char"] for r in rows], label="cumulative (online)")
        ax.plot(chars, [r["train/bits_per_char_recent"] for r in rows], label="recent", alpha=0.7)
        for (name, value), style in zip(self.reference_rates.items(), ("--", ":", "-.")):
            ax.axhline(value, color="k", ls=style, lw=0.8, label=f"{name.replace('_', ' ')} {value:.3f}")
        ax.set_xscale("log")
        ax.set_xlabel("characters per stream")
        ax.set_ylabel("bits per character")
        ax.set_title(self.name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = f"{out_dir}/{self.name}_bits_per_char.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
