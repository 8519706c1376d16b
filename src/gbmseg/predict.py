"""Two-stage prediction: image (and optionally a ready global mask) in, label map out in the input's geometry.

Stage 1 makes the global mask from the image with the method recorded at training time
(``threshold``, ``otsu``, ``register``, ``model``, ``box``; see :mod:`gbmseg.global_masks`), unless
one is given. A model trained on label-derived masks cannot make its own and asks for ``--mask``.
A model whose crops are taken in the template's standard frame (``preprocessing.frame =
"template"``) registers the scan to its template, also when a mask is given. Stage 2 runs the
network on the model grid (:func:`gbmseg.inference.segment`).

Example:
    >>> model = load_model("runs/x")                                      # doctest: +SKIP
    >>> predict_file(model, "new_ct.nii.gz", "new_seg.nii.gz")            # doctest: +SKIP
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from .dataset import check_image
from .errors import GbmsegError, GbmsegWarning
from .global_masks import check_mask, check_modality, check_record_usable, mask_for_record, record_for_method
from .inference import Model, Stopwatch, load_model, segment
from .io import check_writable, read_image, write_image
from .preprocessing import frame_of
from .registration import transform_from_params

__all__ = ["Model", "load_model", "predict_image", "predict_file", "predict_folder"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def predict_image(model: Model, image: sitk.Image, mask: sitk.Image | None = None,
                  name: str = "image", timings: dict | None = None, mask_method: str | None = None) -> sitk.Image:
    """Label map (uint8) for ``image`` with exactly its size, spacing, origin and direction.

    The global mask is ``mask`` if given, else made as the model's masks were made (after checking
    that the image looks like the training images), or with ``mask_method`` (``auto``,
    ``threshold``, ``otsu``, ``box``) if given. Either way it must be plausible
    (:func:`gbmseg.global_masks.check_mask`: not empty, not the whole field of view, a volume near the
    training masks').

    ``timings``, if given, receives seconds per stage: ``mask``, ``resample``, ``network``, ``resample_back``."""
    clock = Stopwatch(timings)
    check_image(image, name)
    rec = model.info["masks"]
    transform, made_by = None, None
    if mask is None:
        made = record_for_method(rec, mask_method, image) if mask_method else rec
        if not mask_method:
            check_modality(rec, image, name, model.info.get("case_stats"))
        mask, transform = mask_for_record(made, image, name)
        made_by = made["method"]
    check_mask(mask, name, model.info.get("case_stats"), made_by, trained_on=rec["method"])
    if frame_of(model.config.preprocessing) == "template" and transform is None:
        transform = transform_from_params(image, rec.get("params") or {})
    clock.lap("mask")
    return segment(model, image, mask, transform, name, timings)


def predict_file(model: Model, image_path: str | Path, out_path: str | Path,
                 mask_path: str | Path | None = None, timings: dict | None = None, series: str | None = None,
                 mask_method: str | None = None) -> Path:
    """Predict one file (or DICOM folder; ``series``: the series UID when it holds several) and write
    the label map atomically. ``out_path`` is checked to be writable before anything is read.

    ``timings``, if given, receives seconds per stage: ``read``, those of :func:`predict_image`, ``write``."""
    check_writable(out_path)
    clock = Stopwatch(timings)
    image = read_image(image_path, series)
    mask = read_image(mask_path) if mask_path else None
    clock.lap("read")
    seg = predict_image(model, image, mask, name=str(image_path), timings=timings, mask_method=mask_method)
    clock = Stopwatch(timings)
    out = write_image(seg, out_path)
    clock.lap("write")
    return out


def _split_name(path: Path) -> tuple[str, str | None]:
    """``head_001_0000.nii.gz`` -> (``head_001``, ``0000``); names without a channel suffix -> (name, None)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    match = re.fullmatch(r"(.+)_(\d{4})", name)
    return (match[1], match[2]) if match else (name, None)


def predict_folder(model: Model, in_dir: str | Path, out_dir: str | Path, mask_dir: str | Path | None = None,
                   progress: bool = True, overwrite: bool = False, mask_method: str | None = None) -> list[Path]:
    """Predict every image in ``in_dir`` (``<case>_0000.nii.gz`` or any image file) into ``out_dir/<case>.nii.gz``.

    Masks, if given, are ``mask_dir/<case>.nii.gz``. Existing outputs are skipped unless ``overwrite``.
    An image that is refused (a one-line :class:`~gbmseg.errors.GbmsegError`: unreadable, another
    modality, an implausible mask) does not stop the others: its reason is a one-line warning as it
    happens, and once every image was tried, one error names the refused images; the segmentations
    written stay. A problem of the model rather than the images (masks it cannot make) stops it first.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    check_writable(out_dir)
    images = sorted(p for p in in_dir.iterdir() if p.name.endswith(IMAGE_SUFFIXES))
    nnunet_cases = {case for case, channel in map(_split_name, images) if channel == "0000"}
    todo = {}  # case -> first-channel file; nnU-Net's other channels (_0001, ...) are skipped
    for path in images:
        case, channel = _split_name(path)
        if case in nnunet_cases:
            if channel == "0000":
                todo[case] = path
        else:
            todo[case if channel is None else f"{case}_{channel}"] = path
    if not todo:
        raise GbmsegError(f"{in_dir}: no image files found")
    if mask_dir is None and mask_method is None:  # the same for every image: say it once, before reading any
        check_record_usable(model.info["masks"], model.config.source or "model")
    written, refused = [], []
    for case, path in tqdm(sorted(todo.items()), desc="predict", disable=not progress):
        out = out_dir / f"{case}.nii.gz"
        if out.exists() and not overwrite:
            written.append(out)
            continue
        mask = Path(mask_dir) / f"{case}.nii.gz" if mask_dir else None
        try:
            if mask is not None and not mask.exists():
                raise GbmsegError(f"{mask}: global mask for '{case}' not found")
            written.append(predict_file(model, path, out, mask, mask_method=mask_method))
        except GbmsegError as exc:
            warnings.warn(f"not segmented: {exc}", GbmsegWarning, stacklevel=2)
            refused.append(case)
    if refused:
        names = ", ".join(refused[:10]) + (f" and {len(refused) - 10} more" if len(refused) > 10 else "")
        raise GbmsegError(f"{len(refused)} of {len(todo)} images not segmented, the reasons above ({len(written)} "
                          f"segmentations in {out_dir}): {names}")
    return written
