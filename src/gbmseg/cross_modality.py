"""Cross-modality testing inside a sweep (``gbmseg sweep ... --also-test OTHER``).

Every job of a sweep also segments the cases of another dataset with the same structures (e.g.
trained on head CT, tested on head MR)::

    runs/<job>/predictions_<NAME>/<case>.nii.gz   predictions of the other dataset's cases
    runs/<job>/metrics_<NAME>.csv                 evaluation rows (+ job, mode, n_train, seed, tested_on)
    runs/<job>/done.json                          ``also_test: {NAME: mean Dice}``
    mask_agreement_<NAME>.csv                     the other dataset's masks vs this dataset's, same case ids

``NAME`` is the other dataset's folder name (dataset.json names may coincide, e.g. both
``HeadOAR``).

Which cases: the other dataset's cases whose ids are in this sweep's test split, if any are (the
same subjects scanned in another modality, as head_CT / head_MR); otherwise every case of the other
dataset whose id is not in this sweep's training pool or validation set.

Global masks are made the other dataset's way: its own mask record (``gbmseg masks OTHER`` run
beforehand, e.g. Otsu for MR) if it has one, else :func:`gbmseg.global_masks.make_dataset_masks`
with the method asked for (``auto``: threshold for CT, otsu for MR), written into its work folder.

Resuming: a finished job (``done.json``) whose job.json plans an also-test it has no Dice for
(the sweep was planned again with ``--also-test`` after the job finished) gets only the also-test
step on the next run: its trained model is loaded, the other dataset's cases are predicted and
scored, and ``done.json`` is rewritten with ``also_test`` added; nothing is retrained. A job.json
planned without ``--also-test`` never gets one. Only network modes (:data:`gbmseg.config.MODES`) are
also-tested; the atlas modes are skipped (their also-test would need the atlases' images and
labels, not a model.pt; not wired yet).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from .config import MODES
from .dataset import Dataset
from .errors import GbmsegError
from .evaluation import evaluate_folder, score_binary
from .global_masks import make_dataset_masks
from .io import read_image, read_json, same_geometry, to_array, write_json, write_text
from .predict import Model, load_model, predict_file

__all__ = ["also_test_name", "check_same_labels", "also_test_cases", "plan_also_test",
           "pending", "predict_also_test", "finish_also_test", "mask_agreement"]

def also_test_name(other: Dataset) -> str:
    """File-name-safe name of the other dataset: its folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", other.root.resolve().name)


def check_same_labels(ds: Dataset, other: Dataset) -> None:
    """Raise unless both datasets map the same structure names to the same label values."""
    if ds.labels != other.labels:
        raise GbmsegError(f"{other.root / 'dataset.json'}: labels {other.labels} differ from "
                          f"{ds.root / 'dataset.json'}: {ds.labels}; --also-test needs the same structures")


def also_test_cases(other: Dataset, split: dict) -> list[str]:
    """The other dataset's cases in the sweep's test split if any are there, else those not in its
    training pool or validation set (see the module docstring)."""
    same = sorted(c for c in other.cases if c in set(split["test"]))
    if same:
        return same
    seen = set(split["pool"]) | set(split["val"])
    cases = sorted(c for c in other.cases if c not in seen)
    if not cases:
        raise GbmsegError(f"{other.root}: every case id is in the sweep's training pool or validation set; "
                          "nothing left to test on")
    return cases


def _other_masks(other: Dataset, method: str, progress: bool) -> dict:
    """The other dataset's mask record; made (``method``) when it has none yet."""
    if other.mask_record_path.exists():
        return other.read_mask_record()
    try:
        other.check_writable()
    except GbmsegError:
        raise GbmsegError(f"{other.mask_record_path}: no global masks for --also-test, and {other.work} is not "
                          "writable; give --also-test-work DIR (or run 'gbmseg masks' on it first)") from None
    return make_dataset_masks(other, method, progress=progress)


def plan_also_test(ds: Dataset, others: list[Dataset], split: dict, method: str = "auto",
                   progress: bool = True) -> list[dict]:
    """One record per other dataset, for sweep.json and job.json: dataset, work, name, modality,
    cases, masks. Checks the labels and makes missing masks first."""
    for other in others:  # every dataset checked before any mask is made
        check_same_labels(ds, other)
    records, names = [], set()
    for other in others:
        name = also_test_name(other)
        if name in names:
            raise GbmsegError(f"{other.root}: two --also-test datasets share the folder name '{name}'")
        names.add(name)
        records.append({"dataset": str(other.root.resolve()), "work": str(other.work.resolve()), "name": name,
                        "modality": other.modality, "cases": also_test_cases(other, split),
                        "masks": _other_masks(other, method, progress)})
    return records


