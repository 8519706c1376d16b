"""Export a dataset and its global masks as an nnU-Net v2 raw dataset, so nnU-Net can train on them.

``OUT`` (name it ``DatasetXXX_Name`` under ``$nnUNet_raw`` for nnU-Net to find it)::

    OUT/dataset.json                 channel_names, labels, numTraining, file_ending, and "gbmseg"
                                     (mode, mask record: how to make the masks of test cases)
    OUT/imagesTr/<case>_0000<ending> the image, byte for byte (a hard link, or a copy)
    OUT/imagesTr/<case>_0001<ending> the global mask (mode image+mask), uint8 0/1, the image's geometry
    OUT/labelsTr/<case><ending>      the label map, byte for byte (a hard link, or a copy)

Modes: ``image+mask`` (the image's channels, then the mask), ``image`` (the image's channels only,
no masks needed) and ``mask`` (the mask alone as ``_0000``). The mask channel is named ``noNorm``:
nnU-Net v2 maps channel names to its normalisation (``nnunetv2/preprocessing/normalization/
map_channel_name_to_normalization.py``), and ``noNorm`` (``NoNormalization``) keeps 0/1 as they are,
where an unknown name would z-score the mask per case and ``rescale_to_0_1`` would turn a mask
that fills the image into zeros (it divides by ``max - min``, clipped to 1e-8). Where nnU-Net
resamples (its target spacing is not the scan's), it treats the mask like any input channel (cubic
spline), so the mask's edge in its preprocessed data is smooth rather than 0/1; at the scan's own
spacing it stays 0/1 (``benchmarks/results/export_nnunet.md``).

Images and labels are hard-linked when ``OUT`` is on the dataset's filesystem (no space used; the
files are never written to), else copied. Everything is written into ``OUT.tmp-<pid>`` and renamed
to ``OUT`` at the end, so an interrupted export leaves no half dataset under the final name.

Example:
    >>> ds = Dataset("Dataset001_Head", work="work")                             # doctest: +SKIP
    >>> export_nnunet(ds, "nnUNet_raw/Dataset901_HeadGbm", mode="image+mask")    # doctest: +SKIP
    PosixPath('nnUNet_raw/Dataset901_HeadGbm')
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from . import __version__
from .dataset import Dataset
from .errors import GbmsegError
from .io import atomic_path, from_array, read_image, same_geometry, to_array, write_image, write_json

MODES = ("image+mask", "image", "mask")
MASK_CHANNEL = "noNorm"  # nnU-Net v2's name for "no normalisation": a 0/1 channel stays 0/1
NNUNET_NAME = re.compile(r"Dataset\d{3}_\w+")


def export_nnunet(dataset: Dataset, out: str | os.PathLike, mode: str = "image+mask",
                  cases: list[str] | None = None, link: bool = True, progress: bool = True) -> Path:
    """Write ``dataset`` (its ``cases``, default all) in ``mode`` as an nnU-Net v2 raw dataset at ``out``.

    Raises :class:`GbmsegError` (one line) for an unknown mode, an existing ``out``, masks not made
    yet (modes with a mask) or a mask whose geometry is not its image's. Returns ``out``.

    Example:
        >>> export_nnunet(Dataset("Toy", work="w"), "Dataset901_Toy", mode="mask")   # doctest: +SKIP
        PosixPath('Dataset901_Toy')
    """
    if mode not in MODES:
        raise GbmsegError(f"unknown mode '{mode}' (choose {', '.join(MODES)})")
    out = Path(out)
    if out.exists():
        raise GbmsegError(f"{out}: already exists; remove it or choose another folder")
    cases = dataset.check_cases(list(cases)) if cases else list(dataset.cases)
    record = _mask_record(dataset) if mode != "image" else None
    dataset.validate(cases, progress=progress)  # image and label readable, same geometry, labels declared
    if record is not None:
        missing = [dataset.mask_path(c) for c in cases if not dataset.mask_path(c).exists()]
        if missing:
            raise GbmsegError(f"{missing[0]}: global mask missing ({len(missing)} case(s)); "
                              f"run {_masks_command(dataset)} first")
    ending = dataset.file_ending
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for case in tqdm(cases, desc=f"export {mode}", disable=not progress, leave=False):
            images = dataset.image_paths(case) if mode != "mask" else []
            for c, src in enumerate(images):
                _place(src, tmp / "imagesTr" / f"{case}_{c:04d}{ending}", link)
            if record is not None:
                write_image(mask_on_image(read_image(dataset.mask_path(case)), read_image(dataset.image_path(case)),
                                          dataset.mask_path(case)),
                            tmp / "imagesTr" / f"{case}_{len(images):04d}{ending}")
            _place(dataset.label_path(case), tmp / "labelsTr" / f"{case}{ending}", link)
        write_json(dataset_json(dataset, mode, len(cases), record), tmp / "dataset.json")  # last: marks it complete
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def channel_names(dataset: Dataset, mode: str) -> dict[str, str]:
    """nnU-Net's ``channel_names`` for ``mode``: the dataset's channels and/or ``noNorm`` for the mask.

    Example:
        >>> channel_names(Dataset("Toy"), "image+mask")                           # doctest: +SKIP
        {'0': 'CT', '1': 'noNorm'}
    """
    names = (list(dataset.channels) if mode != "mask" else []) + ([MASK_CHANNEL] if mode != "image" else [])
    return {str(i): name for i, name in enumerate(names)}


def dataset_json(dataset: Dataset, mode: str, n_cases: int, record: dict | None) -> dict:
    """The exported ``dataset.json``: nnU-Net's keys plus ``gbmseg`` (mode, source, mask record)."""
    meta = {"name": dataset.name, "channel_names": channel_names(dataset, mode),
            "labels": {"background": 0, **dataset.labels}, "numTraining": n_cases,
            "file_ending": dataset.file_ending}
    extra = {"version": __version__, "mode": mode, "source": str(dataset.root.resolve())}
    if record is not None:
        extra["global_mask"] = {
            "channel": len(meta["channel_names"]) - 1, "record": record,
            "test_cases": "make the mask channel of new images the way these were made: "
                          f"{_masks_command(dataset, record)} on a folder of them, or "
                          "gbmseg.global_masks.mask_for_record(record, image); cast to uint8 0/1"}
    meta["gbmseg"] = extra
    return meta


