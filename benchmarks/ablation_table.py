"""Issue-8 ablation table from finished sweeps: the fast preset against itself with one lever changed.

    python benchmarks/ablation_table.py

Reads the image+mask jobs at N=2 and N=8 (3 seeds, same split and training subsets) of
benchmarks/work/sweep_head_CT (the fast preset as it is) and of the sweeps run with one override
each by benchmarks/sweep_head_ct.py:

    --tag noaug    training.augment=false          (augmentation off)
    --tag const    training.schedule=constant      (no polynomial decay)
    --tag oldstop  training.min_iterations=0 training.patience=6 training.dice_floor=-1
                   (the stopping rule before issue 8: patience from the first check, no floor)

A second table, the levers on the learning step itself, reads the image and image+mask jobs at
N=1, 2 and 8 of sweeps tagged ``L_<lever>`` against the same batch-norm preset:

    --tag L_inst     network.norm=instance                  (became the preset)
    --tag L_ds       network.deep_supervision=true
    --tag L_inst_ds  both
    --tag L_lr3      training.lr=0.003
    --tag L_lr10w    training.lr=0.01 training.warmup=50
    --tag L_sgd      training.optimizer=sgd training.lr=0.01  (nnU-Net's SGD, Nesterov momentum 0.99)

and ``sweep_head_CT_instnorm`` (the instance-norm preset, rerun with every mode and size).

All at the same iteration budget (training.max_iterations=1000). Writes
benchmarks/results/ablation_learning.{md,csv} and ablation_levers.csv: best validation Dice, test
Dice (mean over structures and test cases), iteration of the best checkpoint, iterations run, runs
that did not learn; mean over seeds, and the paired difference to the reference with a Wilcoxon p
over (seed, test case, structure) pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from scipy.stats import wilcoxon

HERE = Path(__file__).parent
VARIANTS = {"round-1 preset (batch norm; augment, poly, new stopping)": "sweep_head_CT", "augmentation off": "sweep_head_CT_noaug",
            "schedule constant": "sweep_head_CT_const", "old stopping rule": "sweep_head_CT_oldstop"}
LEVERS = {"batch norm (the preset before)": "sweep_head_CT", "instance norm": "sweep_head_CT_L_inst",
          "instance norm (the preset now; rerun)": "sweep_head_CT_instnorm",
          "deep supervision": "sweep_head_CT_L_ds", "instance norm + deep supervision": "sweep_head_CT_L_inst_ds",
          "Adam lr 3e-3": "sweep_head_CT_L_lr3", "Adam lr 1e-2, 50 warm-up": "sweep_head_CT_L_lr10w",
          "SGD (Nesterov 0.99) lr 1e-2": "sweep_head_CT_L_sgd"}


def runs(sweep: str, mode: str = "image+mask", sizes: str = "28") -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, metrics = [], []
    for job in sorted((HERE / "work" / sweep / "runs").glob(f"{mode}_n0[{sizes}]_seed*")):
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


def compare(variants: dict[str, str], mode: str, sizes: str) -> pd.DataFrame:
    """One row per (variant, N) with a finished job: means over seeds, paired difference to the first variant."""
    table = []
    ref_sweep = next(iter(variants.values()))
    ref_runs, ref_metrics = runs(ref_sweep, mode, sizes)
    for name, sweep in variants.items():
        r, m = runs(sweep, mode, sizes)
        for n in sorted(int(c) for c in sizes):
            rn = r[r["n"] == n] if not r.empty else r
            if rn.empty:
                continue
            pair = m[m["n"] == n].merge(ref_metrics[ref_metrics["n"] == n], on=["seed", "case", "structure"],
                                        suffixes=("", "_ref"))
            diff = pair["dice"] - pair["dice_ref"]
            p = wilcoxon(diff).pvalue if sweep != ref_sweep and (diff != 0).any() else float("nan")
            table.append({"variant": name, "mode": mode, "N": n, "seeds": len(rn), "val Dice": rn["val_dice"].mean(),
                          "test Dice": rn["test_dice"].mean(), "test Dice sd over seeds": rn["test_dice"].std(),
                          "vs reference": diff.mean() if sweep != ref_sweep else float("nan"),
                          "Wilcoxon p": p, "best iteration": rn["best_iteration"].mean(),
                          "iterations run": rn["iterations"].mean(), "did not learn": int((~rn["learned"]).sum())})
    return pd.DataFrame(table).sort_values(["N", "variant"], key=lambda s: s if s.name == "N" else
                                           s.map(list(variants).index))


def main() -> None:
    df = compare(VARIANTS, "image+mask", "28").rename(columns={"vs reference": "vs preset"})
    levers = pd.concat([compare(LEVERS, mode, "128") for mode in ("image", "image+mask")], ignore_index=True)
    out = HERE / "results"
    df.to_csv(out / "ablation_learning.csv", index=False)
    levers.to_csv(out / "ablation_levers.csv", index=False)
    md = ["# Issue-8 ablation: one lever at a time, head_CT, fixed budget of 1000 iterations", "",
          "Each row: 3 seeds (training subsets and initialisations as the sweep draws them; same split: "
          "val head_002, head_010; test head_006, head_009). Training on an NVIDIA H200 (benchmarks/gpu_jobs.py, "
          "15 jobs at a time, one CPU thread each), prediction there, evaluation here; see "
          "benchmarks/results/sweep_head_CT/machine.txt. 'vs preset': mean paired test-Dice difference to the "
          "preset over (seed, case, structure); Wilcoxon signed-rank p over those pairs.", "",
          "## First round: augmentation, schedule, stopping rule (image+mask at N = 2, 8)", "",
          df.round(3).to_markdown(index=False), "",
          "## Levers on the learning step (second round): image and image+mask at N = 1, 2, 8", "",
          "Reference: the batch-norm preset of the table above (benchmarks/work/sweep_head_CT). Each lever is one "
          "override of it (instance norm + deep supervision: two), same split, subsets, seeds and 1000 iterations; "
          "trained on the H200 the same way (benchmarks/results/gpu_jobs_run3_log.txt, gpu_jobs_run4_log.txt). "
          "'vs reference': mean paired test-Dice difference over (seed, case, structure), Wilcoxon p over those pairs. "
          "Instance norm became the preset; 'the preset now; rerun' is its full sweep "
          "(benchmarks/results/sweep_head_CT_instnorm), a second training of the same jobs (GPU training is not "
          "bit-reproducible), so its distance to the 'instance norm' row is run-to-run noise.", "",
          levers.round(3).to_markdown(index=False), ""]
    (out / "ablation_learning.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
