"""Training-time augmentation of model-grid crops: the anatomy, its global mask and its label move together.

Spatial: one random affine per iteration (rotation about all three axes up to ``training.rotate_deg``,
default :data:`ROTATE_DEG`,
per-axis scaling by up to ``SCALE``, translation by up to ``TRANSLATE_VOX`` voxels) resamples the
image linearly and the global mask and label with nearest neighbour, on one sampling grid, so the
three stay aligned. It is a rotation times a positive scaling: never a reflection, since labels are
lateral (eye_left/eye_right, parotid_left/parotid_right; mirroring, below, swaps them). With one
training case the network thus sees the anatomy, and its mask, at many positions, sizes and angles.

Intensity (image channel only), MONAI's dictionary transforms: gamma, scale, shift, Gaussian noise
and blur.

The spatial part is written with ``torch.nn.functional.affine_grid``/``grid_sample`` rather than
MONAI's ``RandAffined``: the same operation, about 2.5x faster on a 48^3 crop on CPU (32 vs 75 ms
per call, one thread), which matters when one training step costs 0.2-0.4 s.

Mask perturbation (``training.mask_augment``, the probability per iteration; off in the presets):
the global mask alone is dilated or eroded by 1-2 voxels and its boundary made ragged (voxels within
one voxel of the boundary flipped with probability 0.25), so that a model tolerates a mask made
another way (Otsu on MR instead of a CT threshold, registration) than its training masks. The
``sdm`` channel, made from the cached mask, is not perturbed.

Mask dropout (``training.mask_dropout``, the probability per iteration; off in the presets): the
global mask channel is set to 0 everywhere, so that a model given image and mask must also find the
structures in the image alone rather than learn their place relative to the mask's outline only.

Mirroring (``training.mirror``; :mod:`gbmseg.mirror`): where the training labels show left/right
pairs about the midline, half the crops are reflected along the left-right axis with the pairs'
labels swapped, so that a reflected left eye is labelled a right eye. Without that plan nothing is
ever reflected.

Only the training loop augments; validation and prediction never do.

Example:
    >>> import torch
    >>> aug = Augmenter(seed=0)
    >>> case = {"image": torch.rand(1, 16, 16, 16), "mask": torch.ones(1, 16, 16, 16),
    ...         "label": torch.zeros(1, 16, 16, 16)}
    >>> out = aug(case, iteration=3)
    >>> out["image"].shape, out["label"].shape
    (torch.Size([1, 16, 16, 16]), torch.Size([1, 16, 16, 16]))
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai import transforms as T

from .config import TrainingConfig
from .mirror import mirror_case

ROTATE_DEG = TrainingConfig.rotate_deg  # default bound (degrees) of the rotation about each axis: the config's
SCALE = 0.15            # per axis, factor uniform in [0.85, 1.15]
TRANSLATE_VOX = 4.0     # per axis, uniform in [-4, 4] voxels
P_SPATIAL = 0.5         # probability of the spatial transform (half the samples are seen as they are)
NEAREST = ("mask", "label")  # resampled with nearest neighbour; every other channel linearly
MASK_MAX_VOX = 2        # mask perturbation: dilation or erosion by 1 .. this many voxels
P_MIRROR = 0.5          # probability of the mirror image, where a mirror plan exists
MASK_FLIP = 0.25        # mask perturbation: chance to flip a voxel within one voxel of the boundary


def _rotation(angles) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_affine(rng: np.random.Generator, rotate_deg: float = ROTATE_DEG) -> tuple[np.ndarray, np.ndarray]:
    """A random (3x3 matrix, translation in voxels), both in (x, y, z) voxel units about the centre;
    the rotation about each axis is uniform in ``[-rotate_deg, rotate_deg]`` degrees."""
    rot = _rotation(np.radians(rng.uniform(-rotate_deg, rotate_deg, 3)))
    scale = rng.uniform(1 - SCALE, 1 + SCALE, 3)
    return rot @ np.diag(scale), rng.uniform(-TRANSLATE_VOX, TRANSLATE_VOX, 3)


def warp(tensors: dict[str, torch.Tensor], matrix: np.ndarray, shift_vox: np.ndarray) -> dict[str, torch.Tensor]:
    """Resample every ``(C, Z, Y, X)`` tensor through the affine that maps an output voxel ``p``
    (x, y, z, about the centre) to the input voxel ``matrix @ p + shift_vox``: ``mask`` and
    ``label`` with nearest neighbour, continuous channels (``image``, ``coords``, ``sdm``)
    linearly; outside the crop is 0."""
    any_t = next(iter(tensors.values()))
    zyx = any_t.shape[-3:]
    half = torch.tensor([zyx[2], zyx[1], zyx[0]], dtype=torch.float64) / 2.0  # x, y, z half-extent (voxels)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, :, :3] = (m * half[None, :]) / half[:, None]       # D^-1 M D in normalised coordinates
    theta[0, :, 3] = torch.as_tensor(shift_vox, dtype=torch.float64) / half
    grid = F.affine_grid(theta.float(), [1, 1, *zyx], align_corners=False)
    out = {}
    linear = [k for k in tensors if k not in NEAREST]
    nearest = [k for k in tensors if k in NEAREST]
    for keys, mode in ((linear, "bilinear"), (nearest, "nearest")):
        if not keys:
            continue
        stack = torch.cat([tensors[k] for k in keys], 0)[None].float()
        res = F.grid_sample(stack, grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
        for k, part in zip(keys, torch.split(res, [tensors[k].shape[0] for k in keys])):
            out[k] = part.contiguous()
    return out


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of ``m`` (C, Z, Y, X) by a (2r+1)^3 cube."""
    return F.max_pool3d(m[None], 2 * r + 1, stride=1, padding=r)[0]


