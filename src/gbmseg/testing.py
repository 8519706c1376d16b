"""Small generated datasets and a seconds-long config, for gbmseg's tests (and anyone's).

Example:
    >>> image, label = toy_case(0, size=24)
    >>> image.GetSize()
    (24, 24, 24)
"""

from __future__ import annotations

import json
import locale
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


def clip_air(root: Path) -> None:
    """Set every image of the dataset at ``root`` to at least 0 (as heart_CT's source did: no air left)."""
    for path in (root / "imagesTr").glob("*.nii.gz"):
        sitk.WriteImage(sitk.Clamp(sitk.ReadImage(str(path)), lowerBound=0, upperBound=3000), str(path))


def tiny_config(**training) -> Config:
    """The fast preset shrunk to seconds: 4 mm, 32^3 centred on the mask, a 3-level U-Net with 8 base
    channels, ReLU, no augmentation or mirroring, constant learning rate."""
    cfg = load_config("fast", ["preprocessing.spacing=[4,4,4]", "preprocessing.size=[32,32,32]",
                               "network.depth=3", "network.base_channels=8", "network.activation=relu",
                               "network.dropout=0.0", "training.lr=0.003", "training.val_interval=10",
                               "training.max_iterations=30", "training.patience=100",
                               "preprocessing.crop=mask_center", "training.augment=false",
                               "training.schedule=constant", "training.min_iterations=0",
                               "training.mirror=false", "training.extend_iterations=0"])
    cfg.name = "tiny"
    for key, value in training.items():
        cfg.set_value(f"training.{key}={json.dumps(value)}")
    return cfg


def write_dicom_series(image: sitk.Image, folder: Path, reverse_files: bool = False,
                       intercept: float = -1024.0, series_uid: str | None = None, description: str = "synthetic CT",
                       prefix: str = "slice") -> list[Path]:
    """Write ``image`` as a CT DICOM series, one file per slice (``k`` = the image's third index), with
    SimpleITK: stored ``int16`` with ``RescaleIntercept`` (HU = stored + ``intercept``), per-slice
    ``ImagePositionPatient``, ``ImageOrientationPatient`` from the first two direction columns, one
    study, series and frame of reference. A left-handed direction (slices stacked against the normal
    ``row x column``) is written as such: readers sort by position. ``reverse_files`` numbers the files
    and instances in the opposite order of the positions; ``description`` is the SeriesDescription and
    ``prefix`` starts the file names (several series in one folder). For tests and benchmarks, not for clinics.

    Example:
        >>> image, _ = toy_case(0, size=8)
        >>> files = write_dicom_series(image, Path("dcm"))              # doctest: +SKIP
        >>> len(files)                                                  # doctest: +SKIP
        8
    """
    from datetime import datetime

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hu = sitk.GetArrayFromImage(image).astype(np.float64)
    # HU as int16; GDCM stores HU - intercept itself when the rescale tags are set
    lo, hi = max(-32768, -32768 + intercept), min(32767, 32767 + intercept)  # stored value fits int16
    vol = sitk.GetImageFromArray(np.clip(np.round(hu), lo, hi).astype(np.int16))
    vol.CopyInformation(image)
    root = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, as generate_uid uses
    stamp = datetime.now()
    seed = abs(hash((stamp.timestamp(), str(folder)))) % 10**12
    series_uid = series_uid or f"{root}{seed}.2"
    d = image.GetDirection()
    iop = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    common = {
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL", "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "0008|0020": stamp.strftime("%Y%m%d"), "0008|0030": stamp.strftime("%H%M%S"),
        "0008|0060": "CT", "0008|0070": "gbmseg test series", "0008|103e": description,
        "0010|0010": "Phantom^Test", "0010|0020": "PHANTOM001", "0020|0010": "1",
        "0020|000d": f"{root}{seed}.1", "0020|000e": series_uid, "0020|0052": f"{root}{seed}.3",
        "0020|0011": "1", "0020|0037": iop, "0018|0050": f"{image.GetSpacing()[2]:.6g}",
        "0028|1052": f"{intercept:g}", "0028|1053": "1", "0028|1054": "HU",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = vol.GetSize()[2]
    files = []
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer leaves the C locale behind (open() turns ASCII)
    try:
        for k in range(n):
            number = n - k if reverse_files else k + 1
            sl = vol[:, :, k]
            for tag, value in common.items():
                sl.SetMetaData(tag, value)
            pos = image.TransformIndexToPhysicalPoint((0, 0, k))
            sl.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in pos))
            sl.SetMetaData("0020|0013", str(number))
            sl.SetMetaData("0008|0018", f"{root}{seed}.4.{k + 1}")
            path = folder / f"{prefix}_{number:04d}.dcm"
            writer.SetFileName(str(path))
            writer.Execute(sl)
            files.append(path)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return files
