"""Segmentation quality: Dice, centre-of-mass distance, HD95 and ASD (all distances in mm).

Distances honour the full SimpleITK geometry: centres of mass go through the image's
index-to-physical transform (origin, spacing, direction); surface distances use the voxel
spacing (reversed to match the ``[z, y, x]`` array order).

Example:
    >>> df = evaluate_folder("preds", "Dataset/labelsTr", out_csv="eval.csv")  # doctest: +SKIP
    >>> summarize(df)[["structure", "n", "dice_mean"]]                          # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from tqdm import tqdm

from .dataset import label_array, parse_labels
from .errors import GbmsegError
from .io import PathLike, read_image, read_json, same_geometry, write_text

COLUMNS = ["case", "structure", "label", "dice", "com_mm", "hd95_mm", "asd_mm",
           "ref_voxels", "pred_voxels", "ref_ml", "pred_ml", "status"]
METRICS = ["dice", "com_mm", "hd95_mm", "asd_mm"]
STATUSES = ["ok", "empty_pred", "empty_ref", "both_empty"]
NAN = float("nan")


def _check_geometry(pred: sitk.Image, ref: sitk.Image, name: str) -> None:
    diff = same_geometry(pred, ref)
    if diff is not None:
        raise GbmsegError(f"{name}: geometry differs from the reference ({diff})")


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` plus ``margin`` voxels, clipped to the array."""
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        out.append(slice(max(hit[0] - margin, 0), min(hit[-1] + margin + 1, mask.shape[axis])))
    return tuple(out)


def _com_world(mask: np.ndarray, offset: tuple[int, ...], image: sitk.Image) -> np.ndarray:
    """Centre of mass of a ``[z, y, x]`` mask (cropped at ``offset``) in world mm."""
    total = mask.sum()
    zyx = []
    for a in range(3):  # marginal sums: no N x 3 index array for big structures
        profile = mask.sum(axis=tuple(b for b in range(3) if b != a))
        zyx.append(offset[a] + (profile * np.arange(mask.shape[a])).sum() / total)
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]))


def score_binary(p: np.ndarray, r: np.ndarray, image: sitk.Image, surfaces: bool = True) -> dict:
    """Metrics of one binary pair (``[z, y, x]`` bool arrays on ``image``'s grid): Dice (NaN when
    both are empty, 0 when one is), centre-of-mass distance, HD95 and ASD in mm (``surfaces=False``
    skips these two), voxel counts and volumes."""
    n_p, n_r = int(p.sum()), int(r.sum())
    ml = float(np.prod(image.GetSpacing())) / 1000.0
    row = dict(dice=NAN, com_mm=NAN, hd95_mm=NAN, asd_mm=NAN, ref_voxels=n_r, pred_voxels=n_p,
               ref_ml=n_r * ml, pred_ml=n_p * ml)
    if n_p == 0 or n_r == 0:
        row["status"] = "both_empty" if n_p == n_r else ("empty_pred" if n_r else "empty_ref")
        if row["status"] != "both_empty":
            row["dice"] = 0.0
        return row
    box = _bbox(p | r)
    offset = tuple(s.start for s in box)
    p, r = p[box], r[box]
    tp, tr = (torch.from_numpy(np.ascontiguousarray(a))[None, None].float() for a in (p, r))
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))  # sitk (x,y,z) -> array (z,y,x)
    row["dice"] = float(compute_dice(tp, tr, include_background=True)[0, 0])
    row["com_mm"] = float(np.linalg.norm(_com_world(p, offset, image) - _com_world(r, offset, image)))
    row["status"] = "ok"
    if not surfaces:
        return row
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal get_mask_edges call
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        row["hd95_mm"] = float(compute_hausdorff_distance(tp, tr, include_background=True, percentile=95,
                                                          spacing=spacing)[0, 0])
        row["asd_mm"] = float(compute_average_surface_distance(tp, tr, include_background=True,
                                                               symmetric=True, spacing=spacing)[0, 0])
    return row