def _skipped(job: dict) -> bool:
    return job["mode"] not in MODES  # atlas modes: no network


def pending(job_dir: Path) -> bool:
    """True when the job is unfinished: no done.json, or an also-test planned that done.json lacks."""
    done = job_dir / "done.json"
    if not done.exists():
        return True
    job = read_json(job_dir / "job.json")
    if not job.get("also_test") or _skipped(job):
        return False
    have = read_json(done).get("also_test") or {}
    return any(rec["name"] not in have for rec in job["also_test"])


def score_job_predictions(job: dict, pred_dir: Path, ds: Dataset, cases: list[str], out_csv: Path,
                          **tags) -> pd.DataFrame:
    """Score ``pred_dir/<case>.nii.gz`` against ``ds``'s labels, each row tagged with the sweep
    job's id, mode, training size and seed (and ``tags``); written to ``out_csv``."""
    df = evaluate_folder(pred_dir, ds.label_path(cases[0]).parent, labels=ds.labels,
                         file_ending=".nii.gz", cases=cases)
    df = df.assign(job=job["id"], mode=job["mode"], n_train=job["n_train"], seed=job["seed"], **tags)
    write_text(df.to_csv(index=False), out_csv)
    return df


def predict_also_test(job_dir: Path, job: dict, model: Model | None = None, device: str | None = None) -> dict[str, float]:
    """Predict and score every also-test dataset of ``job`` with ``model`` (default: loaded from the
    job's ``train/`` when a prediction is missing): ``{name: mean Dice}``. Predictions already
    written are kept; ``{}`` for a job without also-test or a skipped mode."""
    out = {}
    if _skipped(job):
        return out
    for rec in job.get("also_test") or []:
        other = Dataset(rec["dataset"], work=rec["work"])
        other.check_mask_record(rec["masks"], job_dir / "job.json")
        cases = other.check_cases(rec["cases"], "also-test case")
        pred_dir = job_dir / f"predictions_{rec['name']}"
        for case in cases:
            path = pred_dir / f"{case}.nii.gz"
            if not path.exists():
                model = model or load_model(job_dir / "train", device=device)
                predict_file(model, other.image_path(case), path, mask_path=other.mask_path(case))
        df = score_job_predictions(job, pred_dir, other, cases, job_dir / f"metrics_{rec['name']}.csv",
                                   tested_on=rec["name"])
        out[rec["name"]] = float(df["dice"].mean())
    return out


def finish_also_test(job_dir: Path, device: str | None = None) -> dict:
    """done.json of a finished job, with the also-test step run first if it is planned but missing
    (the trained model is loaded from ``train/``; nothing is retrained)."""
    done = job_dir / "done.json"
    summary = read_json(done)
    if not pending(job_dir):
        return summary
    job = read_json(job_dir / "job.json")
    summary["also_test"] = predict_also_test(job_dir, job, device=device)
    write_json(summary, done)
    return summary


def _mask_dice(a: sitk.Image, b: sitk.Image) -> tuple[float, bool]:
    """Dice of two binary masks; ``b`` resampled (nearest neighbour, physical space) onto ``a``'s grid
    when their geometries differ. Returns (Dice, same grid)."""
    same = same_geometry(a, b) is None
    if not same:
        b = sitk.Resample(b, a, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return score_binary(to_array(a) > 0, to_array(b) > 0, a, surfaces=False)["dice"], same


def mask_agreement(ds: Dataset, rec: dict) -> pd.DataFrame:
    """Per case id present in both datasets (among the also-test cases): Dice between the other
    dataset's global mask and this dataset's, on this dataset's grid. Empty if no id matches."""
    other = Dataset(rec["dataset"], work=rec["work"])
    rows = []
    for case in rec["cases"]:
        if case in ds.cases and ds.mask_path(case).exists() and other.mask_path(case).exists():
            dice, same = _mask_dice(read_image(ds.mask_path(case)), read_image(other.mask_path(case)))
            rows.append({"case": case, "dice": dice, "same_grid": same})
    return pd.DataFrame(rows, columns=["case", "dice", "same_grid"])
