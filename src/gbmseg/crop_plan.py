"""Crop planning from training cases (issue 14 prototype; numpy only).

The model grid is a box of ``size`` voxels of ``spacing`` mm whose axes are the *crop axes*: the
scanner axes (identity) or a rotation whose columns are the axes in world (LPS) mm. Every box here is
an array ``[[lo_0, lo_1, lo_2], [hi_0, hi_1, hi_2]]`` of coordinates (mm) along those axes, in the
grid's axis order (ITK order: axis 0 is the grid's x axis).

A *plan* places the crop from the global mask alone. Per axis ``k`` it holds an anchor fraction
``f`` and an offset ``o`` (mm), and the crop centre along that axis is::

    c_k = mask_lo_k + f_k * (mask_hi_k - mask_lo_k) + o_k

The paper's rule (centre of the mask's box) is ``f = 0.5, o = 0`` on every axis (:func:`paper_plan`).
:func:`fit_crop_plan` chooses ``f`` and ``o`` per axis from training cases so that the box needed to
hold the union of every training case's labels is as small as possible (the minimax rule: the
smallest worst case over the training cases), and says which crop size holds them with a margin.

Plans are plain dicts of floats, ints, strings and lists (JSON-serialisable).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PLAN_VERSION = 1
#: anchor fractions tried by :func:`fit_crop_plan` (0 = low edge, 0.5 = centre, 1 = high edge of the mask box)
DEFAULT_FRACTIONS = tuple(np.round(np.linspace(0.0, 1.0, 21), 4).tolist())
#: named anchors, in the order they are preferred when they are (nearly) as good as the best fraction
NAMED_ANCHORS = {"centre": 0.5, "low": 0.0, "high": 1.0}


# -- geometry ------------------------------------------------------------------------------------


def _rotation(axes: Any | None) -> np.ndarray:
    rot = np.eye(3) if axes is None else np.asarray(axes, dtype=float).reshape(3, 3)
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-4):
        raise ValueError("axes must be a 3x3 rotation (orthonormal columns)")
    return rot


def voxel_world(index_zyx: np.ndarray, origin: Sequence[float], spacing: Sequence[float],
                direction: Any) -> np.ndarray:
    """World (mm) positions of voxels given by numpy indices ``[z, y, x]`` (as from ``np.argwhere`` on
    a SimpleITK array) of an image with ITK ``origin``, ``spacing`` (x, y, z order) and ``direction``
    (3x3 or 9 values, row-major as ITK gives it): ``origin + direction @ (index_xyz * spacing)``.

    Returns an ``(N, 3)`` array of world (x, y, z) coordinates.
    """
    idx = np.asarray(index_zyx, dtype=float).reshape(-1, 3)[:, ::-1]
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    return np.asarray(origin, dtype=float) + (idx * np.asarray(spacing, dtype=float)) @ direction.T


def project(world: np.ndarray, axes: Any | None = None) -> np.ndarray:
    """Coordinates (mm) of world points along the crop axes (columns of ``axes``; identity if ``None``)."""
    return np.asarray(world, dtype=float).reshape(-1, 3) @ _rotation(axes)


def points_box(local: np.ndarray, what: str = "points") -> np.ndarray:
    """Bounding box ``[[lo], [hi]]`` of points given in crop-axis coordinates; ValueError if empty."""
    local = np.asarray(local, dtype=float).reshape(-1, 3)
    if local.shape[0] == 0:
        raise ValueError(f"{what} is empty: it has no bounding box")
    return np.stack([local.min(0), local.max(0)])


def check_box(box: Any, what: str = "box") -> np.ndarray:
    """``box`` as a (2, 3) float array, checked (finite, lo <= hi)."""
    b = np.asarray(box, dtype=float)
    if b.shape != (2, 3):
        raise ValueError(f"{what} must be [[lo x3], [hi x3]], got shape {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{what} is not finite")
    if np.any(b[0] > b[1]):
        raise ValueError(f"{what} has lo > hi")
    return b


def case_boxes(mask: np.ndarray, label: np.ndarray | None, origin: Sequence[float],
               spacing: Sequence[float], direction: Any, axes: Any | None = None) -> dict:
    """Boxes (mm along the crop axes) that a plan needs from one case.

    Args:
        mask: global mask, array ``[z, y, x]`` (nonzero = inside).
        label: label map of the same shape (0 = background) or ``None`` (prediction time).
        origin, spacing, direction: the image's ITK geometry (x, y, z order; direction row-major).
        axes: crop axes, 3x3 with the axes as columns (identity = scanner axes if ``None``).

    Returns:
        ``{"mask": box, "labels": union box or None, "structures": {label value: box}}``.

    Raises:
        ValueError: the mask is empty (the crop cannot be placed), or shapes differ.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError("mask must be a 3D array")
    idx = np.argwhere(mask > 0)
    if idx.size == 0:
        raise ValueError("global mask is empty; cannot place the crop")
    out: dict = {"mask": points_box(project(voxel_world(idx, origin, spacing, direction), axes), "mask"),
                 "labels": None, "structures": {}}
    if label is None:
        return out
    label = np.asarray(label)
    if label.shape != mask.shape:
        raise ValueError(f"label shape {label.shape} differs from mask shape {mask.shape}")
    idx = np.argwhere(label > 0)
    if idx.size == 0:
        return out
    local = project(voxel_world(idx, origin, spacing, direction), axes)
    values = label[tuple(idx.T)]
    for v in np.unique(values):
        out["structures"][int(v)] = points_box(local[values == v])
    out["labels"] = points_box(local)
    return out


