"""Numbers of a sweep report: finished runs, per-mode tables, paired comparisons, Wilcoxon tests.

No plotting here; :mod:`gbmseg.report` renders these tables as figures, HTML and Markdown.

Statistics: sd is the sample sd (ddof 1) over test cases x seeds (x structures for ``ALL``).
Dice of an empty prediction is 0 and counted; a structure absent from both reference and
prediction (``both_empty``) has no Dice and is left out. Distances are missing when either side
is empty; ``n_missing`` counts those rows. ``comparison.csv`` pairs each result of ``mask`` and
``image+mask`` with the ``image`` result of the same N, test case, seed (and structure for
``ALL``); means are over the pairs, relative change = 100 (mode - image) / image. The p-value is
a two-sided Wilcoxon signed-rank test of the paired differences (scipy, zero differences dropped):
1.0 when every difference is zero, NaN with fewer than ``MIN_PAIRS`` pairs. ``ALL`` pools
structures, whose differences are not independent; no correction for multiple comparisons.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .errors import GbmsegError
from .io import read_json

MODE_ORDER = ["image", "mask", "image+mask"]
COMPARED = ["mask", "image+mask"]
ALPHA = 0.05
MIN_PAIRS = 5  # below this many pairs no p-value (with 5 the smallest exact p is 0.0625 anyway)


@dataclass
class Run:
    dir: Path
    id: str
    mode: str
    n_train: int
    seed: int
    result: dict
    history: pd.DataFrame | None
    done: dict | None = None  # done.json: predict_s_per_case (the atlas time per case for mode atlas), ...


def _json(path: Path) -> dict | None:
    """A record that may be missing or half-written (a job still running): ``None`` then."""
    try:
        return read_json(path)
    except GbmsegError:
        return None


def load_runs(sweep_dir: Path) -> tuple[list[Run], pd.DataFrame, list[str]]:
    """Finished runs, their metrics (one table) and the ids of started jobs without ``done.json``
    (a folder holding only ``job.json`` is a job not started yet)."""
    runs, frames, unfinished = [], [], []
    for job_dir in sorted(p for p in (sweep_dir / "runs").glob("*") if p.is_dir()):
        if not (job_dir / "done.json").exists():
            if any(p.name != "job.json" for p in job_dir.iterdir()):
                unfinished.append(job_dir.name)
            continue
        job = read_json(job_dir / "job.json")  # written by the sweep: id, mode, n_train, seed
        hist = job_dir / "train" / "history.csv"
        done = _json(job_dir / "done.json") or {}
        result = _json(job_dir / "train" / "result.json") or done.get("train") or {}  # atlas: no train/ folder
        runs.append(Run(job_dir, job["id"], job["mode"], int(job["n_train"]), int(job["seed"]),
                        result, pd.read_csv(hist) if hist.exists() else None, done))
        if (job_dir / "metrics.csv").exists():  # already carries job, mode, n_train, seed (see sweep.run_job)
            frames.append(pd.read_csv(job_dir / "metrics.csv"))
    columns = ["case", "structure", "dice", "com_mm", "hd95_mm", "status", "job", "mode", "n_train", "seed"]
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return runs, metrics, unfinished


def summarize_metric(metrics: pd.DataFrame, column: str, modes, sizes, structures) -> pd.DataFrame:
    """mean, sd, n (values present) and n_missing (no value though not both empty) per mode x N x structure."""
    rows = []
    for mode in modes:
        for n in sizes:
            part = metrics[(metrics["mode"] == mode) & (metrics["n_train"] == n)]
            for s in [*structures, "ALL"]:
                sub = part if s == "ALL" else part[part["structure"] == s]
                v = sub[column].astype(float)
                rows.append(dict(mode=mode, n_train=n, structure=s, mean=v.mean(), sd=v.std(),
                                 n=int(v.notna().sum()),
                                 n_missing=int((v.isna() & (sub["status"] != "both_empty")).sum())))
    return pd.DataFrame(rows)


def time_table(runs: list[Run], modes, sizes) -> pd.DataFrame:
    """mean and sd of training time, best iteration, time to best and seconds per test case
    (prediction; for mode atlas its whole work: registrations and fusion) per N x mode."""
    keys = ["train_time_s", "best_iteration", "time_to_best_s", "predict_s_per_case"]
    df = pd.DataFrame([dict(mode=r.mode, n_train=r.n_train, **{k: r.result.get(k, np.nan) for k in keys[:3]},
                            predict_s_per_case=(r.done or {}).get("predict_s_per_case", np.nan))
                       for r in runs], columns=["mode", "n_train", *keys])
    rows = []
    for n in sizes:
        for mode in modes:
            sub = df[(df["mode"] == mode) & (df["n_train"] == n)]
            row = dict(mode=mode, n_train=n)
            for k in keys:
                row[f"{k}_mean"], row[f"{k}_sd"] = sub[k].astype(float).mean(), sub[k].astype(float).std()
            rows.append({**row, "n_runs": len(sub)})
    return pd.DataFrame(rows)


def wilcoxon_p(diff) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences; 1.0 if all zero, NaN if < MIN_PAIRS."""
    d = np.asarray(diff, dtype=float)
    d = np.where(np.abs(d) < 1e-12, 0.0, d)
    if len(d) < MIN_PAIRS:
        return float("nan")
    if not d.any():
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d).pvalue)


def compare(metrics: pd.DataFrame, sizes, structures) -> pd.DataFrame:
    """Dice of mask and image+mask against image only, paired by N, case, seed and structure."""
    key = ["case", "seed", "structure"]
    rows = []
    for n in sizes:
        base = metrics[(metrics["mode"] == "image") & (metrics["n_train"] == n)][key + ["dice"]]
        for mode in COMPARED:
            other = metrics[(metrics["mode"] == mode) & (metrics["n_train"] == n)][key + ["dice"]]
            pairs = other.merge(base, on=key, suffixes=("", "_image")).dropna(subset=["dice", "dice_image"])
            for s in [*structures, "ALL"]:
                p = pairs if s == "ALL" else pairs[pairs["structure"] == s]
                dm, di = p["dice"].mean(), p["dice_image"].mean()
                rows.append(dict(n_train=n, structure=s, mode=mode, dice_mode=dm, dice_image=di,
                                 rel_change_pct=100 * (dm - di) / di if di > 0 else np.nan,
                                 n_pairs=len(p), p_value=wilcoxon_p(p["dice"] - p["dice_image"])))
    return pd.DataFrame(rows)


def fmt_mean_sd(mean, sd, digits: int) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.{digits}f} ({'–' if pd.isna(sd) else f'{sd:.{digits}f}'})"


def p_text(p: float) -> str:
    return "p n/a" if pd.isna(p) else ("p<0.001" if p < 0.001 else f"p={p:.2g}")


def statement(row) -> str:
    """One sentence for one comparison.csv row, computed from its numbers."""
    what = f"{row['mode']} vs image"
    if row["n_pairs"] == 0:
        return f"{what}: no paired results"
    if pd.isna(row["rel_change_pct"]):
        return f"{what}: image-only Dice is 0, relative change undefined ({p_text(row['p_value'])})"
    if pd.isna(row["p_value"]):
        verdict = f"too few pairs ({row['n_pairs']}) for a test"
    else:
        verdict = ("significant" if row["p_value"] < ALPHA else "not significant") + f" at {ALPHA:g}"
    return f"{what} {row['rel_change_pct']:+.1f}% (Dice {row['dice_mode']:.3f} vs {row['dice_image']:.3f}, " \
           f"{p_text(row['p_value'])}, {verdict}, {row['n_pairs']} pairs)"
