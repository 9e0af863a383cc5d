"""The tables of ``sofo-compare`` (sofo_lab/analysis/compare.py): one row per configuration, Markdown and CSV.

Each row holds the final metrics (mean, s.d. and count over the runs), or, with ``at``, the metrics
read at one iteration or one training second (equal iterations, equal wall-clock), the run's
profile (time per iteration, training seconds, compilation, step memory) and, when the task logs
``eval/solved``, how many runs are solved and when each was first solved.
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

PROFILE = (("step_time_median_s", "time/iteration (ms)", 1e3), ("train_time_s", "training (s)", 1.0),
           ("compile_s", "compile (s)", 1.0), ("step_memory_bytes", "step memory (MiB)", 2.0**-20),
           ("n_params", "params", 1.0))
SOLVED = "eval/solved"   # 1.0 at an evaluation where the task's solved criterion holds (e.g. docs/motor.md)
AT_KEYS = {"iteration": "iteration", "seconds": "time_s"}   # --at NAME=VALUE: the metrics.jsonl column it reads


def parse_at(text: str | None) -> tuple[str, float] | None:
    """``iteration=4000`` or ``seconds=600`` -> (name, value); None for None or ""."""
    if not text:
        return None
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if name not in AT_KEYS or not math.isfinite(number) or number < 0:
        raise SystemExit(f"error: --at {text}: expected iteration=N or seconds=S (a number >= 0), "
                         f"e.g. --at iteration=2000 (equal iterations) or --at seconds=600 (equal wall-clock)")
    return name, number


def at_point(at) -> str:
    """``("iteration", 10)`` -> "iteration 10", ``("seconds", 0.45)`` -> "0.45 s"."""
    return f"iteration {at[1]:g}" if at[0] == "iteration" else f"{at[1]:g} s"


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def final_metrics(run, at=None) -> dict:
    """``final`` of summary.json, or the last logged value of each metric for a run that has none;
    with ``at`` = (name, value) (see ``parse_at``): the last value logged at or before it."""
    final = dict((run.summary or {}).get("final") or {}) if at is None else {}
    if not final:
        key = AT_KEYS[at[0]] if at else None
        for r in run.history:
            if key is not None and not r.get(key, math.inf) <= at[1]:
                break
            final.update({k: v for k, v in r.items() if "/" in k})
    return {k: v for k, v in final.items() if is_number(v)}


def ended_before(run, at) -> bool:
    """The run's log ends before ``at`` (it stopped, diverged or is still running)."""
    last = next((r[AT_KEYS[at[0]]] for r in reversed(run.history) if AT_KEYS[at[0]] in r), -math.inf)
    return last < at[1]


def profile_of(run) -> dict:
    prof = dict((run.summary or {}).get("profile") or {})
    if "train_time_s" not in prof and run.history:   # older runs: the last time_s
        prof["train_time_s"] = run.history[-1].get("time_s")
    return prof


def first_solved(run) -> tuple[int, float] | None:
    """The first evaluated iteration at which the run was solved, with its training seconds; None if never."""
    for r in run.history:
        if r.get(SOLVED) == 1.0 and "iteration" in r:
            return int(r["iteration"]), r.get("time_s", math.nan)
    return None


def logs_solved(runs) -> bool:
    return any(SOLVED in r for run in runs for r in run.history)


def _stats(values):
    v = [x for x in values if is_number(x)]
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def _fmt(mean, sd, n) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4g} ± {sd:.2g}" if n > 1 else f"{mean:.4g}"


def _solved_columns(runs, finals) -> dict:
    firsts = [first_solved(r) for r in runs]
    return {"solved_runs": sum(f.get(SOLVED) == 1.0 for f in finals),
            "first_solved_iteration": " ".join("–" if s is None else str(s[0]) for s in firsts),
            "first_solved_time_s": " ".join("–" if s is None else f"{s[1]:.4g}" for s in firsts)}


