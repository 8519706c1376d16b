"""Global masks of the same subjects in two modalities (head_CT threshold, head_MR Otsu): how well
they agree, with holes filled along the first array axis only (gbmseg before masks version 2) and
along every axis (now).

    python benchmarks/mask_agreement.py [--data ../shared/data]

Writes benchmarks/results/mask_agreement.{md,csv}: per subject, the CT-MR mask Dice and the share
of the CT mask missing from the MR mask, for both ways of filling.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from gbmseg import morphology
from gbmseg.global_masks import make_mask
from gbmseg.io import read_image, to_array

HERE = Path(__file__).parent


def first_axis_fill(fg: np.ndarray) -> np.ndarray:
    """How masks were filled before version 2: in 3D, then slice by slice along array axis 0 only."""
    fg = ndimage.binary_fill_holes(fg)
    for z in range(fg.shape[0]):
        fg[z] = ndimage.binary_fill_holes(fg[z])
    return fg


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def masks(path: Path, method: str) -> dict[str, np.ndarray]:
    image = read_image(path)
    every = to_array(make_mask(image, method)) > 0
    fill = morphology.fill_holes
    morphology.fill_holes = first_axis_fill  # clean() looks the name up in the module
    try:
        first = to_array(make_mask(image, method)) > 0
    finally:
        morphology.fill_holes = fill
    return {"first_axis": first, "every_axis": every}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    args = ap.parse_args()
    data = Path(args.data)
    rows = []
    for ct_path in sorted((data / "head_CT" / "imagesTr").glob("*_0000.nii.gz")):
        case = ct_path.name.replace("_0000.nii.gz", "")
        ct, mr = masks(ct_path, "threshold"), masks(data / "head_MR" / "imagesTr" / ct_path.name, "otsu")
        row = {"case": case}
        for fill in ("first_axis", "every_axis"):
            row[f"dice_{fill}"] = dice(ct[fill], mr[fill])
            row[f"ct_missing_in_mr_pct_{fill}"] = 100 * float((ct[fill] & ~mr[fill]).sum() / ct[fill].sum())
        rows.append(row)
    df = pd.DataFrame(rows)
    out = HERE / "results"
    df.to_csv(out / "mask_agreement.csv", index=False)
    summary = df.drop(columns="case").agg(["mean", "min", "max"]).round(3)
    (out / "mask_agreement.md").write_text(
        "# Global masks of one subject in CT and MR: agreement\n\n"
        f"Machine: {platform.node()} {platform.machine()}, CPU. head_CT masks: threshold (-300 HU); head_MR "
        "masks: Otsu; both opened, largest component, holes filled. 'first_axis': filled in 3D and then "
        "slice by slice along the first array axis only (masks version 1); 'every_axis': slice by slice "
        "along each axis in turn (version 2, now). 'ct_missing_in_mr_pct': share of the CT mask that "
        "the MR mask lacks.\n\n" + df.round(3).to_markdown(index=False) + "\n\n" + summary.to_markdown() + "\n")
    print((out / "mask_agreement.md").read_text())


if __name__ == "__main__":
    main()
