"""``sofo-compare``: compare runs and sweeps in one command, from the files the runs wrote.

    sofo-compare outputs/multirun/2026-12-01_10-00-00_000000 [more sweep or run dirs ...] [--out DIR]
                 [--metrics eval/moved_early,hold_error_cm]

A run is any directory below the given ones holding ``metrics.jsonl`` (and usually
``summary.json`` and ``.hydra/``); it works on old runs, SLURM sweeps (submitit's ``.submitit/``
is skipped) and runs of a user's own task. Runs are grouped into *configurations* by what differs
between them: the config-group choices (task, model, optim, experiment) and the overrides of
``.hydra/overrides.yaml``, with ``+per_optim.<optim>.<key>`` counted only for that optimizer's runs
(sofo_lab/train/per_optim.py), the seed pooled, and plumbing (logging, checkpoint and plot settings)
ignored; runs whose overrides agree but whose configs differ are told apart by the config keys
that differ.

Writes, into the first directory (or ``--out``):

- ``compare.png`` (``compare_<task>.png`` when several tasks): the loss (held-out when the task has
  an evaluation, else the online training loss), the task's headline metric and the ``--metrics``
  (a row each), against iteration and against training seconds (``time_s``: compilation,
  evaluation and checkpoints excluded), one line per configuration: the mean over seeds, the band
  min-max over seeds (``--spread sd``: ±1 s.d.). Dotted: the task's reference levels, found among
  the logged metrics (``sofo_lab.train.reporting.reference_levels``: kalman's oracle and copy MSE, the
  streams' optimal entropy rates, influence's θ*) or given by the task class (``references``,
  e.g. the motor tasks' solved thresholds).
- ``compare.md`` and ``compare.csv`` (sofo_lab/analysis/compare_table.py): per configuration, the final
  metrics mean ± s.d. over seeds (the Markdown: the figure's metrics; the CSV: every metric), the
  number of runs and seeds, time per iteration (median step), training seconds, compilation and
  step memory. When the runs log ``eval/solved`` (1 where the task's criterion is met), also
  "solved (seeds)", how many runs end solved, and "first solved at", each run's first evaluated
  iteration with ``eval/solved`` = 1 and its training seconds ("–": never). ``--at iteration=N``
  or ``--at seconds=S`` reads every run there instead of at its end (its last evaluation at or
  before it): equal iterations or equal wall-clock from runs of any length; the figure marks it.

The headline metric is the task class's ``headline_metric`` when it names one, else the first
evaluated metric that has reference levels, else the first evaluated metric. A ``--metrics`` name
without a prefix means ``eval/<name>`` when logged, else ``train/<name>``.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sofo_lab.analysis.compare_plot import figure
from sofo_lab.analysis.compare_table import is_number, logs_solved, markdown, table_rows, write_csv
from sofo_lab.analysis.runs import Run, load_run, read_yaml
from sofo_lab.conf import CONF_DIR
from sofo_lab.train.reporting import reference_levels

# Keys that change how a run is logged or stored, not what it computes.
PLUMBING = ("seed", "progress", "plots", "resume", "log_every", "eval_every", "checkpoint_every",
            "logger", "callbacks", "hydra", "local", "cluster", "eval_batch_size", "steps_per_dispatch")


@dataclass
class Group:
    label: str
    keys: dict
    runs: list = field(default_factory=list)


def _plumbing(key: str) -> bool:
    return key.split(".")[0].split("/")[0] in PLUMBING


def find_runs(paths) -> list[Path]:
    """Every run directory at or below ``paths`` (a directory holding metrics.jsonl)."""
    found = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise SystemExit(f"error: {p}: not a directory; pass sweep or run directories")
        hits = [p] if (p / "metrics.jsonl").is_file() else sorted(
            (m.parent for m in p.rglob("metrics.jsonl") if ".submitit" not in m.parts and "wandb" not in m.parts),
            key=lambda d: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in d.relative_to(p).parts])
        found += [h for h in hits if h not in found]
    return found


def group_runs(runs: list[Run]) -> list[Group]:
    """Configurations: runs that agree on everything but the seed (and plumbing)."""
    def described(run):
        d = dict(run.choices)
        d.update({k: v for k, v in run.overrides.items() if not _plumbing(k)})
        return {k: str(v) for k, v in d.items()}

    descs = [described(r) for r in runs]
    keys = list(dict.fromkeys(k for d in descs for k in d))
    varying = [k for k in keys if len({d.get(k) for d in descs}) > 1]
    # runs that agree on their overrides but not on their configs (e.g. separate runs with
    # different code defaults): the config keys that differ tell them apart
    by_key: dict = {}
    for run, d in zip(runs, descs):
        by_key.setdefault(tuple(d.get(k) for k in varying), []).append(run)
    extra = []
    for members in by_key.values():
        configs = [{k: str(v) for k, v in m.settings.items() if not _plumbing(k)} for m in members]
        ckeys = dict.fromkeys(k for c in configs for k in c)
        extra += [k for k in ckeys if len({c.get(k) for c in configs}) > 1 and k not in varying and k not in extra]
    groups: dict = {}
    for run, d in zip(runs, descs):
        values = {k: d.get(k) for k in varying}
        values.update({k: str(run.settings.get(k)) for k in extra})
        label = " ".join(f"{k}={v}" for k, v in values.items() if v is not None) or "all runs"
        groups.setdefault(label, Group(label, {k: v for k, v in values.items() if v is not None})).runs.append(run)
    return list(groups.values())


def common_settings(runs: list[Run]) -> str:
    """The overrides every run shares (the figure's subtitle)."""
    shared = None
    for r in runs:
        items = {(k, str(v)) for k, v in r.overrides.items() if not _plumbing(k)}
        shared = items if shared is None else shared & items
    first = runs[0].overrides if runs else {}
    return " ".join(f"{k}={v}" for k, v in first.items() if (k, str(v)) in (shared or set()))


# --- metrics -------------------------------------------------------------------------------------
def task_class(run: Run):
    """The run's task class when it can be imported (for ``headline_metric``/``references``), else None:
    its config's ``task._target_``, or for a run whose config names none, that of the package's
    ``conf/task/<task>.yaml`` (the task it chose)."""
    target = run.settings.get("task._target_")
    if not target and run.choices.get("task"):
        target = (read_yaml(Path(CONF_DIR) / "task" / f"{run.choices['task']}.yaml") or {}).get("_target_")
    if not target:
        return None
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception:   # noqa: BLE001 - a user's task not importable here: use the logged metrics
        return None


def loss_key(runs: list[Run]) -> str:
    return "eval/loss" if any("eval/loss" in r for run in runs for r in run.history) else "train/loss"


def headline_key(runs: list[Run], loss: str) -> str | None:
    """The task's headline metric (see the module docstring); None when it is the loss itself."""
    cls = task_class(runs[0]) if runs else None
    logged = list(dict.fromkeys(k for run in runs for r in run.history for k in r))
    named = getattr(cls, "headline_metric", None)
    if named in logged:
        return None if named == loss else named
    prefix = loss.split("/")[0] + "/"
    history = runs[0].history
    candidates = []
    for k in logged:
        rest = k[len(prefix):]
        values = [r[k] for r in history if is_number(r.get(k))]
        pairs = [(r[loss], r[k]) for r in history if is_number(r.get(k)) and is_number(r.get(loss))]
        if (not k.startswith(prefix) or "/" in rest or k == loss or len(set(values)) < 2   # references are constant
                or (pairs and all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in pairs))):   # the loss renamed
            continue
        candidates.append((not reference_levels(history, k), any(c.isdigit() for c in rest), len(candidates), k))
    if prefix == "train/":
        candidates = [c for c in candidates if not c[0]]   # online tasks: only a metric with references
    return min(candidates)[-1] if candidates else None


