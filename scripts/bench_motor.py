"""The flagship benchmark: SOFO against Adam on the motor tasks, at equal iterations and equal wall-clock.

    python scripts/bench_motor.py [--tasks reach,double_reach] [--seeds 0,1,2] \
        [--adam-lrs 1e-3,3e-3,1e-2] [--out docs/results/motor_bench.json]

Per task:

1. SOFO with the task's default command (``sofo-run task=<task> seed=<s>``: the defaults in
   conf/, nothing pinned here), every seed. Its mean training time is the wall-clock budget.
2. Adam on full BPTT, seed 0, for the same training time: learning rates ``--adam-lrs`` with
   global-norm clipping 1.0 (what a practitioner adds), and the best of them again without
   clipping. Best = the most reaches within 1 cm at the end (ties: lower held-out loss).
3. The best Adam setting on every other seed, for the same training time.

Every run goes through the command line (``python -m sofo_lab.cli.run ... hydra.run.dir=<dir>``,
directories under ``outputs/bench/<out>_runs/``) with held-out evaluations every ``iterations/20``
SOFO iterations (Adam: the same number of evaluations over its run), and its record is read back
from its directory. Scored: at SOFO's iteration count (equal iterations) and at the end (equal
wall-clock); the first iteration and training second at which each run meets the task's solved
criterion (``eval/solved``, docs/motor.md). Writes the JSON (machine, runs with their curves, the
equal-iterations/equal-wall-clock table) to ``--out``; the figure and the per-configuration table
are ``sofo_lab.analysis.compare``'s (what ``sofo-compare --metrics within_1cm,moved_early,hold_error_cm``
draws from the run directories): ``<out>.png`` (``<out>_<task>.png`` for several tasks), ``.md``,
``.csv``.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import compose, machine, run_cli  # noqa: E402

METRICS = ("loss", "within_1cm", "moved_early", "hold_error_cm", "endpoint_error_cm", "solved",
           "within_1cm1", "within_1cm2")
QUICK = ["task.n_steps=40", "task.dt=0.04", "task.tau=0.08", "model.n_hidden=16", "batch_size=8"]
QUICK_ADAM = 50      # --quick: Adam's probe and its most iterations (the suite's check, not a measurement)
QUICK_EVALS = 10     # --quick: held-out evaluations per run (every 2nd of SOFO's 20 iterations)
FIGURE_METRICS = ["within_1cm", "moved_early", "hold_error_cm"]


def record(run_dir: Path) -> dict:
    """A run's record, read from its directory, finished or not (status ``running`` before summary.json)."""
    from sofo_lab.analysis.runs import load_run
    from sofo_lab.analysis.compare_table import first_solved, profile_of

    run = load_run(run_dir, build=False)
    profile, solved = profile_of(run), first_solved(run)
    curve = [{"iteration": r["iteration"], "train_time_s": r["time_s"],
              **{k: r[f"eval/{k}"] for k in METRICS if r.get(f"eval/{k}") is not None}}
             for r in run.history if "eval/loss" in r]
    return {"task": run.task_name, "optim": run.choices.get("optim"), "seed": run.settings.get("seed"),
            "iterations": run.settings.get("iterations"), "lr": run.settings.get("optim.lr"),
            "clip_norm": run.settings.get("optim.clip_norm"), "status": (run.summary or {}).get("status", "running"),
            "error": (run.summary or {}).get("error"), "step_time_s": profile.get("step_time_median_s"),
            "compile_s": profile.get("compile_s"), "reached_iteration": curve[-1]["iteration"] if curve else 0,
            "solved_iteration": solved and solved[0], "solved_time_s": solved and solved[1],
            "curve": curve, "run_dir": str(run_dir)}


def run(task, optim, seed, iterations, n_evals, run_dir, extra) -> dict:
    every = max(1, iterations // n_evals)
    # the run's own iteration count and logging come last: they win over ``extra``
    overrides = [f"task={task}", f"optim={optim}", *extra, f"seed={seed}", f"iterations={iterations}",
                 f"eval_every={every}", f"log_every={every}", f"checkpoint_every={iterations}"]
    start = time.perf_counter()
    rec = {**record(run_cli(overrides, run_dir)), "overrides": extra, "wall_s": time.perf_counter() - start}
    end = rec["curve"][-1] if rec["curve"] else {}
    print(f"  {task:13s} {optim:5s} lr={rec['lr']:<7g} clip={rec['clip_norm']!s:5s} seed={seed} "
          f"it={iterations:6d} {rec['status']:9s} {1e3 * (rec['step_time_s'] or math.nan):7.1f} ms/it  "
          f"within 1 cm {100 * end.get('within_1cm', math.nan):5.1f}%  moved early "
          f"{100 * end.get('moved_early', math.nan):5.1f}%  hold {end.get('hold_error_cm', math.nan):.2f} cm  "
          f"solved at {rec['solved_iteration']}", flush=True)
    return rec


def pool_map(jobs: int, specs, task, n_evals) -> list[dict]:
    """``run`` for each ``(optim, seed, iterations, run_dir, overrides)``, ``jobs`` at a time (each is
    its own process)."""
    def one(spec):
        optim, seed, iterations, run_dir, extra = spec
        return run(task, optim, seed, iterations, n_evals, run_dir, extra)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(jobs, len(specs)))) as ex:
        return list(ex.map(one, specs))


