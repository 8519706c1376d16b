"""Location prior: where each structure sat in the training crops, used to drop predicted pieces far from it.

The crop is placed from the global mask (:mod:`gbmseg.crop_plan`), so a structure sits at about the
same place in every case's crop. At training time :func:`fit_location_prior` records, per structure,
the box (millimetres from the crop's centre) that holds it in every training case. At prediction
:func:`apply_location_prior` splits each structure's predicted voxels into connected pieces and
hands the pieces whose centre lies more than ``margin_mm`` outside that box to the background. A
structure always keeps at least one piece: if none lies within the margin, the nearest stays.

This is nnU-Net's "keep the largest component" with a reason that does not depend on size: a model
trained on scans that end at the skull base has been seen to predict each eye twice, once in place
and once about 57 mm lower in the face of a longer scan, with the wrong piece the larger one.

Boxes are ``[[lo_z, lo_y, lo_x], [hi_z, hi_y, hi_x]]`` in mm along the model grid's array axes,
measured from the grid's centre; a prior is a plain JSON-serialisable dict::

    {"n_cases": 2, "structures": {"1": [[-20.0, -8.0, -10.0], [12.0, 16.0, 14.0]], ...}}

Example:
    >>> import numpy as np
    >>> label = np.zeros((9, 9, 9), np.uint8); label[1:3, 4, 4] = 1
    >>> prior = fit_location_prior([label], spacing_xyz=(1.0, 1.0, 1.0))
    >>> prior["structures"]["1"]
    [[-3.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]
    >>> probs = np.zeros((2, 9, 9, 9), np.float32); probs[0] = 1.0
    >>> probs[:, 1, 4, 4] = probs[:, 8, 4, 4] = (0.0, 1.0)        # right place, and 6 mm off
    >>> kept, dropped = apply_location_prior(probs, prior, (1.0, 1.0, 1.0), margin_mm=2.0)
    >>> int(kept[1].sum()), dropped
    (1, {'1': 1})
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

CONNECTIVITY = np.ones((3, 3, 3), bool)  # pieces touching at a corner are one piece


def centred_mm(index_zyx: np.ndarray, shape_zyx: Sequence[int], spacing_xyz: Sequence[float]) -> np.ndarray:
    """Positions (mm, z y x) of voxel indices ``(N, 3)`` relative to the centre of a grid of ``shape_zyx``."""
    spacing_zyx = np.asarray(spacing_xyz, dtype=float)[::-1]
    centre = (np.asarray(shape_zyx, dtype=float) - 1.0) / 2.0
    return (np.asarray(index_zyx, dtype=float).reshape(-1, 3) - centre) * spacing_zyx


def fit_location_prior(labels: Iterable[np.ndarray], spacing_xyz: Sequence[float]) -> dict:
    """Per structure (label value), the box in mm from the crop centre that holds it in every one
    of ``labels`` (model-grid label maps ``(Z, Y, X)``, one per training case).

    Raises:
        ValueError: no label maps, or one that is not 3-D.
    """
    lo: dict[int, np.ndarray] = {}
    hi: dict[int, np.ndarray] = {}
    n = 0
    for label in labels:
        label = np.asarray(label)
        if label.ndim != 3:
            raise ValueError(f"label maps must be 3-D, got shape {label.shape}")
        n += 1
        for value in np.unique(label[label > 0]):
            pos = centred_mm(np.argwhere(label == value), label.shape, spacing_xyz)
            v = int(value)
            lo[v] = np.minimum(lo[v], pos.min(0)) if v in lo else pos.min(0)
            hi[v] = np.maximum(hi[v], pos.max(0)) if v in hi else pos.max(0)
    if n == 0:
        raise ValueError("no label maps to fit a location prior to")
    return {"n_cases": n, "structures": {str(v): [lo[v].round(3).tolist(), hi[v].round(3).tolist()]
                                         for v in sorted(lo)}}


def distance_outside(point: np.ndarray, box: np.ndarray) -> float:
    """Distance (mm) from ``point`` (z y x) to ``box`` ``[[lo], [hi]]``; 0 inside."""
    gap = np.maximum(np.maximum(box[0] - point, point - box[1]), 0.0)
    return float(np.sqrt((gap ** 2).sum()))


def apply_location_prior(probs: np.ndarray, prior: Mapping, spacing_xyz: Sequence[float],
                         margin_mm: float) -> tuple[np.ndarray, dict[str, int]]:
    """Class probabilities ``(C, Z, Y, X)`` with each structure's far pieces handed to the background.

    A piece is a connected set of voxels whose most likely class is the structure; it is far when
    its centre of mass lies more than ``margin_mm`` outside the structure's box in ``prior``. The
    structure's probability there moves to the background (class 0). If every piece is far, the
    nearest one is kept. Structures absent from ``prior`` are left alone.

    Returns:
        The new probabilities (a copy) and, per structure with dropped pieces, how many voxels it lost.
    """
    if margin_mm < 0:
        raise ValueError("margin_mm must be >= 0")
    out = np.array(probs, dtype=np.float32, copy=True)
    winner = out.argmax(0)
    dropped: dict[str, int] = {}
    for key, box in prior.get("structures", {}).items():
        value = int(key)
        if value <= 0 or value >= out.shape[0]:
            continue
        pieces, n = ndimage.label(winner == value, structure=CONNECTIVITY)
        if n == 0:
            continue
        centres = ndimage.center_of_mass(np.ones(pieces.shape), pieces, range(1, n + 1))
        b = np.asarray(box, dtype=float)
        dist = [distance_outside(centred_mm(np.asarray(c), pieces.shape, spacing_xyz)[0], b) for c in centres]
        far = [i + 1 for i, d in enumerate(dist) if d > margin_mm]
        if len(far) == n:
            far.remove(int(np.argmin(dist)) + 1)
        if not far:
            continue
        gone = np.isin(pieces, far)
        out[0][gone] += out[value][gone]
        out[value][gone] = 0.0
        dropped[key] = int(gone.sum())
    return out, dropped
