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

Every run goes through the runner (``sofo_lab.runner.train``) with held-out evaluations every
``iterations/20`` SOFO iterations (Adam: the same number of evaluations over its run). Scored:
at SOFO's iteration count (equal iterations) and at the end (equal wall-clock); the first
iteration and training second at which each run meets the task's solved criterion
(``eval/solved``, docs/motor.md). Writes the JSON (machine, runs with their curves, table) to
``--out`` and a figure next to it: within 1 cm, moved early and hold error against iterations
and against training seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import compose, machine, pyplot  # noqa: E402

METRICS = ("loss", "within_1cm", "moved_early", "hold_error_cm", "endpoint_error_cm", "solved",
           "within_1cm1", "within_1cm2")
QUICK = ["task.n_steps=40", "task.dt=0.04", "task.tau=0.08", "model.n_hidden=16", "batch_size=8"]


def run(task, optim, seed, iterations, n_evals, run_dir, extra) -> dict:
    from sofo_lab.errors import RunFailed
    from sofo_lab.runner import train

    every = max(1, iterations // n_evals)
    # the run's own iteration count and logging come last: they win over ``extra``
    overrides = [f"task={task}", f"optim={optim}", *extra, f"seed={seed}", f"iterations={iterations}",
                 f"eval_every={every}", f"log_every={every}", f"checkpoint_every={iterations}",
                 "logger=none", "progress=false", "plots=false", "resume=false"]
    cfg = compose(overrides)
    start = time.perf_counter()
    with warnings.catch_warnings(), open(os.devnull, "w") as null:
        warnings.simplefilter("ignore")
        stdout, sys.stdout = sys.stdout, null
        try:
            summary = train(cfg, run_dir)
        except RunFailed:          # diverged: the runner wrote summary.json; keep the record
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
        finally:
            sys.stdout = stdout
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    step = summary["profile"].get("step_time_median_s") or wall / iterations
    curve = [{"iteration": r["iteration"], "train_time_s": r["iteration"] * step,
              **{k: r[f"eval/{k}"] for k in METRICS if f"eval/{k}" in r}} for r in history if "eval/loss" in r]
    solved = next((p for p in curve if p.get("solved") == 1.0), None)
    record = {"task": task, "optim": optim, "seed": seed, "iterations": iterations, "overrides": extra,
              "lr": cfg.optim.lr, "clip_norm": cfg.optim.get("clip_norm"), "status": summary["status"],
              "step_time_s": step, "compile_s": summary["profile"].get("compile_s"), "wall_s": wall,
              "solved_iteration": solved and solved["iteration"], "solved_time_s": solved and solved["train_time_s"],
              "curve": curve, "run_dir": str(run_dir)}
    end = curve[-1] if curve else {}
    print(f"  {task:13s} {optim:5s} lr={cfg.optim.lr:<7g} clip={record['clip_norm']!s:5s} seed={seed} "
          f"it={iterations:6d} {summary['status']:9s} {1e3 * step:7.1f} ms/it  "
          f"within 1 cm {100 * end.get('within_1cm', float('nan')):5.1f}%  moved early "
          f"{100 * end.get('moved_early', float('nan')):5.1f}%  hold {end.get('hold_error_cm', float('nan')):.2f} cm  "
          f"solved at {record['solved_iteration']}", flush=True)
    return record


def pool_map(jobs: int, specs, task, n_evals) -> list[dict]:
    """``run`` for each ``(optim, seed, iterations, run_dir, overrides)``, ``jobs`` processes at a time."""
    if jobs <= 1 or len(specs) <= 1:
        return [run(task, o, s, n, n_evals, d, x) for o, s, n, d, x in specs]
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(specs)), mp_context=multiprocessing.get_context("spawn")) as ex:
        return list(ex.map(run, *zip(*[(task, o, s, n, n_evals, d, x) for o, s, n, d, x in specs])))


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
    adam_n = min(adam_n, 200) if args.quick else adam_n
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


def read_run(run_dir: Path) -> dict:
    """A record like ``run``'s from one of this benchmark's run directories, finished or not (status
    ``running`` without summary.json); the settings come from the directory's name."""
    import re

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    name = run_dir.name
    task, optim = name.split("-")[0], "sofo" if "-sofo-" in name else "adam"
    seed = int(re.search(r"-s(\d+)$", name).group(1)) if re.search(r"-s(\d+)$", name) else 0
    lr = re.search(r"-lr([0-9.e-]+?)-(no)?clip", name)
    lr, clip = ((0.3, None) if optim == "sofo" else (1e-2, 1.0) if lr is None
                else (float(lr.group(1)), None if lr.group(2) else 1.0))
    curve = [{"iteration": r["iteration"], "train_time_s": r["time_s"],
              **{k: r[f"eval/{k}"] for k in METRICS if r.get(f"eval/{k}") is not None}}
             for r in history if "eval/loss" in r]
    solved = next((p for p in curve if p.get("solved") == 1.0), None)
    role = "sofo" if optim == "sofo" else ("adam_best" if "default" in name or "lr1e-2-clip" in name else "adam_sweep")
    return {"task": task, "optim": optim, "seed": seed, "role": role, "lr": lr, "clip_norm": clip,
            "status": summary.get("status", "running"), "error": summary.get("error"),
            "reached_iteration": curve[-1]["iteration"] if curve else 0,
            "solved_iteration": solved and solved["iteration"], "solved_time_s": solved and solved["train_time_s"],
            "curve": curve, "run_dir": str(run_dir)}


