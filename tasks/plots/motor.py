"""The motor tasks' plots: hand paths in the plane and torques over time (tasks/motor_common.py)."""
from __future__ import annotations

import jax

SEGMENT_STYLES = (":", "-", "--")   # hold, reach 1, reach 2


def plot_trajectories(task, out_dir, batch, ys, n_trials: int = 8) -> str:
    """Hand paths of a few held-out trials in the plane: start, numbered targets (k = movement),
    path ends (×), the workspace edge; one line style per segment (go_k to go_{k+1}). The hold
    segment (before the first go cue) stays within about a centimetre of the start, so an inset
    magnifies the start region to show it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    lat = jax.tree.map(np.asarray, batch.extras)
    ys = np.asarray(ys)
    n = min(n_trials, ys.shape[1])
    fig, ax = plt.subplots(figsize=(6, 6))
    inset = ax.inset_axes([0.64, 0.02, 0.34, 0.34])
    edge = np.linspace(0, 2 * np.pi, 200)
    ax.plot(task.reach * np.cos(edge), task.reach * np.sin(edge), color="0.8", lw=1)
    hold_extent = 0.01
    for i in range(n):
        color = f"C{i % 10}"
        cuts = [0, *lat.go[i], ys.shape[0]]
        for k in range(len(cuts) - 1):
            seg = ys[cuts[k]:cuts[k + 1] + 1, i, :2]
            style = SEGMENT_STYLES[min(k, 2)]
            ax.plot(seg[:, 0], seg[:, 1], style, color=color, lw=1.8 if k == 0 else 1.3)
            if k == 0:
                inset.plot(seg[:, 0], seg[:, 1], style, color=color, lw=1.4)
                hold_extent = max(hold_extent, float(np.abs(seg - np.asarray(task.start)).max()))
        ax.plot(*ys[-1, i, :2], "x", color=color, ms=7, mew=1.6)
        for k in range(task.n_moves):
            ax.plot(*lat.targets[i, k], "o", mfc="white", mec=color, ms=11, mew=1.4)
            ax.annotate(str(k + 1), lat.targets[i, k], fontsize=7, ha="center", va="center", color=color)
    for a in (ax, inset):
        a.plot(*task.start, "ks", ms=6 if a is ax else 4, mfc="none" if a is inset else "k")
    r = 1.2 * hold_extent
    inset.set(xlim=(task.start[0] - r, task.start[0] + r), ylim=(task.start[1] - r, task.start[1] + r),
              xticks=[], yticks=[], aspect="equal")
    inset.set_title(f"hold, ±{100 * r:.1f} cm around the start", fontsize=7)
    ax.indicate_inset_zoom(inset, edgecolor="0.5")
    ax.set_aspect("equal")
    ax.set_xlabel("hand x (m)")
    ax.set_ylabel("hand y (m)")
    ax.set_title(f"hand paths of {n} held-out trials (colour = trial)", fontsize=9)
    handles = [Line2D([], [], color="0.8", lw=1, label="workspace edge"),
               Line2D([], [], marker="s", color="k", ls="none", label="start"),
               Line2D([], [], marker="o", mfc="white", mec="k", ls="none", ms=9,
                      label="target k (number = movement)" if task.n_moves > 1 else "target"),
               Line2D([], [], marker="x", color="k", ls="none", mew=1.6, label="hand at the end of the trial"),
               Line2D([], [], ls=":", color="k", lw=1.8, label="hold (before go)"),
               Line2D([], [], ls="-", color="k", lw=1.3, label="reach 1" if task.n_moves > 1 else "reach")]
    if task.n_moves > 1:
        handles.append(Line2D([], [], ls="--", color="k", lw=1.3, label="reach 2"))
    ax.legend(handles=handles, loc="lower left", fontsize=7)
    fig.tight_layout()
    path = f"{out_dir}/{task.name}_trajectories.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_torques(task, out_dir, batch, ys, n_trials: int = 4) -> str:
    """Joint torques and hand speed over time for a few held-out trials, go cues marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    lat = jax.tree.map(np.asarray, batch.extras)
    ys = np.asarray(ys)
    t = (np.arange(ys.shape[0]) + 1) * task.dt
    n = min(n_trials, ys.shape[1])
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
    for i in range(n):
        color = f"C{i % 10}"
        axes[0].plot(t, ys[:, i, 4], color=color, lw=1, label=f"trial {i}")
        axes[1].plot(t, ys[:, i, 5], color=color, lw=1)
        axes[2].plot(t, np.linalg.norm(ys[:, i, 2:4], axis=-1), color=color, lw=1)
        for ax in axes:
            for g in lat.go[i]:
                ax.axvline(g * task.dt, color=color, ls=":", lw=0.8)
    axes[0].set_ylabel("shoulder τ1 (N·m)")
    axes[1].set_ylabel("elbow τ2 (N·m)")
    axes[2].set_ylabel("hand speed (m/s)")
    axes[2].set_xlabel("time (s)")
    handles = axes[0].get_legend_handles_labels()[0] + [
        Line2D([], [], color="0.4", ls=":", lw=0.8, label="go cue (trial's colour)")]
    fig.suptitle(f"{n} held-out trials: joint torques and hand speed", fontsize=9)
    fig.legend(handles=handles, fontsize=7, ncol=n + 1, loc="upper center", bbox_to_anchor=(0.5, 0.965))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = f"{out_dir}/{task.name}_torques.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
