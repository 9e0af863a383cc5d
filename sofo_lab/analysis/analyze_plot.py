"""The figures of ``sofo-analyze`` (analysis/analyze.py): trajectories and fixed points in the top PCs,
and each fixed point's spectrum against the unit circle."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# label -> (marker, colour, size): attractors filled, saddles crossed, repellers open (Sussillo & Barak's figures)
STYLE = {"stable": ("o", "k", 60), "saddle": ("X", "tab:red", 60), "unstable": ("s", "tab:purple", 50),
         "slow": (".", "0.5", 40)}
EIG_COLOR = {"stable": "tab:blue", "saddle": "tab:red", "unstable": "tab:purple", "slow": "0.5"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pca(out_dir, trajectories, points_pcs, fp, cond, p, task_name: str, by_condition: bool,
             delay_view=None, paths_pcs=None) -> str:
    """``pca_trajectories.png``. Left: the condition-averaged trajectories ``[T, C, k]`` in the top 3
    (or 2) PCs, a dot where each starts (motor tasks: a diamond at the end of the delay), the fixed
    points marked by stability, and from each saddle the paths along its unstable direction; for
    the motor tasks colours follow the conditions (targets) and each stable point takes its input's
    colour. Right, a close-up: the motor tasks' end of delay (``_delay_panel``), or else the fixed
    points and the saddles' paths alone, in the same PCs (the trajectories' transients set the
    left panel's scale)."""
    plt = _plt()
    from matplotlib.lines import Line2D

    k = min(3, trajectories.shape[-1])
    C = cond.n_plot
    close_up = delay_view is not None or len(fp.q) > 0
    fig = plt.figure(figsize=(12, 5.5) if close_up else (7, 6))
    new_axes = lambda i: fig.add_subplot(1, 2 if close_up else 1, i, projection="3d" if k == 3 else None)  # noqa: E731
    ax = new_axes(1)
    colors = plt.cm.hsv(np.linspace(0, 0.9, C)) if by_condition else [(0.45, 0.45, 0.45, 0.35)] * C
    for c in range(C):
        ax.plot(*_dims(trajectories[:, c], k), color=colors[c], lw=1.2 if by_condition else 0.7)
        ax.scatter(*_dims(trajectories[:1, c], k), color=colors[c], s=10)
        if cond.delay_end is not None:
            t = int(cond.delay_end[np.flatnonzero(cond.labels == c)[0]])
            ax.scatter(*_dims(trajectories[t:t + 1, c], k), color=colors[c], marker="D", s=25, edgecolor="k", lw=0.5)
    in_colors = plt.cm.hsv(np.linspace(0, 0.9, len(cond.input_names))) if by_condition else None
    _points(ax, points_pcs, paths_pcs, fp, in_colors, k)
    ev = np.asarray(p.explained_variance_ratio)
    _axis_labels(ax, ev, k)
    counts = fp.counts()
    handles = [Line2D([], [], marker=STYLE[l][0], color="w", markerfacecolor=STYLE[l][1], markeredgecolor="k",
                      markersize=8, label=f"{l} ({counts[l]})") for l in STYLE if counts[l]]
    if paths_pcs is not None:
        handles.append(Line2D([], [], color="tab:red", lw=1.0, label="from each saddle, along its unstable direction"))
    if cond.delay_end is not None:
        handles.append(Line2D([], [], marker="D", color="w", markerfacecolor="0.7", markeredgecolor="k",
                              markersize=6, label="end of delay"))
    ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    what = "condition-averaged" if by_condition else "held-out trials,"
    ax.set_title(f"{task_name}: {what} trajectories and fixed points\n(top PCs: {100 * ev[:k].sum():.0f}% of "
                 f"the variance)", fontsize=10)
    if delay_view is not None:
        _delay_panel(fig.add_subplot(1, 2, 2), delay_view, fp, cond, in_colors)
    elif close_up:
        zoom = new_axes(2)
        _points(zoom, points_pcs, paths_pcs, fp, in_colors, k)
        _axis_labels(zoom, ev, k)
        zoom.set_title("close-up: the fixed points and where each saddle leads", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "pca_trajectories.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _dims(a, k):
    return [a[..., i] for i in range(k)] if k > 1 else [a[..., 0], np.zeros_like(a[..., 0])]


def _axis_labels(ax, ev, k):
    for i, setter in enumerate(["set_xlabel", "set_ylabel", "set_zlabel"][:max(k, 2)]):
        getattr(ax, setter)(f"PC {i + 1} ({100 * ev[i]:.0f}%)" if i < k else "")


def _points(ax, points_pcs, paths_pcs, fp, in_colors, k):
    """The saddles' paths and the fixed points, marked by stability."""
    if paths_pcs is not None:                  # where each saddle leads, both ways along its unstable direction
        for j in range(paths_pcs.shape[1]):
            ax.plot(*_dims(paths_pcs[:, j], k), color="tab:red", lw=1.0, alpha=0.8)
    for label, (marker, color, size) in STYLE.items():
        sel = fp.labels == label
        if not np.any(sel):
            continue
        face = [in_colors[c] for c in fp.condition[sel]] if in_colors is not None and label == "stable" else color
        extra = {"depthshade": False} if k == 3 else {}
        ax.scatter(*_dims(points_pcs[sel], k), marker=marker, c=face, s=size, edgecolor="k", linewidths=0.6,
                   zorder=5, **extra)


def _delay_panel(ax, delay_view, fp, cond, colors):
    """The end of the delay, magnified: each condition's end-of-delay state (diamond, the mean of its
    trials) and the stable fixed points under its delay input (circles), in the top 2 PCs of those
    states and points together (a fit of their own: the movement dominates the trajectories' PCs)."""
    ends, pts = delay_view
    stable = fp.labels == "stable"
    for c in range(len(ends)):
        ax.scatter(*ends[c], marker="D", color=colors[c], s=40, edgecolor="k", lw=0.5)
        ax.annotate(cond.names[c].replace("target ", ""), ends[c], fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.scatter(pts[:, 0], pts[:, 1], marker="o", c=[colors[c] for c in fp.condition[stable]], s=70, edgecolor="k",
               lw=0.6, zorder=5)
    ax.set(xlabel="delay PC 1", ylabel="delay PC 2", aspect="equal",
           title="end of delay (diamonds) and the stable fixed point\nof each delay input (circles)")


def plot_eigenvalues(out_dir, fp, task_name: str) -> str:
    """``eigenvalues.png``: left, every fixed point's eigenvalues in the complex plane with the unit
    circle (inside: decaying, outside: growing, for the discrete-time map); right, each point's 10
    largest |λ| by rank with the stability line |λ| = 1."""
    plt = _plt()
    fig, (ax, ax_rank) = plt.subplots(1, 2, figsize=(10, 4.5))
    circle = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(circle), np.sin(circle), color="0.6", lw=1)
    for label in EIG_COLOR:
        sel = np.flatnonzero(fp.labels == label)
        if not len(sel):
            continue
        eig = fp.eigenvalues[sel]
        ax.scatter(eig.real.ravel(), eig.imag.ravel(), s=8, color=EIG_COLOR[label], alpha=0.6,
                   label=f"{label} ({len(sel)})")
        top = min(10, fp.eigenvalues.shape[1])
        for i in sel:
            ax_rank.plot(np.arange(1, top + 1), np.abs(fp.eigenvalues[i, :top]), color=EIG_COLOR[label], marker=".",
                         lw=0.8, alpha=0.7)
    ax.set(xlabel="Re λ", ylabel="Im λ", aspect="equal", title="eigenvalues of ∂F/∂x at each fixed point")
    if len(fp.q):
        ax.legend(fontsize=8, loc="lower left")
    ax_rank.axhline(1.0, color="k", lw=0.8, ls="--")
    ax_rank.set(xlabel="rank", ylabel="|λ|", title="10 largest |λ| of each point (> 1: unstable)")
    fig.suptitle(f"{task_name}: linearization of the discrete-time dynamics x' = F(x, u)", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "eigenvalues.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