def _evaluate_arrays(pred: np.ndarray, ref: np.ndarray, image: sitk.Image, labels: dict[str, int],
                     case: str) -> list[dict]:
    rows = []
    for name, value in labels.items():
        row = {"case": case, "structure": name, "label": value, **score_binary(pred == value, ref == value, image)}
        rows.append({c: row[c] for c in COLUMNS})
    return rows


def evaluate_case(pred: sitk.Image, ref: sitk.Image, labels: dict[str, int], case: str = "") -> list[dict]:
    """Score one predicted label map against its reference, one row per structure.

    Example:
        >>> rows = evaluate_case(pred, ref, {"brainstem": 1, "eye_l": 2}, case="c01")  # doctest: +SKIP
        >>> rows[0]["dice"], rows[0]["hd95_mm"], rows[0]["status"]                     # doctest: +SKIP
        (0.93, 1.5, 'ok')
    """
    labels = parse_labels(labels, "labels", require=False)
    who = f"case {case}" if case else "case"
    _check_geometry(pred, ref, f"{who} prediction")
    allowed = set(labels.values())
    p = label_array(pred, f"{who} prediction", allowed)
    r = label_array(ref, f"{who} reference", allowed)
    return _evaluate_arrays(p, r, ref, labels, case)


def _case_list(ref_dir: Path, file_ending: str, cases: list[str] | None) -> list[str]:
    if not ref_dir.is_dir():
        raise GbmsegError(f"{ref_dir}: reference folder not found")
    if cases is None:
        cases = sorted(f.name[: -len(file_ending)] for f in ref_dir.iterdir() if f.name.endswith(file_ending))
        if not cases:
            raise GbmsegError(f"{ref_dir}: no reference files ending in {file_ending}")
    for case in cases:
        if not (ref_dir / f"{case}{file_ending}").exists():
            raise GbmsegError(f"{ref_dir / (case + file_ending)}: reference missing for case {case}")
    return list(cases)


def _find_labels(ref_dir: Path, cases: list[str], file_ending: str) -> dict[str, int]:
    """Labels from ``ref_dir/../dataset.json``, else the values found in the references."""
    ds = ref_dir.parent / "dataset.json"
    if ds.exists():
        meta = read_json(ds)
        try:
            labels = meta["labels"]
        except (KeyError, TypeError) as exc:
            raise GbmsegError(f"{ds}: cannot read a 'labels' map ({exc})") from None
        return parse_labels(labels, "labels", require=False)
    values: set[int] = set()
    for case in cases:
        path = ref_dir / f"{case}{file_ending}"
        values |= {int(v) for v in np.unique(label_array(read_image(path), path)) if v != 0}
    return {f"label_{v}": v for v in sorted(values)}


def _write_csv(df: pd.DataFrame, out_csv: PathLike, summary: bool = True) -> None:
    out_csv = Path(out_csv)
    write_text(df.to_csv(index=False), out_csv)
    if summary:
        write_text(summarize(df).to_csv(index=False), out_csv.with_name(f"{out_csv.stem}_summary.csv"))


