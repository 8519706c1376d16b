"""DICOM-SEG and RTSTRUCT out: every structure's voxels on the same patient (LPS) coordinates as the
NIfTI label map, for axial, reversed-file, left-handed (flipped), coronal and oblique series."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from gbmseg.cli import main  # noqa: E402
from gbmseg.errors import GbmsegError  # noqa: E402
from gbmseg.export_dicom import (check_dicom_request, edge_contours, read_dicom_seg,  # noqa: E402
                                 read_rtstruct, require_dicom, segment_colors, write_dicom_seg, write_rtstruct)
from gbmseg.io import read_image, to_array, write_image  # noqa: E402
from gbmseg.testing import write_dicom_series  # noqa: E402

LABELS = {"ring": 1, "blob": 2, "dot": 5}
SIZE, SPACING = (16, 20, 12), (0.8, 0.6, 2.5)  # x, y, z voxels; anisotropic in plane and across


def _rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


DIRECTIONS = {
    "axial": np.eye(3),
    "flipped": np.diag([1.0, 1.0, -1.0]),              # left-handed: slices stacked against row x column
    "coronal_LIA": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),  # head_CT's orientation
    "oblique": _rotation([0.3, -0.5, 0.8], 0.6),
}
CASES = [("axial", False), ("axial", True), ("flipped", False), ("flipped", True), ("coronal_LIA", False),
         ("oblique", False), ("oblique", True)]


def _truth(direction) -> tuple[sitk.Image, sitk.Image]:
    """A CT-like volume and its label map: a ring with a hole, an irregular blob with diagonal-only
    neighbours, and a 2-voxel dot; nothing symmetric, so flips and swaps show."""
    z, y, x = np.mgrid[: SIZE[2], : SIZE[1], : SIZE[0]]
    lab = np.zeros(z.shape, np.uint8)
    r = np.hypot((x - 5.0) * SPACING[0], (y - 6.0) * SPACING[1])
    lab[(r > 1.2) & (r < 3.5) & (z >= 2) & (z <= 8)] = 1
    blob = ((x - 11) ** 2 / 9 + (y - 13) ** 2 / 16 + (z - 6) ** 2 / 6) <= 1
    lab[blob] = 2
    lab[4, 17, 3] = lab[4, 18, 4] = 2  # touch the blob's neighbourhood only at corners
    lab[9, 3, 12] = lab[10, 3, 12] = 5
    hu = np.where(lab > 0, 60, 0) + (x * 7 + y * 3 + z * 11) % 50 - 20
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(SPACING)
    image.SetOrigin((-12.5, 30.25, -71.0))
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    label = sitk.GetImageFromArray(lab)
    label.CopyInformation(image)
    return image, label


def _series(tmp_path, kind, reverse):
    """(NIfTI label map, DICOM folder, 'prediction' on the folder's own grid)."""
    image, label = _truth(DIRECTIONS[kind])
    folder = tmp_path / f"{kind}_{reverse}"
    write_dicom_series(image, folder, reverse_files=reverse)
    series = read_image(folder)
    pred = sitk.Resample(label, series, sitk.Transform(), sitk.sitkNearestNeighbor, 255)
    assert (to_array(pred) != 255).all()  # the same voxels, only re-indexed
    return label, folder, pred


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("kind,reverse", CASES)
@pytest.mark.parametrize("write,read", [(write_dicom_seg, read_dicom_seg), (write_rtstruct, read_rtstruct)],
                         ids=["dicom-seg", "rtstruct"])
def test_written_structures_land_on_the_nifti_voxels(tmp_path, kind, reverse, write, read):
    """SEG stores the voxels; RTSTRUCT's edge-following contours, filled at voxel centres, give them
    back exactly too (Dice 1.0, also for the 2-voxel dot, the ring's hole and corner-touching voxels;
    contours through voxel centres would not)."""
    label, folder, pred = _series(tmp_path, kind, reverse)
    back = to_array(read(write(pred, folder, tmp_path / "out.dcm", LABELS), label, LABELS))
    truth = to_array(label)
    for value in LABELS.values():
        assert _dice(back == value, truth == value) == 1.0
    assert np.array_equal(back, truth)


@pytest.mark.parametrize("kind,reverse", CASES)
def test_dicom_seg_read_by_highdicom_lands_on_the_nifti_voxels(tmp_path, kind, reverse):
    """A second reader: highdicom's own volume and affine, not gbmseg's frame walk."""
    label, folder, pred = _series(tmp_path, kind, reverse)
    seg = hd.seg.segread(write_dicom_seg(pred, folder, tmp_path / "seg.dcm", LABELS))
    truth = to_array(label)
    for number, value in enumerate(LABELS.values(), start=1):
        vol = seg.get_volume(segment_numbers=[number], combine_segments=True, skip_overlap_checks=True)
        ijk = np.argwhere(vol.array > 0)
        lps = (vol.affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
        idx = np.round([label.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in lps]).astype(int)
        got = np.zeros(truth.shape, bool)
        got[idx[:, 2], idx[:, 1], idx[:, 0]] = True
        assert _dice(got, truth == value) == 1.0


def test_seg_references_names_and_colours(tmp_path):
    label, folder, pred = _series(tmp_path, "oblique", True)
    ds = pydicom.dcmread(write_dicom_seg(pred, folder, tmp_path / "seg.dcm", LABELS))
    sources = {s.SOPInstanceUID: s for s in (pydicom.dcmread(f) for f in folder.iterdir())}
    src = next(iter(sources.values()))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in ds.SegmentSequence] == list(LABELS)
    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in ds.SegmentSequence]
    assert len(set(colours)) == len(LABELS)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.PatientID == src.PatientID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    for item in ds.PerFrameFunctionalGroupsSequence:  # each frame names the source image at its position
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose([float(v) for v in sources[uid].ImagePositionPatient],
                           [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient], atol=1e-3)


