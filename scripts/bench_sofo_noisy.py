"""SOFO on a user's battery of tasks (issue 19): does SOFO keep improving on noisy tasks?

Each run is a real ``sofo-run --config-dir conf task=<task> model=<model> ...`` from
scripts/user_battery/ (tasks and a low-rank model written only against docs/library.md), for

    sofo              the defaults of conf/optim/sofo.yaml (the step shrinks when the loss stalls)
    sofo_constant     the same with optim.plateau=null: a constant step, the default before issue 19
    sofo_noise_aware  the defaults with optim.noise_aware=true (docs/sofo.md, "Noisy tasks")
    adam              Adam on full BPTT at its defaults (lr 1e-3)

over several seeds, with the held-out loss (``eval/loss``, 64 fixed trials) every 100 iterations.
Printed per task × model and method, averaged over seeds: the held-out loss at fixed iterations,
``end`` = the mean of the last three evaluations, ``end/best`` = end over the best evaluation
before them (≤ 1.1: no late degradation, issue 19), and ``end/adam``. Records under docs/results/.

    python scripts/bench_sofo_noisy.py                               # 1000 iterations, 3 seeds, 2 jobs
    python scripts/bench_sofo_noisy.py --iterations 3000 --methods sofo adam --cases noisy
    python scripts/bench_sofo_noisy.py --quick                       # the suite's check: tiny sizes

Runs already finished under ``--work`` are read, not rerun, so an interrupted benchmark continues.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATTERY = HERE / "user_battery"
REPO = HERE.parent

# (task, model, class): noisy = irreducible noise in the evidence or in the network
CASES = [
    ("context_decision", "rnn", "noisy"),
    ("context_decision", "gru", "noisy"),
    ("context_decision", "lowrank", "noisy"),
    ("dots_decision", "rnn", "noisy"),
    ("parametric_wm", "rnn", "noisy"),
    ("flipflop", "rnn", "deterministic"),
    ("interval_timing", "rnn", "deterministic"),
    ("sine_generation", "gru", "deterministic"),
]
METHODS = {
    "sofo": ["optim=sofo"],
    "sofo_constant": ["optim=sofo", "optim.plateau=null"],   # the default before issue 19: a constant step
    "sofo_noise_aware": ["optim=sofo", "optim.noise_aware=true"],
    "adam": ["optim=adam"],
}
QUICK = ["batch_size=8", "model.n_hidden=8", "eval_batch_size=8", "log_every=1"]


def sofo_run() -> str:
    exe = Path(sys.executable).with_name("sofo-run")
    if not exe.is_file():
        sys.exit("sofo-run is not installed next to this python: pip install -e .")
    return str(exe)


def run_one(work: Path, task: str, model: str, method: str, seed: int, iterations: int, quick: bool) -> Path:
    run_dir = work / f"{task}-{model}-{method}-s{seed}-{iterations}"
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("status") in ("completed", "diverged"):
        return run_dir
    extra = [*QUICK, "optim.n_tangents=4"] if quick and method != "adam" else (QUICK if quick else [])
    args = [sofo_run(), "--config-dir", "conf", f"task={task}", f"model={model}", *METHODS[method],
            f"seed={seed}", f"iterations={iterations}", "eval_every=100" if not quick else f"eval_every={iterations // 4}",
            "checkpoint_every=500", "logger=none", "progress=false", "plots=false", *extra,
            f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip(),
           "JAX_COMPILATION_CACHE_DIR": str(work / ".jax_cache")}
    proc = subprocess.run(args, cwd=BATTERY, capture_output=True, text=True, env=env)
    if not summary.is_file():
        raise RuntimeError(f"{' '.join(args[1:])} (exit {proc.returncode}) wrote no summary:\n{proc.stderr[-2000:]}")
    return run_dir


def reusable_runs(paths: list[str], iterations: int) -> dict:
    """``{(task, model, method, seed): run record}`` from earlier records of this benchmark at the same
    iteration count; each record says where it came from (``reused``)."""
    found = {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        if record["iterations"] != iterations:
            continue
        for run in record["runs"]:
            found[(run["task"], run["model"], run["method"], run["seed"])] = {
                **run, "evals": {int(k): v for k, v in run["evals"].items()}, "reused": str(path)}
    return found


def split_overrides(text: str) -> list[str]:
    """``a=1,b={x: 1, y: 2}`` -> ``["a=1", "b={x: 1, y: 2}"]``: commas inside braces or brackets stay."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def evaluations(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "eval/loss" in rec:
            out[int(rec["iteration"])] = float(rec["eval/loss"])
    return out


def end_and_best(evals: dict[int, float]) -> tuple[float, float]:
    """``end`` = mean of the last three evaluations; ``best`` = the lowest evaluation before them
    (iteration 0 excluded: the untrained network is no reference)."""
    its = sorted(evals)
    last, before = its[-3:], [i for i in its[:-3] if i > 0]
    end = statistics.fmean(evals[i] for i in last)
    best = min((evals[i] for i in before), default=end)
    return end, best


def at(evals: dict[int, float], iteration: int) -> float:
    """The evaluation at ``iteration``, or the last one before it (evaluations every 100)."""
    return evals[max(i for i in evals if i <= iteration)]


