"""Stop signals during training: checkpoint first, then let the signal do what it would have done.

SLURM stops a job with a signal: ``SIGTERM`` on preemption, ``scontrol requeue`` or ``scancel``
(then ``SIGKILL`` ``KillWait`` seconds later), and the ``--signal`` of the job (submitit asks for
``USR2``, ``signal_delay_s`` before the time limit). A signal handler must not write a checkpoint
itself (it may interrupt the loop half-way through a step), so ``StopSignals`` only notes the
signal; the Trainer's ``Preemption`` callback polls ``requested`` after each call of updates, saves
a checkpoint of the state it has just finished, and calls ``release()``, which hands the signal
to whoever handled it before:

- submitit's handler (SLURM launcher): ``USR2`` requeues the job and exits;
- nobody (plain ``sbatch`` or a shell): ``USR1``/``USR2`` inside a SLURM job requeue it with
  ``scontrol requeue $SLURM_JOB_ID``; then the process exits with status 128 + signal number.

``SIGINT`` (Ctrl-C) checkpoints the same way, prints one line and exits with status 130; the
same command resumes.

``SIGTERM`` means the job is ending (preemption, requeue, cancel). Outside SLURM the run exits
(status 143) after the checkpoint. Inside a SLURM job it stops training and waits (at most a
minute) for what SLURM does next: the ``SIGKILL`` of a requeue/cancel, or the ``USR2`` with which
submitit requeues a preempted job; training on would only compute steps that the kill throws away.

A requeued run starts the same command in the same run directory and resumes from
``checkpoints/last.pkl``; the batch and tangent keys depend only on (seed, iteration), so it ends
with the result of an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")) if s)


class StopSignals:
    """Notes SIGINT/SIGTERM/SIGUSR1/SIGUSR2 while installed (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.previous: dict = {}
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in SIGNALS:
            self.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._note)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def _note(self, signum, frame):  # noqa: ARG002
        self.signum = signum

    def release(self) -> None:
        """Hand the noted signal on (call after checkpointing); returns only if training may go on."""
        signum, previous = self.signum, dict(self.previous)
        self.signum = None
        name = signal.Signals(signum).name
        hint = "; rerun the same command to resume" if signum == signal.SIGINT else ""
        print(f"Caught {name}: checkpoint written{hint}", file=sys.stderr, flush=True)
        self.uninstall()
        if signum == signal.SIGINT:        # Ctrl-C: the user stops the run; the same command resumes
            sys.exit(128 + signum)
        handler = previous.get(signum, signal.SIG_DFL)
        if signum == signal.SIGTERM and handler != signal.SIG_IGN:
            if callable(handler):
                handler(signum, None)      # submitit: logs "bypassing"
            if os.environ.get("SLURM_JOB_ID"):
                for sig, h in previous.items():   # submitit's USR2 handler may still requeue us
                    signal.signal(sig, h if h is not None else signal.SIG_DFL)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    time.sleep(0.5)
            sys.exit(128 + signum)
        if callable(handler):
            handler(signum, None)          # e.g. submitit: requeue and exit (USR2)
        elif handler != signal.SIG_IGN:
            if os.environ.get("SLURM_JOB_ID"):
                job = os.environ.get("SLURM_ARRAY_JOB_ID") and \
                    f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
                job = job or os.environ["SLURM_JOB_ID"]
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                print(f"scontrol requeue {job}: " + ("done" if done.returncode == 0 else done.stderr.strip()),
                      file=sys.stderr, flush=True)
            sys.exit(128 + signum)
        self.install()                     # the previous handler let us go on: keep watching