def test_rtstruct_references_names_and_colours(tmp_path):
    label, folder, pred = _series(tmp_path, "oblique", False)
    ds = pydicom.dcmread(write_rtstruct(pred, folder, tmp_path / "rt.dcm", LABELS))
    sources = {s.SOPInstanceUID: s for s in (pydicom.dcmread(f) for f in folder.iterdir())}
    src = next(iter(sources.values()))
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(LABELS)
    assert len({tuple(r.ROIDisplayColor) for r in ds.ROIContourSequence}) == len(LABELS)
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert {c.ReferencedSOPInstanceUID for c in series.ContourImageSequence} == set(sources)
    n = 0
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:  # every contour lies in the plane of the image it references
            img = sources[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.array([float(v) for v in img.ImageOrientationPatient])
            normal = np.cross(iop[:3], iop[3:])
            pts = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert np.abs((pts - np.array([float(v) for v in img.ImagePositionPatient])) @ normal).max() < 1e-3
            assert contour.NumberOfContourPoints == len(pts) and contour.ContourGeometricType == "CLOSED_PLANAR"
            n += 1
    assert n > 0


def test_empty_structure_and_empty_label_map_still_write(tmp_path):
    label, folder, pred = _series(tmp_path, "axial", False)
    labels = dict(LABELS, absent=7)
    seg = pydicom.dcmread(write_dicom_seg(pred, folder, tmp_path / "seg.dcm", labels))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(labels)
    rt = pydicom.dcmread(write_rtstruct(pred, folder, tmp_path / "rt.dcm", labels))
    assert "ContourSequence" not in rt.ROIContourSequence[-1]
    empty = sitk.Image(pred.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(pred)
    assert to_array(read_dicom_seg(write_dicom_seg(empty, folder, tmp_path / "e.dcm", LABELS), label)).max() == 0
    assert to_array(read_rtstruct(write_rtstruct(empty, folder, tmp_path / "e2.dcm", LABELS), label)).max() == 0


def test_edge_contours_fill_back_exactly_with_holes_and_corners():
    from matplotlib.path import Path as PolyPath

    rng = np.random.default_rng(3)
    for _ in range(50):
        mask = rng.random((9, 11)) < rng.uniform(0.2, 0.8)
        yy, xx = np.mgrid[:9, :11]
        even_odd = np.zeros(mask.shape, bool)
        for loop in edge_contours(mask):
            even_odd ^= PolyPath(loop).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(mask.shape)
        assert np.array_equal(even_odd, mask)
    assert edge_contours(np.zeros((3, 3), bool)) == []
    assert len(edge_contours(np.eye(2, dtype=bool))) == 2  # corner-touching pixels: two loops


def test_segment_colours_are_distinct():
    colours = segment_colors(12)
    assert len(set(colours)) == 12 and all(0 <= c <= 255 for rgb in colours for c in rgb)


def test_label_off_the_series_grid_or_unnamed_values_are_refused(tmp_path):
    label, folder, pred = _series(tmp_path, "axial", False)
    shifted = sitk.Image(pred)
    shifted.SetOrigin(tuple(np.array(pred.GetOrigin()) + 1.0))
    with pytest.raises(GbmsegError, match="not on this series' grid"):
        write_dicom_seg(shifted, folder, tmp_path / "x.dcm", LABELS)
    with pytest.raises(GbmsegError, match=r"values \[5\]"):
        write_rtstruct(pred, folder, tmp_path / "y.dcm", {"ring": 1, "blob": 2})
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".dcm") == []  # nothing half-written


def test_writes_are_atomic(tmp_path, monkeypatch):
    label, folder, pred = _series(tmp_path, "axial", False)
    out = tmp_path / "out"
    write_rtstruct(pred, folder, out / "rt.dcm", LABELS)
    assert sorted(p.name for p in out.iterdir()) == ["rt.dcm"]  # no temporary left behind

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pydicom.Dataset, "save_as", broken)
    with pytest.raises(OSError):
        write_rtstruct(pred, folder, out / "rt2.dcm", LABELS)
    assert sorted(p.name for p in out.iterdir()) == ["rt.dcm"]


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(GbmsegError, match=r'pip install "gbmseg\[dicom\]"') as err:
        require_dicom()
    assert "\n" not in str(err.value)