def summarize(records: list[dict], iterations: int) -> list[dict]:
    rows = []
    keys = sorted({(r["task"], r["model"], r["class"]) for r in records}, key=lambda k: (k[2] != "noisy", k))
    for task, model, cls in keys:
        per = {}
        for r in records:
            if (r["task"], r["model"]) == (task, model):
                per.setdefault(r["method"], []).append(r)
        adam_end = statistics.fmean(r["end"] for r in per["adam"]) if "adam" in per else None
        for method, runs in sorted(per.items()):
            ends = [r["end"] for r in runs]
            marks = {str(m): statistics.fmean(at(r["evals"], m) for r in runs)
                     for m in (iterations // 4, iterations // 2, 3 * iterations // 4, iterations)}
            rows.append({"task": task, "model": model, "class": cls, "method": method, "seeds": len(runs),
                         "end": statistics.fmean(ends), "end_sd": statistics.pstdev(ends),
                         "end_over_best": statistics.fmean(r["end"] / r["best"] for r in runs),
                         "worst_end_over_best": max(r["end"] / r["best"] for r in runs),
                         "end_over_adam": statistics.fmean(ends) / adam_end if adam_end else None,
                         "at": marks})
    return rows


def table(rows: list[dict], iterations: int) -> str:
    marks = [iterations // 4, iterations // 2, 3 * iterations // 4, iterations]
    head = ("| task | model | class | method | seeds | " + " / ".join(str(m) for m in marks)
            + " | end (mean ± sd) | end/best (worst seed) | end/adam |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        at = " / ".join(f"{r['at'][str(m)]:.3g}" for m in marks)
        ratio = f"{r['end_over_adam']:.2f}" if r["end_over_adam"] is not None else "–"
        lines.append(f"| {r['task']} | {r['model']} | {r['class']} | {r['method']} | {r['seeds']} | {at} | "
                     f"{r['end']:.3g} ± {r['end_sd']:.2g} | {r['end_over_best']:.2f} ({r['worst_end_over_best']:.2f}) "
                     f"| {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"of {list(METHODS)} and --define'd ones")
    ap.add_argument("--define", nargs="+", default=[], metavar="NAME=OVERRIDE,...",
                    help="a method of your own for a lever study, e.g. lr01=optim=sofo,optim.lr=0.1")
    ap.add_argument("--cases", nargs="+", default=["noisy", "deterministic"],
                    help="classes (noisy, deterministic), task names or task:model")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side (one core each)")
    ap.add_argument("--work", default=str(REPO / "outputs" / "bench_sofo_noisy"))
    ap.add_argument("--out", default=None, help="record path (default docs/results/sofo_noisy_<iterations>.json)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one noisy case, one seed (the suite)")
    ap.add_argument("--reuse", nargs="+", default=[], metavar="RECORD.json",
                    help="take the runs these records hold (same task, model, method, seed, iterations) "
                         "instead of running them again: a run is a pure function of its command and seed")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: the table and record of the runs already finished under --work")
    args = ap.parse_args(argv)
    for spec in args.define:
        name, _, overrides = spec.partition("=")
        METHODS[name] = split_overrides(overrides)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods {unknown}: choose from {list(METHODS)} or --define them")
    cases = [c for sel in args.cases for c in CASES if sel in (c[2], c[0], f"{c[0]}:{c[1]}")]   # in the order asked
    if args.quick:
        cases, args.seeds = cases[:1], args.seeds[:1]
    work = Path(args.work).resolve()   # the runs start in the battery's folder: a relative path would land there
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(t, m, cls, meth, s) for t, m, cls in cases for meth in args.methods for s in args.seeds]
    reused = reusable_runs(args.reuse, args.iterations)
    reused = {j: reused[(j[0], j[1], j[3], j[4])] for j in jobs if (j[0], j[1], j[3], j[4]) in reused}
    jobs_to_run = [j for j in jobs if j not in reused]
    def attempt(j):
        if args.report_only:
            run_dir = work / f"{j[0]}-{j[1]}-{j[3]}-s{j[4]}-{args.iterations}"
            summary = run_dir / "summary.json"
            done = summary.is_file() and json.loads(summary.read_text()).get("status") in ("completed", "diverged")
            return run_dir if done else None
        try:
            return run_one(work, j[0], j[1], j[3], j[4], args.iterations, args.quick)
        except RuntimeError as err:   # one failed run does not stop the others; it is reported and left out
            print(f"FAILED: {err}", file=sys.stderr)
            return None

    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = dict(zip(jobs_to_run, pool.map(attempt, jobs_to_run)))
    if args.quick and None in dirs.values():
        sys.exit("a run failed (above)")
    records = []
    for job in jobs:
        task, model, cls, method, seed = job
        if job in reused:
            records.append({**reused[job], "class": cls})
            continue
        run_dir = dirs[job]
        if run_dir is None:
            continue
        evals = evaluations(run_dir)
        end, best = end_and_best(evals)
        status = json.loads((run_dir / "summary.json").read_text())["status"]
        records.append({"task": task, "model": model, "class": cls, "method": method, "seed": seed, "status": status,
                        "evals": evals, "end": end, "best": best})
    rows = summarize(records, args.iterations)
    text = table(rows, args.iterations)
    print(text)
    result = {"iterations": args.iterations, "seeds": args.seeds, "rows": rows, "runs": records,
              "command": "python scripts/bench_sofo_noisy.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if not args.quick:
        sys.path.insert(0, str(HERE))
        from bench_common import machine

        result["machine"] = machine()
        out = Path(args.out) if args.out else REPO / "docs" / "results" / f"sofo_noisy_{args.iterations}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(text + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
