import dataclasses
import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from gbmseg.testing import clip_air, tiny_config, toy_case

from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.io import read_image
from gbmseg.global_masks import MASKS_VERSION, full_view_cases, make_dataset_masks, make_mask
from gbmseg.morphology import otsu_threshold
from gbmseg.training import train
from gbmseg.preprocessing import (load_case, load_plan, mask_center, preprocess_dataset, preprocess_image,
                                  to_original_geometry)


def _body(seed=1):
    image, label = toy_case(seed)
    arr = sitk.GetArrayFromImage(image)
    return image, label, arr > -500


def test_threshold_mask_is_the_body():
    image, label, body = _body()
    mask = sitk.GetArrayFromImage(make_mask(image, "threshold"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    dice = 2 * (mask.astype(bool) & body).sum() / (mask.sum() + body.sum())
    assert dice > 0.97
    assert mask[sitk.GetArrayFromImage(label) > 0].all()  # the organs lie inside the mask


def test_threshold_keeps_largest_component_and_fills_holes():
    image, _, body = _body()
    arr = sitk.GetArrayFromImage(image)
    arr[:3, :3, :3] = 40  # a separate blob (table, noise)
    z, y, x = np.argwhere(body).mean(0).astype(int)
    arr[z - 2:z + 3, y - 2:y + 3, x - 2:x + 3] = -1000  # an internal air cavity
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    mask = sitk.GetArrayFromImage(make_mask(img, "threshold"))
    assert mask[:3, :3, :3].sum() == 0
    assert mask[z, y, x] == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_threshold_fills_an_airway_open_along_any_axis(axis):
    """An air channel through the body that opens to the outside (an airway, the nasal cavity) is
    inside the head's outline, whichever array axis it runs along: the mask is the same solid body
    for an axial, coronal or sagittal stack."""
    image, _, body = _body()
    arr = sitk.GetArrayFromImage(image)
    centre = np.argwhere(body).mean(0).astype(int)
    channel = [slice(c - 1, c + 2) for c in centre]
    channel[axis] = slice(None)  # through the whole body and out at both ends
    arr[tuple(channel)] = -1000
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(image)
    solid = sitk.GetArrayFromImage(make_mask(image, "threshold")).astype(bool)
    with_airway = sitk.GetArrayFromImage(make_mask(img, "threshold")).astype(bool)
    airway = np.zeros_like(body)
    airway[tuple(channel)] = True
    deep = airway & ndimage.binary_erosion(body, iterations=2)  # the channel away from where it opens
    assert deep.sum() > 10 and with_airway[deep].all()
    assert (with_airway & ~solid).sum() == 0  # filling adds nothing the solid body's mask lacks


def test_otsu_mask_on_mr_like_image():
    image, _, body = _body()
    rng = np.random.default_rng(0)
    mr = np.where(body, 600.0, 5.0) * np.linspace(0.7, 1.3, body.shape[0])[:, None, None]
    mr = np.abs(mr + rng.normal(0, 20, body.shape))
    img = sitk.GetImageFromArray(mr.astype(np.float32))
    img.CopyInformation(image)
    assert 5 < otsu_threshold(mr) < 600
    mask = sitk.GetArrayFromImage(make_mask(img, "otsu")).astype(bool)
    assert 2 * (mask & body).sum() / (mask.sum() + body.sum()) > 0.95


def test_labels_mask_needs_label():
    image, label, _ = _body()
    mask = sitk.GetArrayFromImage(make_mask(image, "labels", label=label))
    assert mask[sitk.GetArrayFromImage(label) > 0].all()
    with pytest.raises(GbmsegError, match="label"):
        make_mask(image, "labels")


def test_dataset_masks_written_with_geometry_and_record(toy_dataset, tmp_path):
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    rec = make_dataset_masks(ds, "auto", progress=False)
    assert rec["method"] == "threshold"
    assert json.loads((ds.mask_dir / "masks.json").read_text())["method"] == "threshold"
    for case in ds.cases:
        m, img = read_image(ds.mask_path(case)), read_image(ds.image_path(case))
        assert m.GetSize() == img.GetSize() and np.allclose(m.GetOrigin(), img.GetOrigin())
    assert not list(ds.mask_dir.glob(".tmp_*"))


def test_masks_an_older_gbmseg_made_are_made_again_and_not_reused_from_the_cache(toy_dataset, tmp_path):
    """Same method and parameters, but masks made the way an earlier version made them (a record
    without the current ``version``): ``gbmseg masks`` makes every mask again, and preprocessing
    makes a new cache instead of reusing the one made from the old masks."""
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    old_cache = preprocess_dataset(ds, tiny_config(), progress=False)
    record = json.loads(ds.mask_record_path.read_text())
    del record["version"]
    ds.mask_record_path.write_text(json.dumps(record))
    stamp = ds.mask_path("toy_000").stat().st_mtime_ns
    make_dataset_masks(ds, "auto", progress=False)
    assert ds.mask_path("toy_000").stat().st_mtime_ns != stamp
    assert json.loads(ds.mask_record_path.read_text())["version"] == MASKS_VERSION
    assert preprocess_dataset(ds, tiny_config(), progress=False) == old_cache  # the record is as it was
    ds.mask_record_path.write_text(json.dumps(record))
    assert preprocess_dataset(ds, tiny_config(), progress=False) != old_cache


def test_masks_that_outline_the_body_give_no_full_view_warning(toy_dataset, tmp_path):
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        make_dataset_masks(ds, "threshold", progress=False)
    assert full_view_cases(ds) == {}


def test_masks_that_fill_the_scan_are_warned_about_naming_the_folder_and_count(toy_dataset, tmp_path):
    clip_air(toy_dataset)
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    with pytest.warns(UserWarning, match=r"masksTr: the 'threshold' global mask fills at least 9\d% of the scan in "
                                         r"6 of 6 cases \(toy_000, toy_001, toy_002 ...\).*mask-model train"):
        make_dataset_masks(ds, "threshold", progress=False)
    assert set(full_view_cases(ds)) == set(ds.cases)


def test_box_masks_fill_the_scan_by_design_and_are_not_warned_about(toy_dataset, tmp_path):
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_dataset_masks(ds, "box", progress=False)
    assert set(full_view_cases(ds)) == set(ds.cases)  # they do fill it


@pytest.mark.parametrize("direction", [None, (0, 1, 0, 0, 0, -1, -1, 0, 0)])
def test_round_trip_geometry(direction):
    """Resample + crop onto the model grid, then back: input geometry, labels within one voxel."""
    image, label = toy_case(3, size=40, spacing=2.0, direction=direction)
    mask = make_mask(image, "threshold")
    prep = dataclasses.replace(tiny_config().preprocessing, spacing=[2.0, 2.0, 2.0], size=[48, 48, 48])
    data = preprocess_image(image, mask, prep, "CT", label=label)
    assert data["image"].shape == (1, 48, 48, 48)
    assert 0.0 <= data["image"].min() and data["image"].max() <= 1.0
    back = to_original_geometry(data["label"], data["grid"], image)
    assert back.GetSize() == image.GetSize()
    assert np.allclose(back.GetOrigin(), image.GetOrigin())
    assert np.allclose(back.GetDirection(), image.GetDirection())
    ref = sitk.GetArrayFromImage(label)
    got = sitk.GetArrayFromImage(back)
    for value in (1, 2):
        a, b = np.argwhere(ref == value).mean(0), np.argwhere(got == value).mean(0)
        assert np.linalg.norm(a - b) < 1.0
        dice = 2 * ((ref == value) & (got == value)).sum() / ((ref == value).sum() + (got == value).sum())
        assert dice > 0.8  # small spheres (radius ~3 voxels) lose part of their rim at half-voxel offsets


def test_crop_is_centred_on_mask_not_label():
    image, label = toy_case(4)
    mask = make_mask(image, "threshold")
    centre = mask_center(mask)
    prep = tiny_config().preprocessing
    data = preprocess_image(image, mask, prep, "CT", label=label)
    grid_centre = np.array(data["grid"]["origin"]) + np.array(data["grid"]["spacing"]) * (np.array(prep.size) - 1) / 2
    assert np.allclose(grid_centre, centre)
    # moving the label does not move the crop
    shifted = sitk.GetArrayFromImage(label)
    shifted = np.roll(shifted, 5, axis=2)
    moved = sitk.GetImageFromArray(shifted)
    moved.CopyInformation(label)
    assert preprocess_image(image, mask, prep, "CT", label=moved)["grid"] == data["grid"]


def test_mr_percentile_scaling():
    image, _, _ = _body()
    img = sitk.Cast(image, sitk.sitkFloat32) * 3.0 + 5000.0
    data = preprocess_image(img, make_mask(image, "threshold"), tiny_config().preprocessing, "MR")
    assert data["image"].min() == 0.0 and data["image"].max() == 1.0


def test_mask_geometry_mismatch_is_an_error():
    image, _, _ = _body()
    mask = make_mask(image, "threshold")
    mask.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(GbmsegError, match="geometry"):
        preprocess_image(image, mask, tiny_config().preprocessing, "CT", name="m.nii.gz")


def test_preprocess_dataset_caches_and_skips(toy_dataset, tmp_path):
    ds = Dataset(toy_dataset, work=tmp_path / "w")
    with pytest.raises(GbmsegError, match="gbmseg masks"):
        preprocess_dataset(ds, tiny_config(), progress=False)
    make_dataset_masks(ds, progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    assert load_plan(cache)["masks"]["method"] == "threshold"
    case = load_case(cache, "toy_000")
    assert case["image"].shape == (1, 32, 32, 32) and case["label"].max() == 2
    stamp = (cache / "toy_000.npz").stat().st_mtime_ns
    preprocess_dataset(ds, tiny_config(), progress=False)
    assert (cache / "toy_000.npz").stat().st_mtime_ns == stamp  # cached, not redone
    # other settings or other masks: another cache folder; a trainer given a cache made otherwise refuses
    other = preprocess_dataset(ds, tiny_config(), progress=False)
    assert other == cache and cache.name.startswith("tiny_")
    cfg = tiny_config()
    cfg.set_value("preprocessing.size=[24,24,24]")
    with pytest.raises(GbmsegError, match="other preprocessing settings") as err:
        train(cache, "image", ds.cases[:2], ds.cases[2:3], cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    assert preprocess_dataset(ds, cfg, progress=False) != cache
    make_dataset_masks(ds, "otsu", progress=False)
    assert preprocess_dataset(ds, tiny_config(), progress=False) != cache
