import json

import numpy as np
import pytest
import SimpleITK as sitk

from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.io import read_image, write_image


def test_reads_nnunet_layout(toy_dataset):
    ds = Dataset(toy_dataset)
    assert ds.cases == [f"toy_{i:03d}" for i in range(6)]
    assert ds.labels == {"upper": 1, "lower": 2}
    assert ds.modality == "CT"
    assert ds.image_path("toy_001").name == "toy_001_0000.nii.gz"
    ds.validate(progress=False)


def test_reads_msd_layout(toy_dataset):
    meta = {"name": "Toy", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "upper", "2": "lower"},
            "training": [{"image": f"./imagesTr/toy_{i:03d}_0000.nii.gz", "label": f"./labelsTr/toy_{i:03d}.nii.gz"}
                         for i in range(3)]}
    (toy_dataset / "dataset.json").write_text(json.dumps(meta))
    ds = Dataset(toy_dataset)
    assert ds.cases == ["toy_000", "toy_001", "toy_002"]
    assert ds.labels == {"upper": 1, "lower": 2}
    ds.validate(progress=False)


def test_reads_nrrd_and_mha(toy_dataset, tmp_path):
    img = read_image(toy_dataset / "imagesTr" / "toy_000_0000.nii.gz")
    for ext in (".nrrd", ".mha"):
        write_image(img, tmp_path / f"x{ext}")
        back = read_image(tmp_path / f"x{ext}")
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def _expect(toy_dataset, fragment: str, filename: str):
    with pytest.raises(GbmsegError) as err:
        Dataset(toy_dataset).validate(progress=False)
    assert fragment in str(err.value)
    assert filename in str(err.value)


def test_missing_channel(toy_dataset):
    (toy_dataset / "imagesTr" / "toy_002_0000.nii.gz").unlink()
    _expect(toy_dataset, "missing", "toy_002_0000.nii.gz")


def test_shape_mismatch(toy_dataset):
    lab = read_image(toy_dataset / "labelsTr" / "toy_001.nii.gz")
    write_image(lab[:, :, :-2], toy_dataset / "labelsTr" / "toy_001.nii.gz")
    _expect(toy_dataset, "shape", "toy_001")


def test_affine_mismatch(toy_dataset):
    path = toy_dataset / "imagesTr" / "toy_003_0000.nii.gz"
    img = read_image(path)
    img.SetOrigin(tuple(np.array(img.GetOrigin()) + 5.0))
    write_image(img, path)
    _expect(toy_dataset, "origin", "toy_003_0000.nii.gz")


def test_empty_label(toy_dataset):
    path = toy_dataset / "labelsTr" / "toy_004.nii.gz"
    lab = read_image(path)
    write_image(lab * 0, path)
    _expect(toy_dataset, "empty", "toy_004.nii.gz")


def test_undeclared_label_value(toy_dataset):
    path = toy_dataset / "labelsTr" / "toy_000.nii.gz"
    arr = sitk.GetArrayFromImage(read_image(path))
    arr[0, 0, 0] = 7
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(read_image(path))
    write_image(img, path)
    _expect(toy_dataset, "[7]", "toy_000.nii.gz")


def test_float_label_with_fractions(toy_dataset):
    path = toy_dataset / "labelsTr" / "toy_005.nii.gz"
    ref = read_image(path)
    img = sitk.Cast(ref, sitk.sitkFloat32) * 0.5
    write_image(img, path)
    _expect(toy_dataset, "non-integer", "toy_005.nii.gz")


def test_nan_in_image(toy_dataset):
    path = toy_dataset / "imagesTr" / "toy_001_0000.nii.gz"
    ref = read_image(path)
    arr = sitk.GetArrayFromImage(ref).astype(np.float32)
    arr[3, 3, 3] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    write_image(img, path)  # ITK's NIfTI reader would turn this NaN into 0: it must still be caught
    _expect(toy_dataset, "NaN", "toy_001_0000.nii.gz")


def test_missing_dataset_json(tmp_path):
    with pytest.raises(GbmsegError, match="dataset.json"):
        Dataset(tmp_path)


def test_unknown_case_ids(toy_dataset):
    with pytest.raises(GbmsegError, match="nope"):
        Dataset(toy_dataset).check_cases(["toy_000", "nope"])


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(GbmsegError, match="bad.nii.gz"):
        read_image(bad)


def test_write_is_atomic(tmp_path, monkeypatch):
    img = sitk.Image(4, 4, 4, sitk.sitkUInt8)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        write_image(img, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_invalid_dataset_json(toy_dataset):
    (toy_dataset / "dataset.json").write_text("{not json")
    with pytest.raises(GbmsegError, match="dataset.json: invalid JSON"):
        Dataset(toy_dataset)


def test_a_folder_of_nifti_files_is_no_dicom_series_and_itk_stays_quiet(tmp_path, capfd):
    """predict -i FOLDER asks whether the folder is one DICOM series; for NIfTI files the answer is
    no, without ITK's "No Series were found" on stderr, and ITK's warnings stay on afterwards."""
    from gbmseg.io import is_dicom_series

    write_image(sitk.Image([4, 4, 4], sitk.sitkInt16), tmp_path / "ct_0000.nii.gz")
    assert sitk.ProcessObject.GetGlobalWarningDisplay()
    assert not is_dicom_series(tmp_path)
    assert "No Series" not in capfd.readouterr().err
    assert sitk.ProcessObject.GetGlobalWarningDisplay()
