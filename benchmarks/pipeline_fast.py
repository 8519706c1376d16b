"""Issue-2 benchmark: train image / mask / image+mask models with a preset on head_CT (8/2/2) and
heart_CT (5/1/2), predict the test cases end to end, and record Dice, COM distance, times, machine.

    python benchmarks/pipeline_fast.py [--data ../shared/data] [--preset fast] [--set k=v ...] [--tag NAME]

Writes benchmarks/results/<tag>.{csv,md} (tag defaults to pipeline_<preset>). Work files go to benchmarks/work/ (ignored by
git). Finished trainings are reused, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from gbmseg.config import load_config
from gbmseg.dataset import Dataset
from gbmseg.evaluation import evaluate_case
from gbmseg.predict import load_model, predict_image
from gbmseg.io import read_image
from gbmseg.global_masks import make_dataset_masks
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.sweep import split_cases, training_subset

HERE = Path(__file__).parent
SETUPS = {"head_CT": {"n_train": 8, "n_val": 2, "n_test": 2, "masks": "threshold"},
          "heart_CT": {"n_train": 5, "n_val": 1, "n_test": 2, "masks": "labels"}}


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"{dev}; torch {torch.__version__}, python {platform.python_version()}")


def run(data: Path, name: str, preset: str, overrides: list[str], tag: str, rows: list, times: list) -> None:
    setup = SETUPS[name]
    ds = Dataset(data / name, work=HERE / "work" / name)
    make_dataset_masks(ds, setup["masks"])
    cfg = load_config(preset, overrides)
    cache = preprocess_dataset(ds, cfg)
    split = split_cases(ds.cases, setup["n_val"], setup["n_test"], seed=0)
    train_cases = training_subset(split["pool"], setup["n_train"], seed=0)
    from gbmseg.training import train

    for mode in ("image", "mask", "image+mask"):
        run_dir = HERE / "work" / "runs" / f"{name}_{tag}_{mode}"
        result = train(cache, mode, train_cases, split["val"], cfg, run_dir, seed=0)
        model = load_model(run_dir)
        for case in split["test"]:
            image = read_image(ds.image_path(case))
            t0 = time.time()
            # head: the model makes its own threshold mask from the image; heart: label-derived mask given
            mask = read_image(ds.mask_path(case)) if setup["masks"] == "labels" else None
            pred = predict_image(model, image, mask, name=case)
            predict_s = time.time() - t0
            for r in evaluate_case(pred, read_image(ds.label_path(case)), ds.labels, case):
                rows.append({"dataset": name, "mode": mode, **r})
            times.append({"dataset": name, "mode": mode, "case": case, "predict_s": predict_s,
                          "train_time_s": result["train_time_s"], "best_iteration": result["best_iteration"],
                          "iterations": result["iterations"], "stop": result["stop_reason"]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--datasets", default="head_CT,heart_CT")
    ap.add_argument("--tag", default=None, help="names the results and the run folders (default pipeline_<preset>)")
    args = ap.parse_args()
    tag = args.tag or f"pipeline_{args.preset}"
    rows, times = [], []
    start = time.time()
    for name in args.datasets.split(","):
        run(Path(args.data), name, args.preset, args.set, tag, rows, times)
    df, tf = pd.DataFrame(rows), pd.DataFrame(times)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    df.to_csv(out / f"{tag}.csv", index=False)
    tf.to_csv(out / f"{tag}_times.csv", index=False)
    dice = df.pivot_table(index=["dataset", "structure"], columns="mode", values="dice", aggfunc="mean")
    com = df.pivot_table(index=["dataset", "structure"], columns="mode", values="com_mm", aggfunc="mean")
    mean = df.groupby(["dataset", "mode"])["dice"].mean().unstack()
    tt = tf.groupby(["dataset", "mode"])[["train_time_s", "best_iteration", "iterations", "predict_s"]].mean()
    md = [f"# Pipeline benchmark, preset `{args.preset}` {' '.join(args.set)}", "",
          f"Machine: {machine()}", f"Total wall time: {time.time() - start:.0f} s", "",
          "head_CT: 8 train / 2 val / 2 test, threshold masks made from the image at prediction time.",
          "heart_CT: 5 train / 1 val / 2 test, masks from the labels (an upper bound for mask-based modes).", "",
          "## Test Dice per structure (mean over test cases)", "", dice.round(3).to_markdown(), "",
          "## Mean test Dice over structures", "", mean.round(3).to_markdown(), "",
          "## Centre-of-mass distance (mm)", "", com.round(2).to_markdown(), "",
          "## Times (training, and end-to-end prediction per case incl. mask, resampling, write-back)", "",
          tt.round(2).to_markdown(), ""]
    (out / f"{tag}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
