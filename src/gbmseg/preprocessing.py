"""Preprocessing: resample and crop onto the *model grid*, normalise, cache.

The model grid of a case is a box of ``spacing`` mm voxels placed from the global mask alone.
``preprocessing.crop`` says how:

- ``"mask_center"`` (the paper's rule): ``size`` voxels centred on the centre of the mask's box;
- ``"planned"``: placed and sized by a *crop plan* fitted to the labelled training cases
  (:mod:`gbmseg.crop_plan`): where the structures sit relative to the mask's box, and how large a
  box holds every training structure with ``margin_mm`` to spare (at least ``size``, at most
  ``max_size`` voxels). On
  a head-only scan this is close to the paper's rule; on a head-and-neck scan that shows the body
  down to the shoulders it follows the head, where the paper's rule would follow the shoulders.
  A grid larger than ``size`` is trained in patches of ``size`` and predicted with a sliding
  window (:mod:`gbmseg.patches`).

Preprocessing records, per case and structure, the fraction of the label inside the grid
(``coverage``): a structure the grid cuts cannot be learned or predicted.

The grid's axes depend on ``preprocessing.frame``:

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

    plan.json          cache key, preprocessing settings, mask record, crop plan, labels, modality
    <case>.npz         image (1, Z, Y, X) float16, mask (Z, Y, X) uint8, label (Z, Y, X) uint8
    <case>.json        model-grid origin/spacing/size/direction, label coverage, source files

Example:
    >>> grid = model_grid(center=(0, 0, 0), spacing=(3, 3, 3), size=(64, 64, 64))
    >>> grid.GetSize()
    (64, 64, 64)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import crop_plan as cp
from .config import Config, PreprocessingConfig, canonical_hash
from .dataset import Dataset
from .errors import GbmsegError
from .io import atomic_path, read_image, read_json, same_geometry, to_array, write_json
from .morphology import fill_fraction, mask_volume_ml
from .registration import guess_modality
from .parallel import parallel_map

CT_OUTSIDE = -1024.0


FRAMES = ("scan", "template")
CROPS = ("mask_center", "planned")
LOW_COVERAGE = 0.95  # structures less inside their grid than this are named


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
                     transform: sitk.Transform | None = None, plan: dict | None = None) -> dict:
    """Put one case onto its model grid.

    ``plan`` is the crop plan (needed when ``prep.crop`` is ``"planned"``).

    ``transform`` (template -> scan points, from mask method ``register``) is needed when
    ``prep.frame`` is ``"template"`` and ignored otherwise.

    Returns ``{"image": (1, Z, Y, X) float32, "mask": uint8, "label": uint8 or None, "grid": record}``.
    """
    problem = same_geometry(image, mask)
    if problem:
        raise GbmsegError(f"{name}: global mask geometry does not match the image: {problem}")
    axes = crop_axes(mask, prep, transform, name)
    grid = place_grid(mask, prep, plan, axes, name)
    outside = CT_OUTSIDE if modality == "CT" else float(np.min(to_array(image)))
    img = normalize(resample(image, grid, nearest=False, default=outside), modality, prep)
    out = {"image": img[None], "mask": (resample(mask, grid, nearest=True) > 0).astype(np.uint8),
           "label": None, "grid": grid_record(grid)}
    if label is not None:
        out["label"] = resample(label, grid, nearest=True).astype(np.uint8)
        out["coverage"] = label_coverage(label, grid)
    return out


def crop_axes(mask: sitk.Image, prep: PreprocessingConfig, transform: sitk.Transform | None,
              name: str = "image") -> np.ndarray | None:
    """The grid's axes: ``None`` (scanner axes) or the template's standard frame in this scan."""
    if frame_of(prep) != "template":
        return None
    if transform is None:
        raise GbmsegError(f"{name}: preprocessing.frame 'template' needs the scan's registration to the "
                          "template (mask method 'register')")
    return standard_axes(transform, mask_center(mask, name))


def case_boxes(mask: sitk.Image, label: sitk.Image | None, axes=None, name: str = "image") -> dict:
    """Boxes (mm along the grid axes) of the mask, of all labels and of each structure (see
    :func:`gbmseg.crop_plan.case_boxes`)."""
    try:
        return cp.case_boxes(to_array(mask), None if label is None else to_array(label), mask.GetOrigin(),
                             mask.GetSpacing(), np.reshape(mask.GetDirection(), (3, 3)), axes)
    except ValueError as exc:
        raise GbmsegError(f"{name}: {exc}") from None


def place_grid(mask: sitk.Image, prep: PreprocessingConfig, plan: dict | None, axes=None,
               name: str = "image") -> sitk.Image:
    """The model grid of a scan, from its global mask alone (and the crop plan, if planned)."""
    if prep.crop not in CROPS:
        raise GbmsegError(f"preprocessing.crop '{prep.crop}': choose {' or '.join(CROPS)}")
    if prep.crop == "mask_center":
        return model_grid(mask_center(mask, name, axes), prep.spacing, prep.size, axes)
    if plan is None:
        raise GbmsegError(f"{name}: preprocessing.crop 'planned' needs a crop plan (made by preprocessing)")
    box = case_boxes(mask, None, axes, name)["mask"]
    rot = np.eye(3) if axes is None else np.asarray(axes, dtype=float).reshape(3, 3)
    return model_grid(rot @ cp.crop_center(plan, box), grid_spacing(prep, plan), plan["grid_size"], axes)


def label_coverage(label: sitk.Image, grid: sitk.Image) -> dict[str, float]:
    """Per label value (as a string), the fraction of its voxels whose centres fall inside ``grid``."""
    arr = to_array(label)
    idx = np.argwhere(arr > 0)
    if not len(idx):
        return {}
    rot = np.reshape(grid.GetDirection(), (3, 3))
    local = cp.project(cp.voxel_world(idx, label.GetOrigin(), label.GetSpacing(),
                                      np.reshape(label.GetDirection(), (3, 3))), rot)
    spacing = np.asarray(grid.GetSpacing())
    lo = np.asarray(grid.GetOrigin()) @ rot - spacing / 2  # the grid's box along its axes (voxel edges)
    box = np.stack([lo, lo + spacing * np.asarray(grid.GetSize())])
    values = arr[tuple(idx.T)]
    return {str(int(v)): round(cp.fraction_inside(local[values == v], box), 4) for v in np.unique(values)}


def fit_plan(dataset: Dataset, prep: PreprocessingConfig, cases: list[str], progress: bool = True,
             multiple: int = 16) -> dict:
    """Fit the crop plan to ``cases`` (their masks and labels; transforms in the standard frame).

    The grid is at least the preset's ``size`` (so a mask-based model still sees the whole head, as
    with the paper's rule) and holds every structure of every one of these cases with ``margin_mm`` to spare, rounded
    up to a ``multiple`` of voxels (the network's ``2 ** depth``), and at most ``max_size`` voxels per axis (where that cap cuts,
    the centre is chosen to keep as much of each structure as the training cases allow).
    """
    if not cases:
        raise GbmsegError("no labelled case to fit a crop plan to")
    boxes = parallel_map(_case_boxes, [(dataset.mask_path(c), dataset.label_path(c), dataset.transform_path(c), prep)
                                       for c in cases], 1, desc="crop plan", progress=progress)
    cap = prep.max_size or [4096, 4096, 4096]
    for b, c in zip(boxes, cases):
        if b["labels"] is None:
            raise GbmsegError(f"{dataset.label_path(c)}: no labelled voxel; cannot fit a crop plan")

    def fit(spacing):
        return cp.fit_crop_plan([b["mask"] for b in boxes], [b["labels"] for b in boxes], spacing, cap,
                                margin_mm=prep.margin_mm, structure_boxes=[b["structures"] for b in boxes],
                                multiple=multiple)

    plan = fit(prep.spacing)
    if prep.coarsen and any(n > m for n, m in zip(plan["needed_size"], cap)):
        plan = fit(coarsened_spacing(prep.spacing, plan["needed_mm"], cap))
    plan["grid_size"] = [int(min(max(n, s), m)) for n, s, m in zip(plan["needed_size"], prep.size, cap)]
    plan["cases"] = list(cases)
    return plan


def coarsened_spacing(spacing, needed_mm, max_size) -> list[float]:
    """``spacing`` times the one factor (rounded up to 0.25 mm steps) at which ``max_size`` voxels
    span ``needed_mm`` on every axis: a field of view that would not fit at the preset's voxels is
    kept whole at coarser ones.

    Example:
        >>> coarsened_spacing([4.0, 4.0, 4.0], [288.0, 256.0, 352.0], [64, 64, 64])
        [5.5, 5.5, 5.5]
    """
    factor = max(1.0, *(n / (m * s) for n, m, s in zip(needed_mm, max_size, spacing)))
    return [math.ceil(s * factor * 4 - 1e-9) / 4 for s in spacing]


def grid_spacing(prep: PreprocessingConfig, plan: dict | None) -> list[float]:
    """Voxel size (mm, x y z) of the model grid: the crop plan's (see ``preprocessing.coarsen``)
    for a planned crop, else the preset's."""
    return [float(s) for s in plan["spacing"]] if prep.crop == "planned" and plan else list(prep.spacing)


