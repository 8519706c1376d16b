"""gbmseg export-nnunet: an nnU-Net v2 raw dataset with the global mask as an extra channel."""

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from gbmseg.testing import write_toy_dataset

from gbmseg import export_nnunet as ex
from gbmseg.cli import main
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.export_nnunet import export_nnunet
from gbmseg.global_masks import make_dataset_masks


@pytest.fixture
def masked(tmp_path):
    """A 3-case toy dataset with threshold masks in a separate work folder."""
    ds = Dataset(write_toy_dataset(tmp_path / "Toy", n=3, size=24), work=tmp_path / "work")
    make_dataset_masks(ds, progress=False)
    return ds


def _meta(out):
    return json.loads((out / "dataset.json").read_text())


def test_image_plus_mask_dataset_json_names_two_channels_and_the_mask_method(masked, tmp_path):
    out = export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)
    meta = _meta(out)
    assert meta["channel_names"] == {"0": "CT", "1": "noNorm"}
    assert meta["labels"] == {"background": 0, "upper": 1, "lower": 2}
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert meta["gbmseg"]["mode"] == "image+mask" and meta["gbmseg"]["global_mask"]["channel"] == 1
    assert meta["gbmseg"]["global_mask"]["record"]["method"] == "threshold"
    assert "--method threshold" in meta["gbmseg"]["global_mask"]["test_cases"]


def test_every_mask_channel_has_its_image_geometry_and_is_uint8_zero_one(masked, tmp_path):
    out = export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        f"toy_{i:03d}_{c:04d}.nii.gz" for i in range(3) for c in range(2)]
    for case in masked.cases:
        image = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0000.nii.gz"))
        mask = sitk.ReadImage(str(out / "imagesTr" / f"{case}_0001.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert (mask.GetSize(), mask.GetSpacing(), mask.GetOrigin(), mask.GetDirection()) == \
               (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())
        arr = sitk.GetArrayFromImage(mask)
        assert set(np.unique(arr)) == {0, 1}
        np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(sitk.ReadImage(str(masked.mask_path(case)))) > 0)


def test_images_and_labels_are_the_dataset_files_byte_for_byte(masked, tmp_path):
    out = export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)
    for case in masked.cases:
        assert (out / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == masked.image_path(case).read_bytes()
        assert (out / "labelsTr" / f"{case}.nii.gz").read_bytes() == masked.label_path(case).read_bytes()
    assert os.stat(out / "labelsTr" / "toy_000.nii.gz").st_nlink == 2  # same filesystem: a hard link


def test_copies_when_hard_links_fail(masked, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(ex.os, "link", no_link)
    out = export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)
    label = out / "labelsTr" / "toy_001.nii.gz"
    assert os.stat(label).st_nlink == 1 and label.read_bytes() == masked.label_path("toy_001").read_bytes()


def test_image_mode_needs_no_masks_and_has_one_channel(tmp_path):
    ds = Dataset(write_toy_dataset(tmp_path / "Toy", n=2, size=24), work=tmp_path / "work")
    out = export_nnunet(ds, tmp_path / "Dataset902_Toy", mode="image", progress=False)
    assert _meta(out)["channel_names"] == {"0": "CT"} and "global_mask" not in _meta(out)["gbmseg"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["toy_000_0000.nii.gz", "toy_001_0000.nii.gz"]


def test_mask_mode_exports_the_mask_alone_as_channel_zero(masked, tmp_path):
    out = export_nnunet(masked, tmp_path / "Dataset903_Toy", mode="mask", progress=False)
    assert _meta(out)["channel_names"] == {"0": "noNorm"} and _meta(out)["gbmseg"]["global_mask"]["channel"] == 0
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"toy_{i:03d}_0000.nii.gz" for i in range(3)]
    mask = sitk.ReadImage(str(out / "imagesTr" / "toy_002_0000.nii.gz"))
    assert mask.GetPixelID() == sitk.sitkUInt8 and sorted(np.unique(sitk.GetArrayFromImage(mask))) == [0, 1]
    assert len(list((out / "labelsTr").iterdir())) == 3


def test_cases_exports_only_the_named_cases(masked, tmp_path):
    out = export_nnunet(masked, tmp_path / "Dataset901_Toy", cases=["toy_002", "toy_000"], progress=False)
    assert _meta(out)["numTraining"] == 2
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["toy_000.nii.gz", "toy_002.nii.gz"]
    with pytest.raises(GbmsegError, match="unknown case id"):
        export_nnunet(masked, tmp_path / "Dataset902_Toy", cases=["toy_009"], progress=False)


def test_missing_masks_is_one_line_naming_the_masks_command(tmp_path):
    ds = Dataset(write_toy_dataset(tmp_path / "Toy", n=2, size=24), work=tmp_path / "work")
    for mode in ("image+mask", "mask"):
        with pytest.raises(GbmsegError) as err:
            export_nnunet(ds, tmp_path / "Dataset901_Toy", mode=mode, progress=False)
        assert "\n" not in str(err.value) and f"run 'gbmseg masks {ds.root} --work {ds.work}' first" in str(err.value)
    assert not (tmp_path / "Dataset901_Toy").exists()


def test_a_missing_case_mask_names_its_file(masked, tmp_path):
    masked.mask_path("toy_001").unlink()
    with pytest.raises(GbmsegError, match=r"toy_001\.nii\.gz: global mask missing"):
        export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)


def test_mask_takes_the_image_geometry_exactly_and_a_wrong_one_is_an_error(masked, tmp_path):
    image = sitk.ReadImage(str(masked.image_path("toy_000")))
    mask = sitk.ReadImage(str(masked.mask_path("toy_000")))
    mask.SetOrigin(tuple(o + 1e-4 for o in image.GetOrigin()))  # within tolerance: snapped to the image's
    assert ex.mask_on_image(mask, image).GetOrigin() == image.GetOrigin()
    mask.SetOrigin(tuple(o + 2.0 for o in image.GetOrigin()))
    sitk.WriteImage(mask, str(masked.mask_path("toy_000")))
    with pytest.raises(GbmsegError, match=r"toy_000\.nii\.gz: geometry does not match its image: origin"):
        export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)


def test_existing_output_is_refused_and_a_failed_export_leaves_nothing(masked, tmp_path, monkeypatch):
    (tmp_path / "Dataset901_Toy").mkdir()
    with pytest.raises(GbmsegError, match="already exists"):
        export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "write_json", broken)
    with pytest.raises(RuntimeError):
        export_nnunet(masked, tmp_path / "Dataset902_Toy", progress=False)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("Dataset902")]


def test_export_reads_back_as_a_gbmseg_dataset(masked, tmp_path):
    out = export_nnunet(masked, tmp_path / "Dataset901_Toy", progress=False)
    back = Dataset(out)
    back.validate(progress=False)
    assert back.channels == ["CT", "noNorm"] and back.cases == masked.cases and back.labels == masked.labels


def test_cli_export_nnunet(masked, tmp_path, capsys):
    out = tmp_path / "Dataset904_Toy"
    assert main(["export-nnunet", str(masked.root), str(out), "--work", str(masked.work), "--cases", "toy_000,toy_001",
                 "--copy"]) == 0
    assert "written to" in capsys.readouterr().out
    assert _meta(out)["numTraining"] == 2 and os.stat(out / "labelsTr" / "toy_000.nii.gz").st_nlink == 1
    assert main(["export-nnunet", str(masked.root), str(tmp_path / "plain"), "--mode", "mask"]) == 2  # masks in --work
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run 'gbmseg masks" in err and "Traceback" not in err
