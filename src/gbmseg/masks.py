"""Global binary masks: where the whole anatomy (head, heart) is and how big it is.

Methods:
    ``threshold``  CT: HU above a threshold, morphological opening, largest connected
                   component, holes filled (3D, then slice by slice).
    ``otsu``       MR (any intensity scale): Otsu threshold, then as ``threshold``.
    ``labels``     union of all labelled structures (closed and filled). Uses the ground truth, so
                   it can only make *training* masks (e.g. for a whole-organ mask model, or an upper
                   bound); a model whose masks came from labels needs masks given at prediction.
    ``register``   register the scan to a template head (rigid + affine, mutual information),
                   then ``threshold``/``otsu`` kept near the template's warped body mask; writes
                   the transform too (see :mod:`gbmseg.registration`).
    ``model``      a trained whole-organ U-Net (``gbmseg mask-model train``), largest component,
                   holes filled (see :mod:`gbmseg.mask_model`); ``params["model"]`` is its run folder.
    ``box``        the whole field of view (used by the mask model itself: its crop is centred on
                   the image).
    ``auto``       ``threshold`` for CT datasets, ``otsu`` otherwise.

Methods that run at prediction time (all but ``labels``) see only the image.

Example:
    >>> mask = make_mask(read_image("ct.nii.gz"), "threshold")       # doctest: +SKIP
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from .dataset import Dataset
from .errors import GbmsegError
from .io import from_array, read_image, to_array, write_image, write_text

METHODS = ("threshold", "otsu", "labels", "register", "model", "box")
IMAGE_METHODS = ("threshold", "otsu", "register", "model", "box")  # methods that need no ground truth
DEFAULTS = {"threshold": {"hu": -300.0, "opening_vox": 1}, "otsu": {"opening_vox": 1}, "labels": {},
            "register": {"template": "phantom", "hu": -300.0, "opening_vox": 1, "margin_mm": 20.0},
            "model": {"model": None}, "box": {}}


def resolve_method(method: str, modality: str) -> str:
    """Turn ``auto`` into the method for ``modality``; check the name."""
    if method == "auto":
        return "threshold" if modality == "CT" else "otsu"
    if method not in METHODS:
        raise GbmsegError(f"unknown mask method '{method}' (choose from auto, {', '.join(METHODS)})")
    return method


def make_mask(image: sitk.Image, method: str, params: dict | None = None, label: sitk.Image | None = None) -> sitk.Image:
    """Global binary mask (uint8, 0/1) of ``image``, with the image's geometry.

    Args:
        image: the scan.
        method: ``threshold``, ``otsu``, ``labels`` or ``register``.
        params: overrides of :data:`DEFAULTS` (``hu``, ``opening_vox``; ``register``: ``template``,
            ``margin_mm``, ``modality``, see :func:`gbmseg.registration.register_mask`).
        label: the label map, required by (and only used by) the ``labels`` method.
    """
    p = {**DEFAULTS.get(method, {}), **(params or {})}
    if method == "labels":
        if label is None:
            raise GbmsegError("mask method 'labels' needs the label map (it cannot run at prediction time)")
        fg = to_array(label) > 0
        fg = ndimage.binary_closing(fg, iterations=2) | fg
        return _finish(fill_holes(fg), label)
    if method == "register":
        from .registration import mask_from_params

        return mask_from_params(image, p)[0]
    if method == "model":
        from .mask_model import predict_organ_mask

        if not p.get("model"):
            raise GbmsegError("mask method 'model' needs a mask model (--model RUN_DIR)")
        return predict_organ_mask(image, p)
    if method == "box":
        return _finish(np.ones(to_array(image).shape, bool), image)
    arr = to_array(image).astype(np.float32)
    if method == "threshold":
        fg = arr > p["hu"]
    elif method == "otsu":
        fg = arr > otsu_threshold(arr)
    else:
        raise GbmsegError(f"unknown mask method '{method}'")
    if p["opening_vox"] > 0:
        fg = ndimage.binary_opening(fg, iterations=int(p["opening_vox"]))
    fg = largest_component(fg)
    if not fg.any():
        raise GbmsegError(f"mask method '{method}' found no foreground (threshold {p})")
    return _finish(fill_holes(fg), image)


def otsu_threshold(arr: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``arr`` (robust to outliers: histogram over the 0.1-99.9 percentiles)."""
    lo, hi = np.percentile(arr, [0.1, 99.9])
    hist, edges = np.histogram(np.clip(arr, lo, hi), bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def largest_component(fg: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean array (empty stays empty)."""
    lab, n = ndimage.label(fg, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return fg.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def fill_holes(fg: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D, then slice by slice (closes cavities open to the outside, e.g. airways)."""
    fg = ndimage.binary_fill_holes(fg)
    for z in range(fg.shape[0]):  # cavities open to the outside in 3D (airways) are closed per slice
        fg[z] = ndimage.binary_fill_holes(fg[z])
    return fg


def _finish(fg: np.ndarray, reference: sitk.Image) -> sitk.Image:
    return from_array(fg.astype(np.uint8), reference)


# -- datasets ---------------------------------------------------------------------------------
def _one_case(args: tuple) -> str:
    image_path, label_path, out_path, method, params = args
    image = read_image(image_path)
    if method == "register":  # also writes <case>_to_template.tfm beside the mask
        from .registration import write_registered_mask

        return str(write_registered_mask(image, out_path, params))
    label = read_image(label_path) if method == "labels" else None
    write_image(make_mask(image, method, params, label), out_path)
    return str(out_path)


def make_dataset_masks(dataset: Dataset, method: str = "auto", params: dict | None = None,
                       workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Write ``WORK/masksTr/<case>.nii.gz`` for every case and ``masksTr/masks.json``.

    ``masks.json`` records the method and parameters; preprocessing and trained models carry it
    so that prediction can make masks the same way. Returns that record.
    """
    method = resolve_method(method, dataset.modality)
    dataset.validate(progress=progress)  # every case checked before anything is written
    record = {"method": method, "params": {**DEFAULTS[method], **(params or {})},
              "modality": dataset.modality}
    if method == "model":  # the mask model, by absolute path and hash, so prediction can check it
        from .mask_model import model_hash

        if not record["params"].get("model"):
            raise GbmsegError("mask method 'model' needs a mask model (--model RUN_DIR)")
        record["params"]["model"] = str(Path(record["params"]["model"]).resolve())
        record["params"]["sha256"] = model_hash(record["params"]["model"])
    if method == "register":  # modality, and the template as "phantom" or an image path
        from .registration import resolve_params

        record["params"] = resolve_params(record["params"], dataset)
    out_dir = dataset.mask_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GbmsegError(f"{out_dir}: cannot create mask folder ({exc.strerror}); pass --work DIR") from None
    meta_path = out_dir / "masks.json"
    if meta_path.exists() and not overwrite:
        old = json.loads(meta_path.read_text())
        if old.get("method") != method or old.get("params") != record["params"]:
            overwrite = True  # different method: make every mask again
    jobs = [(dataset.image_path(c), dataset.label_path(c), dataset.mask_path(c), method, record["params"])
            for c in dataset.cases if overwrite or not dataset.mask_path(c).exists()]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(tqdm(pool.map(_one_case, jobs), total=len(jobs), desc=f"masks ({method})", disable=not progress))
    else:
        for job in tqdm(jobs, desc=f"masks ({method})", disable=not progress):
            _one_case(job)
    write_text(json.dumps(record, indent=2), meta_path)
    return record


def read_mask_record(dataset: Dataset) -> dict:
    """The ``masks.json`` written by :func:`make_dataset_masks`, or a clear error if masks are missing."""
    path = dataset.mask_dir / "masks.json"
    if not path.exists():
        raise GbmsegError(f"{path}: no global masks yet; run 'gbmseg masks {dataset.root}' first")
    return json.loads(path.read_text())
