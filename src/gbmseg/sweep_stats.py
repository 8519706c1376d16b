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
Every mode other than image is compared with image; when image+mask is in the sweep, every other
mode is also compared with image+mask (:func:`compare_to`: Dice and COM distance, each paired and
tested the same way; COM pairs need a distance on both sides).

Cross-modality (``--also-test``, :mod:`gbmseg.cross_modality`): :func:`cross_table` sets each job's
Dice on the other dataset's cases beside its Dice on its own test cases (only jobs that have both),
ratio = other / own of the means.
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

MODE_ORDER = ["image", "mask", "image+mask", "image+coords", "image+sdm", "atlas", "atlas-lw"]  # known modes first
COMPARED = ["mask", "image+mask"]
REFERENCE = "image+mask"  # the second comparison's base
ALPHA = 0.05
MATCH_DICE = 0.02  # image+coords "matches" image+mask: mean Dice within this and p >= ALPHA
HOLDS, COLLAPSES = 0.9, 0.1  # cross-modality: keeps >= 90 % of its own Dice; falls below 10 %
MIN_PAIRS = 5  # below this many pairs no p-value (with 5 the smallest exact p is 0.0625 anyway)
CONVERGENCE_TARGETS = (0.5, 0.7)  # validation Dice levels whose first crossing measures convergence


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


def order_modes(modes) -> list[str]:
    """Known modes in :data:`MODE_ORDER`, then any others alphabetically."""
    return sorted(set(modes), key=lambda m: (MODE_ORDER.index(m) if m in MODE_ORDER else len(MODE_ORDER), m))


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


def first_reached(history: pd.DataFrame | None, target: float) -> tuple[float, float] | None:
    """(iteration, wall seconds) of the first validation whose Dice is >= ``target``; ``None`` if none.

    >>> h = pd.DataFrame(dict(iteration=[50, 100, 150], val_dice=[0.2, 0.55, 0.8], wall_s=[10.0, 20.0, 30.0]))
    >>> first_reached(h, 0.5), first_reached(h, 0.9)
    ((100.0, 20.0), None)
    """
    if history is None or not len(history):
        return None
    hit = history[history["val_dice"].astype(float) >= target]
    if not len(hit):
        return None
    row = hit.iloc[0]
    return float(row["iteration"]), float(row.get("wall_s", np.nan))


def convergence_table(runs: list[Run], modes, sizes, targets=CONVERGENCE_TARGETS) -> pd.DataFrame:
    """Iterations and seconds until validation Dice first reached each target, per N x mode x target.

    The paper's convergence claim (its Tables 5-6: the mask channel shortens training) measured
    without depending on when a run happens to stop: mean and sd over the runs that reached the
    target, ``n_reached`` of ``n_runs`` (runs with a training history). Resolution: the validation
    interval. A mode whose runs do not reach a target has ``n_reached`` 0 and no mean.
    """
    rows = []
    for n in sizes:
        for mode in modes:
            sub = [r for r in runs if r.mode == mode and r.n_train == n and r.history is not None]
            for target in targets:
                hits = [h for h in (first_reached(r.history, target) for r in sub) if h is not None]
                its = pd.Series([h[0] for h in hits], dtype=float)
                secs = pd.Series([h[1] for h in hits], dtype=float)
                rows.append(dict(mode=mode, n_train=n, target=target, n_runs=len(sub), n_reached=len(hits),
                                 iterations_mean=its.mean(), iterations_sd=its.std(),
                                 seconds_mean=secs.mean(), seconds_sd=secs.std()))
    return pd.DataFrame(rows, columns=["mode", "n_train", "target", "n_runs", "n_reached", "iterations_mean",
                                       "iterations_sd", "seconds_mean", "seconds_sd"])


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


