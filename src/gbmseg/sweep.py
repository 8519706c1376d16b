"""The paper's experiment: input modes x training-set sizes x seeds, on one fixed val/test split.

A sweep folder::

    sweep.json                   dataset, labels, modes, sizes, seeds, split, resolved config, masks
    runs/<mode>_n<NN>_seed<S>/   one independent, self-describing job
        job.json                 everything needed to run it (dataset, work folder, cases, config,
                                 and the mask record and cache key it was planned with)
        train/                   the training run (see :mod:`gbmseg.training`; none for mode atlas)
        predictions/<case>.nii.gz  test-set predictions in the images' own geometry
        metrics.csv              evaluation rows (+ job, mode, n_train, seed)
        predictions_<NAME>/, metrics_<NAME>.csv   with --also-test: another dataset's cases
                                 (see :mod:`gbmseg.cross_modality`)
        done.json                written last: the job is finished (mean test Dice, the training
                                 result, seconds per test case, and ``predict_warnings``: per test
                                 case whose mask was unusual, e.g. far larger than the training masks',
                                 ``{"case", "warning"}``)
    mask_quality.csv             global masks scored against the union of the labels
    mask_agreement_<NAME>.csv    with --also-test: the other dataset's masks vs this one's, same case ids
    report/                      written by :mod:`gbmseg.report`

Modes ``atlas`` and ``atlas-lw`` (:data:`SWEEP_MODES`) train nothing: the job's training cases are the atlases of
every test case (:mod:`gbmseg.atlas`); its ``predict_s_per_case`` is the atlas time per test case.

Training subsets are nested per seed: the seed's permutation of the training pool, first N cases,
so the N=2 set contains the N=1 set. Finished jobs are skipped on restart; an interrupted job
resumes from its last checkpoint and keeps the predictions already written; a job whose
``train/result.json`` and every test prediction exist is only evaluated (its model need not be
here: benchmarks/gpu_jobs.py trains and predicts on another machine). ``run_job`` needs
only the job folder, so the job list can be handed to a cluster scheduler as it is
(:mod:`gbmseg.sweep_backends`: Ray, a SLURM job array).

Example:
    >>> sweep_dir = plan_sweep(Dataset("Dataset001"), "sweeps/head", sizes=[1, 2, 4])  # doctest: +SKIP
    >>> run_sweep(sweep_dir)                                                          # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
import warnings
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .atlas import segment_cases
from .config import MODES, Config, load_config
from .cross_modality import (finish_also_test, mask_agreement, pending, plan_also_test, predict_also_test,
                             score_job_predictions)
from .dataset import Dataset, split_cases
from .errors import GbmsegError, GbmsegWarning
from .evaluation import evaluate_masks
from .io import read_json, write_json, write_text
from .predict import load_model, predict_file
from .preprocessing import cache_key, coverage, coverage_summary, dataset_crop_plan, preprocess_dataset
from .training import train

__all__ = ["split_cases", "training_subset", "job_id", "plan_sweep", "jobs", "run_job", "prepare_sweep",
           "job_line", "run_sweep", "collect_metrics"]


PAPER_MODES = ("image", "mask", "image+mask")  # a sweep's modes unless told: the paper's three


def training_subset(pool: list[str], n: int, seed: int) -> list[str]:
    """The first ``n`` cases of the seed's permutation of ``pool`` (nested across n)."""
    order = sorted(pool)
    random.Random(1000 + seed).shuffle(order)
    return order[:n]


def job_id(mode: str, n: int, seed: int) -> str:
    return f"{mode}_n{n:02d}_seed{seed}"