def fraction_inside(local: np.ndarray, box: Any) -> float:
    """Fraction of points (crop-axis mm) inside ``box`` (edges included); NaN for no points."""
    local = np.asarray(local, dtype=float).reshape(-1, 3)
    if local.shape[0] == 0:
        return float("nan")
    b = check_box(box)
    return float(np.mean(np.all((local >= b[0]) & (local <= b[1]), axis=1)))


# -- plans ---------------------------------------------------------------------------------------


def _anchor_name(fraction: float) -> str:
    for name, f in NAMED_ANCHORS.items():
        if abs(fraction - f) < 1e-9:
            return name
    return "fraction"


def round_up_size(length_mm: float, spacing: float, multiple: int = 16) -> int:
    """Voxels of ``spacing`` needed to span ``length_mm``, rounded up to a multiple of ``multiple``."""
    vox = max(1, math.ceil(length_mm / spacing - 1e-9))
    return int(multiple * math.ceil(vox / multiple))


def _size_fields(axes_rec: list, spacing: np.ndarray, size: np.ndarray, margin_mm: float, multiple: int) -> dict:
    needed = np.array([2.0 * (a["half_needed_mm"] + margin_mm) for a in axes_rec])
    crop = spacing * size
    return {"crop_mm": crop.tolist(), "needed_mm": needed.tolist(),
            "needed_size": [round_up_size(n, s, multiple) for n, s in zip(needed, spacing)],
            "fits": bool(np.all(needed <= crop + 1e-9)),
            "coarse_spacing_mm": [float(max(s, n / z)) for s, n, z in zip(spacing, needed, size)]}


def paper_plan(spacing: Sequence[float], size: Sequence[int]) -> dict:
    """The paper's rule as a plan: crop centred on the mask box's centre (anchor centre, offset 0).

    It is fitted to nothing, so ``fits`` is ``None`` (unknown) and no size is needed.
    """
    axes = [{"anchor": "centre", "fraction": 0.5, "offset_mm": 0.0} for _ in range(3)]
    return {"version": PLAN_VERSION, "rule": "paper", "axes": axes,
            "spacing": [float(s) for s in spacing], "size": [int(s) for s in size],
            "margin_mm": 0.0, "n_cases": 0, "fits": None}


def _fit_axis(m_lo: np.ndarray, m_hi: np.ndarray, l_lo: np.ndarray, l_hi: np.ndarray,
              fractions: Iterable[float], prefer_tol_mm: float) -> dict:
    """Minimax fit along one axis: for each anchor fraction f, the offset o that minimises the
    half-width needed to hold every training labels' box, ``max_i max(l_hi_i - c_i, c_i - l_lo_i)``."""
    ext = m_hi - m_lo
    cands = []
    for f in fractions:
        a = m_lo + f * ext
        u, v = l_hi - a, l_lo - a  # labels' box relative to the anchor
        offset = (u.max() + v.min()) / 2.0
        half = (u.max() - v.min()) / 2.0
        centre_err = (l_lo + l_hi) / 2.0 - (a + offset)
        cands.append({"fraction": float(f), "offset_mm": float(offset), "half_needed_mm": float(half),
                      "centre_err_max_mm": float(np.abs(centre_err).max()),
                      "centre_err_sd_mm": float(centre_err.std())})
    best = min(c["half_needed_mm"] for c in cands)
    # prefer a named anchor (centre, low, high) when it is nearly as good as the best fraction
    for f in NAMED_ANCHORS.values():
        for c in cands:
            if abs(c["fraction"] - f) < 1e-9 and c["half_needed_mm"] <= best + prefer_tol_mm:
                return {"anchor": _anchor_name(f), **c}
    c = min(cands, key=lambda c: (c["half_needed_mm"], abs(c["fraction"] - 0.5)))
    return {"anchor": _anchor_name(c["fraction"]), **c}