def references(runs: list[Run], metric: str) -> dict[str, float]:
    """Reference levels of ``metric``, the mean over runs of what each run logged (or its task says)."""
    levels: dict[str, list] = {}
    for run in runs:
        for label, value in reference_levels(run.history, metric).items():
            levels.setdefault(label, []).append(value)
    cls = task_class(runs[0]) if runs else None
    for label, value in ((getattr(cls, "references", None) or {}).get(metric) or {}).items():
        levels.setdefault(label, [value])
    return {label: statistics.fmean(v) for label, v in levels.items()}


def metric_key(runs: list[Run], name: str) -> str | None:
    """The logged key a ``--metrics`` name means: ``eval/<name>`` when logged, else ``train/<name>``,
    else the name itself (a name with a ``/`` is taken as it is); None when no run logged it."""
    logged = {k for run in runs for r in run.history for k in r}
    return next((k for k in ([name] if "/" in name else [f"eval/{name}", f"train/{name}", name]) if k in logged),
                None)


def _logged_names(runs: list[Run]) -> str:
    return ", ".join(sorted({k for run in runs for r in run.history for k in r if "/" in k}))


# --- the command ----------------------------------------------------------------------------------
def compare(paths, out: str | Path | None = None, spread: str = "minmax", title: str | None = None,
            stem: str = "compare", metrics=(), at: tuple[str, float] | None = None) -> dict:
    """Read every run below ``paths``; write ``<stem>.png`` (``<stem>_<task>.png`` for several tasks),
    ``<stem>.md`` and ``<stem>.csv`` into ``out`` (default: the first path); return what was written.
    ``metrics``: more metrics to plot and tabulate after the loss and the headline (see ``metric_key``).
    ``at``: ("iteration", N) or ("seconds", S) (``compare_table.parse_at``): the tables read every run
    there (equal iterations, equal wall-clock) instead of at its end; the figure marks it."""
    dirs = find_runs(paths)
    if not dirs:
        raise SystemExit(f"error: no runs (directories with metrics.jsonl) under {' '.join(map(str, paths))}")
    runs = [load_run(d, build=False) for d in dirs]   # records only: no build, no JAX
    unknown = [m for m in metrics if metric_key(runs, m) is None]
    if unknown:   # a typo would otherwise only drop a row from the figure
        raise SystemExit(f"error: --metrics {','.join(unknown)}: logged by no run; logged: {_logged_names(runs)}")
    out = Path(out) if out else Path(paths[0])
    out.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[Run]] = {}
    for r in runs:
        by_task.setdefault(r.task_name, []).append(r)
    written, md, rows = {"figures": []}, [], []
    for task, task_runs in by_task.items():
        groups = group_runs(task_runs)
        loss = loss_key(task_runs)
        headline = headline_key(task_runs, loss)
        shown = list(dict.fromkeys([loss, *([headline] if headline else []),
                                    *filter(None, (metric_key(task_runs, m) for m in metrics))]))
        refs = {m: references(task_runs, m) for m in shown}
        name = f"{stem}.png" if len(by_task) == 1 else f"{stem}_{task}.png"
        label = title or (f"{task}: {len(groups)} configuration{'s' if len(groups) != 1 else ''}, "
                          f"{len(task_runs)} run{'s' if len(task_runs) != 1 else ''}")
        figure(out / name, groups, shown, refs, spread, label, common_settings(task_runs), at)
        written["figures"].append(str(out / name))
        task_rows = table_rows(groups, solved=logs_solved(task_runs), at=at)
        md.append(markdown(task_rows, shown, refs, label, at))
        rows += [{"task": task, **r} for r in task_rows]
    (out / f"{stem}.md").write_text("\n".join(md))
    write_csv(out / f"{stem}.csv", rows)
    written.update(markdown=str(out / f"{stem}.md"), csv=str(out / f"{stem}.csv"), runs=len(runs), rows=rows)
    return written


def after_sweep(sweep_dir) -> None:
    """The sweep callback's call: compare the sweep's runs; a failure is one warning line, never an error."""
    try:
        written = compare([sweep_dir])
        print(f"Comparison: {', '.join(Path(f).name for f in written['figures'])}, compare.md, compare.csv "
              f"-> {sweep_dir}", file=sys.stderr, flush=True)
    except BaseException as err:   # noqa: BLE001 - plotting must never fail the sweep (SystemExit included)
        print(f"warning: sofo-compare could not compare the sweep ({type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}); run sofo-compare {sweep_dir}",
              file=sys.stderr, flush=True)