def _pairs(metrics: pd.DataFrame, mode: str, base: str, n: int, column: str) -> pd.DataFrame:
    """``column`` of ``mode`` and of ``base`` (``<column>_base``) paired by case, seed and structure at N = n,
    pairs with a value on both sides only."""
    key = ["case", "seed", "structure"]
    pick = lambda m: metrics[(metrics["mode"] == m) & (metrics["n_train"] == n)][key + [column]]  # noqa: E731
    return pick(mode).merge(pick(base), on=key, suffixes=("", "_base")).dropna(subset=[column, f"{column}_base"])


def compare(metrics: pd.DataFrame, sizes, structures, modes=None) -> pd.DataFrame:
    """Dice of ``modes`` (default :data:`COMPARED`) against image only, paired by N, case, seed and structure."""
    rows = []
    for n in sizes:
        for mode in COMPARED if modes is None else modes:
            pairs = _pairs(metrics, mode, "image", n, "dice")
            for s in [*structures, "ALL"]:
                p = pairs if s == "ALL" else pairs[pairs["structure"] == s]
                dm, di = p["dice"].mean(), p["dice_base"].mean()
                rows.append(dict(n_train=n, structure=s, mode=mode, dice_mode=dm, dice_image=di,
                                 rel_change_pct=100 * (dm - di) / di if di > 0 else np.nan,
                                 n_pairs=len(p), p_value=wilcoxon_p(p["dice"] - p["dice_base"])))
    return pd.DataFrame(rows)


def compare_to(metrics: pd.DataFrame, sizes, structures, base: str, modes) -> pd.DataFrame:
    """Every mode in ``modes`` against ``base``: mean Dice and COM distance over pairs of the same N, case,
    seed (and structure), the differences mode − base and their Wilcoxon p."""
    rows = []
    for n in sizes:
        for mode in modes:
            dice, com = _pairs(metrics, mode, base, n, "dice"), _pairs(metrics, mode, base, n, "com_mm")
            for s in [*structures, "ALL"]:
                d = dice if s == "ALL" else dice[dice["structure"] == s]
                c = com if s == "ALL" else com[com["structure"] == s]
                rows.append(dict(n_train=n, structure=s, mode=mode, base=base, dice_mode=d["dice"].mean(),
                                 dice_base=d["dice_base"].mean(), dice_diff=(d["dice"] - d["dice_base"]).mean(),
                                 n_pairs=len(d), p_dice=wilcoxon_p(d["dice"] - d["dice_base"]),
                                 com_mode=c["com_mm"].mean(), com_base=c["com_mm_base"].mean(),
                                 com_diff=(c["com_mm"] - c["com_mm_base"]).mean(), n_com_pairs=len(c),
                                 p_com=wilcoxon_p(c["com_mm"] - c["com_mm_base"])))
    columns = ["n_train", "structure", "mode", "base", "dice_mode", "dice_base", "dice_diff", "n_pairs", "p_dice",
               "com_mode", "com_base", "com_diff", "n_com_pairs", "p_com"]
    return pd.DataFrame(rows, columns=columns)


def coords_statement(vs_ref: pd.DataFrame) -> str | None:
    """One sentence: does image+coords match image+mask (mean Dice within :data:`MATCH_DICE` and
    p >= :data:`ALPHA`), at the largest N with pairs, all structures pooled? ``None`` without pairs."""
    rows = vs_ref[(vs_ref["mode"] == "image+coords") & (vs_ref["structure"] == "ALL") & (vs_ref["n_pairs"] > 0)]
    if rows.empty:
        return None
    r = rows.sort_values("n_train").iloc[-1]
    numbers = (f"at N={r['n_train']}, Dice {r['dice_mode']:.3f} vs {r['dice_base']:.3f} "
               f"(difference {r['dice_diff']:+.3f}, {p_text(r['p_dice'])}, {r['n_pairs']} pairs)")
    rule = f"match = mean Dice within {MATCH_DICE:g} and p ≥ {ALPHA:g}"
    if pd.isna(r["p_dice"]):
        return f"image+coords vs image+mask {numbers}: too few pairs for a test, so whether the mask's value is " \
               f"localisation cannot be said ({rule})."
    if abs(r["dice_diff"]) <= MATCH_DICE and r["p_dice"] >= ALPHA:
        return f"image+coords matches image+mask {numbers}: the mask's value here is localisation ({rule})."
    if r["dice_diff"] < 0:
        return f"image+coords falls short of image+mask {numbers}: the mask carries more than position ({rule})."
    return f"image+coords does better than image+mask {numbers}: position alone does at least as well as the " \
           f"mask ({rule})."


