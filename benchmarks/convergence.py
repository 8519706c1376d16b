"""The paper's convergence claim, read from finished sweeps: iterations to a validation Dice.

    python benchmarks/convergence.py SWEEP_DIR [SWEEP_DIR ...] [--out benchmarks/results/convergence.md]

The paper (Tables 5-6) reports that the mask channel shortens training: 12 h -> 2 h on heads,
3.5 h -> 1 h on hearts, to convergence. A run's "best iteration" does not show this when every
run keeps improving until its budget ends. Here, per sweep, N and mode: the iterations until the
validation Dice first reached 0.5 and 0.7 (``gbmseg.sweep_stats.convergence_table``, the same
numbers as the report's "Convergence" section), and per N the paired difference image+mask -
image over the seeds where both reached the target (same seed: same training cases). Trains
nothing; reads each run's ``train/history.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gbmseg.io import write_text
from gbmseg.sweep_stats import CONVERGENCE_TARGETS, convergence_table, first_reached, load_runs, order_modes


def paired(runs, n: int, target: float) -> tuple[list[float], int]:
    """image+mask minus image iterations for each seed where both runs reached the target, and the
    number of seeds where only one did (its sign: +1 image+mask only, -1 image only)."""
    by = {(r.mode, r.seed): first_reached(r.history, target) for r in runs if r.n_train == n}
    diffs, only = [], 0
    for seed in sorted({s for m, s in by if m == "image"} & {s for m, s in by if m == "image+mask"}):
        a, b = by[("image+mask", seed)], by[("image", seed)]
        if a and b:
            diffs.append(a[0] - b[0])
        elif a or b:
            only += 1 if a else -1
    return diffs, only


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    lines = ["# Iterations to a validation Dice, per sweep (`benchmarks/convergence.py`)", "",
             "Mean over the runs that reached the target [reached / runs]; validation every 50 iterations. "
             "'paired': image+mask minus image, per seed where both reached it (same training cases).", ""]
    for sweep in map(Path, args.sweeps):
        runs, _, _ = load_runs(sweep)
        modes = [m for m in order_modes({r.mode for r in runs}) if any(r.history is not None for r in runs if r.mode == m)]
        sizes = sorted({r.n_train for r in runs})
        table = convergence_table(runs, modes, sizes)
        lines += [f"## {sweep.name}", "", "| N | mode | " + " | ".join(f"to {t:g}" for t in CONVERGENCE_TARGETS)
                  + " | " + " | ".join(f"paired, to {t:g}" for t in CONVERGENCE_TARGETS) + " |",
                  "|---|---|" + "---|" * 2 * len(CONVERGENCE_TARGETS)]
        for n in sizes:
            for mode in modes:
                sub = table[(table["n_train"] == n) & (table["mode"] == mode)].set_index("target")
                cells = [f"{sub.loc[t, 'iterations_mean']:.0f} [{sub.loc[t, 'n_reached']}/{sub.loc[t, 'n_runs']}]"
                         if sub.loc[t, "n_reached"] else f"- [0/{sub.loc[t, 'n_runs']}]" for t in CONVERGENCE_TARGETS]
                pair = []
                for t in CONVERGENCE_TARGETS:
                    if mode != "image+mask":
                        pair.append("")
                        continue
                    diffs, only = paired(runs, n, t)
                    text = ", ".join(f"{d:+.0f}" for d in diffs) or "-"
                    if only:
                        text += f" ({abs(only)} seed{'s' if abs(only) > 1 else ''} only {'image+mask' if only > 0 else 'image'} reached it)"
                    pair.append(text)
                lines.append(f"| {n} | {mode} | " + " | ".join(cells + pair) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text(text, Path(args.out))


if __name__ == "__main__":
    main()
