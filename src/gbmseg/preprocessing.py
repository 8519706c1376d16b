"""Preprocessing: resample and crop onto the *model grid*, normalise, cache.

The model grid of a case is a fixed-size, fixed-spacing box with identity direction (LPS axes)
centred on the centre of the global mask's bounding box. One SimpleITK resampling puts image
(linear), mask and label (nearest) onto it, which does resampling, reorientation and crop/pad in
one step. The crop never looks at the label. The grid (origin, spacing, size) is all that is
needed to map a prediction back: :func:`to_original_geometry` resamples it onto the input image.

Intensities: CT is clipped to a HU window and scaled to [0, 1]; MR (any other modality) is
scaled so that the given percentiles of the crop map to 0 and 1, then clipped.

Cache layout (``WORK/gbmseg_preprocessed/<preset>/``)::

    plan.json          preprocessing settings, mask record, labels, modality
    <case>.npz         image (1, Z, Y, X) float16, mask (Z, Y, X) uint8, label (Z, Y, X) uint8
    <case>.json        model-grid origin/spacing/size/direction and source files

Example:
    >>> grid = model_grid(center=(0, 0, 0), spacing=(3, 3, 3), size=(64, 64, 64))
    >>> grid.GetSize()
    (64, 64, 64)
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .dataset import Dataset
from .errors import GbmsegError
from .io import atomic_path, read_image, same_geometry, to_array, write_text
from .masks import read_mask_record

CT_OUTSIDE = -1024.0


def model_grid(center, spacing, size) -> sitk.Image:
    """An empty reference image: ``size`` voxels of ``spacing`` mm, identity direction, centred at ``center``."""
    spacing = np.asarray(spacing, dtype=float)
    size = np.asarray(size, dtype=int)
    origin = np.asarray(center, dtype=float) - spacing * (size - 1) / 2.0
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def grid_record(grid: sitk.Image) -> dict:
    return {"origin": list(grid.GetOrigin()), "spacing": list(grid.GetSpacing()),
            "size": list(grid.GetSize()), "direction": list(grid.GetDirection())}


def grid_from_record(rec: dict) -> sitk.Image:
    grid = sitk.Image([int(s) for s in rec["size"]], sitk.sitkUInt8)
    grid.SetSpacing(rec["spacing"])
    grid.SetOrigin(rec["origin"])
    grid.SetDirection(rec["direction"])
    return grid


def mask_center(mask: sitk.Image, path: str = "mask") -> np.ndarray:
    """World coordinates (mm) of the centre of the mask's bounding box."""
    arr = to_array(mask)
    idx = np.argwhere(arr > 0)
    if idx.size == 0:
        raise GbmsegError(f"{path}: global mask is empty; cannot place the crop")
    centre_zyx = (idx.min(0) + idx.max(0)) / 2.0
    return np.array(mask.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1].tolist()))


def resample(image: sitk.Image, grid: sitk.Image, nearest: bool, default: float = 0.0) -> np.ndarray:
    """Voxel array ``[z, y, x]`` of ``image`` resampled onto ``grid``."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out_type = image.GetPixelID() if nearest else sitk.sitkFloat32
    res = sitk.Resample(image, grid, sitk.Transform(), interp, float(default), out_type)
    return to_array(res)


def normalize(arr: np.ndarray, modality: str, prep: dict) -> np.ndarray:
    """CT: HU window to [0, 1]. Other modalities: percentile scaling to [0, 1]."""
    arr = arr.astype(np.float32)
    if modality == "CT":
        lo, hi = prep["ct_window"]
    else:
        lo, hi = np.percentile(arr, prep["mr_percentiles"])
        hi = max(hi, lo + 1e-6)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def preprocess_image(image: sitk.Image, mask: sitk.Image, prep: dict, modality: str,
                     label: sitk.Image | None = None, name: str = "image") -> dict:
    """Put one case onto its model grid.

    Returns ``{"image": (1, Z, Y, X) float32, "mask": uint8, "label": uint8 or None, "grid": record}``.
    """
    problem = same_geometry(image, mask)
    if problem:
        raise GbmsegError(f"{name}: global mask geometry does not match the image: {problem}")
    grid = model_grid(mask_center(mask, name), prep["spacing"], prep["size"])
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


# -- dataset cache ----------------------------------------------------------------------------
def cache_dir(dataset: Dataset, preset_name: str) -> Path:
    return dataset.work / "gbmseg_preprocessed" / preset_name


def _one_case(args: tuple) -> str:
    case, image_path, mask_path, label_path, prep, modality, out_dir = args
    image = read_image(image_path)
    mask = read_image(mask_path)
    label = read_image(label_path)
    problem = same_geometry(image, label)
    if problem:
        raise GbmsegError(f"{label_path}: geometry does not match the image: {problem}")
    data = preprocess_image(image, mask, prep, modality, label=label, name=str(mask_path))
    if not data["label"].any():
        raise GbmsegError(f"{label_path}: no labelled voxel inside the model-grid crop "
                          f"(crop {prep['size']} at {prep['spacing']} mm around the global mask)")
    with atomic_path(out_dir / f"{case}.npz") as tmp:
        np.savez_compressed(tmp, image=data["image"].astype(np.float16), mask=data["mask"], label=data["label"])
    write_text(json.dumps({"case": case, "grid": data["grid"], "image": str(image_path),
                           "mask": str(mask_path), "label": str(label_path)}, indent=1),
               out_dir / f"{case}.json")
    return case


def preprocess_dataset(dataset: Dataset, config: dict, workers: int = 1, progress: bool = True,
                       validate: bool = True) -> Path:
    """Preprocess every case of ``dataset`` into the cache; cases already cached with the same plan are skipped.

    Needs global masks (``gbmseg masks``). Returns the cache folder.
    """
    mask_record = read_mask_record(dataset)
    prep = config["preprocessing"]
    out_dir = cache_dir(dataset, config["name"])
    plan = {"preset": config["name"], "preprocessing": prep, "masks": mask_record,
            "modality": dataset.modality, "labels": dataset.labels, "dataset": str(dataset.root),
            "channels": dataset.channels}
    plan_path = out_dir / "plan.json"
    same_plan = plan_path.exists() and json.loads(plan_path.read_text()) == plan
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
    write_text(json.dumps(plan, indent=2), plan_path)
    jobs = [(c, dataset.image_path(c), dataset.mask_path(c), dataset.label_path(c), prep,
             dataset.modality, out_dir) for c in todo]
    desc = f"preprocess ({config['name']})"
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(tqdm(pool.map(_one_case, jobs), total=len(jobs), desc=desc, disable=not progress))
    else:
        for job in tqdm(jobs, desc=desc, disable=not progress):
            _one_case(job)
    return out_dir


def load_plan(cache: Path) -> dict:
    path = Path(cache) / "plan.json"
    if not path.exists():
        raise GbmsegError(f"{path}: not found; run 'gbmseg preprocess' first")
    return json.loads(path.read_text())


def load_case(cache: Path, case: str) -> dict:
    """Arrays of a cached case: ``image`` (1, Z, Y, X) float32, ``mask`` and ``label`` uint8."""
    path = Path(cache) / f"{case}.npz"
    if not path.exists():
        raise GbmsegError(f"{path}: case '{case}' is not preprocessed; run 'gbmseg preprocess'")
    with np.load(path) as z:
        return {"image": z["image"].astype(np.float32), "mask": z["mask"], "label": z["label"]}
