"""Reading and writing images: anything SimpleITK reads, DICOM series folders, atomic writes.

All geometry in gbmseg is SimpleITK geometry (origin, spacing, direction in LPS world
coordinates, millimetres). Arrays obtained with :func:`to_array` are indexed ``[z, y, x]``.

Example:
    >>> img = read_image("case_0000.nii.gz")            # doctest: +SKIP
    >>> write_image(img, "out/copy.nii.gz")              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import GbmsegError

PathLike = str | os.PathLike
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_image(path: PathLike, series: str | None = None) -> sitk.Image:
    """Read a 3D scalar image from a file (NIfTI, NRRD, MHA, ...) or a DICOM series folder.

    A DICOM folder holding several series needs ``series`` (a series instance UID, see
    :func:`dicom_series`).

    Raises:
        GbmsegError: the file is missing, unreadable, not 3D, has several components, or the
            folder holds several DICOM series and ``series`` does not name one.
    """
    path = Path(path)
    if not path.exists():
        raise GbmsegError(f"{path}: file not found")
    try:
        if path.is_dir():
            image = _read_dicom(path, series)
        else:
            image = sitk.ReadImage(str(path))
            if path.name.endswith((".nii", ".nii.gz")):
                _check_nifti_finite(path)
    except RuntimeError as exc:  # SimpleITK's error for unreadable files
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise GbmsegError(f"{path}: cannot read image ({first})") from None
    if image.GetDimension() != 3:
        raise GbmsegError(f"{path}: expected a 3D scalar image, got a {image.GetDimension()}D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise GbmsegError(f"{path}: expected a 3D scalar image, got {image.GetNumberOfComponentsPerPixel()} "
                          "components per voxel (a 4D, RGB or multi-channel image); give one channel per file")
    return image


def is_dicom_series(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM series (as :func:`read_image` reads it)."""
    path = Path(path)
    if not path.is_dir():
        return False
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's "No Series were found" is the answer here
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def dicom_series(folder: PathLike) -> list[dict]:
    """The DICOM series in ``folder``: ``{"uid", "description", "slices"}`` each, in GDCM's order.

    Example:
        >>> dicom_series("scan_dir")                            # doctest: +SKIP
        [{'uid': '1.2.826.0.1.3680043.2.1125.1', 'description': 'CT head', 'slices': 40}]
    """
    reader = sitk.ImageSeriesReader()
    out = []
    for uid in reader.GetGDCMSeriesIDs(str(folder)):
        files = reader.GetGDCMSeriesFileNames(str(folder), uid)
        info = sitk.ImageFileReader()
        info.SetFileName(files[0])
        info.ReadImageInformation()
        description = info.GetMetaData("0008|103e").strip() if info.HasMetaDataKey("0008|103e") else ""
        out.append({"uid": uid, "description": description, "slices": len(files)})
    return out


def dicom_files(folder: PathLike, series: str | None = None) -> list[str]:
    """The files of the one DICOM series in ``folder`` (or of ``series``, a series instance UID), in
    GDCM's slice order.

    Raises:
        GbmsegError: no series, several and ``series`` not given, or ``series`` not among them (listed).
    """
    found = dicom_series(folder)
    if not found:
        raise GbmsegError(f"{folder}: folder holds no DICOM series")
    uids = [s["uid"] for s in found]
    if series is None and len(found) > 1 or series is not None and series not in uids:
        listed = "; ".join(f"{s['uid']} '{s['description']}' ({s['slices']} slices)" for s in found)
        what = f"holds {len(found)} DICOM series" if series is None else f"holds no DICOM series '{series}'"
        raise GbmsegError(f"{folder}: {what}; choose one with --series UID: {listed}")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series or uids[0]))


def _read_dicom(folder: Path, series: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_files(folder, series))
    return reader.Execute()


MIN_VOXELS = 8  # per axis: fewer is not a scan (a crop would be mostly padding)
SPACING_RANGE_MM = (0.05, 20.0)  # voxel sizes outside this are a header error, not a scan


def check_scan_geometry(image: sitk.Image, path: PathLike) -> None:
    """Raise unless ``image`` is a plausible scan: at least :data:`MIN_VOXELS` voxels per axis and a
    spacing within :data:`SPACING_RANGE_MM` (a wrong header would place the crop anywhere).

    Example:
        >>> check_scan_geometry(sitk.Image([4, 4, 4], sitk.sitkInt16), "tiny.nii.gz")
        Traceback (most recent call last):
        ...
        gbmseg.errors.GbmsegError: tiny.nii.gz: image is only (4, 4, 4) voxels; a scan needs at least 8 per axis
    """
    size = image.GetSize()
    if min(size) < MIN_VOXELS:
        raise GbmsegError(f"{path}: image is only {tuple(size)} voxels; a scan needs at least {MIN_VOXELS} per axis")
    lo, hi = SPACING_RANGE_MM
    spacing = image.GetSpacing()
    if not all(lo <= s <= hi for s in spacing):
        raise GbmsegError(f"{path}: voxel spacing {fmt(spacing)} mm is outside {lo}-{hi} mm; "
                          "the image header is probably wrong")


