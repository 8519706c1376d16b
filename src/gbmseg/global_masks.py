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

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import morphology, registration
from .dataset import Dataset
from .errors import GbmsegError, GbmsegWarning, naming
from .io import read_image, to_array
from .mask_model import NO_MODEL, check_unchanged, model_hash, predict_organ_mask


def _image_only(fn):
    return lambda image, params, label=None: (fn(image, params, label), None)


METHODS = {"threshold": _image_only(morphology.threshold_mask), "otsu": _image_only(morphology.otsu_mask),
           "labels": _image_only(morphology.labels_mask), "register": registration.mask_from_params,
           "model": _image_only(predict_organ_mask), "box": _image_only(morphology.box_mask)}
LABEL_METHODS = ("labels",)  # need the ground truth: training masks only
IMAGE_METHODS = tuple(m for m in METHODS if m not in LABEL_METHODS)  # methods that need no ground truth
DEFAULTS = {**morphology.DEFAULTS, "register": registration.DEFAULTS, "model": {"model": None}}
#: how masks are made, in ``masks.json``: a change that gives other masks for the same method and
#: parameters (2: holes filled slice by slice along every axis, not only the first) bumps it, so
#: ``gbmseg masks`` makes them again and caches made from the old masks are not reused.
MASKS_VERSION = 2


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


def check_record_usable(record: dict, name: str = "model") -> None:
    """Raise unless masks can be made the way ``record``'s were: an image-only method, and for
    ``model`` the same mask model (:func:`gbmseg.mask_model.check_unchanged`). ``name`` starts the message."""
    if record["method"] not in IMAGE_METHODS:
        raise GbmsegError(f"{name}: the model was trained on '{record['method']}' masks, which cannot be made "
                          "from the image alone; pass a global mask (--mask)")
    if record["method"] == "model":
        try:
            check_unchanged(record.get("params") or {})
        except GbmsegError as exc:
            raise naming(exc, name) from None


def mask_for_record(record: dict, image: sitk.Image, name: str = "image") -> tuple[sitk.Image, sitk.Transform | None]:
    """Make the mask (and transform) of ``image`` the way a mask record's masks were made (image-only methods)."""
    check_record_usable(record, name)
    try:
        return make_mask_and_transform(image, record["method"], record.get("params"))
    except GbmsegError as exc:
        raise naming(exc, name) from None


# -- guards at prediction: is this image what the masks were made for, is its mask plausible ------
#: volume bands at prediction, as factors of the smallest and largest training mask: a mask outside the
#: first is refused, outside the second warned about (:class:`~gbmseg.errors.GbmsegWarning`). A body
#: mask's volume grows with the scan's length (head-and-neck CT: 1.8-17.7 L over the 40 development
#: cases; benchmarks/results/mask_volume_range.md), so for the body methods a mask 3-20 times off is
#: unusual, not wrong; an organ's mask (a mask model's heart, a registered head, labels) must be within
#: 3 times, or it is another anatomy.
BODY_METHODS = ("threshold", "otsu", "box")
VOLUME_BANDS = {"body": ((1 / 20, 20.0), (1 / 3, 3.0)), "organ": ((1 / 3, 3.0), None)}
NO_FULL_VIEW_CHECK = ("box",)  # methods whose mask is the field of view by design


def expected_modality(record: dict) -> str | None:
    """``"CT"`` or ``"MR"``: the intensities a mask record's method was made for (``threshold``: CT HU;
    ``otsu``, ``register``, ``model``: the training dataset's modality); ``None`` for ``box``, ``labels``."""
    if record["method"] == "threshold":
        return "CT"
    if record["method"] in ("box", "labels"):
        return None
    return (record.get("params") or {}).get("modality") or record.get("modality")


