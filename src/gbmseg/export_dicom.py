"""Label maps out as DICOM for clinics: a DICOM Segmentation (highdicom) or an RT Structure Set
(pydicom, with highdicom's UIDs and pixel-to-patient transform), both referencing the source series.

A label map made from a DICOM series folder (``read_image`` of that folder, e.g. by
:func:`gbmseg.predict.predict_image`) has the series' grid. Each source slice is matched to its
plane of the label map by its own ``ImagePositionPatient``, so the stored slice order, a
left-handed stack or oblique direction cosines do not move a voxel. One segment / ROI per structure,
named after the model's labels, each with its own colour.

RTSTRUCT contours follow the voxel edges (a staircase through the voxel corners), so filled at
voxel centres they give back exactly the voxels of the label map; contours through voxel centres
(what OpenCV-based tools write) leave the boundary voxels on the polygon, undecided.

Needs the ``dicom`` extra (``pip install "gbmseg[dicom]"``: highdicom, which brings pydicom).

Example:
    >>> labels = {"brainstem": 1, "eye_left": 2}
    >>> write_dicom_seg(seg, "ct_series/", "seg.dcm", labels)          # doctest: +SKIP
    >>> write_rtstruct(seg, "ct_series/", "rtstruct.dcm", labels)       # doctest: +SKIP
    >>> predict_dicom(load_model("runs/x"), "ct_series/", "seg.dcm", "dicom-seg")   # doctest: +SKIP
"""

from __future__ import annotations

import colorsys
from datetime import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import GbmsegError
from .io import (PathLike, atomic_path, check_writable, dicom_files, fmt, is_dicom_series, read_image, same_geometry,
                 to_array)
from .predict import Model, predict_image

__all__ = ["FORMATS", "require_dicom", "segment_colors", "write_dicom_seg", "write_rtstruct",
           "write_dicom", "check_dicom_request", "predict_dicom", "read_dicom_seg", "read_rtstruct", "edge_contours"]

FORMATS = ("nifti", "dicom-seg", "rtstruct")
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as RTSTRUCTs reference studies
EXTRA = 'pip install "gbmseg[dicom]"'


def require_dicom():
    """``(highdicom, pydicom)``, or a one-line :class:`GbmsegError` naming the extra to install."""
    try:
        import highdicom
        import pydicom
    except ImportError as exc:
        raise GbmsegError(f"DICOM output needs highdicom and pydicom ({exc.name} is missing): {EXTRA}") from None
    return highdicom, pydicom


