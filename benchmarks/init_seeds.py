"""Issue-8 benchmark: one training set, several initialisation seeds. Is a structure that a run
loses the run's chance (its initial weights, patches, augmentations) or its training cases?

    python benchmarks/init_seeds.py DATASET --work WORK --train A,B --val C,D --test E,F \
        --modes image,image+mask --seeds 0,100,101 --runs benchmarks/work/init_seeds \
        [--set training.max_iterations=2000 ...] [--tag long] --out benchmarks/results/init_seeds_hn_CT

Every (mode, seed) is trained with the CLI as a user would (``gbmseg train --seed S``), then
predicts the test cases (``gbmseg predict``, in each scan's own geometry) and is scored
(``gbmseg evaluate``). A trained run (``result.json`` present) is reused, so an interrupted
benchmark resumes. Writes to ``--out``:

    dice.csv       one row per (mode, seed, case, structure): test Dice
    runs.csv       one row per (mode, seed): test Dice per structure, the best validation Dice per
                   structure, the structures the run reports as not learned, best iteration, and the
                   iterations its budget was extended by (training.extend_iterations) and for which structures
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from gbmseg.dataset import Dataset


def gbmseg(*args: str) -> None:
    """One CLI call; its output goes to the run's own logs, a failure stops the benchmark."""
    subprocess.run([sys.executable, "-m", "gbmseg", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def best_val_per_structure(run: Path) -> dict[str, float]:
    """The best validation Dice each structure reached (from ``train.log``'s per-structure lines)."""
    best: dict[str, float] = {}
    for line in (run / "train.log").read_text().splitlines():
        if "val_dice per structure" not in line:
            continue
        words = line.split("val_dice per structure ", 1)[1].split()
        for name, value in zip(words[::2], words[1::2]):
            best[name] = max(best.get(name, 0.0), float(value))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--work", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--modes", default="image,image+mask")
    ap.add_argument("--seeds", default="0,100,101")
    ap.add_argument("--runs", default="benchmarks/work/init_seeds")
    ap.add_argument("--tag", default="")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ds = Dataset(Path(args.dataset), work=Path(args.work))
    test = args.test.split(",")
    dice_rows, run_rows = [], []
    for mode in args.modes.split(","):
        for seed in map(int, args.seeds.split(",")):
            run = Path(args.runs) / f"{mode}_seed{seed}{'_' + args.tag if args.tag else ''}"
            if not (run / "result.json").exists():
                print(f"train {run}", flush=True)
                gbmseg("train", args.dataset, "--work", args.work, "--mode", mode, "--train", args.train,
                       "--val", args.val, "--seed", str(seed), "-o", str(run),
                       *[a for s in args.set for a in ("--set", s)])
            pred, scores = run / "test_pred", run / "test_dice.csv"
            if not scores.exists():
                with tempfile.TemporaryDirectory() as tmp:  # the test images, and only those
                    for image in map(ds.image_path, test):
                        Path(tmp, image.name).symlink_to(image.resolve())
                    gbmseg("predict", "-m", str(run), "-i", tmp, "-o", str(pred), "--overwrite")
                gbmseg("evaluate", "--pred", str(pred), "--ref", str(Path(args.dataset) / "labelsTr"),
                       "--cases", args.test, "-o", str(scores))
            d = pd.read_csv(scores)
            dice_rows += [dict(mode=mode, seed=seed, case=r.case, structure=r.structure, dice=r.dice)
                          for r in d.itertuples()]
            result = json.loads((run / "result.json").read_text())
            row = dict(mode=mode, seed=seed, test_dice=round(d.dice.mean(), 3),
                       best_iteration=result["best_iteration"], iterations=result["iterations"],
                       not_learned=" ".join(result.get("structures_not_learned", [])),
                       extended_iterations=result.get("extended_iterations", 0),
                       extended_for=" ".join(result.get("extended_for", [])),
                       extended_at=result.get("extended_at", 0))
            row.update({f"test {k}": round(v, 3) for k, v in d.groupby("structure").dice.mean().items()})
            row.update({f"val {k}": round(v, 3) for k, v in best_val_per_structure(run).items()})
            run_rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    pd.DataFrame(dice_rows).to_csv(out / f"dice{suffix}.csv", index=False)
    pd.DataFrame(run_rows).to_csv(out / f"runs{suffix}.csv", index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
