"""Binary morphology and the image-only global-mask methods (no registration, no model).

Methods (each ``fn(image, params, label) -> mask``, registered in :data:`METHODS`):
    ``threshold``  CT: HU above a threshold, morphological opening, largest connected
                   component, holes filled (slice by slice along each axis).
    ``otsu``       MR (any intensity scale): Otsu threshold, then as ``threshold``.
    ``labels``     union of all labelled structures (closed and filled). Uses the ground truth, so
                   it can only make *training* masks; a model whose masks came from labels needs
                   masks given at prediction.
    ``box``        the whole field of view (used by the mask model itself: its crop is centred on
                   the image).

:data:`DEFAULTS` is the one set of mask defaults (``register`` builds on ``threshold``'s).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import GbmsegError
from .io import from_array, to_array

DEFAULTS = {"threshold": {"hu": -300.0, "opening_vox": 1}, "otsu": {"opening_vox": 1}, "labels": {}, "box": {}}


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
    """Fill holes slice by slice along each of the three axes in turn.

    Cavities open to the outside in 3D (airways, nasal cavity, sinuses) are closed in the slices
    that cut across their opening; a cavity enclosed in 3D is enclosed in every slice through it,
    so it is filled too. Doing this along every axis makes the result the same whatever the scan's
    orientation (axial, coronal or sagittal slices first): the mask is the organ's solid outline, as
    the method means it, not a map of the air inside it. Each axis is one call with a planar
    structuring element (4-connected within the slice, nothing across slices), which fills every
    slice at once.

    Example:
        >>> tube = np.ones((5, 5, 5), bool); tube[:, 2, 2] = False   # open at both ends of axis 0
        >>> bool(fill_holes(tube).all()) and bool(fill_holes(tube.transpose(2, 0, 1)).all())
        True
    """
    in_slice = ndimage.generate_binary_structure(2, 1)
    for axis in range(3):
        fg = ndimage.binary_fill_holes(fg, structure=np.expand_dims(in_slice, axis))
    return fg


def clean(fg: np.ndarray, opening_vox: int, error: str) -> np.ndarray:
    """Opening, largest component, holes filled; raise ``error`` if nothing is left."""
    if int(opening_vox) > 0:
        fg = ndimage.binary_opening(fg, iterations=int(opening_vox))
    fg = largest_component(fg)
    if not fg.any():
        raise GbmsegError(error)
    return fill_holes(fg)


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of ``mask`` in millilitres (cm^3).

    Example:
        >>> m = sitk.Image([10, 10, 10], sitk.sitkUInt8) + 1
        >>> m.SetSpacing((2.0, 2.0, 2.0))
        >>> mask_volume_ml(m)
        8.0
    """
    return float(np.count_nonzero(to_array(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0


#: a mask that fills at least this share of its image's voxels is the field of view, not the anatomy
#: (a threshold mask of a scan without air, a cardiac CT cut to the chest): it cannot place a crop
FULL_VIEW_FRACTION = 0.9


def fill_fraction(mask: sitk.Image) -> float:
    """The share of the image's voxels inside ``mask`` (1.0: the whole field of view).

    A mask that touches every side of a tightly framed scan still outlines the anatomy; one that
    fills :data:`FULL_VIEW_FRACTION` or more of it does not.

    Example:
        >>> fill_fraction(sitk.Image([4, 4, 4], sitk.sitkUInt8) + 1)
        1.0
        >>> m = sitk.Image([4, 4, 4], sitk.sitkUInt8); m[0, 0, 0] = 1
        >>> fill_fraction(m)
        0.015625
    """
    return float(np.mean(to_array(mask) > 0))


def as_mask(fg: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """uint8 0/1 image of a boolean array, with ``reference``'s geometry."""
    return from_array(fg.astype(np.uint8), reference)


def threshold_mask(image: sitk.Image, params: dict, label: sitk.Image | None = None) -> sitk.Image:
    p = {**DEFAULTS["threshold"], **params}
    fg = to_array(image).astype(np.float32) > p["hu"]
    return as_mask(clean(fg, p["opening_vox"], f"mask method 'threshold' found no foreground (threshold {p})"), image)


def otsu_mask(image: sitk.Image, params: dict, label: sitk.Image | None = None) -> sitk.Image:
    p = {**DEFAULTS["otsu"], **params}
    arr = to_array(image).astype(np.float32)
    return as_mask(clean(arr > otsu_threshold(arr), p["opening_vox"], f"mask method 'otsu' found no foreground (threshold {p})"), image)


def labels_mask(image: sitk.Image, params: dict, label: sitk.Image | None = None) -> sitk.Image:
    if label is None:
        raise GbmsegError("mask method 'labels' needs the label map (it cannot run at prediction time)")
    fg = to_array(label) > 0
    fg = ndimage.binary_closing(fg, iterations=2) | fg
    return as_mask(fill_holes(fg), label)


def box_mask(image: sitk.Image, params: dict | None = None, label: sitk.Image | None = None) -> sitk.Image:
    return as_mask(np.ones(to_array(image).shape, bool), image)


METHODS = {"threshold": threshold_mask, "otsu": otsu_mask, "labels": labels_mask, "box": box_mask}


def image_mask(image: sitk.Image, method: str, params: dict | None = None,
               label: sitk.Image | None = None) -> tuple[sitk.Image, None]:
    """``(mask, None)`` by one of :data:`METHODS`: the signature :meth:`Dataset.write_masks` expects."""
    return METHODS[method](image, params or {}, label), None
