"""``sofo-compare``: the command line of sofo_lab/analysis/compare.py (what it reads, groups and
writes is described there)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sofo_lab.analysis.compare import compare
from sofo_lab.analysis.compare_table import parse_at


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="sofo-compare", description=(
        "Compare runs and sweeps from the files they wrote: groups the runs by what differs between them "
        "(seeds pooled) and writes compare.png (loss and headline metric against iteration and training "
        "seconds, mean and spread over seeds, the task's reference levels), compare.md and compare.csv "
        "(final metrics mean ± s.d., time per iteration, step memory; when the task logs eval/solved, how many "
        "runs end solved and when each was first solved) into the first directory (or --out)."))
    ap.add_argument("dirs", nargs="+", help="sweep directories (outputs/multirun/<time>) or run directories")
    ap.add_argument("--out", default=None, help="where to write the figure and tables (default: the first dir)")
    ap.add_argument("--spread", choices=("minmax", "sd"), default="minmax",
                    help="band around the mean over seeds: min-max (default) or ±1 s.d.")
    ap.add_argument("--title", default=None, help="figure and table title")
    ap.add_argument("--metrics", default="", metavar="M1,M2",
                    help="more metrics to plot (a row each) and tabulate, e.g. eval/moved_early,hold_error_cm; "
                         "a name without a prefix means eval/<name> when logged (else train/<name>)")
    ap.add_argument("--at", default=None, metavar="iteration=N|seconds=S",
                    help="tabulate every run at that iteration (equal iterations) or training second (equal "
                         "wall-clock) instead of at its end: its last evaluation there")
    args = ap.parse_args(argv)
    written = compare(args.dirs, args.out, args.spread, args.title,
                      metrics=[m.strip() for m in args.metrics.split(",") if m.strip()], at=parse_at(args.at))
    print(Path(written["markdown"]).read_text(), end="")
    print(f"Wrote {', '.join(written['figures'])}, {written['markdown']}, {written['csv']} "
          f"({written['runs']} run{'s' if written['runs'] != 1 else ''})")



if __name__ == "__main__":
    main()
