"""Issue-14 benchmark: label coverage of the model grid with the paper's rule (crop on the mask's
centre) and with the planned crop, on hn_CT, head_CT and heart_CT; optionally (``--dice``) a sweep
on hn_CT at N = 8 with both rules, side by side.

    python benchmarks/crop_plan.py [--data ../shared/data] [--dice] [--set k=v ...]

Each dataset gets one fixed split (seed 0): the plan is fitted to the training pool and the
validation cases; coverage is reported for the test cases (never seen by the plan) and for all
cases. Global masks: threshold. Writes benchmarks/results/crop_coverage.{md,csv} (and, with
``--dice``, benchmarks/results/crop_plan_hn_dice.md). Work files: benchmarks/work/.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from gbmseg.config import load_config
from gbmseg.dataset import Dataset, split_cases
from gbmseg.global_masks import make_dataset_masks
from gbmseg.io import read_json
from gbmseg.preprocessing import coverage, preprocess_dataset
from gbmseg.sweep import collect_metrics, plan_sweep, run_sweep

HERE = Path(__file__).parent
SPLITS = {"hn_CT": (4, 8), "head_CT": (2, 2), "heart_CT": (1, 2)}  # validation, test cases
RULES = {"paper rule": ["preprocessing.crop=mask_center"], "planned": ["preprocessing.crop=planned"]}


def machine() -> str:
    return f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def coverage_rows(data: Path) -> list[dict]:
    rows = []
    for name, (n_val, n_test) in SPLITS.items():
        ds = Dataset(data / name, work=HERE / "work" / name)
        make_dataset_masks(ds, "threshold", progress=False)
        split = split_cases(ds.cases, n_val, n_test, seed=0)
        for rule, sets in RULES.items():
            cfg = load_config("fast", sets)
            cache = preprocess_dataset(ds, cfg, progress=False, plan_cases=split["pool"] + split["val"])
            grid = read_json(next(p for p in sorted(cache.glob("*.json")) if p.name != "plan.json"))["grid"]["size"]
            for case, cov in coverage(cache).items():
                for structure, frac in cov.items():
                    rows.append({"dataset": name, "rule": rule, "grid": "x".join(map(str, grid)), "case": case,
                                 "test_case": case in split["test"], "structure": structure, "coverage": frac})
    return rows


def coverage_md(df: pd.DataFrame) -> list[str]:
    lines = []
    for name, d in df.groupby("dataset", sort=False):
        lines += [f"## {name}", "", "| structure | rule | grid (voxels of 4 mm) | min, test cases | mean, test cases | "
                  "min, all cases | mean, all cases | cases below 0.95 (all) |", "|---|---|---|---|---|---|---|---|"]
        for (structure, rule), g in d.groupby(["structure", "rule"], sort=False):
            t = g[g["test_case"]]["coverage"]
            lines.append(f"| {structure} | {rule} | {g['grid'].iloc[0]} | {t.min():.2f} | {t.mean():.3f} | "
                         f"{g['coverage'].min():.2f} | {g['coverage'].mean():.3f} | {(g['coverage'] < 0.95).sum()} |")
        lines.append("")
    return lines


def dice_sweeps(data: Path, name: str, n: int, modes: list[str], overrides: list[str]) -> list[str]:
    ds = Dataset(data / name, work=HERE / "work" / name)
    make_dataset_masks(ds, "threshold", progress=False)
    n_val, n_test = SPLITS[name]
    split = split_cases(ds.cases, n_val, n_test, seed=0)
    tables = []
    for rule, sets in RULES.items():
        sweep_dir = plan_sweep(ds, HERE / "work" / f"{name}_n{n}_{rule.replace(' ', '_')}", modes=modes,
                               sizes=[n], seeds=[0], preset="fast", overrides=sets + overrides,
                               val=split["val"], test=split["test"])
        t = time.time()
        run_sweep(sweep_dir)
        m = collect_metrics(sweep_dir)
        tab = m.pivot_table(index="structure", columns="mode", values="dice", aggfunc="mean")
        tab.loc["mean"] = m.groupby("mode")["dice"].mean()
        tab.columns = [f"{c} ({rule})" for c in tab.columns]
        tables.append(tab)
        print(f"{name} {rule}: {time.time() - t:.0f} s")
    both = pd.concat(tables, axis=1)
    return [f"## {name} at N = {n}: test Dice with the paper's rule and with the planned crop", "",
            f"Machine: {machine()}. Split seed 0: {n} training cases (the first {n} of the pool's seeded order), "
            f"{n_val} validation, {n_test} test cases. Preset fast {' '.join(overrides)}.", "",
            both.to_markdown(floatfmt=".3f"), ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--dice", action="store_true", help="hn_CT sweep at N = 8 (image, image+mask), both rules")
    ap.add_argument("--dice-others", action="store_true",
                    help="head_CT (N = 8) and heart_CT (N = 5) image+mask, both rules (no coverage tables)")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    out = HERE / "results"
    start = time.time()
    if args.dice_others:
        lines = ["# head_CT and heart_CT: test Dice with the paper's rule and with the planned crop (issue 14)", ""]
        for name, n in (("head_CT", 8), ("heart_CT", 5)):
            lines += dice_sweeps(Path(args.data), name, n, ["image+mask"], args.set)
        (out / "crop_plan_other_dice.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    df = pd.DataFrame(coverage_rows(Path(args.data)))
    df.to_csv(out / "crop_coverage.csv", index=False)
    md = ["# Label coverage of the model grid: paper's rule vs planned crop (issue 14)", "",
          f"Machine: {machine()}; {time.time() - start:.0f} s. Fast preset (4 mm; the paper's rule: 48^3 on the mask's "
          "centre; planned: placed and sized by the plan, 48^3 to 96^3). Coverage = fraction of a structure's "
          "label voxels whose centres fall inside the grid. The plan is fitted to the training pool and "
          "validation cases of a fixed split; 'test cases' were not seen by it.", "", *coverage_md(df)]
    (out / "crop_coverage.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if args.dice:
        lines = ["# hn_CT: test Dice with the paper's rule and with the planned crop (issue 14)", "",
                 *dice_sweeps(Path(args.data), "hn_CT", 8, ["image", "image+mask"], args.set)]
        (out / "crop_plan_hn_dice.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
