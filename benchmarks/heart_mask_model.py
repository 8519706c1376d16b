"""Issue-4 benchmark: a learned whole-heart mask model on heart_CT, and what predicted masks cost.

    python benchmarks/heart_mask_model.py [--data ../shared/data] [--mask-set training.max_iterations=1200 ...]
        [--tag NAME] [--plan-only]

Same split as benchmarks/pipeline_fast.py (5 train / 1 val / 2 test). Trains the whole-heart model
(preset `coarse`) on the 5 training cases, scores its masks on the 3 held-back cases, trains
`mask` and `image+mask` models (preset `fast`) on predicted masks, and predicts the test cases
two-stage (image -> mask model -> segmentation model). Compares with the label-derived masks of
the pipeline benchmark (benchmarks/results/pipeline_fast.csv, or ``--reference``). Writes
benchmarks/results/heart_mask_model[_<tag>].{md,csv}.

The mask model is trained as a one-job sweep on the whole-organ dataset
(benchmarks/work/sweep_heart_mask_model[_<tag>]), so ``--plan-only`` can stop after planning and
preprocessing and the training can run elsewhere (benchmarks/gpu_jobs.py); running this again
without it finds the trained model and goes on.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd

from gbmseg.config import load_config
from gbmseg.dataset import Dataset
from gbmseg.evaluation import evaluate_case, evaluate_masks
from gbmseg.predict import load_model, predict_image
from gbmseg.io import read_image
from gbmseg.io import read_json
from gbmseg.mask_model import whole_organ_dataset
from gbmseg.morphology import image_mask
from gbmseg.global_masks import make_dataset_masks
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.sweep import jobs, plan_sweep, prepare_sweep, run_sweep, split_cases, training_subset
from gbmseg.training import train

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--mask-set", action="append", default=[], help="override of the mask model's preset (coarse)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--reference", default="pipeline_fast.csv",
                    help="benchmarks/results CSV of benchmarks/pipeline_fast.py with the label-mask runs "
                         "(trained with the same fast preset)")
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args()
    suffix = f"_{args.tag}" if args.tag else ""
    start = time.time()
    ds = Dataset(Path(args.data) / "heart_CT", work=HERE / "work" / f"heart_CT_predmasks{suffix}")
    split = split_cases(ds.cases, 1, 2, seed=0)
    train_cases = training_subset(split["pool"], 5, seed=0)
    held_back = split["val"] + split["test"]
    runs = HERE / "work" / "runs"
    organ = whole_organ_dataset(ds)  # what gbmseg.mask_model.train_mask_model trains on
    organ.write_masks({"method": "box", "params": {}, "modality": organ.modality}, image_mask)
    mm_sweep = plan_sweep(organ, HERE / "work" / f"sweep_heart_mask_model{suffix}", modes=["image"], sizes=[5],
                          seeds=[0], preset="coarse", overrides=args.mask_set, val=split["val"], test=split["test"])
    if args.plan_only:
        print(f"planned {len(prepare_sweep(mm_sweep))} mask-model job(s) in {mm_sweep}")
        return
    t0 = time.time()
    run_sweep(mm_sweep)
    mask_train_s = time.time() - t0
    mm_dir = jobs(mm_sweep)[0] / "train"
    mm = read_json(mm_dir / "result.json")
    make_dataset_masks(ds, "model", {"model": str(mm_dir)})
    quality = evaluate_masks(ds.mask_dir, ds.label_path(ds.cases[0]).parent)
    quality["held_back"] = quality["case"].isin(held_back)

    cfg = load_config("fast")
    cache = preprocess_dataset(ds, cfg)
    rows, times = [], []
    for mode in ("mask", "image+mask"):
        run_dir = runs / f"heart_CT_fast_{mode}_predmasks{suffix}"
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
    ref = pd.read_csv(HERE / "results" / args.reference)
    ref = ref[(ref["dataset"] == "heart_CT") & ref["mode"].isin(["mask", "image+mask"])].assign(masks="labels (upper bound)")
    both = pd.concat([ref[df.columns], df], ignore_index=True)
    out = HERE / "results"
    both.to_csv(out / f"heart_mask_model{suffix}.csv", index=False)
    quality.to_csv(out / f"heart_mask_model{suffix}_quality.csv", index=False)
    dice = both.pivot_table(index="structure", columns=["mode", "masks"], values="dice", aggfunc="mean")
    mean = both.groupby(["mode", "masks"])["dice"].mean().unstack()
    mean["difference"] = mean["predicted (mask model)"] - mean["labels (upper bound)"]
    q = quality.groupby("held_back")[["dice", "volume_error_pct", "com_mm"]].agg(["mean", "min", "max"])
    md = ["# heart_CT: learned whole-heart mask model", "",
          f"Mask model trained on {read_json(mm_dir / 'config.json')['device']} "
          f"(host {read_json(mm_dir / 'config.json')['host']}); everything else on {platform.node()}, CPU. "
          f"Wall time of this invocation {time.time() - start:.0f} s; mask model step {mask_train_s:.0f} s (best iteration {mm['best_iteration']}; "
          f"preset coarse {' '.join(args.mask_set)}).", "",
          "## Mask quality (Dice of the predicted whole-heart mask vs the union of the labels)", "",
          q.round(3).to_markdown(), "", "(held_back True = the validation and test cases the mask model never trained on)", "",
          f"## Substructure test Dice: label-derived (benchmarks/results/{args.reference}) vs predicted global masks", "", dice.round(3).to_markdown(), "",
          "## Mean test Dice over the 7 structures", "", mean.round(3).to_markdown(), "",
          "## Times", "", pd.DataFrame(times).groupby("mode").mean(numeric_only=True).round(2).to_markdown(), ""]
    (out / f"heart_mask_model{suffix}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