def segment_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours (0-255): hues a golden angle apart, saturated and bright.

    Example:
        >>> segment_colors(2)
        [(242, 61, 61), (61, 114, 242)]
    """
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


# -- the source series ---------------------------------------------------------------------------
def _source_slices(label: sitk.Image, dicom_dir: PathLike, series: str | None = None) -> list[tuple[object, int]]:
    """``(dataset, k)`` per file of the series in ``dicom_dir``: the pydicom dataset (without pixels)
    and the plane ``k`` of ``label`` it lies on, found from the file's own position and orientation.

    Raises:
        GbmsegError: not a single-series folder, ``label`` not on the series' grid, or a file off the grid.
    """
    _, pydicom = require_dicom()
    dicom_dir = Path(dicom_dir)
    image = read_image(dicom_dir, series)  # validates: one series (or the one named), 3D, one channel
    differs = same_geometry(image, label)
    if differs:
        raise GbmsegError(f"{dicom_dir}: the label map is not on this series' grid ({differs})")
    files = dicom_files(dicom_dir, series)
    if len(files) != label.GetSize()[2]:
        raise GbmsegError(f"{dicom_dir}: {len(files)} file(s) for {label.GetSize()[2]} slices; "
                          "multi-frame DICOM is not supported for DICOM output")
    d = np.array(label.GetDirection()).reshape(3, 3)
    out, seen = [], set()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not (np.allclose(iop[:3], d[:, 0], atol=1e-4) and np.allclose(iop[3:], d[:, 1], atol=1e-4)):
            raise GbmsegError(f"{f}: ImageOrientationPatient differs from the series' grid")
        idx = np.array(label.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient]))
        k = int(round(idx[2]))
        if not (np.abs(idx[:2]).max() < 1e-2 and abs(idx[2] - k) < 1e-2 and 0 <= k < label.GetSize()[2]) or k in seen:
            raise GbmsegError(f"{f}: ImagePositionPatient {fmt(ds.ImagePositionPatient)} is not a slice of the series' grid")
        seen.add(k)
        out.append((ds, k))
    return out


def _inputs(label: sitk.Image, labels: dict[str, int], dicom_dir: PathLike, series: str | None,
            out_path: PathLike) -> tuple[Path, np.ndarray, list[tuple[object, int]]]:
    """What both writers start from, checked: ``(out_path, label array, source slices)``."""
    out_path = Path(out_path)
    if not labels:
        raise GbmsegError(f"{out_path}: no structure names given")
    arr = to_array(label)
    extra = sorted(set(np.unique(arr).tolist()) - {0} - set(labels.values()))
    if extra:
        raise GbmsegError(f"{out_path}: label map has values {extra} that no structure name covers")
    return out_path, arr, _source_slices(label, dicom_dir, series)


def _device(model_name: str) -> dict:
    return {"manufacturer": "gbmseg", "manufacturer_model_name": model_name, "software_versions": __version__}


# -- DICOM Segmentation ----------------------------------------------------------------------------
def write_dicom_seg(label: sitk.Image, dicom_dir: PathLike, out_path: PathLike, labels: dict[str, int],
                    model_name: str = "gbmseg", series_description: str = "gbmseg segmentation",
                    series: str | None = None) -> Path:
    """Write ``label`` (on the grid of the series in ``dicom_dir``) as a binary DICOM Segmentation
    with one segment per entry of ``labels`` (name -> value, in value order), atomically.

    Segments are numbered 1.. in value order, labelled with the names, coloured by
    :func:`segment_colors`, typed as anatomical structures made by an AI algorithm (``model_name``).
    Frames reference their source images; empty frames are left out.

    Example:
        >>> write_dicom_seg(seg, "ct/", "out/seg.dcm", {"brainstem": 1})        # doctest: +SKIP
    """
    hd, _ = require_dicom()
    from pydicom.sr.codedict import codes

    out_path, arr, slices = _inputs(label, labels, dicom_dir, series, out_path)
    frames = np.zeros((len(slices),) + arr.shape[1:], np.uint8)  # segment numbers, one frame per source file
    for number, value in enumerate(labels.values(), start=1):
        for i, (_, k) in enumerate(slices):
            frames[i][arr[k] == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb))
        for number, (name, rgb) in enumerate(zip(labels, segment_colors(len(labels))), start=1)]
    for ds, _ in slices:  # in-memory headers: highdicom copies the source's SpacingBetweenSlices, often
        ds.SpacingBetweenSlices = f"{label.GetSpacing()[2]:.6g}"  # absent or wrong (GDCM writes 1); use the planes' distance
    seg = hd.seg.Segmentation(
        source_images=[ds for ds, _ in slices], pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=_series_number(slices), sop_instance_uid=hd.UID(),
        instance_number=1, device_serial_number="0", omit_empty_frames=bool(frames.any()),
        series_description=series_description, content_label="GBMSEG", **_device(model_name))
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return out_path


def _series_number(slices) -> int:
    """A series number after the source's (999 when the source has none)."""
    number = getattr(slices[0][0], "SeriesNumber", None)
    return int(number) + 100 if number not in (None, "") else 999