def compare_runs(records, out: Path, at=None) -> dict:
    """The figure and the per-configuration table of these runs, drawn by ``sofo_lab.analysis.compare``
    (``at``: read at that iteration or training second, ``compare_table.parse_at``)."""
    from sofo_lab.analysis.compare import compare

    return compare([r["run_dir"] for r in records], out=out.parent, stem=out.stem, metrics=FIGURE_METRICS, at=at)


def one_round(args, task, n, seeds, extra, work, rows) -> list[dict]:
    """Every run of a task at once: SOFO's seeds, Adam's sweep on seed 0 and Adam's other seeds."""
    sofo_x = extra + (["optim.n_tangents=8"] if args.quick else []) + args.sofo.split()
    width = max(1, min(args.jobs, 4))
    probes = pool_map(width, [("sofo", seeds[0], 30, work / f"{task}-probe-sofo{i}", sofo_x) for i in range(width // 2)]
                      + [("adam", seeds[0], 300, work / f"{task}-probe-adam{i}", extra) for i in range(width - width // 2)],
                      task, 1)
    t_sofo = float(np.median([p["step_time_s"] for p in probes if p["optim"] == "sofo"]))
    t_adam = float(np.median([p["step_time_s"] for p in probes if p["optim"] == "adam"]))
    adam_n = max(n, int(n * t_sofo / t_adam))
    adam_n = min(adam_n, QUICK_ADAM) if args.quick else adam_n
    print(f"{task}: paired probe: SOFO {1e3 * t_sofo:.1f} ms, Adam {1e3 * t_adam:.1f} ms per iteration -> Adam gets "
          f"{adam_n} iterations for SOFO's {n}", flush=True)
    lr0, _, clip0 = args.one_round.partition(",")
    default_x = extra + [f"optim.lr={lr0}"] + ([f"optim.clip_norm={clip0}"] if clip0 else [])
    lrs = args.adam_lrs.split(",")
    specs = [("sofo", s, n, work / f"{task}-sofo-s{s}", sofo_x) for s in seeds]
    specs += [("adam", seeds[0], adam_n, work / f"{task}-adam-lr{lr}-clip", extra + [f"optim.lr={lr}", "optim.clip_norm=1.0"])
              for lr in lrs]
    specs += [("adam", seeds[0], adam_n, work / f"{task}-adam-lr{lr0}-noclip", extra + [f"optim.lr={lr0}"])]
    specs += [("adam", s, adam_n, work / f"{task}-adam-default-s{s}", default_x) for s in seeds[1:]]
    done = pool_map(args.jobs, specs, task, args.evals)
    sofo, sweep, others = done[:len(seeds)], done[len(seeds):-(len(seeds) - 1) or None], done[len(done) - len(seeds) + 1:]
    for r in sofo:
        r["role"] = "sofo"
    for r in sweep:
        r["role"] = "adam_sweep"
    chosen = next(r for r in sweep if r["overrides"] == default_x)
    chosen["role"] = "adam_best"
    for r in others:
        r["role"] = "adam_best"
    best = max(sweep, key=score)
    adam = [chosen, *others]
    rows.append(summarize(task, "equal iterations", sofo, [r["curve"][-1] for r in sofo]))
    rows.append(summarize(task, "equal iterations", adam, [at_iteration(r, n) for r in adam]))
    rows.append(summarize(task, "equal wall-clock", adam, [r["curve"][-1] for r in adam]))
    for r in sweep:
        if r is not chosen:
            rows.append(summarize(task, "equal wall-clock (seed 0, lr sweep)", [r], [r["curve"][-1]]))
    rows[-1]["note"] = (f"sweep best on seed 0: lr {best['lr']:g}, clip {best['clip_norm']}; seeds 1.. ran at the "
                        f"a-priori {args.one_round}")
    return [*probes, *done]


def collect(root: Path, out: Path, at: str | None = None) -> int:
    """The JSON, table and figure of whatever the run directories under ``root`` hold so far
    (``at``: ``iteration=N`` or ``seconds=S``, every run read there)."""
    from sofo_lab.analysis.compare_table import parse_at

    runs = [record(d) for d in sorted(root.iterdir()) if (d / "metrics.jsonl").exists() and "probe" not in d.name]
    written = compare_runs(runs, out, parse_at(at))
    table = Path(written["markdown"]).read_text()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "motor tasks: SOFO vs Adam (collected from run directories)",
                               "machine": machine(), "at": at, "table_markdown": table,
                               "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in runs]},
                              indent=1, default=str) + "\n")
    print(table)
    print(f"wrote {out} and {', '.join(written['figures'])}")
    return 0


def at_iteration(rec, iteration) -> dict:
    eligible = [p for p in rec["curve"] if p["iteration"] <= iteration] or rec["curve"][:1]
    return eligible[-1] if eligible else {}


def score(rec) -> tuple:
    end = rec["curve"][-1] if rec["curve"] else {}
    within, loss = end.get("within_1cm", -1.0), end.get("loss", math.inf)
    if not (math.isfinite(within) and math.isfinite(loss)) or rec["status"] != "completed":
        return (-1.0, math.inf)
    return (within, loss)


def summarize(task, label, records, points) -> dict:
    row = {"task": task, "comparison": label, "optim": records[0]["optim"], "lr": records[0]["lr"],
           "clip_norm": records[0]["clip_norm"], "seeds": len(records),
           "iterations": int(np.mean([p.get("iteration", 0) for p in points])),
           "train_time_s": float(np.mean([p.get("train_time_s", 0.0) for p in points])),
           "diverged": sum(r["status"] == "diverged" for r in records),
           "solved_seeds": sum(p.get("solved") == 1.0 for p in points),
           "first_solved_iteration": [r["solved_iteration"] for r in records],
           "first_solved_time_s": [None if r["solved_time_s"] is None else round(r["solved_time_s"], 1)
                                   for r in records]}
    for key in METRICS:
        values = [p[key] for p in points if key in p]
        if values:
            row[key], row[key + "_sd"] = float(np.mean(values)), float(np.std(values))
    return row


def markdown(rows) -> str:
    lines = ["| task | comparison | optimizer | iterations | training s | within 1 cm | moved early | hold error (cm) "
             "| held-out loss | solved (seeds) | first solved at (iteration) |", "|" + "---|" * 11]
    for r in rows:
        name = r["optim"] if r["optim"] == "sofo" else f"adam lr {r['lr']:g}" + (
            f", clip {r['clip_norm']:g}" if r["clip_norm"] else "")
        first = ", ".join("–" if i is None else str(i) for i in r["first_solved_iteration"])
        lines.append(f"| {r['task']} | {r['comparison']} | {name} | {r['iterations']} | {r['train_time_s']:.0f} | "
                     f"{100 * r.get('within_1cm', float('nan')):.0f} ± {100 * r.get('within_1cm_sd', 0):.0f} % | "
                     f"{100 * r.get('moved_early', float('nan')):.0f} % | {r.get('hold_error_cm', float('nan')):.2f} | "
                     f"{r.get('loss', float('nan')):.4f} | {r['solved_seeds']}/{r['seeds']} | {first} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/motor_bench.json")
    parser.add_argument("--tasks", default="reach,double_reach")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--adam-lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--evals", type=int, default=20, help="held-out evaluations per run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 20 iterations, one seed, Adam at most "
                        f"{QUICK_ADAM} iterations, {QUICK_EVALS} evaluations a run (for the tests)")
    parser.add_argument("--extra", default="", help="overrides for every run (task/model keys), space-separated")
    parser.add_argument("--sofo", default="", help="overrides for the SOFO runs only, space-separated")
    parser.add_argument("--one-round", default="",
                        help="LR[,clip]: run everything at once (--jobs processes): Adam's budget comes from a paired "
                             "probe of both step times, and seeds 1.. of Adam run at this a-priori setting "
                             "(e.g. 1e-2,1.0) while the sweep runs on seed 0")
    parser.add_argument("--collect", default="",
                        help="only read the run directories under this folder (a benchmark still running or "
                             "stopped) and write the JSON, table and figure of what they hold so far")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (processes); SOFO's seeds run together, then Adam's runs: every "
                             "step time, and so the equal-wall-clock budget, is measured under the same load")
    parser.add_argument("--at", default=None, metavar="iteration=N|seconds=S",
                        help="--collect: read every run at that iteration or training second (sofo-compare --at)")
    args = parser.parse_args(argv)
    if args.collect:
        return collect(Path(args.collect), Path(args.out), args.at)
    extra = (QUICK if args.quick else []) + args.extra.split()
    if args.quick:
        args.evals = min(args.evals, QUICK_EVALS)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    tasks = ["reach"] if args.quick else args.tasks.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path("outputs/bench") / (out.stem + "_runs")
    info, started, runs, rows = machine(), time.perf_counter(), [], []
    print(f"machine: {info['cpu']} ({info['cpus_usable']} cores), jax {info['jax']} {info['backend']}", flush=True)
    for task in tasks:
        n = 20 if args.quick else compose([f"task={task}", *extra]).iterations
        if args.one_round:
            runs += one_round(args, task, n, seeds, extra, work, rows)
            continue
        sofo = pool_map(args.jobs, [("sofo", s, n, work / f"{task}-sofo-s{s}", extra + (["optim.n_tangents=8"]
                                     if args.quick else []) + args.sofo.split()) for s in seeds], task, args.evals)
        for r in sofo:
            r["role"] = "sofo"
        budget = float(np.mean([r["step_time_s"] for r in sofo])) * n
        # Adam's step time under the load SOFO's was measured under (as many processes at once)
        width = min(args.jobs, len(seeds)) if args.jobs > 1 else 1
        lrs = args.adam_lrs.split(",")
        # --quick: the probe is the first sweep run's setting, so that run reuses its compilation (JAX's cache)
        probe_n, probe_x = ((QUICK_ADAM, extra + [f"optim.lr={lrs[0]}", "optim.clip_norm=1.0"]) if args.quick
                            else (200, extra))
        probes = pool_map(width, [("adam", seeds[0], probe_n, work / f"{task}-adam-probe{i}", probe_x)
                                  for i in range(width)], task, 1)
        adam_n = max(n, int(budget / float(np.median([p["step_time_s"] for p in probes]))))
        adam_n = min(adam_n, QUICK_ADAM) if args.quick else adam_n
        print(f"{task}: SOFO {n} iterations in {budget:.0f} s of training; Adam gets {adam_n} iterations", flush=True)
        jobs = [("adam", seeds[0], adam_n, work / f"{task}-adam-lr{lr}-clip", extra + [f"optim.lr={lr}", "optim.clip_norm=1.0"])
                for lr in lrs]
        # with several jobs, the unclipped runs go along at every lr (no waiting for the best clipped one)
        jobs += [("adam", seeds[0], adam_n, work / f"{task}-adam-lr{lr}-noclip", extra + [f"optim.lr={lr}"])
                 for lr in (lrs if args.jobs > 1 else [])]
        sweep = pool_map(args.jobs, jobs, task, args.evals)
        if args.jobs == 1:
            lr = max(sweep, key=score)["lr"]
            sweep += pool_map(1, [("adam", seeds[0], adam_n, work / f"{task}-adam-lr{lr:g}-noclip",
                                   extra + [f"optim.lr={lr}"])], task, args.evals)
        best = max(sweep, key=score)
        for r in sweep:
            r["role"] = "adam_sweep"
        best["role"] = "adam_best"
        others = pool_map(args.jobs, [("adam", s, adam_n, work / f"{task}-adam-best-s{s}", best["overrides"])
                                      for s in seeds[1:]], task, args.evals)
        for r in others:
            r["role"] = "adam_best"
        adam = [best, *others]
        runs += [*sofo, *sweep, *others]
        rows.append(summarize(task, "equal iterations", sofo, [r["curve"][-1] for r in sofo]))
        rows.append(summarize(task, "equal iterations", adam, [at_iteration(r, n) for r in adam]))
        rows.append(summarize(task, "equal wall-clock", adam, [r["curve"][-1] for r in adam]))
        for r in sweep:
            if r is not best:
                rows.append(summarize(task, "equal wall-clock (seed 0, lr sweep)", [r], [r["curve"][-1]]))
        partial = {"benchmark": "motor tasks: SOFO vs Adam", "machine": info, "table": rows, "runs": runs}
        out.write_text(json.dumps(partial, indent=1, default=str) + "\n")
    written = compare_runs([r for r in runs if r.get("role")], out)   # the probes have no role
    table = markdown(rows)
    result = {"benchmark": "motor tasks: SOFO vs Adam", "quick": args.quick, "machine": info,
              "load_avg_end_1m": os.getloadavg()[0], "total_wall_s": time.perf_counter() - started,
              "seeds": seeds, "adam_lrs": args.adam_lrs.split(","), "table": rows, "table_markdown": table,
              "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in runs]}
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table)
    print(f"wrote {out} and {', '.join(written['figures'])} ({result['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