def check_modality(record: dict, image: sitk.Image, name: str = "image", stats: dict | None = None) -> None:
    """Raise if ``image`` does not look like the training images (``stats``: case -> ``looks_like``,
    see :func:`gbmseg.preprocessing.case_stats`) or, where those were not recorded, like the modality
    ``record``'s masks were made for (:func:`expected_modality`).

    CT is recognised by Hounsfield air (at least 1% of voxels below -500,
    :func:`gbmseg.registration.guess_modality`); anything else counts as MR (any intensity scale), so
    a CT whose negative values were clipped looks like MR, here and in training alike.
    """
    looks = {s["looks_like"] for s in (stats or {}).values()}
    expected = looks.pop() if len(looks) == 1 else expected_modality(record)
    if expected is None:
        return
    seen = registration.guess_modality(image)
    if seen == expected:
        return
    arr = to_array(image)
    air = float(np.mean(arr < -500))
    why = (f"{air:.0%} of its voxels are below -500, Hounsfield air" if seen == "CT"
           else f"not CT: {air:.1%} of its voxels below -500 HU, values {float(arr.min()):.4g} to {float(arr.max()):.4g}")
    other = "threshold" if seen == "CT" else "otsu"
    raise GbmsegError(f"{name}: looks like {seen} ({why}) but the model's global masks are made for {expected} "
                      f"images ('{record['method']}'); give a ready mask (--mask) or another method (--mask-method {other})")


def record_for_method(record: dict, method: str, image: sitk.Image) -> dict:
    """The mask record with its method replaced by ``method`` (``auto``: threshold if ``image`` looks
    like CT, else otsu) and that method's default parameters; ``record`` itself for the same method."""
    if method == "auto":
        method = resolve_method(method, registration.guess_modality(image))
    if method == record["method"]:
        return record
    if method not in morphology.METHODS or method in LABEL_METHODS:
        raise GbmsegError(f"--mask-method '{method}': choose auto, threshold, otsu or box "
                          "(other methods need files: give a ready mask with --mask)")
    return {"method": method, "params": dict(DEFAULTS[method]), "modality": record.get("modality")}


def check_mask(mask: sitk.Image, name: str = "image", stats: dict | None = None, method: str | None = None,
               trained_on: str | None = None) -> None:
    """Raise unless ``mask`` can place a crop: not empty; not the whole field of view (filling at least
    :data:`gbmseg.morphology.FULL_VIEW_FRACTION` of the scan, the rule ``gbmseg masks`` warns by),
    unless it is a ``box`` mask or a training case's mask did too; and its volume within the refusal
    band of :data:`VOLUME_BANDS` around the training masks' volumes (outside the warning band: a
    one-line warning naming the image).
    ``stats`` is the run's ``case_stats`` (:func:`gbmseg.preprocessing.case_stats`; ``None``: no
    volume test); ``method`` the method that made the mask, ``None`` for a mask the user gave;
    ``trained_on`` the method of the training masks (:data:`BODY_METHODS`: the wide band).

    Example:
        >>> check_mask(sitk.Image([8, 8, 8], sitk.sitkUInt8), "ct_01")
        Traceback (most recent call last):
        ...
        gbmseg.errors.GbmsegError: ct_01: the global mask is empty; the crop cannot be placed (check the mask given with --mask)
    """
    hint = "give a ready mask with --mask" if method else "check the mask given with --mask"
    stats = stats or {}
    inside = to_array(mask) > 0  # one pass for the three tests (morphology.fill_fraction, mask_volume_ml)
    if not inside.any():
        raise GbmsegError(f"{name}: the global mask is empty; the crop cannot be placed ({hint})")
    fraction = float(inside.mean())
    if (method not in NO_FULL_VIEW_CHECK and fraction >= morphology.FULL_VIEW_FRACTION
            and not any(_filled_view(s) for s in stats.values())):
        raise GbmsegError(f"{name}: the global mask fills {fraction:.0%} of the scan: it does not outline "
                          f"the anatomy, so the crop would be wrong (wrong modality or image? {hint})")
    if not stats:
        return
    volume = int(inside.sum()) * float(np.prod(mask.GetSpacing())) / 1000.0
    lo = min(s["mask_volume_ml"] for s in stats.values())
    hi = max(s["mask_volume_ml"] for s in stats.values())
    refuse, warn = VOLUME_BANDS["body" if trained_on in BODY_METHODS else "organ"]
    if not refuse[0] * lo <= volume <= refuse[1] * hi:
        raise GbmsegError(f"{name}: the global mask is {volume:.4g} mL, far outside the training masks' "
                          f"{lo:.4g}-{hi:.4g} mL, so the crop would be wrong (another anatomy or field of "
                          f"view? {hint})")
    if warn and not warn[0] * lo <= volume <= warn[1] * hi:
        side = f"over {warn[1]:g} times the largest" if volume > hi else f"under 1/{1 / warn[0]:g} of the smallest"
        warnings.warn(f"{name}: the global mask is {volume:.4g} mL, {side} training mask ({lo:.4g}-{hi:.4g} mL: "
                      f"a longer or shorter scan?); check that its segmentation is in place", GbmsegWarning,
                      stacklevel=2)


