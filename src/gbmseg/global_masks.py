"""Global binary masks, the one entry point: where the whole anatomy (head, heart) is and how big it is.

Methods (the registry :data:`METHODS`, name -> ``fn(image, params, label) -> (mask, transform or None)``):
    ``threshold``, ``otsu``, ``labels``, ``box``   image-only methods, see :mod:`gbmseg.morphology`.
    ``register``   register the scan to a template head (rigid + affine, mutual information),
                   then ``threshold``/``otsu`` kept near the template's warped body mask; also
                   returns the transform (see :mod:`gbmseg.registration`).
    ``model``      a trained whole-organ U-Net (``gbmseg mask-model train``), largest component,
                   holes filled (see :mod:`gbmseg.mask_model`); ``params["model"]`` is its run folder.
    ``auto``       ``threshold`` for CT datasets, ``otsu`` otherwise (resolved by :func:`resolve_method`).

Methods that run at prediction time (all but ``labels``) see only the image. ``masks.json``
records the method and its parameters (a mask model by path and hash) so that a trained model
makes its masks the same way.

Example:
    >>> mask = make_mask(read_image("ct.nii.gz"), "threshold")       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from . import morphology, registration
from .dataset import Dataset
from .errors import GbmsegError
from .mask_model import model_hash, predict_organ_mask


def _image_only(fn):
    return lambda image, params, label=None: (fn(image, params, label), None)


METHODS = {"threshold": _image_only(morphology.threshold_mask), "otsu": _image_only(morphology.otsu_mask),
           "labels": _image_only(morphology.labels_mask), "register": registration.mask_from_params,
           "model": _image_only(predict_organ_mask), "box": _image_only(morphology.box_mask)}
LABEL_METHODS = ("labels",)  # need the ground truth: training masks only
IMAGE_METHODS = tuple(m for m in METHODS if m not in LABEL_METHODS)  # methods that need no ground truth
DEFAULTS = {**morphology.DEFAULTS, "register": registration.DEFAULTS, "model": {"model": None}}


def resolve_method(method: str, modality: str) -> str:
    """Turn ``auto`` into the method for ``modality``; check the name."""
    if method == "auto":
        return "threshold" if modality == "CT" else "otsu"
    if method not in METHODS:
        raise GbmsegError(f"unknown mask method '{method}' (choose from auto, {', '.join(METHODS)})")
    return method


def make_mask_and_transform(image: sitk.Image, method: str, params: dict | None = None,
                            label: sitk.Image | None = None) -> tuple[sitk.Image, sitk.Transform | None]:
    """``(mask, transform)``: the transform (template -> scan points) for ``register``, else ``None``."""
    if method not in METHODS:
        raise GbmsegError(f"unknown mask method '{method}'")
    return METHODS[method](image, {**DEFAULTS[method], **(params or {})}, label)


def make_mask(image: sitk.Image, method: str, params: dict | None = None, label: sitk.Image | None = None) -> sitk.Image:
    """Global binary mask (uint8, 0/1) of ``image``, with the image's geometry.

    Args:
        image: the scan.
        method: a name in :data:`METHODS`.
        params: overrides of :data:`DEFAULTS` (``hu``, ``opening_vox``; ``register``: ``template``,
            ``margin_mm``, ``modality``, see :func:`gbmseg.registration.register_mask`; ``model``: ``model``).
        label: the label map, required by (and only used by) the ``labels`` method.
    """
    return make_mask_and_transform(image, method, params, label)[0]


def mask_for_record(record: dict, image: sitk.Image, name: str = "image") -> tuple[sitk.Image, sitk.Transform | None]:
    """Make the mask (and transform) of ``image`` the way a mask record's masks were made (image-only methods)."""
    if record["method"] not in IMAGE_METHODS:
        raise GbmsegError(f"{name}: the model was trained on '{record['method']}' masks, which cannot be made "
                          "from the image alone; pass a global mask (--mask)")
    return make_mask_and_transform(image, record["method"], record.get("params"))


def make_dataset_masks(dataset: Dataset, method: str = "auto", params: dict | None = None,
                       workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Write every case's global mask and the mask record (see :class:`gbmseg.dataset.Dataset` for where).

    The record holds the method and parameters; preprocessing and trained models carry it so that
    prediction can make masks the same way. Returns that record.
    """
    method = resolve_method(method, dataset.modality)
    dataset.validate(progress=progress)  # every case checked before anything is written
    record = {"method": method, "params": {**DEFAULTS[method], **(params or {})}, "modality": dataset.modality}
    if method == "model":  # the mask model, by absolute path and hash, so prediction can check it
        if not record["params"].get("model"):
            raise GbmsegError("mask method 'model' needs a mask model (--model RUN_DIR)")
        record["params"]["model"] = str(Path(record["params"]["model"]).resolve())
        record["params"]["sha256"] = model_hash(record["params"]["model"])
    if method == "register":  # modality, and the template as "phantom" or an image path
        record["params"] = registration.resolve_params(record["params"], dataset)
    return dataset.write_masks(record, make_mask_and_transform, workers, overwrite, progress,
                               needs_label=method in LABEL_METHODS)