def collect(root: Path, out: Path) -> int:
    runs = [read_run(d) for d in sorted(root.iterdir()) if (d / "metrics.jsonl").exists() and "probe" not in d.name]
    lines = ["| run | status | reached iteration | training s | held-out loss | within 1 cm | moved early | hold error (cm) "
             "| best held-out loss (iteration) | first solved |", "|" + "---|" * 10]
    for r in runs:
        end = r["curve"][-1]
        good = [p for p in r["curve"] if "loss" in p and math.isfinite(p["loss"])]
        best = min(good, key=lambda p: p["loss"]) if good else end
        name = "SOFO" if r["optim"] == "sofo" else f"Adam lr {r['lr']:g}" + (f" clip {r['clip_norm']:g}" if r["clip_norm"] else "")
        lines.append(f"| {name}, seed {r['seed']} | {r['status']} | {end['iteration']} | {end['train_time_s']:.0f} | "
                     f"{end.get('loss', float('nan')):.4f} | {100 * end.get('within_1cm', float('nan')):.0f} % | "
                     f"{100 * end.get('moved_early', float('nan')):.0f} % | {end.get('hold_error_cm', float('nan')):.2f} | "
                     f"{best.get('loss', float('nan')):.4f} ({best['iteration']}) | {r['solved_iteration'] or '–'} |")
    table = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "motor tasks: SOFO vs Adam (collected from run directories)",
                               "machine": machine(), "table_markdown": table,
                               "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in runs]},
                              indent=1, default=str) + "\n")
    figure(runs, sorted({r["task"] for r in runs}), out.with_suffix(".png"))
    print(table)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def at_iteration(record, iteration) -> dict:
    eligible = [p for p in record["curve"] if p["iteration"] <= iteration] or record["curve"][:1]
    return eligible[-1] if eligible else {}


def score(record) -> tuple:
    end = record["curve"][-1] if record["curve"] else {}
    within, loss = end.get("within_1cm", -1.0), end.get("loss", math.inf)
    if not (math.isfinite(within) and math.isfinite(loss)) or record["status"] != "completed":
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


def figure(runs, tasks, path) -> None:
    plt = pyplot()
    keys = (("within_1cm", "reaches within 1 cm"), ("moved_early", "moved early (> 1 cm)"),
            ("hold_error_cm", "hold error (cm)"))
    fig, axes = plt.subplots(len(tasks) * 2, 3, figsize=(13, 6.4 * len(tasks)), squeeze=False)
    for t, task in enumerate(tasks):
        for xi, (xkey, xlabel) in enumerate((("iteration", "iteration"), ("train_time_s", "training seconds"))):
            for col, (key, label) in enumerate(keys):
                ax = axes[2 * t + xi, col]
                for r in runs:
                    if r["task"] != task or r.get("role") not in ("sofo", "adam_best"):
                        continue
                    color = "tab:red" if r["optim"] == "sofo" else "tab:blue"
                    ax.plot([p[xkey] for p in r["curve"]], [p.get(key, np.nan) for p in r["curve"]], color=color,
                            lw=1.2, alpha=0.8, label=(("SOFO" if r["optim"] == "sofo" else f"Adam lr {r['lr']:g}"
                                                       + (" clipped" if r["clip_norm"] else "")) if r["seed"] == 0
                                                      else None))
                if key == "within_1cm":
                    ax.axhline(0.8 if task == "reach" else 0.6, color="k", ls=":", lw=1, label="solved")
                elif key == "moved_early":
                    ax.axhline(0.1, color="k", ls=":", lw=1)
                elif task == "reach":
                    ax.axhline(1.0, color="k", ls=":", lw=1)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
                ax.set_title(task, fontsize=9)
                if xkey == "iteration":
                    ax.set_xscale("log")
                ax.grid(alpha=0.3)
                if col == 0:
                    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/motor_bench.json")
    parser.add_argument("--tasks", default="reach,double_reach")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--adam-lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--evals", type=int, default=20, help="held-out evaluations per run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 20 iterations, one seed (for the tests)")
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
    args = parser.parse_args(argv)
    if args.collect:
        return collect(Path(args.collect), Path(args.out))
    extra = (QUICK if args.quick else []) + args.extra.split()
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
        probes = pool_map(width, [("adam", seeds[0], 200, work / f"{task}-adam-probe{i}", extra)
                                  for i in range(width)], task, 1)
        adam_n = max(n, int(budget / float(np.median([p["step_time_s"] for p in probes]))))
        adam_n = min(adam_n, 200) if args.quick else adam_n
        print(f"{task}: SOFO {n} iterations in {budget:.0f} s of training; Adam gets {adam_n} iterations", flush=True)
        lrs = args.adam_lrs.split(",")
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
    figure(runs, tasks, out.with_suffix(".png"))
    table = markdown(rows)
    result = {"benchmark": "motor tasks: SOFO vs Adam", "quick": args.quick, "machine": info,
              "load_avg_end_1m": os.getloadavg()[0], "total_wall_s": time.perf_counter() - started,
              "seeds": seeds, "adam_lrs": args.adam_lrs.split(","), "table": rows, "table_markdown": table,
              "runs": [{k: v for k, v in r.items() if k != "run_dir"} for r in runs]}
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(table)
    print(f"wrote {out} and {out.with_suffix('.png')} ({result['total_wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