def table_rows(groups, solved: bool = False, at=None) -> list[dict]:
    """One dict per configuration (the CSV's rows); ``solved``: add the solved columns; ``at``: the
    metrics at that iteration or second instead of the final ones."""
    rows = []
    for g in groups:
        finals = [final_metrics(r, at) for r in g.runs]
        profiles = [profile_of(r) for r in g.runs]
        statuses: dict[str, int] = {}
        for r in g.runs:
            statuses[r.status] = statuses.get(r.status, 0) + 1
        row = {"configuration": g.label, **g.keys, "n_runs": len(g.runs), "n_completed": statuses.get("completed", 0),
               "status": " ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
               "seeds": " ".join(str(r.seed) for r in g.runs)}
        for k in dict.fromkeys(k for f in finals for k in f if "/" in k):
            row[f"{k}_mean"], row[f"{k}_sd"], row[f"{k}_n"] = _stats([f.get(k) for f in finals])
        for key, _, _ in PROFILE:
            row[f"{key}_mean"], row[f"{key}_sd"], _ = _stats([p.get(key) for p in profiles])
        if solved:
            row.update(_solved_columns(g.runs, finals))
        if at is not None:
            row["ended_before"] = ", ".join(f"{r.seed} ({r.status})" for r in g.runs if ended_before(r, at))
        rows.append(row)
    return rows


def _first_solved_cell(row) -> str:
    pairs = zip(row["first_solved_iteration"].split(), row["first_solved_time_s"].split())
    return ", ".join("–" if it == "–" else f"{it} ({t} s)" for it, t in pairs)


def markdown(rows: list[dict], metrics: list[str], refs: dict, title: str, at=None) -> str:
    """The table: ``metrics`` (the loss first) as final (or ``at``) mean ± s.d. columns, then the profile."""
    solved = bool(rows) and "solved_runs" in rows[0]
    head = (["configuration", "runs (seeds)"] + [f"final {m}" if at is None else f"{m} at {at_point(at)}" for m in metrics]
            + (["solved (seeds)", "first solved at: iteration (training s)"] if solved else [])
            + [label for _, label, _ in PROFILE])
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["configuration"].replace("|", "\\|"),
                 f"{row['n_completed']}/{row['n_runs']} ({row['seeds']})"]
        cells += [_fmt(row.get(f"{m}_mean"), row.get(f"{m}_sd"), row.get(f"{m}_n", 0)) for m in metrics]
        if solved:
            cells += [f"{row['solved_runs']}/{row['n_runs']}", _first_solved_cell(row)]
        for key, _, scale in PROFILE:
            mean, sd = row.get(f"{key}_mean"), row.get(f"{key}_sd")
            cells.append("–" if mean is None else _fmt(mean * scale, (sd or 0.0) * scale, row["n_runs"])
                         if key == "step_time_median_s" else f"{mean * scale:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    read = ("completed runs' final evaluation" if at is None else f"each run's last evaluation at or before "
            f"{at_point(at)}" + (" of training" if at[0] == "seconds" else ""))
    lines += ["", f"Mean ± s.d. over the seeds of each configuration ({read}); "
              "time/iteration is the median step, training seconds exclude compilation, evaluation and "
              "checkpoints."]
    if solved:
        lines.append(f"Solved: {SOLVED} = 1 (the task's criterion) at {'the final' if at is None else 'that'} "
                     "evaluation; first solved at: each run's first evaluation with it, in the order of the seeds.")
    for metric, levels in refs.items():
        if levels:
            lines.append(f"Reference levels of {metric}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}"
                                                                     for k, v in levels.items()) + ".")
    for r in rows:
        if r["n_completed"] < r["n_runs"]:
            lines.append(f"{r['configuration']}: {r['status']}.")
        if r.get("ended_before"):
            many = "," in r["ended_before"]
            lines.append(f"{r['configuration']}: seed{'s' if many else ''} {r['ended_before']} ended before "
                         f"{at_point(at)}: {'their' if many else 'its'} last evaluation is read.")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