def perturb_mask(mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A plausible other version of a global mask ``(1, Z, Y, X)``: dilated or eroded by 1 to
    :data:`MASK_MAX_VOX` voxels, then a ragged boundary (voxels within one voxel of it flipped with
    probability :data:`MASK_FLIP`)."""
    m = (mask > 0.5).float()
    r = int(rng.integers(1, MASK_MAX_VOX + 1))
    m = _dilate(m, r) if rng.random() < 0.5 else 1.0 - _dilate(1.0 - m, r)
    band = (_dilate(m, 1) - (1.0 - _dilate(1.0 - m, 1))) > 0
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    flip = band & (torch.rand(m.shape, generator=gen) < MASK_FLIP)
    return torch.where(flip, 1.0 - m, m).contiguous()


def _intensity() -> T.Compose:
    return T.Compose([
        T.RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
        T.RandScaleIntensityd(keys="image", prob=0.3, factors=0.15),
        T.RandShiftIntensityd(keys="image", prob=0.3, offsets=0.1),
        T.RandGaussianNoised(keys="image", prob=0.15, std=0.03),
        T.RandGaussianSmoothd(keys="image", prob=0.1, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
    ])


class Augmenter:
    """Random spatial + intensity augmentation, reproducible per (seed, iteration).

    Seeding per iteration (not one running random state) makes a resumed run draw exactly the
    augmentations an uninterrupted run would have drawn, with no state to checkpoint.
    """

    def __init__(self, seed: int = 0, anatomy: bool = True, mask_p: float = 0.0, mask_drop: float = 0.0,
                 mirror: tuple[int, np.ndarray] | None = None, rotate_deg: float = ROTATE_DEG):
        """``anatomy``: spatial + intensity augmentation (``training.augment``); ``mask_p``: the
        probability of :func:`perturb_mask` per call (``training.mask_augment``); ``mask_drop``: the
        probability of an all-zero mask channel per call (``training.mask_dropout``); ``mirror``:
        ``(grid axis, label swap table)`` from :func:`gbmseg.mirror.plan_mirror` (``training.mirror``),
        reflected with probability :data:`P_MIRROR` per call, or ``None``; ``rotate_deg``: the bound of
        the rotation about each axis (``training.rotate_deg``)."""
        self.seed, self.anatomy, self.mask_p = int(seed), bool(anatomy), float(mask_p)
        self.rotate_deg = float(rotate_deg)  # its range is checked with the other settings by gbmseg.training
        self.mask_drop, self.mirror = float(mask_drop), mirror
        self.intensity = _intensity()

    def __call__(self, case: dict[str, torch.Tensor], iteration: int) -> dict[str, torch.Tensor]:
        """Augmented copies of ``case``'s tensors (``image`` (C, Z, Y, X); ``mask``, ``label`` (1, Z, Y, X))."""
        rng = np.random.default_rng([self.seed, int(iteration)])
        out = dict(case)
        if self.mirror is not None and np.random.default_rng([self.seed, int(iteration), 4]).random() < P_MIRROR:
            out = mirror_case(out, *self.mirror)
        if self.anatomy:
            if rng.random() < P_SPATIAL:
                out = warp(out, *random_affine(rng, self.rotate_deg))
            if "image" in out:
                self.intensity.set_random_state(seed=int(rng.integers(2**31)))
                out["image"] = torch.as_tensor(self.intensity({"image": out["image"]})["image"]).float()
        if "mask" in out and self.mask_p > 0:
            mrng = np.random.default_rng([self.seed, int(iteration), 2])
            if mrng.random() < self.mask_p:
                out["mask"] = perturb_mask(out["mask"], mrng)
        if "mask" in out and self.mask_drop > 0:
            if np.random.default_rng([self.seed, int(iteration), 3]).random() < self.mask_drop:
                out["mask"] = torch.zeros_like(out["mask"])
        return out
