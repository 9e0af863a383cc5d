"""``sofo-run``: compose, pre-check, hand over.

``main`` checks every run the command asks for before anything is written (cli/precheck.py: bad
input is one line and exit status 2), then Hydra runs as in any Hydra app (``--cfg job``, ``-m``,
launchers). Each job trains, with a ``Trainer`` (train/trainer.py), the run the pre-check built;
a job in a process of its own (submitit, SLURM) builds it there. ``sofo-run --help``: cli/help.py.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sofo_lab.cli.command import flags_first, set_up_process
from sofo_lab.cli.precheck import precheck, run_key
from sofo_lab.conf import CONF_DIR
from sofo_lab.core.errors import ConfigError, RunFailed
from sofo_lab.train import checkpoint, console
from sofo_lab.train.trainer import Trainer, prepare

_checked: dict = {}   # run_key -> [Prepared]: what the pre-check built, for the jobs of this process
_exit_code = 0


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _run(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig

    from sofo_lab.cli.sweep import note_failure, sweep_dir_of

    for noisy in ("jax", "matplotlib", "absl"):   # Hydra's logging config would show their INFO lines
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console.install()   # also in submitit's job processes
    hc = HydraConfig.get()
    run_dir, sweep = Path(hc.runtime.output_dir), sweep_dir_of(hc)
    try:
        built = _checked.get(run_key(cfg))
        run = built.pop(0) if built else prepare(cfg, {k: v for k, v in hc.runtime.choices.items()
                                                       if not k.startswith("hydra")})
        summary = Trainer(run, run_dir, sweep=sweep and sweep.name).fit()
    except ConfigError as err:
        _report(f"error: {err}", 2)
        return note_failure(err)
    except RunFailed as err:
        _report(f"run failed: {err}", 1)
        return note_failure(err)
    except OSError as err:   # a full disk or lost permissions mid-run: one line, the checkpoint kept
        _report(f"run failed: {(failed := checkpoint.write_failed(err, run_dir))}", 1)
        return note_failure(failed)
    return summary["final"].get("loss", float("nan"))


def _report(message: str, code: int) -> None:
    global _exit_code
    print(message, file=sys.stderr, flush=True)
    _exit_code = max(_exit_code, code)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        import traceback

        traceback.print_exc()


def main() -> None:
    argv = sys.argv[1:]
    set_up_process(argv)
    console.install()
    if any(a in ("-h", "--help") for a in argv):   # sofo_lab/cli/help.py; Hydra's own: --hydra-help
        from sofo_lab.cli.help import render

        print(render([a for a in argv if a not in ("-h", "--help", "-m", "--multirun")]))
        sys.exit(0)
    try:
        _checked.update(precheck(argv))
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = flags_first(argv)
    try:
        _run()
    except KeyboardInterrupt:   # Ctrl-C before training started (training itself checkpoints and exits 130)
        print("interrupted before training started: nothing new to checkpoint (checkpoints already written are "
              "kept); rerun the same command to start or resume", file=sys.stderr)
        sys.exit(130)
    from sofo_lab.cli.sweep import sweep_incomplete

    sys.exit(max(_exit_code, 1 if sweep_incomplete() else 0))


if __name__ == "__main__":
    main()