def _case_boxes(args: tuple) -> dict:
    mask_path, label_path, tfm_path, prep = args
    mask = read_image(mask_path)
    transform = None
    if frame_of(prep) == "template":
        transform = _read_transform(tfm_path)
    return case_boxes(mask, read_image(label_path), crop_axes(mask, prep, transform, str(mask_path)), str(mask_path))


def _read_transform(tfm_path: Path) -> sitk.Transform:
    if not tfm_path.exists():
        raise GbmsegError(f"{tfm_path}: not found; preprocessing.frame 'template' needs masks made with "
                          "'gbmseg masks --method register'")
    try:
        return sitk.ReadTransform(str(tfm_path))
    except RuntimeError as exc:
        reason = (str(exc).strip().splitlines() or ["unreadable"])[-1][:160]
        raise GbmsegError(f"{tfm_path}: corrupt or truncated transform ({reason}); make the masks again "
                          "('gbmseg masks --overwrite')") from None


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
def cache_key(prep: PreprocessingConfig, mask_record: dict, crop_plan: dict | None = None) -> str:
    """What made a cache: sha256 (12 hex digits) of the canonical JSON of the preprocessing
    settings, the mask record (method, parameters, modality, a mask model's hash) and the crop plan."""
    return canonical_hash({"preprocessing": dataclasses.asdict(prep), "masks": mask_record,
                           **({"crop_plan": crop_plan} if crop_plan is not None else {})})[:12]


