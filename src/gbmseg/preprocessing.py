"""Preprocessing: resample and crop onto the *model grid*, normalise, cache.

The model grid of a case is a fixed-size, fixed-spacing box centred on the centre of the global
mask's bounding box. Its axes depend on ``preprocessing.frame``:

- ``"scan"`` (default): identity direction, the scanner's LPS axes;
- ``"template"``: the *standard frame*, the template's axes carried into the scan by the rotation
  part of the registration transform (mask method ``register``), so that every crop sees the
  anatomy in the template's orientation (a tilted head is cropped upright). Scaling is left out:
  voxels stay ``spacing`` mm, and the mask still tells the network how big the anatomy is.

One SimpleITK resampling puts image (linear), mask and label (nearest) onto the grid, which does
resampling, reorientation and crop/pad in one step. The crop never looks at the label. The grid
(origin, spacing, size, direction) is all that is needed to map a prediction back:
:func:`to_original_geometry` resamples it onto the input image.

Intensities: CT is clipped to a HU window and scaled to [0, 1]; MR (any other modality) is
scaled so that the given percentiles of the crop map to 0 and 1, then clipped.

Cache layout (``WORK/gbmseg_preprocessed/<preset>_<key>/``; ``key`` hashes the preprocessing
settings and the mask record, so other settings or other masks never share a cache)::

    plan.json          cache key, preprocessing settings, mask record, labels, modality
    <case>.npz         image (1, Z, Y, X) float16, mask (Z, Y, X) uint8, label (Z, Y, X) uint8
    <case>.json        model-grid origin/spacing/size/direction and source files

Example:
    >>> grid = model_grid(center=(0, 0, 0), spacing=(3, 3, 3), size=(64, 64, 64))
    >>> grid.GetSize()
    (64, 64, 64)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .config import Config, PreprocessingConfig, canonical_hash, channels_for_mode
from .dataset import Dataset
from .errors import GbmsegError
from .io import atomic_path, read_image, read_json, same_geometry, to_array, write_json
from .parallel import parallel_map

CT_OUTSIDE = -1024.0


FRAMES = ("scan", "template")


def model_grid(center, spacing, size, direction=None) -> sitk.Image:
    """An empty reference image: ``size`` voxels of ``spacing`` mm centred at ``center``.

    ``direction`` is a 3x3 rotation whose columns are the grid's axes in world coordinates
    (identity if ``None``).
    """
    spacing = np.asarray(spacing, dtype=float)
    size = np.asarray(size, dtype=int)
    rot = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    origin = np.asarray(center, dtype=float) - rot @ (spacing * (size - 1) / 2.0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(rot.ravel().tolist())
    return grid


def standard_axes(transform: sitk.Transform, point) -> np.ndarray:
    """The template's axes in scan coordinates: the rotation nearest to the local linear part of
    ``transform`` (template -> scan points) at the scan ``point``.

    The Jacobian is taken by central differences (any transform type, composites too) and its
    rotation part by polar decomposition, so scaling and shear are dropped.
    """
    try:
        x0 = np.array(transform.GetInverse().TransformPoint([float(v) for v in point]))
    except RuntimeError as exc:
        raise GbmsegError(f"registration transform is not invertible ({str(exc).strip().splitlines()[-1]})") from None
    h = 10.0  # mm
    jac = np.stack([(np.array(transform.TransformPoint((x0 + h * e).tolist()))
                     - np.array(transform.TransformPoint((x0 - h * e).tolist()))) / (2 * h) for e in np.eye(3)], 1)
    u, _, vt = np.linalg.svd(jac)
    rot = u @ vt
    if np.linalg.det(rot) < 0:  # a reflection is not an orientation
        u[:, -1] *= -1
        rot = u @ vt
    return rot


def mask_center(mask: sitk.Image, path: str = "mask", axes=None) -> np.ndarray:
    """World coordinates (mm) of the centre of the mask's bounding box, the box aligned with ``axes``
    (3x3, columns are axis directions; the mask's own voxel axes if ``None``)."""
    arr = to_array(mask)
    idx = np.argwhere(arr > 0)
    if idx.size == 0:
        raise GbmsegError(f"{path}: global mask is empty; cannot place the crop")
    if axes is None:
        centre_zyx = (idx.min(0) + idx.max(0)) / 2.0
        return np.array(mask.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1].tolist()))
    direction = np.reshape(mask.GetDirection(), (3, 3))
    world = np.asarray(mask.GetOrigin()) + (idx[:, ::-1] * np.asarray(mask.GetSpacing())) @ direction.T
    rot = np.asarray(axes, dtype=float).reshape(3, 3)
    local = world @ rot  # coordinates along the axes
    return rot @ ((local.min(0) + local.max(0)) / 2.0)


