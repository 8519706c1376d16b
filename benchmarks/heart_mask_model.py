"""Issue-4 benchmark: a learned whole-heart mask model on heart_CT, and what predicted masks cost.

    python benchmarks/heart_mask_model.py [--data ../shared/data] [--mask-set training.max_iterations=1200 ...]

Same split as benchmarks/pipeline_fast.py (5 train / 1 val / 2 test). Trains the whole-heart model
(preset `coarse`) on the 5 training cases, scores its masks on the 3 held-back cases, trains
`mask` and `image+mask` models (preset `fast`) on predicted masks, and predicts the test cases
two-stage (image -> mask model -> segmentation model). Compares with the label-derived masks of
the pipeline benchmark (benchmarks/results/pipeline_fast.csv). Writes
benchmarks/results/heart_mask_model.{md,csv}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from gbmseg.config import load_config
from gbmseg.dataset import Dataset
from gbmseg.evaluation import evaluate_case, evaluate_masks
from gbmseg.predict import load_model, predict_image
from gbmseg.io import read_image
from gbmseg.mask_model import train_mask_model
from gbmseg.global_masks import make_dataset_masks
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.sweep import split_cases, training_subset
from gbmseg.training import train

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--mask-set", action="append", default=[], help="override of the mask model's preset (coarse)")
    args = ap.parse_args()
    start = time.time()
    ds = Dataset(Path(args.data) / "heart_CT", work=HERE / "work" / "heart_CT_predmasks")
    split = split_cases(ds.cases, 1, 2, seed=0)
    train_cases = training_subset(split["pool"], 5, seed=0)
    held_back = split["val"] + split["test"]
    runs = HERE / "work" / "runs"
    t0 = time.time()
    mm = train_mask_model(ds, runs / "heart_CT_mask_model", overrides=args.mask_set, train_cases=train_cases,
                          val_cases=split["val"])
    mask_train_s = time.time() - t0
    make_dataset_masks(ds, "model", {"model": str(runs / "heart_CT_mask_model")})
    quality = evaluate_masks(ds.mask_dir, ds.label_path(ds.cases[0]).parent)
    quality["held_back"] = quality["case"].isin(held_back)

    cfg = load_config("fast")
    cache = preprocess_dataset(ds, cfg)
    rows, times = [], []
    for mode in ("mask", "image+mask"):
        run_dir = runs / f"heart_CT_fast_{mode}_predmasks"
        result = train(cache, mode, train_cases, split["val"], cfg, run_dir, seed=0)
        model = load_model(run_dir)
        for case in split["test"]:
            t = time.time()
            pred = predict_image(model, read_image(ds.image_path(case)), name=case)  # two-stage, no mask given
            times.append({"mode": mode, "case": case, "two_stage_predict_s": time.time() - t,
                          "train_time_s": result["train_time_s"], "best_iteration": result["best_iteration"]})
            for r in evaluate_case(pred, read_image(ds.label_path(case)), ds.labels, case):
                rows.append({"masks": "predicted (mask model)", "mode": mode, **r})
    df = pd.DataFrame(rows)
    ref = pd.read_csv(HERE / "results" / "pipeline_fast.csv")
    ref = ref[(ref["dataset"] == "heart_CT") & ref["mode"].isin(["mask", "image+mask"])].assign(masks="labels (upper bound)")
    both = pd.concat([ref[df.columns], df], ignore_index=True)
    out = HERE / "results"
    both.to_csv(out / "heart_mask_model.csv", index=False)
    quality.to_csv(out / "heart_mask_model_quality.csv", index=False)
    dice = both.pivot_table(index="structure", columns=["mode", "masks"], values="dice", aggfunc="mean")
    mean = both.groupby(["mode", "masks"])["dice"].mean().unstack()
    mean["difference"] = mean["predicted (mask model)"] - mean["labels (upper bound)"]
    q = quality.groupby("held_back")[["dice", "volume_error_pct", "com_mm"]].agg(["mean", "min", "max"])
    md = ["# heart_CT: learned whole-heart mask model", "",
          f"Machine: see pipeline_fast.md (same machine and session). Total wall time {time.time() - start:.0f} s; "
          f"mask model training {mask_train_s:.0f} s (best iteration {mm['best_iteration']}; "
          f"preset coarse {' '.join(args.mask_set)}).", "",
          "## Mask quality (Dice of the predicted whole-heart mask vs the union of the labels)", "",
          q.round(3).to_markdown(), "", "(held_back True = the validation and test cases the mask model never trained on)", "",
          "## Substructure test Dice: label-derived vs predicted global masks", "", dice.round(3).to_markdown(), "",
          "## Mean test Dice over the 7 structures", "", mean.round(3).to_markdown(), "",
          "## Times", "", pd.DataFrame(times).groupby("mode").mean(numeric_only=True).round(2).to_markdown(), ""]
    (out / "heart_mask_model.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