def test_dicom_format_needs_a_dicom_input(tmp_path, capsys):
    image, _ = _truth(np.eye(3))
    nifti = write_image(image, tmp_path / "ct.nii.gz")
    with pytest.raises(GbmsegError, match="needs a DICOM series folder"):
        check_dicom_request(nifti, "rtstruct")
    # checked before the model is loaded: the missing run is not what is reported
    assert main(["predict", "-m", str(tmp_path / "no_run"), "-i", str(nifti), "-o", str(tmp_path / "s.dcm"),
                 "--format", "dicom-seg"]) == 2
    err = capsys.readouterr().err
    assert "needs a DICOM series folder" in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_predicts_a_dicom_series_to_seg_and_rtstruct(tmp_path):
    from gbmseg.dataset import Dataset
    from gbmseg.global_masks import make_dataset_masks
    from gbmseg.predict import load_model, predict_image
    from gbmseg.preprocessing import preprocess_dataset
    from gbmseg.testing import tiny_config, toy_case, write_toy_dataset
    from gbmseg.training import train

    ds = Dataset(write_toy_dataset(tmp_path / "Toy", n=3, size=24), work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    train(cache, "image+mask", ds.cases[:2], ds.cases[2:], tiny_config(max_iterations=2), tmp_path / "run",
          progress=False)
    image, _ = toy_case(11, size=24, spacing=4.5, direction=tuple(_rotation([1, 1, 0], 0.3).ravel()))
    folder = tmp_path / "ct"
    write_dicom_series(image, folder, reverse_files=True)
    for fmt in ("dicom-seg", "rtstruct"):
        assert main(["predict", "-m", str(tmp_path / "run"), "-i", str(folder), "-o", str(tmp_path / f"{fmt}.dcm"),
                     "--format", fmt]) == 0
    model = load_model(tmp_path / "run")
    series = read_image(folder)
    expected = to_array(predict_image(model, series))  # the NIfTI output of the same prediction
    seg = pydicom.dcmread(tmp_path / "dicom-seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["upper", "lower"]
    assert np.array_equal(to_array(read_dicom_seg(tmp_path / "dicom-seg.dcm", series, model.info["labels"])), expected)
    assert np.array_equal(to_array(read_rtstruct(tmp_path / "rtstruct.dcm", series, model.info["labels"])), expected)
    assert expected.any()  # the check would be empty otherwise


def test_series_writer_leaves_the_locale_alone(tmp_path):
    """GDCM's writer switches the process to the C locale (text files then open as ASCII)."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(_truth(np.eye(3))[0], tmp_path / "s")
    assert locale.setlocale(locale.LC_ALL) == before
