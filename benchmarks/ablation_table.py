"""Issue-8 ablation table from finished sweeps: the fast preset against itself with one lever changed.

    python benchmarks/ablation_table.py

Reads the image+mask jobs at N=2 and N=8 (3 seeds, same split and training subsets) of
benchmarks/work/sweep_head_CT (the fast preset as it is) and of the sweeps run with one override
each by benchmarks/sweep_head_ct.py:

    --tag noaug    training.augment=false          (augmentation off)
    --tag const    training.schedule=constant      (no polynomial decay)
    --tag oldstop  training.min_iterations=0 training.patience=6 training.dice_floor=-1
                   (the stopping rule before issue 8: patience from the first check, no floor)

All at the same iteration budget (training.max_iterations=1000). Writes
benchmarks/results/ablation_learning.{md,csv}: best validation Dice, test Dice (mean over
structures and test cases), iteration of the best checkpoint, iterations run, runs that did not
learn; mean over seeds, and the paired difference to the preset with a Wilcoxon p over
(seed, test case, structure) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from scipy.stats import wilcoxon

HERE = Path(__file__).parent
VARIANTS = {"fast preset (augment, poly, new stopping)": "sweep_head_CT", "augmentation off": "sweep_head_CT_noaug",
            "schedule constant": "sweep_head_CT_const", "old stopping rule": "sweep_head_CT_oldstop"}


def runs(sweep: str) -> pd.DataFrame:
    rows, metrics = [], []
    for job in sorted((HERE / "work" / sweep / "runs").glob("image+mask_n0[28]_seed*")):
        done = job / "done.json"
        if not done.exists():
            continue
        d = json.loads(done.read_text())
        n, seed = int(job.name.split("_n")[1][:2]), int(job.name.split("seed")[1])
        rows.append({"n": n, "seed": seed, "val_dice": d["train"]["best_val_dice"], "test_dice": d["mean_dice"],
                     "best_iteration": d["train"]["best_iteration"], "iterations": d["train"]["iterations"],
                     "learned": d["train"].get("learned", True)})
        metrics.append(pd.read_csv(job / "metrics.csv").assign(n=n, seed=seed))
    return pd.DataFrame(rows), pd.concat(metrics) if metrics else pd.DataFrame()


def main() -> None:
    table, csv = [], []
    ref_runs, ref_metrics = runs(VARIANTS[next(iter(VARIANTS))])
    for name, sweep in VARIANTS.items():
        r, m = runs(sweep)
        for n in (2, 8):
            rn = r[r["n"] == n]
            if rn.empty:
                continue
            pair = m[m["n"] == n].merge(ref_metrics[ref_metrics["n"] == n], on=["seed", "case", "structure"],
                                        suffixes=("", "_ref"))
            diff = pair["dice"] - pair["dice_ref"]
            p = wilcoxon(diff).pvalue if sweep != VARIANTS[next(iter(VARIANTS))] and (diff != 0).any() else float("nan")
            row = {"variant": name, "N": n, "seeds": len(rn), "val Dice": rn["val_dice"].mean(),
                   "test Dice": rn["test_dice"].mean(), "test Dice sd over seeds": rn["test_dice"].std(),
                   "vs preset": diff.mean() if sweep != VARIANTS[next(iter(VARIANTS))] else float("nan"),
                   "Wilcoxon p": p, "best iteration": rn["best_iteration"].mean(),
                   "iterations run": rn["iterations"].mean(), "did not learn": int((~rn["learned"]).sum())}
            table.append(row)
    df = pd.DataFrame(table).sort_values(["N", "variant"], key=lambda s: s if s.name == "N" else
                                         s.map(list(VARIANTS).index))
    out = HERE / "results"
    df.to_csv(out / "ablation_learning.csv", index=False)
    md = ["# Issue-8 ablation: one lever at a time, head_CT image+mask, fixed budget of 1000 iterations", "",
          "Each row: 3 seeds (training subsets and initialisations as the sweep draws them; same split: "
          "val head_002, head_010; test head_006, head_009). Training on an NVIDIA H200 (benchmarks/gpu_jobs.py, "
          "15 jobs at a time, one CPU thread each), prediction there, evaluation here; see "
          "benchmarks/results/sweep_head_CT/machine.txt. 'vs preset': mean paired test-Dice difference to the "
          "preset over (seed, case, structure); Wilcoxon signed-rank p over those pairs.", "",
          df.round(3).to_markdown(index=False), ""]
    (out / "ablation_learning.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
