"""Run directories that are corrupt, contested or on a full disk: checkpoints verified with the
previous one kept, the disk probe, the lock, a torn metrics line (README, "What goes wrong"; the
other failure classes: tests/test_faults.py and tests/test_faults_sizes.py)."""
from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import time

import pytest

from sofo_lab.core.errors import ConfigError
from sofo_lab.train import checkpoint, rundir
from tests.conftest import one_line_error, run_cli

TINY = ["task=kalman", "optim=adam", "iterations=3", "batch_size=4", "task.n_steps=12", "model.n_hidden=8",
        "logger=none", "progress=false", "plots=false", "log_every=1", "eval_every=2", "checkpoint_every=2"]


# --- checkpoints: verified, the previous one kept -----------------------------------------------

def _state(i):
    import jax.numpy as jnp

    from sofo_lab.train.state import TrainState

    return TrainState({"w": jnp.full((3,), float(i))}, (), (), None, jnp.asarray(i, jnp.int32))


def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = {"seed": 0, "optim": {"lr": 0.1}}
    assert checkpoint.load(tmp_path) is None
    for i in (2, 4):
        checkpoint.save(tmp_path, _state(i), cfg)
    last, prev = tmp_path / checkpoint.CHECKPOINT, tmp_path / checkpoint.PREVIOUS
    assert int(checkpoint.load(tmp_path)["state"].iteration) == 4
    assert int(pickle.loads(prev.read_bytes())["state"].iteration) == 2   # still a plain pickle
    last.write_bytes(last.read_bytes()[:-100])                             # truncated
    capsys.readouterr()
    assert int(checkpoint.load(tmp_path)["state"].iteration) == 2
    warning = capsys.readouterr().err.strip()
    assert "unusable" in warning and "prev.pkl (iteration 2)" in warning and "\n" not in warning
    blob = bytearray(prev.read_bytes())
    blob[10] ^= 0xFF                                                        # a flipped bit
    prev.write_bytes(bytes(blob))
    with pytest.raises(ConfigError) as err:
        checkpoint.load(tmp_path)
    assert "no valid checkpoint" in str(err.value) and "resume=false" in str(err.value)
    assert "checksum mismatch" in str(err.value)


def test_a_key_added_later_with_a_null_default_does_not_block_the_resume(tmp_path):
    """A run saved before ``optim.plateau`` existed resumes when today's config holds it as null (Adam's
    default); with SOFO's default (true) it is a different config, named, and the same command with
    ``optim.plateau=null`` resumes it with the constant step it was trained with."""
    old = {"seed": 0, "optim": {"lr": 0.1, "clip_norm": None}}
    checkpoint.save(tmp_path, _state(2), old)
    assert int(checkpoint.resume_payload(tmp_path, {"seed": 0, "optim": {**old["optim"], "plateau": None}})
               ["state"].iteration) == 2
    with pytest.raises(ConfigError) as err:
        checkpoint.resume_payload(tmp_path, {"seed": 0, "optim": {**old["optim"], "plateau": True}})
    assert "optim.plateau: None -> True" in str(err.value)
    with pytest.raises(ConfigError) as err:
        checkpoint.resume_payload(tmp_path, {"seed": 0, "optim": {"lr": 0.2, "clip_norm": None}})
    assert "optim.lr: 0.1 -> 0.2" in str(err.value)


def test_a_checkpoint_written_before_the_layers_still_loads(tmp_path, monkeypatch):
    """A checkpoint pickles TrainState by its module's name: one written when that was
    sofo_lab.runner (before sofo_lab/ was split into layers) loads as today's TrainState."""
    import collections
    import types

    from sofo_lab.train.state import TrainState

    old = types.ModuleType("sofo_lab.runner")
    old.TrainState = collections.namedtuple("TrainState", TrainState._fields, module="sofo_lab.runner")
    monkeypatch.setitem(sys.modules, "sofo_lab.runner", old)
    checkpoint.save(tmp_path, old.TrainState(*_state(3)), {"seed": 0})
    monkeypatch.delitem(sys.modules, "sofo_lab.runner")
    state = checkpoint.load(tmp_path)["state"]
    assert type(state) is TrainState and int(state.iteration) == 3


def test_a_full_disk_mid_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    cfg = {"seed": 0}
    checkpoint.save(tmp_path, _state(2), cfg)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    with pytest.raises(OSError) as err:
        checkpoint.save(tmp_path, _state(4), cfg)
    assert int(checkpoint.load(tmp_path)["state"].iteration) == 2
    msg = str(checkpoint.write_failed(err.value, tmp_path))
    assert msg.startswith("the disk is full writing") and "(iteration 2) is intact" in msg and "rerun" in msg


def test_the_write_probe_writes_bytes(tmp_path):
    """On a filesystem with less than 1 MiB free the probe fails (a 0-byte probe would pass)."""
    code = ("import resource, signal, sys; from sofo_lab.train import rundir\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (512 << 10, 512 << 10))\n"
            "open(sys.argv[1] + '/empty', 'w').close()\n"
            "try:\n    rundir.probe(sys.argv[1])\nexcept OSError as e:\n    print('refused', e.errno)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.stdout.split() == ["refused", str(errno.EFBIG)], out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]   # the probe file is gone
    rundir.probe(tmp_path)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root; test_a_full_disk_mid_checkpoint_keeps_the_last_good_one "
                    "covers the in-process path")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_before_and_during_a_run(tmp_path, tiny_disk):
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (1536 << 10))             # 0.5 MiB left: the 1 MiB probe fails
    line = one_line_error(run_cli([*TINY, f"hydra.run.dir={tiny_disk}/run"], cwd=tmp_path))
    assert "hydra.run.dir" in line and "No space left on device" in line
    filler.unlink()
    run = tiny_disk / "run"
    args = [*TINY, "iterations=400", "checkpoint_every=20", "log_every=1", "eval_every=1000",
            f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (run / checkpoint.CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    with open(filler, "wb") as f:                           # fill the disk mid-run
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:   # ENOSPC: the disk is full now, which is what the test wants
            pass
    out = subprocess.CompletedProcess(proc.args, proc.wait(timeout=180), *proc.communicate())
    line = one_line_error(out, code=1)
    assert line.startswith("run failed: the disk is full") and "is intact" in line, out.stderr[-2000:]
    assert checkpoint.load(run) is not None


def test_the_lock_names_its_holder_and_is_reentrant(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from sofo_lab.train import rundir; "
                               "rundir.lock(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as err:
            rundir.lock(tmp_path)
        assert f"in use by process {holder.pid}" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    rundir.lock(tmp_path)        # released by the holder's death
    rundir.lock(tmp_path)        # this process holds it already: no-op
    assert (tmp_path / rundir.LOCK).read_text().strip() == str(os.getpid())
    rundir.unlock(tmp_path)


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    from sofo_lab.train.callbacks import MetricsFile

    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3, "train/lo')
    metrics = MetricsFile()
    assert metrics.open(tmp_path, resume_iteration=2) == [{"iteration": 1}, {"iteration": 2}]   # a SIGKILL mid-write
    metrics.close()                                                                           # left half a line
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iteration": 1}\n{"iteration": 2}\n'
