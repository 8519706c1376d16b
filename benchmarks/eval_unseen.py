"""Issue-8 benchmark: a sweep's trained models on every case they never saw, with and without the location prior.

    python benchmarks/eval_unseen.py SWEEP_DIR [SWEEP_DIR ...] [--margin 40] [--out CSV]

A sweep tests each model on its two fixed test cases. Here every trained run of the sweep also
predicts every other case of the dataset that was neither among its training nor its validation
cases (with N=1 of head_CT's 12 cases: 9), once as it is and once with the location prior
(:mod:`gbmseg.location_prior`, fitted to the run's training labels, ``--margin`` mm). Runs made
before the prior existed get it fitted here from the same cache, as training now does.

Writes one row per (sweep, run, case, structure, variant) with the Dice to ``--out`` (default
``benchmarks/results/unseen/<first sweep>.csv``), and prints the mean Dice per arm (sweep and
mode), N and variant, and per pair of arms the paired difference with its Wilcoxon p over (seed,
case, structure): modes are compared within a sweep and across sweeps trained on one machine.
Predictions go to ``<run>/unseen/<variant>/`` and are reused when present.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from gbmseg.config import RETIRED
from gbmseg.dataset import Dataset
from gbmseg.evaluation import evaluate_case
from gbmseg.io import read_image, read_json
from gbmseg.location_prior import fit_location_prior
from gbmseg.predict import load_model, predict_file
from gbmseg.preprocessing import grid_spacing, load_case, load_plan

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--margin", type=float, default=40.0)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    for sweep_dir in map(Path, args.sweeps):
        rows += evaluate_sweep(sweep_dir, args.margin)
    df = pd.DataFrame(rows)
    first = Path(args.sweeps[0]).name
    out_csv = Path(args.out) if args.out else HERE / "results" / "unseen" / f"{first}.csv"
    df.to_csv(out_csv, index=False)
    df["arm"] = df["sweep"].str.replace("sweep_", "") + ":" + df["mode"]
    print(df.groupby(["arm", "n_train", "variant"])["dice"].agg(["mean", "count"]).round(3).to_string())
    summarize_pairs(df)
    print(f"wrote {out_csv}")


def evaluate_sweep(sweep_dir: Path, margin_mm: float) -> list[dict]:
    """Rows of Dice for every trained run of one sweep on its unseen cases, raw and with the prior."""
    sweep = read_json(sweep_dir / "sweep.json")
    ds = Dataset(Path(sweep["dataset"]), work=Path(sweep["work"]))
    rows = []
    for job_dir in sorted(p for p in (sweep_dir / "runs").iterdir() if (p / "train" / "model.pt").exists()):
        job = read_json(job_dir / "job.json")
        info = read_json(job_dir / "train" / "config.json")
        beyond = info["config"]["preprocessing"].get("mask_beyond_scan", "empty")
        if beyond != "empty":  # a setting measured and removed (commit 7e74a3c): such a model cannot be rebuilt
            print(f"{job_dir.name}: skipped (preprocessing.mask_beyond_scan = {beyond})")
            continue
        # runs trained by commit 7e74a3c record the setting at its value of today's behaviour ("empty")
        RETIRED.setdefault("preprocessing", set()).add("mask_beyond_scan")
        model = load_model(job_dir / "train")
        cache = Path(info["cache"])
        spacing = grid_spacing(model.config.preprocessing, load_plan(cache).get("crop_plan"))
        if not model.info.get("location_prior"):
            model.info["location_prior"] = fit_location_prior(
                (load_case(cache, c)["label"] for c in job["train"]), spacing)
        unseen = [c for c in ds.cases if c not in set(job["train"]) | set(job["val"])]
        for variant, margin in (("raw", None), (f"prior{margin_mm:g}", margin_mm)):
            model.config.postprocessing.location_margin_mm = margin
            out = job_dir / "unseen" / variant
            for case in unseen:
                pred = out / f"{case}.nii.gz"
                if not pred.exists():
                    predict_file(model, ds.image_path(case), pred, mask_path=ds.mask_path(case))
                for r in evaluate_case(read_image(pred), read_image(ds.label_path(case)), ds.labels, case):
                    rows.append({"sweep": sweep_dir.name, "job": job["id"], "mode": job["mode"], "n_train": job["n_train"],
                                 "seed": job["seed"], "variant": variant, "fixed_test": case in job["test"],
                                 "case": case, "structure": r["structure"], "dice": r["dice"]})
        print(f"{sweep_dir.name}/{job['id']}: {len(unseen)} unseen cases", flush=True)
    return rows


def summarize_pairs(df: pd.DataFrame) -> None:
    """Paired differences: the prior against none (per arm), and between arms (per variant); pairs
    are (seed, case, structure) that both have."""
    keys = ["n_train", "seed", "case", "structure"]
    for (arm, n), g in df.groupby(["arm", "n_train"]):
        wide = g.pivot_table(index=keys, columns="variant", values="dice")
        prior = [c for c in wide.columns if c != "raw"]
        if "raw" in wide and prior:
            d = (wide[prior[0]] - wide["raw"]).dropna()
            p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
            print(f"{arm} N={n}: {prior[0]} - raw = {d.mean():+.3f} (p = {p:.3g}, {len(d)} pairs)")
    arms = sorted(df["arm"].unique())
    for (variant, n), g in df.groupby(["variant", "n_train"]):
        wide = g.pivot_table(index=keys, columns="arm", values="dice")
        for a in arms:
            for b in arms:
                if a < b and a in wide and b in wide:
                    d = (wide[b] - wide[a]).dropna()
                    p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
                    print(f"{variant} N={n}: {b} - {a} = {d.mean():+.3f} (p = {p:.3g}, {len(d)} pairs)")


if __name__ == "__main__":
    main()