def grid_record(grid: sitk.Image) -> dict:
    return {"origin": list(grid.GetOrigin()), "spacing": list(grid.GetSpacing()),
            "size": list(grid.GetSize()), "direction": list(grid.GetDirection())}


def grid_from_record(rec: dict) -> sitk.Image:
    grid = sitk.Image([int(s) for s in rec["size"]], sitk.sitkUInt8)
    grid.SetSpacing(rec["spacing"])
    grid.SetOrigin(rec["origin"])
    grid.SetDirection(rec["direction"])
    return grid


def resample(image: sitk.Image, grid: sitk.Image, nearest: bool, default: float = 0.0) -> np.ndarray:
    """Voxel array ``[z, y, x]`` of ``image`` resampled onto ``grid``."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out_type = image.GetPixelID() if nearest else sitk.sitkFloat32
    res = sitk.Resample(image, grid, sitk.Transform(), interp, float(default), out_type)
    return to_array(res)


def normalize(arr: np.ndarray, modality: str, prep: PreprocessingConfig) -> np.ndarray:
    """CT: HU window to [0, 1]. Other modalities: percentile scaling to [0, 1]."""
    arr = arr.astype(np.float32)
    if modality == "CT":
        lo, hi = prep.ct_window
    else:
        lo, hi = np.percentile(arr, prep.mr_percentiles)
        hi = max(hi, lo + 1e-6)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def frame_of(prep: PreprocessingConfig) -> str:
    """``preprocessing.frame``, checked."""
    frame = prep.frame
    if frame not in FRAMES:
        raise GbmsegError(f"preprocessing.frame '{frame}': choose 'scan' or 'template'")
    return frame


def preprocess_image(image: sitk.Image, mask: sitk.Image, prep: PreprocessingConfig, modality: str,
                     label: sitk.Image | None = None, name: str = "image",
                     transform: sitk.Transform | None = None) -> dict:
    """Put one case onto its model grid.

    ``transform`` (template -> scan points, from mask method ``register``) is needed when
    ``prep.frame`` is ``"template"`` and ignored otherwise.

    Returns ``{"image": (1, Z, Y, X) float32, "mask": uint8, "label": uint8 or None, "grid": record}``.
    """
    problem = same_geometry(image, mask)
    if problem:
        raise GbmsegError(f"{name}: global mask geometry does not match the image: {problem}")
    axes = None
    if frame_of(prep) == "template":
        if transform is None:
            raise GbmsegError(f"{name}: preprocessing.frame 'template' needs the scan's registration to the "
                              "template (mask method 'register')")
        axes = standard_axes(transform, mask_center(mask, name))
    grid = model_grid(mask_center(mask, name, axes), prep.spacing, prep.size, axes)
    outside = CT_OUTSIDE if modality == "CT" else float(np.min(to_array(image)))
    img = normalize(resample(image, grid, nearest=False, default=outside), modality, prep)
    out = {"image": img[None], "mask": (resample(mask, grid, nearest=True) > 0).astype(np.uint8),
           "label": None, "grid": grid_record(grid)}
    if label is not None:
        out["label"] = resample(label, grid, nearest=True).astype(np.uint8)
    return out


def to_original_geometry(pred: np.ndarray, grid: dict, reference: sitk.Image) -> sitk.Image:
    """Map a prediction on the model grid back onto ``reference``'s grid (uint8 label map).

    ``pred`` is either class scores/probabilities ``(C, Z, Y, X)`` (float) or a label array
    ``(Z, Y, X)`` (integer, turned into one-hot). Each class is resampled linearly and the argmax
    taken, as nnU-Net does; outside the model grid is background.
    """
    if pred.ndim == 3:
        n = int(pred.max()) + 1
        pred = (pred[None] == np.arange(n)[:, None, None, None]).astype(np.float32)
    g = grid_from_record(grid)
    best = label = None
    for c in range(pred.shape[0]):
        channel = sitk.GetImageFromArray(pred[c].astype(np.float32))
        channel.CopyInformation(g)
        outside = 1.0 if c == 0 else 0.0
        res = to_array(sitk.Resample(channel, reference, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32))
        if best is None:
            best, label = res, np.zeros(res.shape, np.uint8)
        else:
            better = res > best
            best = np.where(better, res, best)
            label[better] = c
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(reference)
    return out


def stack_inputs(case: dict, mode: str) -> np.ndarray:
    """Network input ``(C, Z, Y, X)`` of a preprocessed case for ``mode``."""
    parts = {"image": case["image"], "mask": case["mask"][None].astype(np.float32)}
    return np.concatenate([parts[c] for c in channels_for_mode(mode)], axis=0)


# -- dataset cache ----------------------------------------------------------------------------
def cache_key(prep: PreprocessingConfig, mask_record: dict) -> str:
    """What made a cache: sha256 (12 hex digits) of the canonical JSON of the preprocessing
    settings and the mask record (method, parameters, modality, a mask model's hash)."""
    return canonical_hash({"preprocessing": dataclasses.asdict(prep), "masks": mask_record})[:12]


def _one_case(args: tuple) -> str:
    case, image_path, mask_path, label_path, tfm_path, prep, modality, out_dir = args
    image = read_image(image_path)
    mask = read_image(mask_path)
    label = read_image(label_path)
    problem = same_geometry(image, label)
    if problem:
        raise GbmsegError(f"{label_path}: geometry does not match the image: {problem}")
    transform = None
    if frame_of(prep) == "template":
        if not tfm_path.exists():
            raise GbmsegError(f"{tfm_path}: not found; preprocessing.frame 'template' needs masks made with "
                              "'gbmseg masks --method register'")
        transform = sitk.ReadTransform(str(tfm_path))
    data = preprocess_image(image, mask, prep, modality, label=label, name=str(mask_path), transform=transform)
    if not data["label"].any():
        raise GbmsegError(f"{label_path}: no labelled voxel inside the model-grid crop "
                          f"(crop {prep.size} at {prep.spacing} mm around the global mask)")
    with atomic_path(out_dir / f"{case}.npz") as tmp:
        np.savez_compressed(tmp, image=data["image"].astype(np.float16), mask=data["mask"], label=data["label"])
    write_json({"case": case, "grid": data["grid"], "image": str(image_path),
                "mask": str(mask_path), "label": str(label_path)}, out_dir / f"{case}.json")
    return case


def preprocess_dataset(dataset: Dataset, config: Config, workers: int = 1, progress: bool = True,
                       validate: bool = True) -> Path:
    """Preprocess every case of ``dataset`` into the cache; cases already cached with the same plan are skipped.

    Needs global masks (``gbmseg masks``). Returns the cache folder.
    """
    mask_record = dataset.read_mask_record()
    prep = config.preprocessing
    if frame_of(prep) == "template" and mask_record["method"] != "register":
        raise GbmsegError(f"{dataset.mask_record_path}: preprocessing.frame 'template' needs masks made "
                          f"with --method register (these are '{mask_record['method']}')")
    key = cache_key(prep, mask_record)
    out_dir = dataset.cache_dir(config.name, key)
    plan = {"preset": config.name, "key": key, "preprocessing": dataclasses.asdict(prep), "masks": mask_record,
            "modality": dataset.modality, "labels": dataset.labels, "dataset": str(dataset.root),
            "channels": dataset.channels}
    plan_path = out_dir / "plan.json"
    same_plan = plan_path.exists() and read_json(plan_path) == plan
    todo = [c for c in dataset.cases if not same_plan or not (out_dir / f"{c}.npz").exists()
            or not (out_dir / f"{c}.json").exists()]
    if validate and todo:  # checked before anything is written; cached cases were checked when cached
        dataset.validate(todo, progress=progress)
    for c in todo:
        if not dataset.mask_path(c).exists():
            raise GbmsegError(f"{dataset.mask_path(c)}: global mask missing; run 'gbmseg masks' again")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not same_plan:
        for old in out_dir.glob("*.npz"):
            old.unlink()
    write_json(plan, plan_path)
    jobs = [(c, dataset.image_path(c), dataset.mask_path(c), dataset.label_path(c), dataset.transform_path(c),
             prep, dataset.modality, out_dir) for c in todo]
    parallel_map(_one_case, jobs, workers, desc=f"preprocess ({config.name})", progress=progress)
    return out_dir


def load_plan(cache: Path) -> dict:
    path = Path(cache) / "plan.json"
    if not path.exists():
        raise GbmsegError(f"{path}: not found; run 'gbmseg preprocess' first")
    return read_json(path)


def load_case(cache: Path, case: str) -> dict:
    """Arrays of a cached case: ``image`` (1, Z, Y, X) float32, ``mask`` and ``label`` uint8."""
    path = Path(cache) / f"{case}.npz"
    if not path.exists():
        raise GbmsegError(f"{path}: case '{case}' is not preprocessed; run 'gbmseg preprocess'")
    with np.load(path) as z:
        return {"image": z["image"].astype(np.float32), "mask": z["mask"], "label": z["label"]}
