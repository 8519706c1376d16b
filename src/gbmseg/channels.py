"""The network's input channels: what each mode feeds the U-Net, made from a preprocessed crop.

A mode (:data:`gbmseg.config.MODES`) names its channels; each channel is made here from the
cached crop, the same way in training (:mod:`gbmseg.training`) and prediction
(:mod:`gbmseg.inference`):

==========  =====  ======================================================================
channel     width  content
==========  =====  ======================================================================
``image``   1      the windowed CT / normalised MR
``mask``    1      the global binary mask (0/1)
``coords``  3      voxel position in the crop, z, y, x, each from -0.5 to 0.5 (MONAI's
                   ``AddCoordinateChannels``): position alone, the control for ``mask``
``sdm``     1      the global mask's signed distance, millimetres / :data:`SDM_SCALE_MM`,
                   clipped to [-1, 1], positive inside: position *and* the organ's shape and size
==========  =====  ======================================================================

The crop is placed from the global mask, so ``coords`` says where a voxel is relative to the
mask's placement without the mask's shape; ``image+coords`` against ``image+mask`` separates the
mask's value as localisation from its value as shape. Continuous channels (image, coords, sdm)
are resampled linearly by augmentation, the mask and the label with nearest neighbour.

Example:
    >>> import numpy as np
    >>> case = {"image": np.zeros((1, 4, 6, 8), np.float32), "mask": np.ones((4, 6, 8), np.uint8)}
    >>> stack(case, "image+coords", spacing=(4.0, 4.0, 4.0)).shape
    (4, 4, 6, 8)
    >>> input_width("image+sdm")
    2
"""

from __future__ import annotations

import numpy as np
from monai.transforms import AddCoordinateChannels
from scipy import ndimage

from .config import channels_for_mode

WIDTH = {"image": 1, "mask": 1, "coords": 3, "sdm": 1}
SDM_SCALE_MM = 50.0  # the signed distance saturates at +-1 this far inside / outside the mask


def input_width(mode: str) -> int:
    """Number of input channels of ``mode`` (``coords`` counts three)."""
    return sum(WIDTH[c] for c in channels_for_mode(mode))


def coordinate_channels(shape_zyx) -> np.ndarray:
    """``(3, Z, Y, X)`` float32: each voxel's z, y and x position in the crop, -0.5 to 0.5."""
    empty = np.zeros((1, *[int(s) for s in shape_zyx]), np.float32)
    return np.asarray(AddCoordinateChannels(spatial_dims=(0, 1, 2))(empty), np.float32)[1:]


def signed_distance(mask: np.ndarray, spacing_xyz) -> np.ndarray:
    """``(1, Z, Y, X)`` float32: distance (mm) to the mask's boundary, positive inside, divided by
    :data:`SDM_SCALE_MM` and clipped to [-1, 1]. An empty mask is -1 everywhere, a full one +1."""
    inside = np.asarray(mask) > 0
    sampling = [float(s) for s in spacing_xyz][::-1]  # (z, y, x) mm
    if not inside.any():
        return np.full((1, *inside.shape), -1.0, np.float32)
    if inside.all():
        return np.ones((1, *inside.shape), np.float32)
    dist = ndimage.distance_transform_edt(inside, sampling=sampling) - ndimage.distance_transform_edt(~inside, sampling=sampling)
    return np.clip(dist / SDM_SCALE_MM, -1.0, 1.0).astype(np.float32)[None]


def channel_arrays(case: dict, mode: str, spacing_xyz) -> dict[str, np.ndarray]:
    """Every channel ``mode`` needs, each ``(width, Z, Y, X)`` float32, from a preprocessed
    ``case`` (``image`` ``(1, Z, Y, X)``, ``mask`` ``(Z, Y, X)``)."""
    mask = np.asarray(case["mask"])
    makers = {"image": lambda: np.asarray(case["image"], np.float32),
              "mask": lambda: (mask > 0).astype(np.float32)[None],
              "coords": lambda: coordinate_channels(mask.shape),
              "sdm": lambda: signed_distance(mask, spacing_xyz)}
    return {c: makers[c]() for c in channels_for_mode(mode)}


def stack(case: dict, mode: str, spacing_xyz) -> np.ndarray:
    """The network input ``(C, Z, Y, X)`` of a preprocessed case for ``mode``."""
    return np.concatenate(list(channel_arrays(case, mode, spacing_xyz).values()), axis=0)
