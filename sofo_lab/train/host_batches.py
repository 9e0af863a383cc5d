"""Training batches made on the host (a recording, a gym environment), prepared ahead on a thread.

A task with ``host_batches = True`` (tasks/base.py) makes batch ``i`` with
``host_batch(seed, i, B)``: numpy arrays, a function of ``(seed, i)`` only, so a resumed run sees
the batches an uninterrupted one does. ``HostBatches`` asks for the batches of the next calls on
one worker thread and puts them on the device while the device runs the current update, so the
host's work is hidden as long as it is shorter than an update. A call of n updates
(``steps_per_dispatch``) gets the n batches stacked on a leading axis.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from sofo_lab.core.errors import ConfigError


class HostBatches:
    """``get(i, n)``: the batches of updates ``i … i+n−1``; ``ahead`` calls are prepared in advance."""

    def __init__(self, task, seed: int, batch_size: int, ahead: int = 2):
        self.task, self.seed, self.batch_size, self.ahead = task, int(seed), int(batch_size), int(ahead)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sofo-batches")
        self._pending: dict = {}
        self._shape = None

    def make(self, i: int, n: int = 1):
        """The batches of updates ``i … i+n−1`` on the device (stacked when ``n > 1``)."""
        batches = [self._checked(j, self.task.host_batch(self.seed, j, self.batch_size)) for j in range(i, i + n)]
        batch = batches[0] if n == 1 else jax.tree.map(lambda *xs: np.stack(xs), *batches)
        return jax.device_put(batch)

    def _checked(self, i: int, batch):
        shape = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), batch)
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ConfigError("task.host_batch", f"batch {i}",
                              f"must keep the shapes and dtypes of the first batch ({self._shape}), got {shape}")
        return batch

    def get(self, i: int, n: int, upcoming=()):
        """The batches of the call ``(i, n)``; ``upcoming``: the next calls ``(i', n')``, started now."""
        future = self._pending.pop((i, n), None) or self._pool.submit(self.make, i, n)
        for call in list(upcoming)[: self.ahead]:
            if call not in self._pending:
                self._pending[call] = self._pool.submit(self.make, *call)
        return future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
