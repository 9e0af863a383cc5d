"""What the trained networks compute: sofo-analyze on a 3-bit flip-flop and on the reach (docs/analysis.md).

    python scripts/bench_analysis.py                          # trains both with sofo-run, then analyzes
    python scripts/bench_analysis.py --reach-run outputs/reach-sofo/<time>   # reuse a finished reach run

1. The flip-flop of docs/library.md ("Your own task from the command line"; Sussillo & Barak 2013),
   its files written into a project folder outside the repository, trained by
   ``sofo-run --config-dir conf task=flipflop`` (a tanh rate network, Adam); its accuracy measured on
   1024 held-out trials (the bits after each channel's first pulse: before it the target is 0, which
   no sign can match); then ``sofo-analyze RUN --config-dir conf``.
2. The reach: the default ``sofo-run task=reach`` (SOFO, 2000 iterations; ~9 min alone on 2 cores,
   longer beside other work), or ``--reach-run``; then ``sofo-analyze RUN``.

Writes, under docs/results/: ``analysis_<name>.json`` (the command lines, accuracy or the run's
final metrics, sofo-analyze's summary and wall time, the machine), the two figures
``analysis_<name>_{pca_trajectories,eigenvalues}.png``, and the trained network itself
(``analysis_runs/<name>/.hydra/config.yaml`` and ``checkpoints/params.npz``: a run directory that
``load_run`` and ``sofo-analyze`` read), which tests/test_analysis.py analyzes again and checks.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
DOC = REPO / "docs" / "library.md"
FLIPFLOP = ["--config-dir", "conf", "task=flipflop", "model=rnn", "model.nonlinearity=tanh", "model.n_hidden=48",
            "optim=adam", "optim.lr=1e-2", "optim.schedule=cosine", "iterations=6000", "batch_size=64",
            "eval_every=1000", "log_every=100", "checkpoint_every=1000"]
REACH = ["task=reach", "optim=sofo"]


def write_flipflop_project(root: Path) -> None:
    """The files of docs/library.md's flip-flop section (the blocks naming their file), as a user has them."""
    text = DOC.read_text().split("## Your own task from the command line", 1)[1]
    (root / "mylab").mkdir(parents=True, exist_ok=True)
    (root / "mylab" / "__init__.py").write_text("")
    for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M):
        first = body.splitlines()[0]
        if lang in ("python", "yaml") and first.startswith("# "):
            path = root / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)


def flipflop_accuracy(run_dir: Path, n_trials: int = 1024) -> dict:
    import jax
    import numpy as np

    import sofo_lab

    run = sofo_lab.load_run(run_dir)
    batch = run.task.sample(jax.random.PRNGKey(20_000), n_trials)       # not a batch the run trained on
    ys = np.asarray(sofo_lab.simulate(run.system, run.params, batch).outputs)
    targets = np.asarray(batch.targets)
    held = targets != 0
    return {"bit_accuracy_after_first_pulse": float(np.mean(np.sign(ys[held]) == targets[held])),
            "bit_accuracy_all_steps": float(np.mean(np.sign(ys) == targets)), "trials": n_trials}


def analyze(run_dir: Path, cwd: Path, extra=()) -> tuple[dict, float, str]:
    exe = Path(sys.executable).with_name("sofo-analyze")
    cmd = [str(exe) if exe.is_file() else "sofo-analyze", str(run_dir), "--no-progress", *extra]
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads((run_dir / "analysis" / "summary.json").read_text()), seconds, proc.stdout.strip()


def keep(name: str, run_dir: Path, record: dict) -> None:
    """The record, the figures and the trained network (config + params.npz) under docs/results/."""
    for fig in ("pca_trajectories", "eigenvalues"):
        shutil.copy(run_dir / "analysis" / f"{fig}.png", RESULTS / f"analysis_{name}_{fig}.png")
    dest = RESULTS / "analysis_runs" / name
    shutil.rmtree(dest, ignore_errors=True)
    (dest / ".hydra").mkdir(parents=True)
    (dest / "checkpoints").mkdir()
    shutil.copy(run_dir / ".hydra" / "config.yaml", dest / ".hydra" / "config.yaml")
    shutil.copy(run_dir / "checkpoints" / "params.npz", dest / "checkpoints" / "params.npz")
    path = RESULTS / f"analysis_{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}, {dest}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reach-run", default=None, help="a finished `sofo-run task=reach` run to analyze instead of training one")
    ap.add_argument("--only", choices=("flipflop", "reach"), default=None)
    ap.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-analysis-")).resolve()
    work.mkdir(parents=True, exist_ok=True)

    if args.only in (None, "flipflop"):
        project = work / "myproject"
        write_flipflop_project(project)
        run_dir = project / "runs" / "flipflop"
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sofo_lab.cli.run", *FLIPFLOP, "logger=none", "progress=false", "plots=false", "resume=false",
                        f"hydra.run.dir={run_dir}"], cwd=project, check=True, capture_output=True, text=True)
        train_s = time.perf_counter() - began
        sys.path.append(str(project))
        accuracy = flipflop_accuracy(run_dir)
        summary, seconds, line = analyze(run_dir, project, ["--config-dir", "conf"])
        final = json.loads((run_dir / "summary.json").read_text())["final"]
        keep("flipflop", run_dir, {
            "train_command": "sofo-run " + " ".join(FLIPFLOP), "train_wall_s": round(train_s, 1), "final": final,
            "accuracy": accuracy, "analyze_command": "sofo-analyze RUN_DIR --config-dir conf",
            "analyze_wall_s": round(seconds, 1), "analyze_line": line, "analysis": summary, "machine": machine()})

    if args.only in (None, "reach"):
        if args.reach_run:
            run_dir, train_s = Path(args.reach_run).resolve(), None
        else:
            began = time.perf_counter()
            run_dir = run_cli(REACH, work / "reach")
            train_s = round(time.perf_counter() - began, 1)
        summary, seconds, line = analyze(run_dir, work)
        final = json.loads((run_dir / "summary.json").read_text())["final"] if (run_dir / "summary.json").is_file() else None
        keep("reach", run_dir, {
            "train_command": "sofo-run " + " ".join(REACH), "train_wall_s": train_s, "final": final,
            "analyze_command": "sofo-analyze RUN_DIR", "analyze_wall_s": round(seconds, 1), "analyze_line": line,
            "analysis": summary, "machine": machine()})


if __name__ == "__main__":
    main()