def interval_coverage(lo: np.ndarray, hi: np.ndarray, c: np.ndarray, half: float) -> np.ndarray:
    """Fraction of each interval ``[lo, hi]`` inside the window ``[c - half, c + half]`` (broadcast);
    a zero-length interval counts 1 inside, 0 outside."""
    length = hi - lo
    inside = np.clip(np.minimum(hi, c + half) - np.maximum(lo, c - half), 0.0, None)
    point = ((lo >= c - half) & (lo <= c + half)).astype(float)
    return np.where(length > 1e-9, inside / np.where(length > 1e-9, length, 1.0), point)


def _fit_axis_coverage(m_lo: np.ndarray, m_hi: np.ndarray, case_of: np.ndarray, s_lo: np.ndarray,
                       s_hi: np.ndarray, half: float, fractions: Iterable[float], objective: str,
                       prefer_tol: float = 0.01, step_mm: float = 1.0) -> dict:
    """Fit along one axis whose crop cannot hold every training structure: for each anchor fraction,
    the offset (``step_mm`` grid) that maximises the worst (``objective="worst"``, ties broken by the
    mean) or mean (``"mean"``) 1-D coverage of the structures' intervals over the training cases."""
    ext = m_hi - m_lo
    cands = []
    for f in fractions:
        a = (m_lo + f * ext)[case_of]
        lo, hi = s_lo - a, s_hi - a
        offs = np.arange(lo.min() - half, hi.max() + half + step_mm, step_mm)
        cov = interval_coverage(lo[None, :], hi[None, :], offs[:, None], half)
        worst, mean = cov.min(1), cov.mean(1)
        key = worst + 1e-3 * mean if objective == "worst" else mean + 1e-3 * worst
        j = int(np.argmax(key))
        cands.append({"fraction": float(f), "offset_mm": float(offs[j]), "score": float(key[j]),
                      "train_worst_coverage": float(worst[j]), "train_mean_coverage": float(mean[j])})
    best = max(c["score"] for c in cands)
    for f in NAMED_ANCHORS.values():
        for c in cands:
            if abs(c["fraction"] - f) < 1e-9 and c["score"] >= best - prefer_tol:
                return {"anchor": _anchor_name(f), **c}
    c = max(cands, key=lambda c: (c["score"], -abs(c["fraction"] - 0.5)))
    return {"anchor": _anchor_name(c["fraction"]), **c}