def plan_sweep(dataset: Dataset, out_dir: str | Path, modes: list[str] | None = None,
               sizes: list[int] | None = None, seeds: list[int] | None = None, preset: str = "fast",
               overrides: list[str] | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
               val: list[str] | None = None, test: list[str] | None = None, split_seed: int = 0,
               also_test: list[Dataset] | None = None, also_test_masks: str = "auto") -> Path:
    """Write ``sweep.json`` and one ``job.json`` per run. Re-planning an existing sweep must agree with
    it, except that it may add modes (e.g. a control or the atlas baseline to a finished sweep).

    ``also_test``: other datasets (same structures) every job also segments, their masks made with
    ``also_test_masks`` where they have none (:mod:`gbmseg.cross_modality`). Re-planning may add
    them to a sweep planned without; planning again without them keeps the ones planned."""
    out = Path(out_dir)
    modes = modes or list(PAPER_MODES)
    for m in modes:
        if m not in SWEEP_MODES:
            raise GbmsegError(f"unknown mode '{m}' (choose from {', '.join(SWEEP_MODES)})")
    seeds = seeds if seeds is not None else [0]
    config = load_config(preset, overrides)
    cases = dataset.cases
    if val or test:
        if not (val and test):
            raise GbmsegError("give both --val and --test, or neither")
        dataset.check_cases(val + test)
        split = {"val": sorted(val), "test": sorted(test),
                 "pool": sorted(c for c in cases if c not in set(val) | set(test))}
    else:
        n_val = max(1, round(len(cases) * val_fraction))
        n_test = max(1, round(len(cases) * test_fraction))
        split = split_cases(cases, n_val, n_test, split_seed)
    pool = split["pool"]
    if not pool:
        raise GbmsegError("no case left for training after the validation/test split")
    requested = sizes or [1, 2, 4, 8, 16, 26]
    capped = sorted({min(n, len(pool)) for n in requested if n >= 1})
    sweep = {"dataset": str(dataset.root.resolve()), "work": str(dataset.work.resolve()), "name": dataset.name,
             "labels": dataset.labels, "modality": dataset.modality, "modes": modes, "sizes": capped,
             "requested_sizes": requested, "seeds": seeds, "preset": preset, "config": config.to_dict(),
             "split": split, "masks": dataset.read_mask_record(),
             "also_test": plan_also_test(dataset, also_test or [], split, also_test_masks),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = out / "sweep.json"
    if path.exists():  # re-planning: the same sweep, or the same with more modes (their jobs are added)
        old = read_json(path)
        keys = ("dataset", "sizes", "seeds", "config", "split")
        if any(old.get(k) != sweep[k] for k in keys) or not set(old.get("modes", [])) <= set(modes):
            raise GbmsegError(f"{path}: a different sweep already lives here; choose another output folder "
                              "(a sweep may only gain modes)")
        sweep["modes"] = list(old["modes"]) + [m for m in modes if m not in old["modes"]]
        if not sweep["also_test"]:  # planned again without --also-test: the plan stands
            sweep["also_test"] = old.get("also_test", [])
        elif old.get("also_test") and old["also_test"] != sweep["also_test"]:
            raise GbmsegError(f"{path}: this sweep was planned with other --also-test datasets or masks; "
                              "choose another output folder")
        sweep["created"] = old["created"]
    write_json(sweep, path)
    plan_cases = sorted(pool + split["val"])  # a planned crop learns from these, never from the test cases
    key = cache_key(config.preprocessing, sweep["masks"], dataset_crop_plan(dataset, config, plan_cases))
    for seed in seeds:
        for n in capped:
            for mode in sweep["modes"]:
                jid = job_id(mode, n, seed)
                job = {"id": jid, "mode": mode, "n_train": n, "seed": seed,
                       "train": training_subset(pool, n, seed), "val": split["val"], "test": split["test"],
                       "dataset": sweep["dataset"], "work": sweep["work"], "config": sweep["config"],
                       "masks": sweep["masks"], "cache_key": key, "plan_cases": plan_cases,
                       "also_test": sweep["also_test"]}
                write_json(job, out / "runs" / jid / "job.json")
    return out


JOB_KEYS = ("id", "dataset", "work", "config", "mode", "n_train", "seed", "train", "val", "test")
SWEEP_KEYS = ("dataset", "work", "name", "labels", "config", "modes", "sizes", "seeds", "split")


def jobs(sweep_dir: str | Path) -> list[Path]:
    """Job folders of a sweep in run order (seeds, then sizes, then modes)."""
    sweep = read_json(Path(sweep_dir) / "sweep.json", SWEEP_KEYS, "sweep record")
    return [Path(sweep_dir) / "runs" / job_id(m, n, s)
            for s in sweep["seeds"] for n in sweep["sizes"] for m in sweep["modes"]]


def _train_and_predict(job: dict, job_dir: Path, ds: Dataset, device: str | None, progress: bool):
    """A U-Net mode: train on the job's training cases, predict its test cases into ``predictions/``.
    Returns the training result, ``{"predict_s_per_case": ...}`` and the model (None when the job
    was trained and predicted already, here or on another machine: then it is only evaluated)."""
    config = Config.from_dict(job["config"], source=str(job_dir / "job.json"), record=True)
    if "masks" in job:
        ds.check_mask_record(job["masks"], job_dir / "job.json")
    cache = preprocess_dataset(ds, config, progress=progress,  # its own cache: a no-op when already made
                               plan_cases=job.get("plan_cases"))
    if "cache_key" in job and cache.name != f"{config.name}_{job['cache_key']}":
        raise GbmsegError(f"{cache}: is not the cache {job_dir / 'job.json'} was planned with "
                          f"(key {job['cache_key']})")
    pred_dir = job_dir / "predictions"
    todo = [c for c in job["test"] if not (pred_dir / f"{c}.nii.gz").exists()]
    if not todo and (job_dir / "train" / "result.json").exists():
        return read_json(job_dir / "train" / "result.json"), {"predict_s_per_case": None}, None
    result = train(cache, job["mode"], job["train"], job["val"], config, job_dir / "train",
                   seed=job["seed"], device=device, progress=progress)
    model = load_model(job_dir / "train", device=device)
    t0 = time.time()
    notes = []  # unusual test masks: shown, and kept in done.json for the report
    for case in todo:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GbmsegWarning)
            predict_file(model, ds.image_path(case), pred_dir / f"{case}.nii.gz", mask_path=ds.mask_path(case))
        for w in caught:
            if issubclass(w.category, GbmsegWarning):
                notes.append({"case": case, "warning": str(w.message)})
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, {"predict_s_per_case": (time.time() - t0) / len(todo) if todo else None,
                    "predict_warnings": notes}, model


