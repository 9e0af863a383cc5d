"""How much of a trained reach network's endpoint error is its private noise? (docs/motor.md)

    python scripts/motor_noise_share.py RUN_DIR [--trials 256] [--seed 123] [--out noise_share.json]

Loads a finished ``sofo-run task=reach|double_reach`` run (``sofo_lab.load_run``), draws a fresh
batch of trials, and simulates the trained network on it twice (``sofo_lab.simulate``): with the
private noise the network was trained with, and without it. It prints, for both, the task's own
metrics (``task.evaluate``: within 1 cm, endpoint, hold error, moved early), and for the noisy
trials the fraction within 1 cm around the end of the free window (−100 … +200 ms): a hand that
arrives late gains there, a hand that stops at the wrong place does not. Writes the numbers to
``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

import sofo_lab

METRICS = ("within_1cm", "endpoint_error_cm", "hold_error_cm", "moved_early")
OFFSETS_MS = (-100, -50, 0, 50, 100, 200)


def noise_share(run_dir, trials: int = 256, seed: int = 123) -> dict:
    run = sofo_lab.load_run(run_dir)
    task = run.task
    if not hasattr(task, "n_moves"):
        raise SystemExit(f"error: {run_dir}: task {type(task).__name__} is not a motor task (reach, double_reach)")
    k_batch, k_noise = jax.random.split(jax.random.PRNGKey(seed))
    batch = task.eval_batch(k_batch, trials)
    noisy = batch._replace(noise=run.system.sample_noise(k_noise, batch.n_steps, trials))
    result = {"run_dir": str(run_dir), "iteration": run.iteration, "trials": trials, "seed": seed}
    for label, b in (("noisy", noisy), ("noise_free", batch._replace(noise=None))):
        ys = sofo_lab.simulate(run.system, run.params, b).outputs
        result[label] = {k: float(v) for k, v in task.evaluate(b, ys).items() if k in METRICS}
        if label == "noisy":
            pos, end = np.asarray(ys)[..., :2], np.asarray(b.extras.window_end)[:, 0]
            target = np.asarray(b.extras.targets)[:, 0]
            result["noisy_within_1cm_around_window_end"] = {}
            for ms in OFFSETS_MS:
                t = np.clip(end + round(ms / 1000 / task.dt), 0, pos.shape[0] - 1)
                err = 100 * np.linalg.norm(pos[t, np.arange(trials)] - target, axis=-1)
                result["noisy_within_1cm_around_window_end"][f"{ms:+d} ms"] = float(np.mean(err < 1.0))
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--trials", type=int, default=256)
    ap.add_argument("--seed", type=int, default=123, help="key of the fresh trials and their noise")
    ap.add_argument("--out", default=None, help="JSON file (default: <run_dir>/noise_share.json)")
    args = ap.parse_args(argv)
    result = noise_share(args.run_dir, args.trials, args.seed)
    for label in ("noisy", "noise_free"):
        m = result[label]
        print(f"{label:10s}: within 1 cm {100 * m['within_1cm']:5.1f} %   endpoint {m['endpoint_error_cm']:.2f} cm   "
              f"hold {m['hold_error_cm']:.2f} cm   moved early {100 * m['moved_early']:.0f} %")
    print("noisy, within 1 cm around the end of the free window: " + "   ".join(
        f"{k} {100 * v:.0f} %" for k, v in result["noisy_within_1cm_around_window_end"].items()))
    out = Path(args.out) if args.out else Path(args.run_dir) / "noise_share.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
