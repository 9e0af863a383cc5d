"""Write the example recording of docs/data.md: spike counts of a known rate network.

    python scripts/make_recorded_example.py                      # data/recorded_example.npz (counts)
    python scripts/make_recorded_example.py --targets rates      # the true rates as targets (task.loss=mse)

The teacher is a ``model=rnn`` network (tanh, 16 units, α = 0.2); the file holds inputs, targets,
the true rates (so the fit is scored against the truth as eval/oracle_*), dt, the channel names and
the teacher's weights (``teacher_*``). The generator is ``sofo_lab.tasks.recorded.example_dataset``
(also what ``task=recorded`` uses when ``task.path`` is null).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sofo_lab.tasks.recorded import example_dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/recorded_example.npz", help="where to write the .npz")
    parser.add_argument("--targets", choices=("counts", "rates"), default="counts",
                        help="counts (Poisson draws; task.loss=poisson) or the true rates (task.loss=mse)")
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = example_dataset(n_trials=args.trials, seed=args.seed)
    if args.targets == "rates":
        data["targets"] = data["rates"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **data)
    k = data["targets"]
    print(f"wrote {out}: {k.shape[0]} trials x {k.shape[1]} steps, {data['inputs'].shape[2]} inputs, "
          f"{k.shape[2]} neurons ({args.targets}; mean {k.mean():.3f} per {float(data['dt']) * 1e3:.0f} ms bin)")


if __name__ == "__main__":
    main()
