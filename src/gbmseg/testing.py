"""Small generated datasets and a seconds-long config, for gbmseg's tests (and anyone's).

Example:
    >>> image, label = toy_case(0, size=24)
    >>> image.GetSize()
    (24, 24, 24)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .config import Config, load_config


def toy_case(seed: int, size: int = 40, spacing: float = 4.0, direction=None) -> tuple[sitk.Image, sitk.Image]:
    """A CT-like 'body' ellipsoid at a random place and size, with two spheres at fixed positions
    relative to the body (label 1 above-left of its centre, label 2 below-right). The spheres have
    almost the body's HU, so the body outline (the global mask) is what locates them."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:size, :size, :size].astype(np.float32)
    centre = size / 2 + rng.uniform(-4, 4, 3)
    radii = size * np.array([0.3, 0.28, 0.26]) * rng.uniform(0.9, 1.1, 3)
    body = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2) <= 1
    label = np.zeros((size,) * 3, np.uint8)
    for value, offset in ((1, (0.45, 0.0, 0.45)), (2, (-0.45, 0.3, -0.4))):
        c = centre + np.array(offset) * radii
        r = 0.35 * radii.mean()
        label[(((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r**2) & body] = value
    hu = np.where(body, 40.0, -1000.0) + np.where(label > 0, 15.0, 0.0) + rng.normal(0, 10, body.shape)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin(tuple(rng.uniform(-50, 50, 3)))
    if direction is not None:
        image.SetDirection(direction)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(image)
    return image, lab


def write_toy_dataset(root: Path, n: int = 6, seed: int = 0, size: int = 40) -> Path:
    """An nnU-Net v2 raw dataset of :func:`toy_case` volumes."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        image, label = toy_case(seed * 100 + i, size=size)
        sitk.WriteImage(image, str(root / "imagesTr" / f"toy_{i:03d}_0000.nii.gz"))
        sitk.WriteImage(label, str(root / "labelsTr" / f"toy_{i:03d}.nii.gz"))
    meta = {"name": "Toy", "channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": n,
            "labels": {"background": 0, "upper": 1, "lower": 2}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def tiny_config(**training) -> Config:
    """The fast preset shrunk to seconds: 4 mm, 32^3 centred on the mask, a 3-level U-Net with 8 base
    channels, ReLU, no augmentation, constant learning rate."""
    cfg = load_config("fast", ["preprocessing.spacing=[4,4,4]", "preprocessing.size=[32,32,32]",
                               "network.depth=3", "network.base_channels=8", "network.activation=relu",
                               "network.dropout=0.0", "training.lr=0.003", "training.val_interval=10",
                               "training.max_iterations=30", "training.patience=100",
                               "preprocessing.crop=mask_center", "training.augment=false",
                               "training.schedule=constant", "training.min_iterations=0"])
    cfg.name = "tiny"
    for key, value in training.items():
        cfg.set_value(f"training.{key}={json.dumps(value)}")
    return cfg
