"""Learned global masks: a binary whole-organ U-Net (the paper's whole-heart model).

Training builds a derived dataset in ``WORK/mask_model_data`` (the same images, labels replaced by
the union of all structures, masks = the whole field of view so that the crop is centred on the
image), then trains an ``image``-mode model with the usual engine at a coarse preset. Applying it
(``masks --method model``, see :mod:`gbmseg.global_masks`) predicts the organ, keeps the largest
component and fills holes.

Example:
    >>> train_mask_model(Dataset("heart_CT"), "runs/heart_mask")                   # doctest: +SKIP
    >>> make_dataset_masks(ds, "model", {"model": "runs/heart_mask"})             # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .config import load_config
from .dataset import Dataset, split_cases
from .errors import GbmsegError
from .inference import load_model, run_folder, segment
from .io import from_array, read_image, to_array, write_image, write_json
from .morphology import box_mask, fill_holes, image_mask, largest_component
from .preprocessing import preprocess_dataset
from .training import train


NO_MODEL = "mask method 'model' needs a mask model (--model: a mask-model run, or a sweep job folder)"


def model_hash(run_dir: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a run's ``model.pt``: identifies the mask model a model depends on.
    ``run_dir`` may be a sweep's job folder (:func:`gbmseg.inference.run_folder`)."""
    path = run_folder(run_dir) / "model.pt"
    if not path.exists():
        raise GbmsegError(f"{path}: mask model not found")
    st = path.stat()
    return _file_hash(str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _file_hash(path: str, inode: int, mtime_ns: int, size: int) -> str:
    """The file's hash, read once per (path, inode, modification time, size): a folder of scans costs
    one read, and a replaced or rewritten file is read again."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def whole_organ_dataset(dataset: Dataset) -> Dataset:
    """``WORK/mask_model_data``: the dataset's images (linked) with the union of labels as the only label."""
    root = dataset.mask_model_dir
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for case in dataset.cases:
        image = dataset.image_path(case)
        link = root / "imagesTr" / f"{case}_0000{dataset.file_ending}"
        if not link.exists():
            try:
                os.symlink(image.resolve(), link)
            except OSError:
                shutil.copy(image, link)
        union = root / "labelsTr" / f"{case}{dataset.file_ending}"
        if not union.exists():
            label = read_image(dataset.label_path(case))
            write_image(from_array((to_array(label) > 0).astype(np.uint8), label), union)
    meta = {"name": f"{dataset.name}-whole-organ", "channel_names": {"0": dataset.channels[0]},
            "labels": {"background": 0, "organ": 1}, "file_ending": dataset.file_ending,
            "numTraining": len(dataset.cases)}
    write_json(meta, root / "dataset.json")
    return Dataset(root)


def train_mask_model(dataset: Dataset, out_dir: str | Path, preset: str = "coarse", overrides: list[str] | None = None,
                     train_cases: list[str] | None = None, val_cases: list[str] | None = None, seed: int = 0,
                     device: str | None = None, progress: bool = True) -> dict:
    """Train the whole-organ model on ``train_cases`` (default: all but the last case, which validates)."""
    organ = whole_organ_dataset(dataset)
    organ.validate(progress=progress)
    organ.write_masks({"method": "box", "params": {}, "modality": organ.modality}, image_mask, progress=progress)
    cfg = load_config(preset, overrides)
    cache = preprocess_dataset(organ, cfg, progress=progress)
    val_cases = val_cases or split_cases(dataset.cases, 1, seed=None)["val"]
    train_cases = train_cases or [c for c in dataset.cases if c not in val_cases]
    return train(cache, "image", train_cases, val_cases, cfg, out_dir, seed=seed, device=device, progress=progress)


@functools.lru_cache(maxsize=2)
def _load(run_dir: str, sha256: str):
    """The mask model, loaded once per folder and ``model.pt`` hash (a retrained model is loaded again)."""
    return load_model(run_dir)


def check_unchanged(params: dict) -> tuple[str, str]:
    """``(run folder, model.pt hash)`` of the mask model that ``params`` (a ``model`` mask record's)
    names; raises if there is none, or if it changed since the record was made (its ``sha256``)."""
    if not params.get("model"):
        raise GbmsegError(NO_MODEL)
    run_dir = str(Path(params["model"]).resolve())
    expected, actual = params.get("sha256"), model_hash(run_dir)
    if expected and actual != expected:
        raise GbmsegError(f"{run_dir}: the mask model changed since this model was trained "
                          f"(hash {actual} != {expected})")
    return run_dir, actual


def predict_organ_mask(image: sitk.Image, params: dict, label: sitk.Image | None = None) -> sitk.Image:
    """Global mask of ``image`` from a trained mask model (``params["model"]``), largest component, filled.

    The mask model's own crop is centred on the image (its training masks are ``box`` masks)."""
    run_dir, sha256 = check_unchanged(params)
    seg = to_array(segment(_load(run_dir, sha256), image, box_mask(image))) > 0
    seg = fill_holes(largest_component(seg))
    if not seg.any():
        raise GbmsegError(f"mask model {run_dir} found no organ in the image")
    return from_array(seg.astype(np.uint8), image)