def dataset_crop_plan(dataset: Dataset, config: Config, cases: list[str] | None = None,
                      progress: bool = True, validate: bool = True) -> dict | None:
    """The crop plan of ``cases`` (all cases if ``None``): fitted once, then read from
    ``WORK/gbmseg_preprocessed/crop_plans/<key>.json``. ``None`` unless ``prep.crop`` is ``"planned"``."""
    prep = config.preprocessing
    if prep.crop != "planned":
        return None
    cases = sorted(cases if cases is not None else dataset.cases)
    multiple = 2 ** config.network.depth
    key = canonical_hash({"preprocessing": dataclasses.asdict(prep), "masks": dataset.read_mask_record(),
                          "cases": cases, "multiple": multiple})[:12]
    path = dataset.work / "gbmseg_preprocessed" / "crop_plans" / f"{key}.json"
    if path.exists():
        return read_json(path)
    if validate:
        dataset.validate(cases, progress=progress)
    plan = fit_plan(dataset, prep, cases, progress=progress, multiple=multiple)
    write_json(plan, path)
    return plan


def _one_case(args: tuple) -> str:
    case, image_path, mask_path, label_path, tfm_path, prep, modality, out_dir, plan = args
    image = read_image(image_path)
    mask = read_image(mask_path)
    label = read_image(label_path)
    problem = same_geometry(image, label)
    if problem:
        raise GbmsegError(f"{label_path}: geometry does not match the image: {problem}")
    transform = _read_transform(tfm_path) if frame_of(prep) == "template" else None
    data = preprocess_image(image, mask, prep, modality, label=label, name=str(mask_path), transform=transform,
                            plan=plan)
    if not data["label"].any():
        raise GbmsegError(f"{label_path}: no labelled voxel inside the model-grid crop "
                          f"(crop {prep.size} at {prep.spacing} mm around the global mask)")
    with atomic_path(out_dir / f"{case}.npz") as tmp:
        np.savez_compressed(tmp, image=data["image"].astype(np.float16), mask=data["mask"], label=data["label"])
    write_json({"case": case, "grid": data["grid"], "coverage": data["coverage"], "image": str(image_path),
                "mask": str(mask_path), "label": str(label_path), "mask_volume_ml": round(mask_volume_ml(mask), 3),
                "mask_fill_fraction": fill_fraction(mask), "looks_like": guess_modality(image)},
               out_dir / f"{case}.json")
    return case


