"""aⁿbⁿ: next-character prediction on an endless stream of blocks ``a…a\\n b…b\\n``
(UORO paper; the authors' ``datasets/anbn/generate.lua``; docs/uoro.md).

Periods of one block, n ~ U{n_min..n_max} drawn afresh per block:

    a-run      positions 0 … n−1        'a'
    a-end      position  n              '\\n'
    b-run      positions n+1 … 2n       'b'
    b-end      position  2n+1           '\\n'

Vocabulary (sorted): ``'\\n', 'a', 'b'``. The only uncertainty is n, so the entropy rate is
log₂(M)/E[2n+2] with M = n_max − n_min + 1. For n ∈ [1, 32]: optimum 5/35 = 0.143 bits/char;
a model that counts but forgets n before the b-run pays twice, 0.286; a model that does not
count (best constant stopping hazard per run) scores 0.311.
"""
from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError
from sofo_lab.tasks.streams import CharStream, check_n_steps

NEWLINE, A, B_ = 0, 1, 2


class AnBnGen(NamedTuple):
    n: jax.Array      # [B] int32: this block's n
    pos: jax.Array    # [B] int32: position inside the block (0 … 2n+1)


def reference_rates(n_min: int, n_max: int) -> dict:
    """Optimal, forgets-n and no-counting entropy rates in bits/char (docs/uoro.md)."""
    ns = range(n_min, n_max + 1)
    M = len(ns)
    mean_n = sum(ns) / M
    block = 2 * mean_n + 2
    optimum = math.log2(M) / block
    # No counting: after the first symbol of a run, a constant hazard q = 1/E[n] of stopping.
    q = 1.0 / mean_n
    per_run = (mean_n - 1) * -math.log2(1 - q) - math.log2(q) if q < 1 else 0.0
    return {"optimal": optimum, "forget_n": 2 * optimum, "no_counting": 2 * per_run / block}


class AnBn(CharStream):
    name: ClassVar[str] = "anbn"
    vocabulary = ("\n", "a", "b")

    def __init__(self, n_steps: int = 32, n_min: int = 1, n_max: int = 32):
        check_n_steps(n_steps)
        if not isinstance(n_min, int) or not isinstance(n_max, int) or not 1 <= n_min <= n_max:
            raise ConfigError("task.n_min", n_min, f"need integers 1 <= n_min <= n_max (n_max={n_max})")
        self.n_steps, self.n_min, self.n_max = n_steps, n_min, n_max
        self.reference_rates = reference_rates(n_min, n_max)

    def _draw_n(self, key, shape):
        return jax.random.randint(key, shape, self.n_min, self.n_max + 1)

    def init_gen(self, key, batch_size: int) -> AnBnGen:
        return AnBnGen(self._draw_n(key, (batch_size,)), jnp.zeros((batch_size,), jnp.int32))

    def emit(self, gen: AnBnGen, key):
        n, pos = gen
        symbol = jnp.where(pos < n, A, jnp.where((pos == n) | (pos == 2 * n + 1), NEWLINE, B_))
        done = pos == 2 * n + 1
        gen = AnBnGen(jnp.where(done, self._draw_n(key, n.shape), n), jnp.where(done, 0, pos + 1))
        return gen, symbol.astype(jnp.int32)


def parse(text: str) -> list[int]:
    """Parse a stream back into its block sizes; raises ValueError if it is not (aⁿ\\nbⁿ\\n)*."""
    lines = text.split("\n")
    if lines[-1] != "":
        raise ValueError("the stream must end with a newline")
    lines = lines[:-1]
    if len(lines) % 2:
        raise ValueError("an a-run without its b-run")
    sizes = []
    for a_run, b_run in zip(lines[::2], lines[1::2]):
        n = len(a_run)
        if n == 0 or a_run != "a" * n or b_run != "b" * n:
            raise ValueError(f"bad block {a_run!r} / {b_run!r}")
        sizes.append(n)
    return sizes
