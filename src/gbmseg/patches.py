"""Patches: train on part of a model grid that is larger than the network's input, predict it whole.

When the planned crop is larger than the preset's ``size`` (a head-and-neck scan whose structures
span more than the preset's field of view), each training iteration sees one patch of ``size``
voxels (a third of them centred on a voxel of a structure drawn at random among those the case
holds, as nnU-Net samples: a brainstem of a few hundred voxels is drawn as often as a mandible of
a few thousand), and validation and
prediction cover the whole grid with MONAI's Gaussian-weighted sliding window.

Example:
    >>> import numpy as np, torch
    >>> case = {"image": torch.zeros(1, 64, 48, 48), "mask": torch.zeros(1, 64, 48, 48),
    ...         "label": torch.zeros(1, 64, 48, 48)}
    >>> patch = random_patch(case, (32, 32, 32), np.random.default_rng(0))
    >>> tuple(patch["label"].shape)
    (1, 32, 32, 32)
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .mirror import mirrored_probabilities

FOREGROUND_FRACTION = 1 / 3


def random_patch(case: dict[str, torch.Tensor], size, rng: np.random.Generator,
                 foreground: float = FOREGROUND_FRACTION) -> dict[str, torch.Tensor]:
    """A ``size`` (Z, Y, X) patch of every tensor in ``case`` (channels first), at the same place.

    With probability ``foreground`` the patch is centred (as far as the grid allows) on a random
    voxel of one structure, drawn uniformly among the structures present in ``label``, otherwise
    placed uniformly. A case no larger than ``size`` is returned as is.
    """
    shape = np.array(case["label"].shape[-3:])
    size = np.minimum(np.asarray(size, int), shape)
    if (size == shape).all():
        return case
    room = shape - size
    start = np.array([rng.integers(0, r + 1) for r in room])
    if rng.random() < foreground:
        label = case["label"][0]
        fg = torch.nonzero(label > 0)
        if len(fg):
            values = label[tuple(fg.T)]  # the structure of each labelled voxel
            present = torch.unique(values)
            fg = fg[values == present[int(rng.integers(len(present)))]]
            centre = fg[int(rng.integers(len(fg)))].numpy()
            start = np.clip(centre - size // 2, 0, room)
    sl = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size))
    return {k: v[(slice(None),) + sl] for k, v in case.items()}


def predict_logits(net: torch.nn.Module, x: torch.Tensor, patch_size, overlap: float = 0.25) -> torch.Tensor:
    """Logits ``(B, C, Z, Y, X)`` for input ``x``: one pass if it fits ``patch_size``, else sliding windows."""
    if tuple(x.shape[-3:]) == tuple(int(s) for s in patch_size):
        return net(x)
    return sliding_window_inference(x, roi_size=tuple(int(s) for s in patch_size), sw_batch_size=1,
                                    predictor=net, overlap=overlap, mode="gaussian")


def predict_probabilities(net: torch.nn.Module, x: torch.Tensor, patch_size, mirror=None,
                          logits: torch.Tensor | None = None) -> torch.Tensor:
    """Class probabilities ``(B, K, Z, Y, X)`` as ``gbmseg predict`` makes them: the softmax of
    :func:`predict_logits`, with ``mirror = (axis, swap table)`` averaged with the mirror image's
    (:func:`gbmseg.mirror.mirrored_probabilities`). ``logits``: :func:`predict_logits` of ``x``, if
    already computed."""
    def predict(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(predict_logits(net, t, patch_size).float(), dim=1)

    plain = predict(x) if logits is None else torch.softmax(logits.float(), dim=1)
    return plain if mirror is None else mirrored_probabilities(predict, x, *mirror, plain=plain)
