"""Issue-9 check: the speed levers do not change what a training learns.

Trains the fast preset on head_CT (image+mask, 4 training and 2 validation cases, seed 0) for a fixed
number of iterations, in separate processes: with every lever on (the default), with none (glibc
allocator left as it is, every convolution on PyTorch's own path), and with every lever on but one
torch thread (a reference: only the order of float sums differs from the default). Records the validation Dice
at every validation, the seconds per iteration, and the largest difference in validation Dice.

    python benchmarks/levers_dice.py [--data ../shared/data] [--iterations 300]

Writes benchmarks/results/levers_dice.{csv,md}. Work files go to benchmarks/work/levers/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
# name -> (levers, torch threads; 0 = all cores). The 1-thread run changes only the order of float sums,
# as the levers do: it shows how far two runs drift apart from rounding alone.
SETTINGS = {"all levers (default)": ("alloc,split", 0), "no lever": ("", 0),
            "all levers, 1 thread (rounding only)": ("alloc,split", 1)}


def worker(data: Path, levers: str, iterations: int, out: Path) -> None:
    """One training in this process, with only the levers named in ``levers``."""
    from gbmseg import network, runtime
    from gbmseg.config import load_config
    from gbmseg.dataset import Dataset, split_cases
    from gbmseg.global_masks import make_dataset_masks
    from gbmseg.preprocessing import preprocess_dataset
    from gbmseg.training import train

    on = set(filter(None, levers.split(",")))
    if "alloc" not in on:
        runtime._keep_freed_memory = lambda: False
    if "split" not in on:
        network.ONEDNN_MIN = -1  # every convolution takes PyTorch's own choice
    ds = Dataset(data / "head_CT", work=HERE / "work" / "levers" / "head_CT")
    make_dataset_masks(ds, "threshold", progress=False)
    split = split_cases(ds.cases, 2, 2, seed=0)
    train_cases, val_cases = split["pool"][:4], split["val"]
    cfg = load_config("fast", [f"training.max_iterations={iterations}", f"training.min_iterations={iterations}",
                               "training.val_interval=50"])
    cache = preprocess_dataset(ds, cfg, progress=False, plan_cases=train_cases + val_cases)
    result = train(cache, "image+mask", train_cases, val_cases, cfg, out, seed=0, progress=False)
    (out / "levers.json").write_text(json.dumps({"levers": levers, **result}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--worker", nargs=3, metavar=("LEVERS", "ITERATIONS", "OUT"))
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.data), args.worker[0], int(args.worker[1]), Path(args.worker[2]))
        return
    rows, summary = [], []
    for name, (levers, threads) in SETTINGS.items():
        out = HERE / "work" / "levers" / f"run_{levers or 'none'}_{args.iterations}{f'_t{threads}' if threads else ''}"
        if not (out / "levers.json").exists():
            env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            subprocess.run([sys.executable, __file__, "--data", args.data, "--worker", levers, str(args.iterations),
                            str(out)], check=True, env=env)
        hist = pd.read_csv(out / "history.csv")
        res = json.loads((out / "levers.json").read_text())
        for r in hist.itertuples():
            rows.append({"setting": name, "iteration": r.iteration, "val_dice": r.val_dice, "train_loss": r.train_loss})
        summary.append({"setting": name, "s_per_iteration": res["train_time_s"] / res["iterations"],
                        "best_val_dice": res["best_val_dice"], "best_iteration": res["best_iteration"],
                        "final_val_dice": float(hist.val_dice.iloc[-1])})
    df = pd.DataFrame(rows)
    out_dir = HERE / "results"
    df.to_csv(out_dir / "levers_dice.csv", index=False)
    wide = df.pivot_table(index="iteration", columns="setting", values="val_dice")[list(SETTINGS)]
    names = list(SETTINGS)
    diff = (wide[names[0]] - wide[names[1]]).abs()
    ref = (wide[names[0]] - wide[names[2]]).abs()
    md = ["# Speed levers and what is learned (issue 9)", "",
          f"Machine: {platform.node()} {platform.processor() or platform.machine()}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
          f"head_CT, fast preset, image+mask, 4 training / 2 validation cases, seed 0, {args.iterations} iterations, "
          "each setting in its own process.", "",
          "## Validation Dice at each validation", "", wide.round(4).to_markdown(), "",
          f"Largest difference in validation Dice at the same iteration, levers on vs off: {diff.max():.4f} "
          f"(mean {diff.mean():.4f}); levers on, 2 threads vs 1 thread (rounding only): {ref.max():.4f} "
          f"(mean {ref.mean():.4f}).", "",
          "## Summary", "", pd.DataFrame(summary).round(4).to_markdown(index=False), ""]
    (out_dir / "levers_dice.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