def evaluate_folder(pred_dir: PathLike, ref_dir: PathLike, labels: dict[str, int] | None = None,
                    out_csv: PathLike | None = None, file_ending: str = ".nii.gz",
                    cases: list[str] | None = None) -> pd.DataFrame:
    """Score ``pred_dir/<case><file_ending>`` against ``ref_dir/<case><file_ending>``.

    ``cases`` (each must have a prediction) defaults to every reference case that has a prediction
    (a test subset, nnU-Net's or any tool's output folder); the references left out are listed in
    ``df.attrs["left_out"]``. Writes ``out_csv`` and ``<stem>_summary.csv`` beside it when given.

    Example:
        >>> df = evaluate_folder("preds", "Dataset001/labelsTr", out_csv="eval/metrics.csv")  # doctest: +SKIP
        >>> sorted(p.name for p in Path("eval").iterdir())                                   # doctest: +SKIP
        ['metrics.csv', 'metrics_summary.csv']
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    if not pred_dir.is_dir():
        raise GbmsegError(f"{pred_dir}: prediction folder not found")
    explicit = cases is not None
    cases = _case_list(ref_dir, file_ending, cases)
    left_out = [] if explicit else [c for c in cases if not (pred_dir / f"{c}{file_ending}").exists()]
    cases = [c for c in cases if c not in set(left_out)]
    if not cases:
        raise GbmsegError(f"{pred_dir}: no prediction named like a reference in {ref_dir} (<case>{file_ending})")
    for case in cases:
        if not (pred_dir / f"{case}{file_ending}").exists():
            raise GbmsegError(f"{pred_dir / (case + file_ending)}: prediction missing for reference case {case}")
    if labels is not None:
        labels = parse_labels(labels, "labels", require=False)
    else:
        labels = _find_labels(ref_dir, cases, file_ending)
    allowed = set(labels.values())
    rows: list[dict] = []
    for case in tqdm(cases, desc="evaluate", unit="case"):
        pred_path, ref_path = pred_dir / f"{case}{file_ending}", ref_dir / f"{case}{file_ending}"
        pred, ref = read_image(pred_path), read_image(ref_path)
        _check_geometry(pred, ref, str(pred_path))
        p = label_array(pred, pred_path, allowed)
        r = label_array(ref, ref_path, allowed)
        rows += _evaluate_arrays(p, r, ref, labels, case)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["left_out"] = left_out
    if out_csv is not None:
        _write_csv(df, out_csv)
    return df


def summarize(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per structure (plus ``ALL``) and per ``by`` group: counts, mean and sd of each metric.

    ``n_missing`` counts rows whose distances are missing (any status but ``ok``).

    Example:
        >>> summarize(df, by=["model"])[["model", "structure", "n", "n_ok", "dice_mean"]]  # doctest: +SKIP
    """
    by = list(by or [])
    groups = df.groupby(by, sort=True, dropna=False) if by else [((), df)]
    out = []
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        subsets = [(s, part[part["structure"] == s]) for s in part["structure"].unique()] + [("ALL", part)]
        for structure, sub in subsets:
            row = dict(zip(by, key))
            row.update(structure=structure, n=len(sub))
            for status in STATUSES:
                row[f"n_{status}"] = int((sub["status"] == status).sum())
            row["n_missing"] = int(sub[["com_mm", "hd95_mm", "asd_mm"]].isna().any(axis=1).sum())
            for m in METRICS:
                row[f"{m}_mean"], row[f"{m}_sd"] = sub[m].mean(), sub[m].std()
            out.append(row)
    return pd.DataFrame(out)


def evaluate_masks(mask_dir: PathLike, ref_dir: PathLike, out_csv: PathLike | None = None,
                   file_ending: str = ".nii.gz") -> pd.DataFrame:
    """Score global binary masks (``mask_dir/<case>``, values 0/1) against the union of all
    non-zero reference labels (for heart data: the whole heart).

    Example:
        >>> evaluate_masks("masks", "Dataset/labelsTr")[["case", "dice", "volume_error_pct"]]  # doctest: +SKIP
    """
    mask_dir, ref_dir = Path(mask_dir), Path(ref_dir)
    rows = []
    for case in tqdm(_case_list(ref_dir, file_ending, None), desc="evaluate masks", unit="case"):
        mask_path, ref_path = mask_dir / f"{case}{file_ending}", ref_dir / f"{case}{file_ending}"
        if not mask_path.exists():
            raise GbmsegError(f"{mask_path}: mask missing for reference case {case}")
        mask, ref = read_image(mask_path), read_image(ref_path)
        _check_geometry(mask, ref, str(mask_path))
        m = label_array(mask, mask_path, {1}) > 0
        s = score_binary(m, label_array(ref, ref_path) != 0, ref, surfaces=False)
        err = 100.0 * (s["pred_ml"] - s["ref_ml"]) / s["ref_ml"] if s["ref_voxels"] else NAN
        rows.append(dict(case=case, dice=s["dice"], volume_error_pct=err, mask_ml=s["pred_ml"],
                         ref_ml=s["ref_ml"], com_mm=s["com_mm"]))
    df = pd.DataFrame(rows, columns=["case", "dice", "volume_error_pct", "mask_ml", "ref_ml", "com_mm"])
    if out_csv is not None:
        _write_csv(df, out_csv, summary=False)
    return df
