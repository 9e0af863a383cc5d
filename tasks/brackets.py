"""Distant brackets: next-character prediction where a bracketed string must be recalled after
a random gap (UORO paper; the authors' ``datasets/distant-brackets/generate.lua``;
docs/uoro.md).

Periods of one sample, S = ``n_saved`` symbols, R ~ U{gap_min..gap_max} filler symbols:

    open       '['
    saved      S random symbols c₁ … c_S
    close      ']'
    gap        R random symbols (fresh)
    reopen     '['
    recall     the same c₁ … c_S
    reclose    ']'
    end        '\\n'

Random symbols are the K = ``n_symbols`` ASCII characters 33 … 33+K−1 (``! " # $ …``).
Vocabulary (sorted): ``'\\n'``, the K symbols, ``'['``, ``']'`` (V = K + 3).
Entropy per sample (S + E[R]) log₂K + log₂(gap range); per character divide by 2S + E[R] + 5.
Defaults S=1, R=5, K=10: optimum 1.661 bits/char; without memory of the saved symbols 1.938.
"""
from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from sofo_lab.core.errors import ConfigError
from sofo_lab.tasks.streams import CharStream, check_n_steps


class BracketsGen(NamedTuple):
    saved: jax.Array   # [B, S] int32 symbol indices
    gap: jax.Array     # [B] int32: this sample's R
    pos: jax.Array     # [B] int32: position inside the sample


def reference_rates(n_saved: int, gap_min: int, gap_max: int, n_symbols: int) -> dict:
    mean_gap = (gap_min + gap_max) / 2
    length = 2 * n_saved + mean_gap + 5
    gap_bits = math.log2(gap_max - gap_min + 1)
    k = math.log2(n_symbols)
    return {"optimal": ((n_saved + mean_gap) * k + gap_bits) / length,
            "no_memory": ((2 * n_saved + mean_gap) * k + gap_bits) / length}


class Brackets(CharStream):
    name: ClassVar[str] = "brackets"

    def __init__(self, n_steps: int = 32, n_saved: int = 1, gap_min: int = 5, gap_max: int = 5,
                 n_symbols: int = 10):
        check_n_steps(n_steps)
        for key, value, low in (("n_saved", n_saved, 1), ("gap_min", gap_min, 0), ("n_symbols", n_symbols, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"task.{key}", value, f"must be an integer >= {low}")
        if not isinstance(gap_max, int) or gap_max < gap_min:
            raise ConfigError("task.gap_max", gap_max, f"must be an integer >= task.gap_min={gap_min}")
        if n_symbols > 58:
            raise ConfigError("task.n_symbols", n_symbols, "must be <= 58 (ASCII 33… must stay below '[')")
        self.n_steps, self.n_saved, self.gap_min, self.gap_max = n_steps, n_saved, gap_min, gap_max
        self.n_symbols = n_symbols
        self.vocabulary = ("\n", *(chr(33 + i) for i in range(n_symbols)), "[", "]")
        self.open, self.close = n_symbols + 1, n_symbols + 2
        self.reference_rates = reference_rates(n_saved, gap_min, gap_max, n_symbols)

    def _new_sample(self, key, batch_size: int):
        k_saved, k_gap = jax.random.split(key)
        saved = jax.random.randint(k_saved, (batch_size, self.n_saved), 1, self.n_symbols + 1)
        gap = jax.random.randint(k_gap, (batch_size,), self.gap_min, self.gap_max + 1)
        return saved, gap

    def init_gen(self, key, batch_size: int) -> BracketsGen:
        saved, gap = self._new_sample(key, batch_size)
        return BracketsGen(saved, gap, jnp.zeros((batch_size,), jnp.int32))

    def emit(self, gen: BracketsGen, key):
        saved, gap, pos = gen
        S, B = self.n_saved, pos.shape[0]
        k_fill, k_new = jax.random.split(key)
        filler = jax.random.randint(k_fill, (B,), 1, self.n_symbols + 1)
        recall_start = S + gap + 3                  # first recalled symbol
        idx_saved = jnp.clip(pos - 1, 0, S - 1)
        idx_recall = jnp.clip(pos - recall_start, 0, S - 1)
        pick = lambda i: jnp.take_along_axis(saved, i[:, None], axis=1)[:, 0]
        symbol = jnp.select(
            [pos == 0, pos <= S, pos == S + 1, pos <= S + 1 + gap, pos == S + 2 + gap,
             pos < recall_start + S, pos == recall_start + S],
            [self.open, pick(idx_saved), self.close, filler, self.open, pick(idx_recall), self.close],
            default=0)
        done = pos == recall_start + S + 1         # the final newline
        new_saved, new_gap = self._new_sample(k_new, B)
        gen = BracketsGen(jnp.where(done[:, None], new_saved, saved), jnp.where(done, new_gap, gap),
                          jnp.where(done, 0, pos + 1))
        return gen, symbol.astype(jnp.int32)


def parse(text: str, n_saved: int, gap_min: int, gap_max: int, n_symbols: int) -> int:
    """Check a stream against the grammar; return the number of samples (ValueError if not)."""
    symbols = "".join(chr(33 + i) for i in range(n_symbols))
    lines = text.split("\n")
    if lines[-1] != "":
        raise ValueError("the stream must end with a newline")
    for line in lines[:-1]:
        S = n_saved
        if len(line) < 2 * S + 4 or line[0] != "[" or line[S + 1] != "]":
            raise ValueError(f"bad opening of {line!r}")
        saved, rest = line[1:S + 1], line[S + 2:]
        gap = len(rest) - (S + 2)
        if not gap_min <= gap <= gap_max:
            raise ValueError(f"gap {gap} outside [{gap_min}, {gap_max}] in {line!r}")
        if rest[gap:] != f"[{saved}]":
            raise ValueError(f"recall {rest[gap:]!r} does not repeat [{saved}] in {line!r}")
        if any(c not in symbols for c in saved + rest[:gap]):
            raise ValueError(f"a symbol outside the alphabet in {line!r}")
    return len(lines) - 1