# -- RT Structure Set ------------------------------------------------------------------------------
def edge_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons along the pixel edges of a 2D boolean ``mask`` (``[row, column]``), as
    ``(N, 2)`` float arrays of ``(column, row)`` pixel coordinates (pixel centres at integers, so
    vertices at half-integers), one per boundary loop, collinear vertices dropped.

    Every loop keeps the inside on the same side (outer boundaries and holes run opposite ways),
    so even-odd and non-zero filling both give back ``mask`` exactly at pixel centres. Pixels
    touching only at a corner get separate loops.

    Example:
        >>> [c.tolist() for c in edge_contours(np.array([[1, 1]], bool))]
        [[[-0.5, -0.5], [1.5, -0.5], [1.5, 0.5], [-0.5, 0.5]]]
    """
    m = np.pad(np.asarray(mask, bool), 1)
    # directed edges between corner points (x, y) of the padded grid; corner (x, y) is pixel
    # coordinate (x - 1.5, y - 1.5) of the unpadded mask; inside on the right (image coordinates)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(starts: np.ndarray, step: tuple[int, int]) -> None:
        for x, y in starts.tolist():
            edges.setdefault((x, y), []).append((x + step[0], y + step[1]))

    inside = m[1:-1, 1:-1]
    ys, xs = np.nonzero(inside & ~m[:-2, 1:-1])   # top edge, left to right
    add(np.stack([xs + 1, ys + 1], 1), (1, 0))
    ys, xs = np.nonzero(inside & ~m[2:, 1:-1])    # bottom edge, right to left
    add(np.stack([xs + 2, ys + 2], 1), (-1, 0))
    ys, xs = np.nonzero(inside & ~m[1:-1, :-2])   # left edge, bottom to top
    add(np.stack([xs + 1, ys + 2], 1), (0, -1))
    ys, xs = np.nonzero(inside & ~m[1:-1, 2:])    # right edge, top to bottom
    add(np.stack([xs + 2, ys + 1], 1), (0, 1))
    loops = []
    while edges:  # every corner has as many edges in as out: a walk can only end where it began
        start = point = next(iter(edges))
        loop, came = [], None
        while True:
            outs = edges[point]
            step = outs[0]
            if len(outs) > 1 and came is not None:  # two pixels touch at this corner: turn right, keep them apart
                right = (point[0] - came[1], point[1] + came[0])
                step = right if right in outs else outs[0]
            outs.remove(step)
            if not outs:
                del edges[point]
            loop.append(point)
            came, point = (step[0] - point[0], step[1] - point[1]), step
            if point == start:
                break
        pts = np.array(loop, float)
        prev, nxt = np.roll(pts, 1, 0), np.roll(pts, -1, 0)
        turn = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
        loops.append(pts[turn != 0] - 1.5)
    return loops


def write_rtstruct(label: sitk.Image, dicom_dir: PathLike, out_path: PathLike, labels: dict[str, int],
                   model_name: str = "gbmseg", series_description: str = "gbmseg structures",
                   series: str | None = None) -> Path:
    """Write ``label`` (on the grid of the series in ``dicom_dir``) as an RT Structure Set with one
    ROI per entry of ``labels`` (name -> value), atomically.

    Each slice's voxels become closed planar contours along the voxel edges (:func:`edge_contours`)
    in patient coordinates, each referencing its source image; holes are separate contours (read
    with the usual even-odd rule). ROIs are numbered 1.. in value order and coloured by
    :func:`segment_colors`; a structure without voxels is kept as an ROI without contours.

    Example:
        >>> write_rtstruct(seg, "ct/", "out/rtstruct.dcm", {"brainstem": 1})    # doctest: +SKIP
    """
    hd, _ = require_dicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    out_path, arr, slices = _inputs(label, labels, dicom_dir, series, out_path)
    src = slices[0][0]
    now = datetime.now()
    sop_uid = hd.UID()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID"):
        setattr(ds, key, getattr(src, key, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID, ds.SeriesNumber = hd.UID(), _series_number(slices)
    ds.SeriesDescription, ds.InstanceNumber = series_description, 1
    ds.OperatorsName = ""
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "gbmseg", model_name, __version__
    ds.StructureSetLabel = "GBMSEG"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    def image_ref(image) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = src.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence([image_ref(image) for image, _ in slices])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID, study_ref.ReferencedSOPInstanceUID = STUDY_COMPONENT_SOP_CLASS, src.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = src.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])

    rois, contours, observations = [], [], []
    for number, ((name, value), rgb) in enumerate(zip(labels.items(), segment_colors(len(labels))), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, src.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        rois.append(roi)
        items = []
        for image, k in slices:
            plane = arr[k] == value
            if not plane.any():
                continue
            to_patient = hd.spatial.ImageToReferenceTransformer(  # image coordinates: pixel index + 0.5
                image_position=image.ImagePositionPatient, image_orientation=image.ImageOrientationPatient,
                pixel_spacing=image.PixelSpacing)
            for loop in edge_contours(plane):
                item = Dataset()
                item.ContourImageSequence = Sequence([image_ref(image)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(loop)
                item.ContourData = [_ds(v) for v in to_patient(loop + 0.5).ravel()]
                items.append(item)
        entry = Dataset()
        entry.ROIDisplayColor = list(rgb)
        entry.ReferencedROINumber = number
        if items:
            entry.ContourSequence = Sequence(items)
        contours.append(entry)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    with atomic_path(out_path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return out_path


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for a coordinate in mm: micrometre precision."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# -- entry points ----------------------------------------------------------------------------------
def write_dicom(label: sitk.Image, dicom_dir: PathLike, out_path: PathLike, labels: dict[str, int],
                fmt: str, model_name: str = "gbmseg", series: str | None = None) -> Path:
    """:func:`write_dicom_seg` (``fmt="dicom-seg"``) or :func:`write_rtstruct` (``fmt="rtstruct"``)."""
    if fmt == "dicom-seg":
        return write_dicom_seg(label, dicom_dir, out_path, labels, model_name, series=series)
    if fmt == "rtstruct":
        return write_rtstruct(label, dicom_dir, out_path, labels, model_name, series=series)
    raise GbmsegError(f"unknown DICOM format '{fmt}' (choose from dicom-seg, rtstruct)")


def check_dicom_request(input_path: PathLike, fmt: str) -> None:
    """Before any work: the extra is installed and ``input_path`` is a DICOM series folder."""
    if fmt not in FORMATS:
        raise GbmsegError(f"--format {fmt}: unknown (choose from {', '.join(FORMATS)})")
    if fmt == "nifti":
        return
    require_dicom()
    if not is_dicom_series(input_path):
        raise GbmsegError(f"{input_path}: --format {fmt} needs a DICOM series folder as input "
                          "(its images are what the output references)")


def predict_dicom(model: Model, dicom_dir: PathLike, out_path: PathLike, fmt: str,
                  mask_path: PathLike | None = None, series: str | None = None,
                  mask_method: str | None = None) -> Path:
    """Predict the series in ``dicom_dir`` (``series``: its UID where the folder holds several) and
    write the label map as ``fmt`` (``dicom-seg`` or ``rtstruct``), its structures named by the
    model's labels. ``mask_path`` / ``mask_method`` as in :func:`gbmseg.predict.predict_image`.

    Example:
        >>> predict_dicom(load_model("runs/x"), "ct/", "out/seg.dcm", "dicom-seg")   # doctest: +SKIP
    """
    check_dicom_request(dicom_dir, fmt)
    check_writable(out_path)
    image = read_image(dicom_dir, series)
    mask = read_image(mask_path) if mask_path else None
    seg = predict_image(model, image, mask, name=str(dicom_dir), mask_method=mask_method)
    name = f"gbmseg {model.mode} ({model.config.name})" if getattr(model.config, "name", None) else "gbmseg"
    return write_dicom(seg, dicom_dir, out_path, dict(model.info["labels"]), fmt, model_name=name[:64], series=series)


# -- reading back onto a grid (checks, benchmarks) -------------------------------------------------
def read_dicom_seg(path: PathLike, reference: sitk.Image, labels: dict[str, int] | None = None) -> sitk.Image:
    """A DICOM Segmentation mapped voxel by voxel onto ``reference``'s grid (uint8): segment ``n``
    becomes value ``labels[name of n]`` (or ``n`` without ``labels``). Every frame pixel is placed by
    its frame's ``ImagePositionPatient`` and the shared orientation and spacing; pixels off the
    grid are dropped. Meant for grids the segmentation was made on (as in a round trip).
    """
    _, pydicom = require_dicom()
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    names = {int(s.SegmentNumber): s.SegmentLabel for s in ds.SegmentSequence}
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    out = np.zeros(to_array(reference).shape, np.uint8)
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = labels[names[number]] if labels else number
        rows, cols = np.nonzero(frame)
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        points = ipp + np.outer(cols * dc, iop[:3]) + np.outer(rows * dr, iop[3:])
        _paint(out, reference, points, value)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def _to_index(reference: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Continuous ``(i, j, k)`` indices of LPS ``points`` ``(N, 3)`` in ``reference``."""
    d = np.array(reference.GetDirection()).reshape(3, 3)
    return (np.linalg.solve(d, (points - np.array(reference.GetOrigin())).T).T) / np.array(reference.GetSpacing())