def preprocess_dataset(dataset: Dataset, config: Config, workers: int = 1, progress: bool = True,
                       validate: bool = True, plan_cases: list[str] | None = None) -> Path:
    """Preprocess every case of ``dataset`` into the cache; cases already cached with the same plan are skipped.

    Needs global masks (``gbmseg masks``). A planned crop is fitted to ``plan_cases`` (all cases
    if ``None``; a sweep passes its training pool and validation cases, never its test cases).
    Returns the cache folder.
    """
    mask_record = dataset.read_mask_record()
    prep = config.preprocessing
    if frame_of(prep) == "template" and mask_record["method"] != "register":
        raise GbmsegError(f"{dataset.mask_record_path}: preprocessing.frame 'template' needs masks made "
                          f"with --method register (these are '{mask_record['method']}')")
    crop_plan = dataset_crop_plan(dataset, config, plan_cases, progress=progress, validate=validate)
    key = cache_key(prep, mask_record, crop_plan)
    out_dir = dataset.cache_dir(config.name, key)
    plan = {"preset": config.name, "key": key, "preprocessing": dataclasses.asdict(prep), "masks": mask_record,
            "crop_plan": crop_plan, "modality": dataset.modality, "labels": dataset.labels,
            "dataset": str(dataset.root), "channels": dataset.channels}
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
             prep, dataset.modality, out_dir, crop_plan) for c in todo]
    parallel_map(_one_case, jobs, workers, desc=f"preprocess ({config.name})", progress=progress)
    return out_dir


def coverage(cache: Path) -> dict[str, dict[str, float]]:
    """Per cached case, per structure name: the fraction of the label inside the model grid."""
    names = {str(v): k for k, v in load_plan(cache)["labels"].items()}
    out = {}
    for rec in sorted(Path(cache).glob("*.json")):
        if rec.name == "plan.json" or rec.name.startswith("."):  # hidden: another process's write in flight
            continue
        data = read_json(rec)
        out[data["case"]] = {names.get(v, v): f for v, f in data.get("coverage", {}).items()}
    return out


CASE_STATS = ("mask_volume_ml", "looks_like")
#: recorded since masks are judged by the share of the scan they fill; caches made before hold the
#: number of image sides the mask touched instead (6 meant the whole field of view)
FILL_STATS = ("mask_fill_fraction", "mask_border_sides")


def case_stats(cache: Path, cases: list[str]) -> dict[str, dict]:
    """Per case of ``cases``, what prediction compares a new scan with (recorded when it was cached;
    caches made before give none): its whole global mask's volume (mL) and the share of the scan it
    fills (older caches: how many image sides it touched), and whether the image looks like CT or MR
    (:func:`gbmseg.registration.guess_modality`)."""
    out = {}
    for case in cases:
        path = Path(cache) / f"{case}.json"
        rec = read_json(path) if path.exists() else {}
        if all(k in rec for k in CASE_STATS):
            out[case] = {k: rec[k] for k in CASE_STATS + FILL_STATS if k in rec}
    return out


def coverage_summary(cache: Path, cases: list[str] | None = None, threshold: float = LOW_COVERAGE) -> list[str]:
    """Lines for the user: per structure the minimum coverage over ``cases`` (all if ``None``), and
    the cases below ``threshold``. Empty when every structure is at least ``threshold`` inside."""
    cov = {c: v for c, v in coverage(cache).items() if cases is None or c in cases}
    structures = sorted({s for v in cov.values() for s in v})
    lines = []
    for s in structures:
        low = sorted((v[s], c) for c, v in cov.items() if s in v and v[s] < threshold)
        if low:
            worst = ", ".join(f"{c} {f:.2f}" for f, c in low[:5]) + (" ..." if len(low) > 5 else "")
            lines.append(f"{s}: only {low[0][0]:.2f} of it inside the model grid in the worst case; "
                         f"{len(low)} case(s) below {threshold:.2f} ({worst})")
    return lines


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
    try:
        with np.load(path) as z:
            return {"image": z["image"].astype(np.float32), "mask": z["mask"], "label": z["label"]}
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError by the damage
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise GbmsegError(f"{path}: corrupt or truncated cache file ({reason}); delete it and preprocess again") from None
