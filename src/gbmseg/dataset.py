"""Datasets on disk: nnU-Net v2 raw layout and Medical Segmentation Decathlon (MSD) layout.

nnU-Net v2::

    DATASET/dataset.json          {"channel_names": {"0": "CT"}, "labels": {"background": 0, ...},
                                   "file_ending": ".nii.gz", ...}
    DATASET/imagesTr/<case>_0000.nii.gz
    DATASET/labelsTr/<case>.nii.gz

MSD: ``dataset.json`` holds ``"modality"``, ``"labels"`` (value -> name) and a ``"training"`` list of
``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``.

:class:`Dataset` owns every path of the dataset's working folder ``WORK`` (the dataset folder
unless another is given, since the dataset may be read-only); no other module builds these paths::

    WORK/masksTr/<case>.nii.gz               global masks (``gbmseg masks``)
    WORK/masksTr/<case>_to_template.tfm      registration transforms (mask method ``register``)
    WORK/masksTr/masks.json                  the mask record: method, parameters, modality, version
    WORK/gbmseg_preprocessed/<preset>_<key>/ preprocessing caches, keyed by what made them
    WORK/mask_model_data/                    the whole-organ dataset of a mask model

Example:
    >>> ds = Dataset("Dataset001_Head")                    # doctest: +SKIP
    >>> ds.validate()                                      # doctest: +SKIP
    >>> ds.cases[:2], ds.labels                            # doctest: +SKIP
    (['head_001', 'head_002'], {'brainstem': 1, 'eye_left': 2, 'eye_right': 3})
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .errors import GbmsegError, naming
from .io import (check_scan_geometry, read_image, read_json, same_geometry, to_array, write_image, write_json,
                 write_transform, writable_problem)
from .parallel import parallel_map

CT_NAMES = {"ct", "cta", "cect"}


@dataclass
class Dataset:
    """A labelled dataset folder, read from its ``dataset.json``.

    Attributes:
        root: dataset folder.
        work: folder where derived data (masks, preprocessed cache) are written.
        labels: structure name -> label value, background excluded.
        channels: channel names in order (e.g. ``["CT"]``).
        file_ending: image file ending, e.g. ``".nii.gz"``.
        cases: case identifiers, sorted.
    """

    root: Path
    work: Path | None = None
    labels: dict[str, int] = field(init=False)
    channels: list[str] = field(init=False)
    file_ending: str = field(init=False)
    cases: list[str] = field(init=False)
    name: str = field(init=False)
    _images: dict[str, list[Path]] = field(init=False, repr=False)
    _labels: dict[str, Path] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.work = Path(self.work) if self.work is not None else self.root
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise GbmsegError(f"{meta_path}: not found (a dataset folder needs a dataset.json)")
        meta = read_json(meta_path)
        self.name = str(meta.get("name", self.root.name))
        if "training" in meta:
            self._read_msd(meta, meta_path)
        else:
            self._read_nnunet(meta, meta_path)
        self.cases = sorted(self._labels)
        if not self.cases:
            raise GbmsegError(f"{self.root}: no training cases found")

    # -- layouts -----------------------------------------------------------------------------
    def _read_nnunet(self, meta: dict, meta_path: Path) -> None:
        for key in ("channel_names", "labels", "file_ending"):
            if key not in meta:
                raise GbmsegError(f"{meta_path}: missing key '{key}'")
        names = meta["channel_names"]
        self.channels = [names[k] for k in sorted(names, key=int)]
        self.labels = parse_labels(meta["labels"], meta_path)
        self.file_ending = meta["file_ending"]
        label_dir = self.root / "labelsTr"
        image_dir = self.root / "imagesTr"
        if not label_dir.is_dir():
            raise GbmsegError(f"{label_dir}: folder not found")
        if not image_dir.is_dir():
            raise GbmsegError(f"{image_dir}: folder not found")
        self._labels, self._images = {}, {}
        for path in sorted(label_dir.glob("*" + self.file_ending)):
            case = path.name[: -len(self.file_ending)]
            self._labels[case] = path
            self._images[case] = [
                image_dir / f"{case}_{c:04d}{self.file_ending}" for c in range(len(self.channels))
            ]

    def _read_msd(self, meta: dict, meta_path: Path) -> None:
        modality = meta.get("modality", {"0": "CT"})
        self.channels = [modality[k] for k in sorted(modality, key=int)]
        self.labels = parse_labels(meta.get("labels", {}), meta_path)
        self.file_ending = ".nii.gz"
        self._labels, self._images = {}, {}
        for entry in meta["training"]:
            image = (self.root / entry["image"]).resolve()
            label = (self.root / entry["label"]).resolve()
            case = label.name.split(".")[0]
            self._labels[case] = label
            # MSD images are 4D when multi-channel; gbmseg supports single-channel MSD sets.
            self._images[case] = [image]

    # -- paths ---------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """``"CT"`` when the first channel is CT-like, else ``"MR"`` (any non-CT intensity scale)."""
        return "CT" if self.channels[0].strip().lower() in CT_NAMES else "MR"

    def image_paths(self, case: str) -> list[Path]:
        return self._images[case]

    def image_path(self, case: str) -> Path:
        """Path of the first (or only) channel of ``case``."""
        return self._images[case][0]

    def label_path(self, case: str) -> Path:
        return self._labels[case]

    @property
    def mask_dir(self) -> Path:
        return self.work / "masksTr"

    def mask_path(self, case: str) -> Path:
        return self.mask_dir / f"{case}.nii.gz"

    @property
    def mask_record_path(self) -> Path:
        return self.mask_dir / "masks.json"

    def transform_path(self, case: str) -> Path:
        """``WORK/masksTr/<case>_to_template.tfm``: template -> scan points (mask method ``register``)."""
        return self.mask_dir / f"{case}_to_template.tfm"

    def cache_dir(self, preset: str, key: str) -> Path:
        """``WORK/gbmseg_preprocessed/<preset>_<key>``: ``key`` identifies the settings and masks that made it."""
        return self.work / "gbmseg_preprocessed" / f"{preset}_{key}"

    def atlas_dir(self, key: str) -> Path:
        """``WORK/gbmseg_atlas/<key>``: cached atlas -> target transforms of registration recipe ``key``."""
        return self.work / "gbmseg_atlas" / key

    @property
    def mask_model_dir(self) -> Path:
        return self.work / "mask_model_data"

    def check_writable(self) -> None:
        """Raise before any work if the work folder (masks, cache) cannot be written.

        Example:
            >>> Dataset("/readonly/Dataset001_Head").check_writable()       # doctest: +SKIP
            Traceback (most recent call last):
            ...
            gbmseg.errors.GbmsegError: dataset folder /readonly/Dataset001_Head is not writable; give --work DIR
        """
        problem = writable_problem(self.work)
        if problem is None:
            return
        if self.work == self.root:
            raise GbmsegError(f"dataset folder {self.root} is not writable; give --work DIR")
        raise GbmsegError(f"work folder {self.work} cannot be written ({problem}); give another --work DIR")

    # -- global masks on disk --------------------------------------------------------------------
    def read_mask_record(self) -> dict:
        """The mask record (``masks.json``), or a clear error if masks are missing."""
        path = self.mask_record_path
        if not path.exists():
            raise GbmsegError(f"{path}: no global masks yet; run 'gbmseg masks {self.root}' first")
        return read_json(path)

    def check_mask_record(self, planned: dict, planned_in: str | Path) -> None:
        """Raise unless the masks now are those ``planned_in`` (a job.json) was planned with."""
        masks = self.read_mask_record()
        if masks != planned:
            raise GbmsegError(f"{self.mask_record_path}: the global masks changed since {planned_in} was planned "
                              f"(now '{masks['method']}', planned '{planned['method']}'); plan a new sweep")

    def write_masks(self, record: dict, make: Callable, workers: int = 1, overwrite: bool = False,
                    progress: bool = True, needs_label: bool = False) -> dict:
        """Write every case's mask made by ``make(image, method, params, label)`` -> ``(mask, transform or
        None)`` (a module-level function, so it can run in worker processes), then ``masks.json``.

        Masks already there are kept unless ``overwrite`` or the record differs from the one on disk
        (other method, parameters or ``version``: every mask is made again). ``label`` is read only if ``needs_label``.
        """
        out_dir = self.mask_dir
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GbmsegError(f"{out_dir}: cannot create mask folder ({exc.strerror}); pass --work DIR") from None
        if self.mask_record_path.exists() and not overwrite:
            old = read_json(self.mask_record_path)
            if any(old.get(k) != record.get(k) for k in ("method", "params", "version")):
                overwrite = True  # other method, parameters or mask-making version: make every mask again
        jobs = [(make, self.image_path(c), self.label_path(c) if needs_label else None, self.mask_path(c),
                 self.transform_path(c), record["method"], record["params"])
                for c in self.cases if overwrite or not self.mask_path(c).exists()]
        parallel_map(_mask_case, jobs, workers, desc=f"masks ({record['method']})", progress=progress)
        write_json(record, self.mask_record_path)
        return record

    def check_cases(self, cases: list[str], what: str = "case") -> list[str]:
        """Return ``cases`` after checking that each exists in the dataset."""
        unknown = [c for c in cases if c not in self._labels]
        if unknown:
            raise GbmsegError(
                f"{self.root}: unknown {what} id(s) {', '.join(unknown)}; "
                f"known: {', '.join(self.cases[:5])}{' ...' if len(self.cases) > 5 else ''}"
            )
        return cases

    # -- validation ----------------------------------------------------------------------------
    def validate(self, cases: list[str] | None = None, progress: bool = True) -> None:
        """Check every case up front; raise :class:`GbmsegError` naming the first bad file.

        Checks: image and label exist and are readable, every channel present, same shape and
        geometry (tolerance 1e-3) as the label, integer label values declared in dataset.json,
        no NaN in images, label not empty.
        """
        cases = self.check_cases(cases or self.cases)
        for case in tqdm(cases, desc="validate", disable=not progress, leave=False):
            self.validate_case(case)

    def validate_case(self, case: str) -> None:
        label_path = self.label_path(case)
        for path in self.image_paths(case):
            if not path.exists():
                raise GbmsegError(f"{path}: image (channel {path.name}) missing for case '{case}'")
        label = read_image(label_path)
        check_label(label, label_path, set(self.labels.values()))
        for path in self.image_paths(case):
            image = read_image(path)
            problem = same_geometry(image, label)
            if problem:
                raise GbmsegError(f"{path}: geometry does not match {label_path.name}: {problem}")
            check_image(image, path)


def check_image(image: sitk.Image, path: Path) -> None:
    """Raise if ``image`` holds NaN/inf, or is too small or has an implausible spacing to be a scan
    (:func:`gbmseg.io.check_scan_geometry`)."""
    check_scan_geometry(image, path)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = to_array(image)
        if not np.isfinite(arr).all():
            raise GbmsegError(f"{path}: image contains NaN or infinite values")


def label_array(label: sitk.Image, path, allowed: set[int] | None = None) -> np.ndarray:
    """Integer voxel array of a label map; raise (naming ``path``) on NaN, non-integer values, a
    non-numeric dtype, or non-zero values outside ``allowed`` (unless ``allowed`` is None)."""
    arr = to_array(label)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise GbmsegError(f"{path}: label map contains NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise GbmsegError(f"{path}: label map has non-integer values (dtype {arr.dtype})")
    elif arr.dtype.kind not in "iub":
        raise GbmsegError(f"{path}: label map has unsupported dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if allowed is not None:
        undeclared = set(np.unique(arr).tolist()) - allowed - {0}
        if undeclared:
            raise GbmsegError(f"{path}: label values {sorted(undeclared)} are not declared "
                              f"(declared: {sorted(allowed)})")
    return arr


def check_label(label: sitk.Image, path: Path, allowed: set[int]) -> None:
    """Raise if ``label`` is not integer-valued, has undeclared values, or is empty."""
    if not label_array(label, path, allowed).any():
        raise GbmsegError(f"{path}: label map is empty (only background)")


def _mask_case(args: tuple) -> str:
    make, image_path, label_path, mask_path, tfm_path, method, params = args
    image = read_image(image_path)
    label = read_image(label_path) if label_path is not None else None
    try:
        mask, transform = make(image, method, params, label)
    except GbmsegError as exc:
        raise naming(exc, image_path) from None
    if transform is not None:  # the transform first: a mask on disk means its transform is there too
        write_transform(transform, tfm_path)
    return str(write_image(mask, mask_path))


def parse_labels(raw: dict, source, require: bool = True) -> dict[str, int]:
    """The one label-map parser: structure name -> value, background (value 0 or the name
    ``background``) dropped, sorted by value. Accepts name -> value (nnU-Net v2) and value -> name
    (MSD, nnU-Net v1); region-based labels are refused. ``source`` names the file in errors."""
    if raw and all(isinstance(v, str) for v in raw.values()):  # value -> name
        raw = {name: value for value, name in raw.items()}
    labels = {}
    for name, value in raw.items():
        if isinstance(value, (list, tuple)):  # nnU-Net region-based labels
            raise GbmsegError(f"{source}: region-based label '{name}' is not supported")
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise GbmsegError(f"{source}: label '{name}' has non-integer value {value!r}") from None
        if value != 0 and str(name).lower() != "background":
            labels[str(name)] = value
    if require and not labels:
        raise GbmsegError(f"{source}: 'labels' declares no structure besides background")
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def split_cases(cases: list[str], n_val: int, n_test: int = 0, seed: int | None = 0) -> dict:
    """The one split function: ``n_val`` validation and ``n_test`` test cases, the rest is the pool.

    With a ``seed``, cases are drawn from a seeded shuffle of the sorted ids; with ``seed=None`` the
    last ``n_val`` cases (sorted) validate. Every part comes back sorted.
    """
    if n_val < 1 or n_test < 0 or n_val + n_test >= len(cases):
        raise GbmsegError(f"cannot split {len(cases)} cases into {n_val} validation, {n_test} test "
                          "and at least one training case")
    order = sorted(cases)
    if seed is None:
        order = order[-n_val:] + order[:-n_val]
    else:
        random.Random(seed).shuffle(order)
    return {"val": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
            "pool": sorted(order[n_val + n_test:])}
