"""``sofo-analyze RUN_DIR``: the command line of sofo_lab/analysis/analyze.py (what it simulates, finds
and writes is described there; guide: docs/analysis.md)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sofo_lab.core.errors import ConfigError


def _importable(config_dir: str | None, run_dir: str) -> None:
    """Let a run of the user's own task load: as sofo-run does, the working directory goes on
    ``sys.path``; so do the directory holding ``--config-dir`` (myproject/ of myproject/conf) and the
    directory the run was started from (Hydra records it in ``.hydra/hydra.yaml``)."""
    found = [os.getcwd()]
    if config_dir is not None:
        if not Path(config_dir).is_dir():
            raise ConfigError("--config-dir", config_dir, "is not a directory; pass the folder holding task/<name>.yaml "
                              "(the one given to sofo-run)")
        found.append(str(Path(config_dir).resolve().parent))
    hydra_yaml = Path(run_dir) / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            from omegaconf import OmegaConf

            cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd")
            if cwd:
                found.append(str(cwd))
        except Exception:  # noqa: BLE001 - a hint only; load_run reports what does not import
            pass
    for entry in found:
        if entry not in sys.path:
            sys.path.append(entry)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="sofo-analyze", description=(
        "What a trained network computes: simulates held-out conditions of a finished sofo-run run, finds the "
        "fixed and slow points of the network under the task's constant inputs (the reach: the delay-period "
        "input of each target, arm held at the start; other tasks: zero input, or --input), and writes "
        "RUN_DIR/analysis/: fixed_points.npz, summary.json, pca_trajectories.png, eigenvalues.png."))
    ap.add_argument("run_dir", help="a run directory written by sofo-run (the 'Run directory:' it printed)")
    ap.add_argument("--config-dir", default=None,
                    help="the --config-dir the run was started with (a run of your own task): its parent folder "
                         "goes on the import path so your task's module loads")
    ap.add_argument("--input", action="append", default=None, metavar="V1,V2,...",
                    help="a constant task input to find fixed points under (one value per input channel); repeat "
                         "for several. Default: the task's (reach: each target's delay input; others: zero)")
    ap.add_argument("--conditions", type=int, default=8, help="conditions to simulate (targets, or trials) [8]")
    ap.add_argument("--repeats", type=int, default=8, help="noisy trials per condition, averaged (motor tasks) [8]")
    ap.add_argument("--starts", type=int, default=256, help="starting states per input: visited states + noise [256]")
    ap.add_argument("--noise", type=float, default=0.1, help="noise added to the starts, in units of the states' s.d. [0.1]")
    ap.add_argument("--steps", type=int, default=2000, help="Adam steps on q(x) = ½‖F(x,u) − x‖² [2000]")
    ap.add_argument("--lr", type=float, default=1e-2, help="Adam's initial learning rate [1e-2]")
    ap.add_argument("--q-tol", type=float, default=1e-6, help="keep points with q below this [1e-6]")
    ap.add_argument("--fixed-tol", type=float, default=1e-10, help="q below this: fixed point; above: slow point [1e-10]")
    ap.add_argument("--unique-tol", type=float, default=1e-2,
                    help="points under one input closer than this fraction of the visited states' mean norm are one "
                         "point (the lowest q stands for them) [0.01]")
    ap.add_argument("--components", type=int, default=3, help="principal components [3]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output directory (default: RUN_DIR/analysis)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        _importable(args.config_dir, args.run_dir)
        from sofo_lab.analysis.analyze import analyze_run

        result = analyze_run(args.run_dir, out_dir=args.out, inputs=args.input, n_conditions=args.conditions,
                             n_repeats=args.repeats, n_starts=args.starts, noise=args.noise, n_steps=args.steps,
                             learning_rate=args.lr, q_tol=args.q_tol, fixed_tol=args.fixed_tol,
                             unique_tol=args.unique_tol, n_components=args.components, seed=args.seed,
                             progress=not args.no_progress)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(result.line, flush=True)


if __name__ == "__main__":
    main()