def _atlas(job: dict, job_dir: Path, ds: Dataset, device: str | None, progress: bool,
           fusion: str = "majority"):
    """Modes ``atlas`` (majority vote) and ``atlas-lw`` (locally weighted vote): no training; the
    training cases are the atlases of every test case (:mod:`gbmseg.atlas`). ``predict_s_per_case``
    is the atlas time per test case (registrations, cache misses included, and fusion)."""
    stats = segment_cases(ds, job["test"], job["train"], job_dir / "predictions", fusion=fusion, progress=progress)
    result = {"iterations": 0, "train_time_s": 0.0, "best_iteration": 0, "time_to_best_s": 0.0, "learned": True,
              "stop_reason": "atlas", "device": "cpu"}
    return result, {"predict_s_per_case": stats["seconds_per_case"], "registrations": stats["registrations"],
                    "registrations_cached": stats["registrations_cached"]}, None


# how each mode runs: the U-Net input modes of config.MODES, and the multi-atlas baseline
SWEEP_MODES = {**{m: _train_and_predict for m in MODES}, "atlas": _atlas, "atlas-lw": partial(_atlas, fusion="local")}


def run_job(job_dir: str | Path, device: str | None = None, progress: bool = True) -> dict:
    """Train (or not: ``atlas``), predict the test cases and evaluate one job; skip what is already done."""
    job_dir = Path(job_dir)
    done = job_dir / "done.json"
    if done.exists():  # finished; an also-test planned after it finished is run now
        return finish_also_test(job_dir, device=device)
    job = read_json(job_dir / "job.json", JOB_KEYS, "sweep job record")
    if job["mode"] not in SWEEP_MODES:
        raise GbmsegError(f"{job_dir / 'job.json'}: unknown mode '{job['mode']}' "
                          f"(choose from {', '.join(SWEEP_MODES)})")
    ds = Dataset(job["dataset"], work=job["work"])
    start = time.time()
    result, timing, model = SWEEP_MODES[job["mode"]](job, job_dir, ds, device, progress)
    pred_dir = job_dir / "predictions"
    df = score_job_predictions(job, pred_dir, ds, job["test"], job_dir / "metrics.csv")
    summary = {"id": job["id"], "mean_dice": float(df["dice"].mean()), "train": result, **timing,
               "also_test": predict_also_test(job_dir, job, model, device),  # {} without --also-test
               "job_wall_s": time.time() - start,
               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(summary, done)
    return summary


def prepare_sweep(sweep_dir: str | Path, workers: int = 1, progress: bool = True) -> list[Path]:
    """What every backend does before the jobs: the cache (once, for all jobs), crop coverage, mask
    quality. Returns the unfinished jobs, in run order."""
    sweep_dir = Path(sweep_dir)
    sweep = read_json(sweep_dir / "sweep.json", SWEEP_KEYS, "sweep record")
    ds = Dataset(sweep["dataset"], work=sweep["work"])
    config = Config.from_dict(sweep["config"], source=str(sweep_dir / "sweep.json"), record=True)
    plan_cases = sorted(sweep["split"]["pool"] + sweep["split"]["val"])
    cache = preprocess_dataset(ds, config, workers=workers, progress=progress, plan_cases=plan_cases)
    low = coverage_summary(cache, plan_cases)
    for line in low:
        print(f"warning: {line}")
    write_json({"warnings": low, "per_case": coverage(cache)}, sweep_dir / "coverage.json")
    quality = sweep_dir / "mask_quality.csv"
    if not quality.exists():  # how good the global masks are (Dice against the union of the labels)
        evaluate_masks(ds.mask_dir, ds.label_path(ds.cases[0]).parent, out_csv=quality)
    for rec in sweep.get("also_test") or []:  # the other dataset's masks vs this one's, same subjects
        agreement = sweep_dir / f"mask_agreement_{rec['name']}.csv"
        if not agreement.exists():
            write_text(mask_agreement(ds, rec).to_csv(index=False), agreement)
    return [j for j in jobs(sweep_dir) if pending(j)]


def job_line(summary: dict) -> str:
    """The progress line of a finished job."""
    learned = summary["train"].get("learned", True)
    if summary["train"].get("stop_reason") == "atlas":
        return (f"{summary['id']}: mean test Dice {summary['mean_dice']:.3f} "
                f"(multi-atlas, {summary['predict_s_per_case']:.0f} s per test case)")
    return (f"{summary['id']}: mean test Dice {summary['mean_dice']:.3f} "
            f"({summary['train']['iterations']} iterations, {summary['train']['train_time_s']:.0f} s training)"
            + (f"; budget extended by {extra} for {', '.join(summary['train'].get('extended_for') or [])}"
               if (extra := summary["train"].get("extended_iterations")) else "")
            + "".join(f"; on {name} {dice:.3f}" for name, dice in (summary.get("also_test") or {}).items())
            + ("" if learned else "  DID NOT LEARN (validation Dice never rose)")
            + ("  NOT LEARNED: " + ", ".join(missing) if learned and (missing := summary["train"].get("structures_not_learned"))
               else ""))


def run_sweep(sweep_dir: str | Path, device: str | None = None, workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Run every unfinished job of a sweep here, one after another (preprocessing first), then return
    all metrics. Other ways to run the jobs: :mod:`gbmseg.sweep_backends`."""
    sweep_dir = Path(sweep_dir)
    todo = prepare_sweep(sweep_dir, workers=workers, progress=progress)
    total = len(jobs(sweep_dir))
    bar = tqdm(total=total, initial=total - len(todo), desc="sweep runs", unit="run", disable=not progress)
    for job_dir in todo:
        bar.set_postfix_str(job_dir.name)
        summary = run_job(job_dir, device=device, progress=progress)
        bar.update(1)
        bar.write(job_line(summary))
    bar.close()
    return collect_metrics(sweep_dir)


def collect_metrics(sweep_dir: str | Path) -> pd.DataFrame:
    """All finished jobs' metrics in one table."""
    frames = [pd.read_csv(j / "metrics.csv") for j in jobs(sweep_dir) if (j / "done.json").exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
