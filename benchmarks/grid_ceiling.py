"""Issue-8 benchmark: the Dice a perfect network could reach on a model grid of a given voxel size.

    python benchmarks/grid_ceiling.py [--data ../shared/data] [--datasets head_CT,hn_CT,heart_CT]
        [--spacings 2.5,3,4,5.5] [--out benchmarks/results/grid_ceiling.csv]

For every labelled case, the reference label is put on a model grid of each voxel size the way
preprocessing puts training labels there (:func:`gbmseg.preprocessing.resample`, nearest neighbour;
the grid centred on the labelled voxels, on the scan's axes), then mapped back onto the scan's own
grid the way prediction maps a network's output back (:func:`gbmseg.preprocessing.to_original_geometry`:
each class linearly, then the argmax), and scored against the reference with Dice as ``gbmseg
evaluate`` computes it. A network that reproduced its training targets exactly would score this;
everything below it is learning, everything above it needs a finer grid. The ``soft`` rows do the same
with partial-volume targets (each class's indicator smoothed over about one grid voxel, then
resampled linearly) instead of nearest neighbour: what soft training targets would allow at that
voxel size. Nothing is trained; about 3 minutes for the three datasets on 2 CPU cores.

Writes one row per (dataset, spacing, case, structure) and prints the means per dataset, spacing
and structure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from gbmseg.dataset import Dataset
from gbmseg.evaluation import score_binary
from gbmseg.io import read_image
from gbmseg.preprocessing import grid_record, model_grid, resample, to_original_geometry

HERE = Path(__file__).parent


def grid_around_labels(label: sitk.Image, spacing: float) -> sitk.Image:
    """A model grid of ``spacing`` mm on the label's axes, centred on its labelled voxels and
    large enough to hold them all with a 20 mm margin."""
    arr = sitk.GetArrayViewFromImage(label)
    idx = np.argwhere(arr > 0)
    lo, hi = idx.min(0)[::-1], idx.max(0)[::-1]  # x, y, z voxel indices
    centre = label.TransformContinuousIndexToPhysicalPoint([float(v) for v in (lo + hi) / 2.0])
    extent_mm = (hi - lo + 1) * np.asarray(label.GetSpacing()) + 40.0
    size = [int(np.ceil(e / spacing)) for e in extent_mm]
    return model_grid(centre, [spacing] * 3, size, label.GetDirection())


def ceiling(label: sitk.Image, spacing: float, n_classes: int, soft: bool) -> list[float]:
    """Dice per structure (1..n_classes-1) of the label sent to a ``spacing`` grid and back."""
    grid = grid_around_labels(label, spacing)
    if soft:
        sigma = [spacing / 2.355] * 3  # a Gaussian of about one grid voxel's width at half maximum
        pred = np.stack([resample(sitk.SmoothingRecursiveGaussian(sitk.Cast(label == c, sitk.sitkFloat32), sigma),
                                  grid, nearest=False, default=1.0 if c == 0 else 0.0) for c in range(n_classes)])
    else:
        pred = resample(label, grid, nearest=True).astype(np.int64)  # one-hot in to_original_geometry
    back = sitk.GetArrayFromImage(to_original_geometry(pred, grid_record(grid), label))
    ref = sitk.GetArrayViewFromImage(label)
    return [score_binary(back == c, ref == c, label, surfaces=False)["dice"] for c in range(1, n_classes)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--datasets", default="head_CT,hn_CT,heart_CT")
    ap.add_argument("--spacings", default="2.5,3,4,5.5")
    ap.add_argument("--out", default=str(HERE / "results" / "grid_ceiling.csv"))
    args = ap.parse_args()
    spacings = [float(s) for s in args.spacings.split(",")]
    rows = []
    for name in args.datasets.split(","):
        ds = Dataset(Path(args.data) / name)
        n_classes = max(ds.labels.values()) + 1  # ds.labels: structure name -> value, no background
        for case in ds.cases:
            label = read_image(ds.label_path(case))
            for spacing in spacings:
                for soft in (False, True):
                    scores = ceiling(label, spacing, n_classes, soft)
                    for s, value in ds.labels.items():
                        rows.append({"dataset": name, "spacing_mm": spacing, "case": case, "structure": s,
                                     "targets": "soft" if soft else "nearest", "dice": scores[value - 1]})
        print(f"{name}: {len(ds.cases)} cases", flush=True)
    df = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    table = df.pivot_table(index=["dataset", "targets", "spacing_mm"], columns="structure", values="dice")
    table["mean"] = df.groupby(["dataset", "targets", "spacing_mm"]).dice.mean()
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