def writable_problem(path: PathLike) -> str | None:
    """``None`` when ``path`` (a file or folder, existing or not) can be created or written, else why not.

    Looks at the nearest existing folder on the way up; nothing is created.
    """
    path = Path(path).absolute()
    if path.exists():
        target = path if path.is_dir() else path.parent
    else:
        target = path.parent
        while not target.exists():
            target = target.parent
        if not target.is_dir():
            return f"{target} is a file, not a folder"
    if not os.access(target, os.W_OK | os.X_OK):
        return f"{target} is not writable"
    return None


def check_writable(path: PathLike, what: str = "output") -> None:
    """Raise if ``path`` cannot be written: called before any long work, so a run does not fail at its end.

    Example:
        >>> check_writable("notes.txt/out.nii.gz")                 # doctest: +SKIP
        Traceback (most recent call last):
        ...
        gbmseg.errors.GbmsegError: notes.txt/out.nii.gz: cannot write the output here (/home/me/notes.txt is a file, not a folder)
    """
    problem = writable_problem(path)
    if problem:
        raise GbmsegError(f"{path}: cannot write the {what} here ({problem})")


def _check_nifti_finite(path: Path) -> None:
    """ITK's NIfTI reader silently turns NaN into 0, so float NIfTI files are checked with nibabel."""
    import nibabel

    img = nibabel.load(str(path))
    if img.get_data_dtype().kind == "f" and not np.isfinite(np.asanyarray(img.dataobj)).all():
        raise GbmsegError(f"{path}: image contains NaN or infinite values")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    Every file gbmseg writes goes through here, so an interrupted or failed write never leaves
    a half-written file under the final name.

    Example:
        >>> with atomic_path("out/report.md") as tmp:          # doctest: +SKIP
        ...     tmp.write_text("# done")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_image(image: sitk.Image, path: PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return Path(path)


def write_text(text: str, path: PathLike) -> Path:
    """Write a text file atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(obj, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(json.dumps(obj, indent=2), path)


def read_json(path: PathLike, required: tuple[str, ...] = (), what: str = "record"):
    """Parse a JSON file. Every JSON record gbmseg reads goes through here: a missing, unreadable,
    corrupt or truncated file becomes a one-line :class:`GbmsegError` naming the file. With
    ``required``, the file must hold an object with those keys (else: not a ``what``, missing keys).

    Example:
        >>> read_json("job.json", required=("mode", "train"), what="sweep job")   # doctest: +SKIP
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GbmsegError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GbmsegError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GbmsegError(f"{path}: invalid JSON, corrupt or truncated ({exc})") from None
    if required:
        missing = [k for k in required if not isinstance(data, dict) or k not in data]
        if missing:
            raise GbmsegError(f"{path}: not a {what} (missing {', '.join(missing)})")
    return data


def write_transform(transform: sitk.Transform, path: PathLike) -> Path:
    """``sitk.WriteTransform`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return Path(path)


def to_array(image: sitk.Image) -> np.ndarray:
    """Voxel array of ``image``, indexed ``[z, y, x]`` (a copy)."""
    return sitk.GetArrayFromImage(image)


def from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Image with voxel values ``array`` (``[z, y, x]``) and the geometry of ``reference``."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> str | None:
    """``None`` when ``a`` and ``b`` share size, spacing, origin and direction, else what differs.

    Spacing and direction are compared relatively (``tol``), the origin in millimetres
    (``tol`` times the largest spacing, at least 1e-3 mm).
    """
    if a.GetSize() != b.GetSize():
        return f"shape {a.GetSize()} != {b.GetSize()}"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=tol, atol=0):
        return f"spacing {fmt(a.GetSpacing())} != {fmt(b.GetSpacing())}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=tol):
        return "direction cosines differ"
    origin_tol = max(1e-3, tol * max(a.GetSpacing()))
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=origin_tol, rtol=0):
        return f"origin {fmt(a.GetOrigin())} != {fmt(b.GetOrigin())}"
    return None


def fmt(values) -> str:
    """Short text for a tuple of floats, for error messages."""
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