def _filled_view(stat: dict) -> bool:
    """Whether a training case's mask was the whole field of view (older caches recorded the number of
    image sides it touched instead of the share it filled: all six stands for the whole view there)."""
    if "mask_fill_fraction" in stat:
        return stat["mask_fill_fraction"] >= morphology.FULL_VIEW_FRACTION
    return stat.get("mask_border_sides") == 6


def make_dataset_masks(dataset: Dataset, method: str = "auto", params: dict | None = None,
                       workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Write every case's global mask and the mask record (see :class:`gbmseg.dataset.Dataset` for where).

    The record holds the method and parameters; preprocessing and trained models carry it so that
    prediction can make masks the same way. Returns that record.
    """
    method = resolve_method(method, dataset.modality)
    dataset.validate(progress=progress)  # every case checked before anything is written
    record = {"method": method, "params": {**DEFAULTS[method], **(params or {})}, "modality": dataset.modality,
              "version": MASKS_VERSION}
    if method == "model":  # the mask model, by absolute path and hash, so prediction can check it
        if not record["params"].get("model"):
            raise GbmsegError(NO_MODEL)
        record["params"]["model"] = str(Path(record["params"]["model"]).resolve())
        record["params"]["sha256"] = model_hash(record["params"]["model"])
    if method == "register":  # modality, and the template as "phantom" or an image path
        record["params"] = registration.resolve_params(record["params"], dataset)
    record = dataset.write_masks(record, make_mask_and_transform, workers, overwrite, progress,
                                 needs_label=method in LABEL_METHODS)
    if method not in NO_FULL_VIEW_CHECK:
        warn_if_full_view(dataset, method)
    return record


def full_view_cases(dataset: Dataset) -> dict[str, float]:
    """``{case: fraction}`` of the cases whose written global mask fills at least
    :data:`gbmseg.morphology.FULL_VIEW_FRACTION` of the scan's field of view (such a mask is a box around the scan,
    not the anatomy: a threshold mask of an image without air, or of a cardiac CT cut to the chest).

    Example:
        >>> full_view_cases(Dataset("heart_CT", work="w"))    # after threshold masks  # doctest: +SKIP
        {'heart_1001': 0.999, ...}
    """
    fractions = {c: morphology.fill_fraction(read_image(dataset.mask_path(c))) for c in dataset.cases}
    return {c: f for c, f in fractions.items() if f >= morphology.FULL_VIEW_FRACTION}


def warn_if_full_view(dataset: Dataset, method: str) -> None:
    """Warn (one line, naming the cases) when ``method``'s masks fill the whole field of view."""
    full = full_view_cases(dataset)
    if not full:
        return
    names = ", ".join(list(full)[:3]) + (" ..." if len(full) > 3 else "")
    warnings.warn(
        f"{dataset.mask_dir}: the '{method}' global mask fills at least {min(full.values()):.0%} of the scan in "
        f"{len(full)} of {len(dataset.cases)} cases ({names}), so it does not say where the anatomy is; for an "
        f"organ inside the body (the heart) train a mask model (gbmseg mask-model train DATASET -o RUN; then "
        f"gbmseg masks DATASET --method model --model RUN), or give other --params", GbmsegWarning, stacklevel=2)
