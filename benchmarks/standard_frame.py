"""Issue-4 benchmark: crops in the template's standard frame (``preprocessing.frame = "template"``).

    python benchmarks/standard_frame.py [--data ../shared/data] [--datasets head_CT,head_MR]

For each dataset: ``register`` masks (built-in phantom template, transforms kept), then every case
is put on the fast preset's model grid twice, with scanner axes (``frame = "scan"``) and with the
template's axes (``frame = "template"``). What a standard frame should do is make the anatomy sit
in the same place and pose in every crop, so this measures, per frame:

- the spread of each structure's centre of mass across cases, in crop coordinates (RMS distance
  from the mean position, mm);
- the mean pairwise Dice of the cases' label crops (how well the crops superimpose);
- the fraction of each case's labelled voxels that fall inside the crop;
- how far the template frame turns each case (angle of the crop axes from the scanner axes);
- for datasets that share case ids and geometry (head_CT and head_MR: same subjects), the angle
  between the standard-frame axes found from the CT and from the MR of the same subject.

Writes ``benchmarks/results/standard_frame.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from gbmseg.config import PreprocessingConfig, load_config
from gbmseg.dataset import Dataset
from gbmseg.io import read_image, to_array
from gbmseg.global_masks import make_dataset_masks
from gbmseg.preprocessing import preprocess_image

HERE = Path(__file__).parent


def _angle(rot: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def measure(ds: Dataset, prep: PreprocessingConfig) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """Per-case rows, per-frame summary, and each case's standard-frame axes (its template-frame grid)."""
    rows, summary, axes = [], [], {}
    spacing = np.asarray(prep.spacing, float)
    crops: dict[str, dict[str, np.ndarray]] = {"scan": {}, "template": {}}
    for case in ds.cases:
        image, label, mask = (read_image(p) for p in (ds.image_path(case), ds.label_path(case), ds.mask_path(case)))
        transform = sitk.ReadTransform(str(ds.transform_path(case)))
        total = np.bincount(to_array(label).ravel(), minlength=len(ds.labels) + 1)
        # voxels of a label at the crop's spacing per voxel at the image's: for the fraction inside the crop
        vox_ratio = np.prod(label.GetSpacing()) / np.prod(spacing)
        for frame in crops:
            data = preprocess_image(image, mask, dataclasses.replace(prep, frame=frame), ds.modality, label=label,
                                    name=case, transform=transform)
            lab = data["label"]
            crops[frame][case] = lab
            inside = np.bincount(lab.ravel(), minlength=len(ds.labels) + 1)
            direction = np.reshape(data["grid"]["direction"], (3, 3))
            if frame == "template":
                axes[case] = direction
            row = {"dataset": ds.root.name, "case": case, "frame": frame, "turn_deg": _angle(direction)}
            for name, value in ds.labels.items():
                idx = np.argwhere(lab == value)
                com = idx.mean(0)[::-1] * spacing if len(idx) else np.full(3, np.nan)  # x, y, z in mm
                row.update({f"{name}_com_{a}": c for a, c in zip("xyz", com)})
                row[f"{name}_inside"] = min(1.0, inside[value] / max(total[value] * vox_ratio, 1e-9))
            rows.append(row)
    df = pd.DataFrame(rows)
    for frame, by_case in crops.items():
        part = df[df.frame == frame]
        out = {"dataset": ds.root.name, "frame": frame, "turn_deg_mean": part.turn_deg.mean(),
               "turn_deg_max": part.turn_deg.max()}
        spreads = []
        for name in ds.labels:
            com = part[[f"{name}_com_{a}" for a in "xyz"]].to_numpy()
            spread = float(np.sqrt(np.nanmean(((com - np.nanmean(com, 0)) ** 2).sum(1))))
            out[f"{name}_com_spread_mm"] = spread
            spreads.append(spread)
            out[f"{name}_inside_min"] = part[f"{name}_inside"].min()
        out["com_spread_mean_mm"] = float(np.mean(spreads))
        pairs = [_dice(by_case[a] > 0, by_case[b] > 0) for a, b in itertools.combinations(by_case, 2)]
        out["pairwise_label_dice"] = float(np.mean(pairs))
        summary.append(out)
    return rows, summary, axes


def cross_modality(a: Dataset, b: Dataset, axes_a: dict, axes_b: dict) -> list[dict]:
    """Per shared case: angle (degrees) between the standard-frame axes found from ``a`` and from ``b``."""
    rows = []
    for case in sorted(set(a.cases) & set(b.cases)):
        ia, ib = read_image(a.image_path(case)), read_image(b.image_path(case))
        if (ia.GetOrigin(), ia.GetDirection(), ia.GetSpacing()) != (ib.GetOrigin(), ib.GetDirection(), ib.GetSpacing()):
            continue  # not in the same world space: axes not comparable
        rows.append({"case": case, f"{a.root.name}_vs_{b.root.name}_deg": _angle(axes_a[case] @ axes_b[case].T)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--datasets", default="head_CT,head_MR")
    args = ap.parse_args()
    prep = load_config("fast").preprocessing
    rows, summary, times, sets = [], [], [], []
    for name in args.datasets.split(","):
        ds = Dataset(Path(args.data) / name, work=HERE / "work" / f"{name}_register")
        todo = [c for c in ds.cases if not ds.mask_path(c).exists()]
        start = time.time()
        make_dataset_masks(ds, "register", {"template": "phantom"})
        times.append(f"{name}: register masks {time.time() - start:.0f} s for {len(todo)} cases"
                     + (" (the others were made by an earlier run)" if len(todo) < len(ds.cases) else ""))
        r, s, axes = measure(ds, prep)
        rows += r
        summary += s
        sets.append((ds, axes))
    cross = []
    for (a, axes_a), (b, axes_b) in itertools.combinations(sets, 2):
        part = pd.DataFrame(cross_modality(a, b, axes_a, axes_b))
        if len(part):
            col = part.columns[1]
            cross.append(f"- {col}: per-subject angle between the two standard frames, median "
                         f"{part[col].median():.1f} deg, mean {part[col].mean():.1f}, max {part[col].max():.1f} "
                         f"({len(part)} subjects; all: {', '.join(f'{v:.1f}' for v in part[col])})")
    out = HERE / "results"
    pd.DataFrame(rows).to_csv(out / "standard_frame.csv", index=False)
    table = pd.DataFrame(summary)
    md = ["# Crops in the template's standard frame vs scanner axes", "",
          f"Machine: {platform.node()} {platform.machine()}, CPU. Preset `fast` grid "
          f"({prep.spacing[0]} mm, {prep.size[0]}^3); masks `register` (built-in phantom template).", "",
          *[f"- {t}" for t in times], "",
          table.round(3).to_markdown(index=False), "",
          "com_spread: RMS distance (mm) of a structure's centre of mass from its mean position across "
          "cases, in crop coordinates (lower: the anatomy sits in the same place in every crop). "
          "pairwise_label_dice: mean Dice of the label crops of every pair of cases. inside_min: the "
          "smallest fraction of a structure's voxels that falls inside the crop. turn_deg: angle "
          "between crop axes and scanner axes.", "",
          "## Same subject, other modality", "", *(cross or ["- no pair of datasets with shared cases"]), ""]
    (out / "standard_frame.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