def fit_crop_plan(mask_boxes: Sequence[Any], label_boxes: Sequence[Any], spacing: Sequence[float],
                  size: Sequence[int], margin_mm: float = 10.0,
                  fractions: Iterable[float] = DEFAULT_FRACTIONS, prefer_tol_mm: float = 2.0,
                  multiple: int = 16, structure_boxes: Sequence[Mapping[Any, Any]] | None = None,
                  objective: str = "worst") -> dict:
    """Fit a crop plan to training cases.

    Args:
        mask_boxes: per case, the global mask's box (mm along the crop axes).
        label_boxes: per case, the box of the union of its labelled structures (same axes).
        spacing, size: the preset's model grid (mm per voxel, voxels per axis).
        margin_mm: added on each side to the half-width needed on the training cases.
        fractions: anchor fractions of the mask box tried per axis (0 low edge ... 1 high edge).
        prefer_tol_mm: a named anchor (centre, then low, then high) is chosen over a better
            fraction if its needed half-width is within this tolerance of the best.
        multiple: ``needed_size`` is rounded up to a multiple of this many voxels.
        structure_boxes: optional, per case a mapping structure -> box. Used on the axes where the
            preset's crop cannot hold the needed size: there the offset is chosen to maximise the
            training structures' coverage along that axis (``objective``) instead of centring the
            labels' box, since centring a too-small crop on the union box can cut every structure.
        objective: ``"worst"`` (maximise the worst structure's coverage, ties by the mean) or
            ``"mean"`` (maximise the mean coverage), for those axes.

    Returns:
        A JSON-serialisable plan: ``axes`` (per axis ``anchor``, ``fraction``, ``offset_mm``,
        ``half_needed_mm`` before the margin, training centre errors), ``needed_mm`` and
        ``needed_size`` (per axis, with the margin), ``crop_mm`` (size x spacing), ``fits`` (the
        preset's crop holds the needed size on every axis) and ``coarse_spacing_mm`` (the spacing at
        which ``size`` voxels would span ``needed_mm``).

    Raises:
        ValueError: no cases, different numbers of mask and label boxes, or malformed boxes.
    """
    if len(mask_boxes) == 0:
        raise ValueError("no training cases to fit a crop plan")
    if len(mask_boxes) != len(label_boxes):
        raise ValueError(f"{len(mask_boxes)} mask boxes but {len(label_boxes)} label boxes")
    if margin_mm < 0:
        raise ValueError("margin_mm must be >= 0")
    m = np.stack([check_box(b, f"mask box {i}") for i, b in enumerate(mask_boxes)])
    lab = np.stack([check_box(b, f"label box {i}") for i, b in enumerate(label_boxes)])
    spacing_a = np.asarray(spacing, dtype=float).reshape(3)
    size_a = np.asarray(size, dtype=int).reshape(3)
    fractions = [float(f) for f in fractions]
    axes_rec = [_fit_axis(m[:, 0, k], m[:, 1, k], lab[:, 0, k], lab[:, 1, k], fractions, prefer_tol_mm)
                for k in range(3)]
    if objective not in ("worst", "mean"):
        raise ValueError("objective must be 'worst' or 'mean'")
    for rec in axes_rec:
        rec["objective"] = "hold_all"
    crop_half = spacing_a * size_a / 2.0
    if structure_boxes is not None:
        if len(structure_boxes) != len(mask_boxes):
            raise ValueError(f"{len(mask_boxes)} mask boxes but {len(structure_boxes)} structure box sets")
        flat = [(i, check_box(b, f"structure box {i}:{k}")) for i, sb in enumerate(structure_boxes)
                for k, b in sb.items()]
        if not flat:
            raise ValueError("structure_boxes holds no structure")
        case_of = np.array([i for i, _ in flat])
        sb_arr = np.stack([b for _, b in flat])
        for k in range(3):
            if axes_rec[k]["half_needed_mm"] + margin_mm > crop_half[k] + 1e-9:
                rec = _fit_axis_coverage(m[:, 0, k], m[:, 1, k], case_of, sb_arr[:, 0, k], sb_arr[:, 1, k],
                                         float(crop_half[k]), fractions, objective)
                axes_rec[k] = {**rec, "objective": objective, "half_needed_mm": axes_rec[k]["half_needed_mm"],
                               "hold_all_fraction": axes_rec[k]["fraction"],
                               "hold_all_offset_mm": axes_rec[k]["offset_mm"]}
    plan = {"version": PLAN_VERSION, "rule": "fitted", "axes": axes_rec,
            "spacing": spacing_a.tolist(), "size": size_a.tolist(), "margin_mm": float(margin_mm),
            "n_cases": int(len(mask_boxes))}
    plan.update(_size_fields(axes_rec, spacing_a, size_a, float(margin_mm), multiple))
    return plan


def crop_center(plan: Mapping, mask_box: Any) -> np.ndarray:
    """Crop centre (mm along the crop axes) that ``plan`` gives for a scan whose mask box is ``mask_box``."""
    b = check_box(mask_box, "mask box")
    f = np.array([a["fraction"] for a in plan["axes"]], dtype=float)
    o = np.array([a["offset_mm"] for a in plan["axes"]], dtype=float)
    return b[0] + f * (b[1] - b[0]) + o


def crop_box(plan: Mapping, mask_box: Any, size: Sequence[int] | None = None,
             spacing: Sequence[float] | None = None) -> np.ndarray:
    """The crop's box (mm along the crop axes): ``size`` voxels of ``spacing`` (the plan's if ``None``)
    centred at :func:`crop_center`. Each voxel spans ``spacing`` (nearest-neighbour extent)."""
    c = crop_center(plan, mask_box)
    half = np.asarray(spacing if spacing is not None else plan["spacing"], dtype=float) * \
        np.asarray(size if size is not None else plan["size"], dtype=float) / 2.0
    return np.stack([c - half, c + half])
