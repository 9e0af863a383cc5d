"""The flagship's frontier at equal wall-clock: the reach against the network's size N (issue 23, item 4).

    python scripts/bench_frontier.py [--sizes 32,64,128] [--optims sofo,adam] [--budget 600] [--jobs 2]
                                     [--task reach|double_reach] [--seed 0] [--out docs/results/frontier_10min.json]

For each N and each optimizer (SOFO as ``sofo-run`` runs it, with the reach preset; Adam on full
BPTT at the setting docs/motor.md found best, lr 3e-3 with global-norm clipping 1) one run of
``sofo-run task=reach model.n_hidden=N`` (``--task double_reach``: the double reach) trains until
its training clock (``time_s``: compilation, evaluation and checkpoints not counted) passes
``--budget`` seconds, and is then stopped with SIGTERM (the run checkpoints and exits, so it can
be continued). The table is every run read at
its last held-out evaluation within the budget (``sofo-compare --at seconds=<budget>``): loss,
within 1 cm, moved early, hold error, and the iteration that evaluation came at.

``--jobs 2`` runs two at a time, each on one core (XLA single-threaded), so that the pair shares
the machine alike; the runs of one size run together (SOFO beside Adam). The budget is then one
core's; the record says so (``machine.xla_flags``). Runs already finished under ``--work`` are
read again, not rerun.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import QUIET, machine, write_json  # noqa: E402

OPTIMS = {"sofo": ["optim=sofo"], "adam": ["optim=adam", "optim.lr=3e-3", "optim.clip_norm=1.0"]}
# rough seconds an iteration on one core, to space about EVALS held-out evaluations over the budget
SECONDS_PER_ITERATION = {"sofo": {32: 0.35, 64: 0.6, 128: 1.8}, "adam": {32: 0.03, 64: 0.05, 128: 0.12}}
EVALS = 30
ONE_CORE = "--xla_cpu_multi_thread_eigen=false"   # as scripts/bench_sofo_noisy.py's runs
POLL_S = 2.0   # how often the metrics file is read
METRICS = ["within_1cm", "moved_early", "hold_error_cm"]


def last_record(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:   # a line being written
            continue
    return {}


def train_for(optim: str, n: int, budget: float, run_dir: Path, seed: int, task: str = "reach") -> dict:
    """One run, stopped once its training clock passes ``budget`` seconds and an evaluation follows."""
    if (run_dir / "budget_reached").is_file():
        return {"optim": optim, "n_hidden": n, "run_dir": str(run_dir), "reused": True}
    every = max(1, round(budget / SECONDS_PER_ITERATION[optim].get(n, 1.0) / EVALS))
    args = [f"task={task}", f"model.n_hidden={n}", *OPTIMS[optim], f"seed={seed}", "iterations=1000000",
            f"eval_every={every}", f"log_every={every}", "checkpoint_every=1000000", *QUIET,
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + ONE_CORE).strip()}
    proc = subprocess.Popen([sys.executable, "-m", "sofo_lab.cli.run", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    while proc.poll() is None:
        rec = last_record(run_dir / "metrics.jsonl")
        if rec.get("time_s", 0.0) >= budget and "eval/loss" in rec:
            proc.send_signal(signal.SIGTERM)   # the run checkpoints and exits
            proc.wait()
            (run_dir / "budget_reached").write_text(f"{rec['time_s']}\n")
            break
        time.sleep(POLL_S)
    err = proc.stderr.read() if proc.stderr else ""
    if not (run_dir / "budget_reached").is_file():
        raise RuntimeError(f"sofo-run {' '.join(args)} ended (exit {proc.returncode}) before its budget:\n{err[-2000:]}")
    wall = time.perf_counter() - started
    print(f"  {optim:5s} N={n:4d}: stopped at training second {rec['time_s']:.0f} (iteration {rec['iteration']}, "
          f"eval every {every}), {wall:.0f} s wall", flush=True)
    return {"optim": optim, "n_hidden": n, "run_dir": str(run_dir), "eval_every": every, "wall_s": wall}


def read_at(run_dir: str, budget: float) -> dict:
    """The run's last held-out evaluation within the budget."""
    from sofo_lab.analysis.runs import load_run

    run = load_run(run_dir, build=False)
    evals = [r for r in run.history if "eval/loss" in r and r.get("time_s", 0.0) <= budget]
    last = evals[-1] if evals else {}
    step = [r for r in run.history if "train/loss" in r]
    times = [b["time_s"] - a["time_s"] for a, b in zip(step, step[1:]) if b["iteration"] > a["iteration"]]
    return {"iteration": last.get("iteration"), "time_s": last.get("time_s"),
            **{k: last.get(f"eval/{k}") for k in ["loss", *METRICS, "solved"]},
            "s_per_logged_interval": None if not times else sorted(times)[len(times) // 2]}


def markdown(rows, budget) -> str:
    head = (f"| optimizer | N | iteration at the last evaluation within {budget:.0f} s | held-out loss | within 1 cm | "
            "moved early | hold error (cm) |\n|---|---:|---:|---:|---:|---:|---:|\n")
    fmt = lambda v, p: "–" if v is None else (f"{100 * v:.0f} %" if p else f"{v:.4g}")   # noqa: E731
    return head + "".join(f"| {r['optim']} | {r['n_hidden']} | {r['iteration']} | {fmt(r['loss'], False)} | "
                          f"{fmt(r['within_1cm'], True)} | {fmt(r['moved_early'], True)} | "
                          f"{fmt(r['hold_error_cm'], False)} |\n" for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32,64,128")
    ap.add_argument("--optims", default="sofo,adam")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default="reach", help="a motor task: reach or double_reach")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default="outputs/bench/frontier")
    ap.add_argument("--out", default="docs/results/frontier_10min.json")
    args = ap.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out)
    specs = [(o, int(n)) for n in args.sizes.split(",") for o in args.optims.split(",")]
    info = machine()
    info["xla_flags"] = f"{ONE_CORE} (each run)"
    print(f"machine: {info['cpu']} ({info['cpus_usable']} cores), {args.jobs} runs at a time, budget {args.budget:.0f} s",
          flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
        runs = list(ex.map(lambda s: train_for(s[0], s[1], args.budget, work / f"{s[0]}-N{s[1]}", args.seed,
                                              args.task), specs))
    rows = [{**r, **read_at(r["run_dir"], args.budget)} for r in runs]
    table = markdown(rows, args.budget)
    print(table)
    from sofo_lab.analysis.compare import compare

    written = compare([r["run_dir"] for r in rows], out=out.parent, stem=out.stem, metrics=METRICS,
                      at=("seconds", args.budget))
    write_json(out, {"benchmark": f"{args.task} at equal wall-clock against N (issue 23, item 4)", "budget_s": args.budget,
                     "seed": args.seed, "jobs": args.jobs, "optims": OPTIMS, "machine": info, "rows": rows,
                     "table_markdown": table, "written": written,
                     "command": "python scripts/bench_frontier.py " + " ".join(argv or sys.argv[1:])})
    out.with_suffix(".table.md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