def load_also_test(runs: list[Run]) -> pd.DataFrame:
    """Every finished run's ``metrics_<NAME>.csv`` (cross-modality results, ``tested_on`` = NAME) in one table."""
    frames = [pd.read_csv(p) for r in runs for p in sorted(r.dir.glob("metrics_*.csv"))]
    frames = [f for f in frames if "tested_on" in f.columns]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["case", "structure", "dice", "com_mm", "hd95_mm", "status", "job", "mode", "n_train", "seed",
                 "tested_on"])


def cross_table(metrics: pd.DataFrame, other: pd.DataFrame, modes, sizes, structures) -> pd.DataFrame:
    """Per other dataset, mode, N and structure (+ ``ALL``): Dice on the own test cases and on the other
    dataset's cases (mean, sd, n over cases × seeds; only jobs with both) and ratio = other / own."""
    rows = []
    for name in sorted(other["tested_on"].unique()):
        theirs = other[other["tested_on"] == name]
        ours = metrics[metrics["job"].isin(set(theirs["job"]))]
        for mode in modes:
            for n in sizes:
                a = ours[(ours["mode"] == mode) & (ours["n_train"] == n)]
                b = theirs[(theirs["mode"] == mode) & (theirs["n_train"] == n)]
                for s in [*structures, "ALL"]:
                    x = (a if s == "ALL" else a[a["structure"] == s])["dice"].astype(float)
                    y = (b if s == "ALL" else b[b["structure"] == s])["dice"].astype(float)
                    ratio = y.mean() / x.mean() if x.notna().any() and y.notna().any() and x.mean() > 0 else np.nan
                    rows.append(dict(tested_on=name, mode=mode, n_train=n, structure=s, own_mean=x.mean(),
                                     own_sd=x.std(), own_n=int(x.notna().sum()), other_mean=y.mean(),
                                     other_sd=y.std(), other_n=int(y.notna().sum()), ratio=ratio))
    columns = ["tested_on", "mode", "n_train", "structure", "own_mean", "own_sd", "own_n", "other_mean", "other_sd",
               "other_n", "ratio"]
    return pd.DataFrame(rows, columns=columns)


def cross_statements(table: pd.DataFrame, own: str, other: str, titles: dict) -> list[str]:
    """One sentence per mode at its largest N with results on both: the share of its own Dice it keeps
    on the other dataset (holds: >= :data:`HOLDS`; collapses: < :data:`COLLAPSES`)."""
    out = []
    have = table[(table["structure"] == "ALL") & (table["own_n"] > 0) & (table["other_n"] > 0)]
    for mode in order_modes(have["mode"]):
        r = have[have["mode"] == mode].sort_values("n_train").iloc[-1]
        what = f"{titles.get(mode, mode)} at N={r['n_train']}"
        if pd.isna(r["ratio"]):
            out.append(f"{what}: Dice {r['other_mean']:.3f} on {other}, its {own} Dice is 0 (no ratio)")
            continue
        verb = ("holds" if r["ratio"] >= HOLDS else "collapses" if r["ratio"] < COLLAPSES else "drops")
        out.append(f"{what} keeps {100 * r['ratio']:.0f} % of its {own} Dice on {other} "
                   f"({r['other_mean']:.3f} vs {r['own_mean']:.3f}): {verb}")
    return out


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