def _paint(out: np.ndarray, reference: sitk.Image, points: np.ndarray, value: int) -> None:
    idx = np.round(_to_index(reference, points)).astype(int)
    keep = ((idx >= 0) & (idx < np.array(reference.GetSize()))).all(1)
    i, j, k = idx[keep].T
    out[k, j, i] = value


def read_rtstruct(path: PathLike, reference: sitk.Image, labels: dict[str, int] | None = None) -> sitk.Image:
    """An RT Structure Set rasterised onto ``reference``'s grid (uint8): each contour must lie in a
    plane of the grid (as when the grid is the series it was drawn on); the voxel centres inside it
    (even-odd over the contours of a plane, so holes work) get ``labels[ROI name]`` (or the ROI
    number); a voxel centre on a contour line is undecided (only contours through voxel centres
    have such). Contours without area (a point or a line) are skipped. Later ROIs overwrite
    earlier ones where they overlap.
    """
    from matplotlib.path import Path as PolyPath

    _, pydicom = require_dicom()
    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
    shape = to_array(reference).shape  # z, y, x
    out = np.zeros(shape, np.uint8)
    for roi in ds.ROIContourSequence:
        number = int(roi.ReferencedROINumber)
        value = labels[names[number]] if labels else number
        planes: dict[tuple[int, int], np.ndarray] = {}  # (axis, index) -> XOR of fills
        for contour in getattr(roi, "ContourSequence", []):
            idx = _to_index(reference, np.array([float(v) for v in contour.ContourData]).reshape(-1, 3))
            flat = np.ptp(idx, 0) < 1e-2
            if flat.sum() > 1:  # a point or a line (as contours through pixel centres make): no area
                continue
            axis = int(np.argmin(np.ptp(idx, 0)))
            level = float(np.mean(idx[:, axis]))
            plane = int(round(level))
            if np.ptp(idx[:, axis]) > 1e-2 or abs(level - plane) > 1e-2:
                raise GbmsegError(f"{path}: a contour of ROI '{names[number]}' is not in a plane of the grid")
            a, b = [ax for ax in range(3) if ax != axis]
            size = reference.GetSize()
            if not 0 <= plane < size[axis]:
                continue
            gb, ga = np.mgrid[:size[b], :size[a]]
            inside = PolyPath(idx[:, [a, b]]).contains_points(np.stack([ga.ravel(), gb.ravel()], 1)).reshape(ga.shape)
            key = (axis, plane)
            planes[key] = planes.get(key, np.zeros_like(inside)) ^ inside
        for (axis, plane), fill in planes.items():
            view = np.moveaxis(out, 2 - axis, 0)[plane]  # array axes are z, y, x = index 2, 1, 0
            # view's axes are the remaining array axes in order, i.e. index axes (b, a) for a < b
            view[fill] = value
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image
