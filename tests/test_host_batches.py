"""Batches made on the host (issue 22, item 1): a pure function of (seed, iteration), prepared ahead on
a worker thread, stacked for steps_per_dispatch, the same training as one batch per call, and a
resumed run that sees the uninterrupted run's batches (tests/test_recorded.py checks that end to end)."""
import threading
import time

import numpy as np
import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.core.system import Batch
from sofo_lab.tasks.recorded import Recorded
from sofo_lab.train.host_batches import HostBatches
from sofo_lab.train.trainer import train
from tests.conftest import compose_config


def recorded(tmp_path, n=20, T=6):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(n, T, 2)).astype(np.float32)
    inputs[:, :, 0] = np.arange(n)[:, None]                   # channel 0 carries the trial's index
    path = tmp_path / "data.npz"
    np.savez(path, inputs=inputs, targets=rng.poisson(1.5, size=(n, T, 3)).astype(np.float32))
    return Recorded(path=str(path), holdout=0.25)


def trial_ids(batch):
    return np.asarray(batch.inputs)[0, :, 0].astype(int).tolist()


def test_a_pool_tasks_host_batch_is_a_function_of_seed_and_iteration(tmp_path):
    task = recorded(tmp_path)
    assert task.host_batches
    a, b = task.host_batch(0, 5, 8), task.host_batch(0, 5, 8)
    assert all(isinstance(x, np.ndarray) for x in (a.inputs, a.targets, a.weights))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert trial_ids(a) != trial_ids(task.host_batch(0, 6, 8)) != trial_ids(task.host_batch(1, 5, 8))
    assert len(set(trial_ids(a))) == 8                                     # no repeat: 15 training trials
    seen = set().union(*(trial_ids(task.host_batch(0, i, 8)) for i in range(30)))
    assert seen == set(task.train_index.tolist())                          # never a held-out trial


class Slow:
    """A host task whose batches take time and say which thread made them."""

    host_batches = True

    def __init__(self):
        self.threads = []

    def host_batch(self, seed, iteration, batch_size):
        self.threads.append(threading.current_thread().name)
        time.sleep(0.05)
        x = np.full((4, batch_size, 1), 100 * seed + iteration, np.float32)
        return Batch(x, x, np.ones((4, batch_size), np.float32))


def test_batches_are_made_ahead_on_a_worker_thread_and_stacked_per_call():
    task = Slow()
    batches = HostBatches(task, seed=3, batch_size=2)
    try:
        first = batches.get(0, 1, upcoming=[(1, 2), (3, 1)])
        assert float(first.inputs[0, 0, 0]) == 300.0
        time.sleep(0.3)                                  # the device would be training now
        t0 = time.perf_counter()
        stacked = batches.get(1, 2, upcoming=[(3, 1)])
        assert time.perf_counter() - t0 < 0.04           # made while we slept, not now
        assert stacked.inputs.shape == (2, 4, 2, 1) and np.asarray(stacked.inputs)[:, 0, 0, 0].tolist() == [301, 302]
        assert float(batches.get(3, 1).inputs[0, 0, 0]) == 303.0
        assert task.threads and all(name.startswith("sofo-batches") for name in task.threads)
    finally:
        batches.close()


def test_a_batch_whose_shape_changes_is_one_clear_error():
    class Changing(Slow):
        def host_batch(self, seed, iteration, batch_size):
            x = np.zeros((4 + iteration, batch_size, 1), np.float32)
            return Batch(x, x, np.ones((4 + iteration, batch_size), np.float32))

    batches = HostBatches(Changing(), 0, 2)
    try:
        batches.get(0, 1)
        with pytest.raises(ConfigError, match="task.host_batch.*batch 1.*shapes"):
            batches.get(1, 1)
    finally:
        batches.close()


RUN = ["task=recorded", "task.n_steps=20", "model.n_hidden=8", "batch_size=16", "logger=none", "progress=false",
       "plots=false", "optim=adam", "iterations=12", "eval_every=6", "checkpoint_every=6", "log_every=1"]


def test_several_updates_per_call_train_exactly_as_one_per_call(tmp_path):
    one = train(compose_config(RUN), tmp_path / "one")
    three = train(compose_config([*RUN, "steps_per_dispatch=3"]), tmp_path / "three")
    assert three["profile"]["steps_per_dispatch"] == 3
    assert one["final"] == three["final"]


@pytest.mark.slow
def test_host_batches_benchmark_quick(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_host_batches

    result = bench_host_batches.main(["--quick", "--optims", "adam", "--out", str(tmp_path / "hb.json")])
    assert set(result["records"]) == {"adam/device", "adam/host"} and (tmp_path / "hb.json").is_file()
    for rec in result["records"].values():
        assert rec["compile_s"] > 0 and 0 < rec["ms_min"] <= rec["ms"] and rec["pool_mb"] > 0
