"""The figure of ``sofo-compare`` (sofo_lab/analysis/compare.py): metrics against iteration and
training seconds, a row per metric (the loss first, on a log scale when it is positive), each
configuration's line the mean over its seeds (``curve``)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from sofo_lab.analysis.compare_table import is_number

REF_STYLES = (":", "--", "-.", (0, (1, 3)), (0, (5, 2, 1, 2)))


def _pretty(metric: str, loss: str) -> str:
    if metric == loss:
        return "held-out loss" if metric.startswith("eval/") else "training loss (online)"
    return metric.split("/", 1)[-1].replace("_", " ") + (" (held-out)" if metric.startswith("eval/") else "")


def curve(runs, metric: str, spread: str = "minmax"):
    """Per iteration over the runs that logged ``metric`` there: iteration, mean time_s, mean, low, high."""
    at: dict[int, list] = {}
    for run in runs:
        for r in run.history:
            if is_number(r.get(metric)) and "iteration" in r:
                at.setdefault(int(r["iteration"]), []).append((r.get("time_s", math.nan), r[metric]))
    rows = []
    for it in sorted(at):
        times, values = zip(*at[it])
        mean = statistics.fmean(values)
        if spread == "sd":
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            low, high = mean - sd, mean + sd
        else:
            low, high = min(values), max(values)
        rows.append((it, statistics.fmean(t for t in times if is_number(t)) if any(map(is_number, times)) else math.nan,
                     mean, low, high))
    return rows


def figure(path: Path, groups, metrics: list[str], refs: dict, spread: str, title: str, common: str,
           at=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    loss = metrics[0]
    fig, axes = plt.subplots(len(metrics), 2, figsize=(11, 3.8 * len(metrics)), squeeze=False)
    old_time = any("train_time_s" not in ((r.summary or {}).get("profile") or {}) for g in groups for r in g.runs)
    for row, metric in enumerate(metrics):
        positive = True
        for gi, g in enumerate(groups):
            pts = curve(g.runs, metric, spread)
            if not pts:
                continue
            its, times, mean, low, high = zip(*pts)
            positive &= min(low) > 0
            color = f"C{gi % 10}"
            n = len({r.seed for r in g.runs})
            for col, x in enumerate((its, times)):
                ax = axes[row, col]
                ok = [i for i, v in enumerate(x) if math.isfinite(v)]
                xs = [x[i] for i in ok]
                ax.plot(xs, [mean[i] for i in ok], "-", marker="o" if len(ok) < 30 else None, ms=2.5, lw=1.4,
                        color=color, label=f"{g.label} (n={n})")
                if n > 1:
                    ax.fill_between(xs, [low[i] for i in ok], [high[i] for i in ok], color=color, alpha=0.18, lw=0)
        for col in range(2):
            ax = axes[row, col]
            for (label, value), style in zip(refs.get(metric, {}).items(), REF_STYLES):
                ax.axhline(value, color="k", ls=style, lw=0.9, label=f"{label.replace('_', ' ')} {value:.3g}")
                positive &= value > 0
            if positive and metric == loss:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.set_ylabel(_pretty(metric, loss))
            if at is not None and col == (0 if at[0] == "iteration" else 1):   # where the table reads the runs
                ax.axvline(at[1], color="0.4", lw=0.9, ls=(0, (4, 2)))
            ax.grid(alpha=0.3, which="both")
        axes[row, 0].set_xlabel("iteration")
        axes[row, 1].set_xlabel("training seconds (compilation, evaluation, checkpoints excluded)"
                                if not old_time else "seconds (older runs: evaluation included)")
        axes[row, 0].legend(fontsize=7, loc="best")
    band = "min–max" if spread != "sd" else "±1 s.d."
    fig.suptitle(f"{title}\nline: mean over seeds, band: {band} over seeds"
                 + (f"\n{common}" if common else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
