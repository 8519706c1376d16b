"""How far global-mask volumes spread within one dataset, and what prediction's volume guard does.

    python benchmarks/mask_volume_range.py MASK_DIR [MASK_DIR ...] [--draws 2000] [--known 2]
        [--out benchmarks/results/mask_volume_range.md]

Prediction compares a new scan's global mask with the masks of the cases a model was trained and
validated on (``case_stats`` in its ``config.json``; :func:`gbmseg.global_masks.check_mask`). Per
mask folder (``gbmseg masks`` output, ``<case>.nii.gz``) this prints the spread of the volumes and,
over ``--draws`` seeded draws of ``--known`` cases (a model trained on one case and validated on
another: what a small sweep gives), the mean share of the *other* cases that a band refuses or warns
about: the single refusal band of gbmseg up to 2026-12-07 (1/3-3x the known range, for every mask
method), and the body-mask bands since (:data:`gbmseg.global_masks.VOLUME_BANDS`: refused outside
the first, warned about between the two). Trains nothing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from gbmseg.global_masks import VOLUME_BANDS
from gbmseg.io import read_image, write_text
from gbmseg.morphology import mask_volume_ml

OLD_BAND = (1 / 3, 3.0)  # the one refusal band up to 2026-12-07


def outside(volumes: np.ndarray, known: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Which of ``volumes`` lie outside ``[band[0] * min(known), band[1] * max(known)]``.

    Example:
        >>> outside(np.array([1.0, 2.0, 10.0]), np.array([2.0]), (1 / 3, 3.0)).tolist()
        [False, False, True]
    """
    return (volumes < band[0] * known.min()) | (volumes > band[1] * known.max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mask_dirs", nargs="+")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--known", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    refuse, warn = VOLUME_BANDS["body"]
    cols = ("refused up to 2026-12-07 (1/3-3x)", f"refused now, body masks (1/{1 / refuse[0]:g}-{refuse[1]:g}x)",
            f"warned now, body masks (1/{1 / warn[0]:g}-{warn[1]:g}x, not refused)")
    lines = [f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`", "",
             f"Global-mask volumes per folder. Per band: the mean share of the other cases outside it (in brackets, how "
             f"often at least one is), over {args.draws} seeded draws of {args.known} known cases (training + "
             f"validation).", "",
             "| masks | cases | volume min / median / max (mL) | max/min | " + " | ".join(cols) + " |",
             "|:--|--:|:--|--:|" + "--:|" * len(cols)]
    for folder in map(Path, args.mask_dirs):
        files = sorted(folder.glob("*.nii.gz"))
        volumes = np.array([mask_volume_ml(read_image(f)) for f in files])
        rng = np.random.default_rng(0)
        shares = {c: [] for c in cols}
        for _ in range(args.draws):
            pick = rng.choice(len(volumes), args.known, replace=False)
            known, others = volumes[pick], np.delete(volumes, pick)
            refused = outside(others, known, refuse)
            shares[cols[0]].append(outside(others, known, OLD_BAND).mean())
            shares[cols[1]].append(refused.mean())
            shares[cols[2]].append((outside(others, known, warn) & ~refused).mean())
        cells = [f"{np.mean(v):.1%} ({np.mean(np.array(v) > 0):.0%})" for v in shares.values()]
        lines.append(f"| `{folder}` | {len(volumes)} | {volumes.min():.0f} / {np.median(volumes):.0f} / "
                     f"{volumes.max():.0f} | {volumes.max() / volumes.min():.1f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text(text, args.out)


if __name__ == "__main__":
    main()