def mask_on_image(mask: sitk.Image, image: sitk.Image, name: str | os.PathLike = "mask") -> sitk.Image:
    """``mask`` as uint8 0/1 carrying exactly ``image``'s geometry (nnU-Net compares the channels' geometry).

    A mask whose size differs, or whose spacing, origin or direction differ beyond
    :func:`gbmseg.io.same_geometry`'s tolerance, is an error naming ``name``.
    """
    problem = same_geometry(mask, image)
    if problem:
        raise GbmsegError(f"{name}: geometry does not match its image: {problem}; make the masks again")
    return from_array((to_array(mask) > 0).astype(np.uint8), image)


def _mask_record(dataset: Dataset) -> dict:
    if not dataset.mask_record_path.exists():
        raise GbmsegError(f"{dataset.mask_dir}: no global masks yet; run {_masks_command(dataset)} first")
    return dataset.read_mask_record()


def _masks_command(dataset: Dataset, record: dict | None = None) -> str:
    """The ``gbmseg masks`` command that makes ``dataset``'s masks (with ``record``'s method, if given)."""
    cmd = f"gbmseg masks {dataset.root}" if record is None else "gbmseg masks DATASET"
    if record is None and dataset.work != dataset.root:
        cmd += f" --work {dataset.work}"
    if record is not None:
        cmd += f" --method {record['method']}"
        params = record.get("params") or {}
        if params:
            cmd += f" --params '{json.dumps(params)}'"
    return f"'{cmd}'"


def _place(src: Path, dst: Path, link: bool) -> None:
    """``dst`` becomes ``src``'s content: a hard link when ``link`` and possible, else an atomic copy."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def looks_like_nnunet_name(path: str | os.PathLike) -> bool:
    """True for folder names nnU-Net finds by id (``Dataset901_HeadCTgbm``)."""
    return bool(NNUNET_NAME.fullmatch(Path(path).name))
