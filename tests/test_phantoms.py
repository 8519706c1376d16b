"""Tests for gbmseg.phantoms: determinism, geometry, anatomy, intensities, dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from gbmseg.errors import GbmsegError
from gbmseg.io import read_image, same_geometry, to_array
from gbmseg.phantoms import LABELS, make_phantom, write_phantom_dataset

SMALL = {"spacing": 4.0, "size": 48}  # 192 mm field of view, fast
VOXEL_ML = 4.0**3 / 1000


def centre(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """World (LPS) centre of mass of a boolean [z, y, x] mask."""
    z, y, x = ndimage.center_of_mass(mask)
    return np.array(image.TransformContinuousIndexToPhysicalPoint((x, y, z)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    components, n = ndimage.label(mask)
    assert n >= 1
    return components == np.argmax(np.bincount(components.ravel())[1:]) + 1


@pytest.fixture(scope="module")
def cases():
    """A few small cases per (kind, modality), generated once."""
    return {(kind, mod, seed): make_phantom(kind, seed, mod, **SMALL)
            for kind in LABELS for mod in ("CT", "MR") for seed in (0, 1, 2)}


@pytest.mark.parametrize("kind", list(LABELS))
def test_deterministic_per_seed(kind, cases):
    image, label = make_phantom(kind, 1, "CT", **SMALL)
    ref_image, ref_label = cases[(kind, "CT", 1)]
    np.testing.assert_array_equal(to_array(image), to_array(ref_image))
    np.testing.assert_array_equal(to_array(label), to_array(ref_label))
    other_image, other_label = cases[(kind, "CT", 2)]
    assert not np.array_equal(to_array(label), to_array(other_label))
    assert not np.array_equal(to_array(image), to_array(other_image))


@pytest.mark.parametrize("kind", list(LABELS))
def test_ct_and_mr_share_the_anatomy(kind, cases):
    np.testing.assert_array_equal(to_array(cases[(kind, "CT", 0)][1]),
                                  to_array(cases[(kind, "MR", 0)][1]))
    assert not np.array_equal(to_array(cases[(kind, "CT", 0)][0]),
                              to_array(cases[(kind, "MR", 0)][0]))


@pytest.mark.parametrize("kind", list(LABELS))
@pytest.mark.parametrize("modality, pixel", [("CT", sitk.sitkInt16), ("MR", sitk.sitkFloat32)])
def test_geometry_and_types(kind, modality, pixel, cases):
    image, label = cases[(kind, modality, 0)]
    assert same_geometry(image, label) is None
    assert image.GetSize() == (48, 48, 48)
    assert image.GetSpacing() == (4.0, 4.0, 4.0)
    assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    first = np.array(image.TransformIndexToPhysicalPoint((0, 0, 0)))
    last = np.array(image.TransformIndexToPhysicalPoint((47, 47, 47)))
    np.testing.assert_allclose(first + last, 0, atol=1e-6)  # centred at world 0
    assert image.GetPixelID() == pixel
    assert label.GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("kind, low, high", [
    ("head", {"brainstem": 10, "eye_left": 3, "eye_right": 3},
     {"brainstem": 45, "eye_left": 12, "eye_right": 12}),
    ("heart", 20, 250),
])
def test_every_label_present_with_plausible_volume(kind, low, high, cases):
    for seed in (0, 1, 2):
        label = to_array(cases[(kind, "CT", seed)][1])
        assert set(np.unique(label)) == set(LABELS[kind].values())
        for name, value in LABELS[kind].items():
            if value == 0:
                continue
            ml = (label == value).sum() * VOXEL_ML
            lo = low[name] if isinstance(low, dict) else low
            hi = high[name] if isinstance(high, dict) else high
            assert lo < ml < hi, f"{kind} seed {seed}: {name} {ml:.1f} ml"


def test_head_orientation():
    for seed in range(3):  # default grid once, small grids for the rest
        grid = {} if seed == 0 else SMALL
        image, label = make_phantom("head", seed, **grid)
        lab = to_array(label)
        left, right = centre(image, lab == 2), centre(image, lab == 3)
        stem = centre(image, lab == 1)
        assert left[0] > right[0] + 40  # patient left is +x in LPS, eyes ~6 cm apart
        for eye in (left, right):
            assert eye[1] < stem[1] - 40  # eyes anterior (-y) of the brainstem
        z = np.nonzero((lab == 1).any(axis=(1, 2)))[0]
        assert (z[-1] - z[0] + 1) * image.GetSpacing()[2] > 40  # elongated cranio-caudally


def test_heart_orientation(cases):
    ids = LABELS["heart"]
    for seed in (0, 1, 2):
        image, label = cases[("heart", "CT", seed)]
        lab = to_array(label)
        c = {name: centre(image, lab == v) for name, v in ids.items() if v}
        assert c["left_ventricle"][0] > c["right_ventricle"][0]  # LV on the patient's left
        assert c["right_ventricle"][1] < c["left_ventricle"][1]  # RV anterior
        assert c["left_atrium"][1] > c["left_ventricle"][1]  # LA posterior
        assert c["right_atrium"][0] < c["left_atrium"][0]
        assert c["ascending_aorta"][2] > c["left_ventricle"][2]  # vessels leave upwards
        assert c["pulmonary_artery"][2] > c["right_ventricle"][2]
        myo = ndimage.binary_dilation(lab == ids["myocardium"])
        assert (myo & (lab == ids["left_ventricle"])).sum() > 0.3 * (lab == 3).sum() ** (2 / 3)


def test_ct_intensities(cases):
    for seed in (0, 1):
        head, hlab = (to_array(im) for im in cases[("head", "CT", seed)])
        assert abs(np.median(head[:4, -4:, :4]) + 1000) < 30  # air
        assert abs(np.median(head[-4:, :4, -4:]) + 1000) < 30
        stem = ndimage.binary_erosion(hlab == 1)
        assert 0 < np.median(head[stem]) < 80  # brainstem ~ brain, 20-45 HU
        assert -30 < np.median(head[hlab == 2]) < 60  # vitreous
        assert head.max() > 700  # skull
        heart, clab = (to_array(im) for im in cases[("heart", "CT", seed)])
        assert 200 < np.median(heart[ndimage.binary_erosion(clab == 3)]) < 400  # contrast
        assert 50 < np.median(heart[clab == 1]) < 160  # myocardium
        assert heart.min() < -700  # lungs / air


@pytest.mark.parametrize("kind", list(LABELS))
def test_ct_body_mask_contains_all_labels(kind, cases):
    for seed in (0, 1, 2):
        image, label = (to_array(im) for im in cases[(kind, "CT", seed)])
        body = largest_component(image > -300)
        assert body[label > 0].all()
        if kind == "head":  # air all around, except where the neck leaves the volume
            for face in (body[-1], body[:, 0], body[:, -1], body[:, :, 0], body[:, :, -1]):
                assert not face.any()
            assert body.sum() * VOXEL_ML > 1500  # the whole head, not just the brain


def test_mr_head_background_darker_and_otsu_separates(cases):
    for seed in (0, 1):
        mr, label = cases[("head", "MR", seed)]
        ct = to_array(cases[("head", "CT", seed)][0])
        image, lab = to_array(mr), to_array(label)
        assert image.dtype == np.float32 and image.min() >= 0
        background = image[:4, -4:, :4]
        assert np.median(background) < 0.2 * np.median(image[lab == 1])
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.SetInsideValue(0)
        otsu.SetOutsideValue(1)
        mask = largest_component(to_array(otsu.Execute(mr)) > 0)
        assert np.percentile(background, 99) < otsu.GetThreshold() < np.median(image[lab == 1])
        mask = np.stack([ndimage.binary_fill_holes(s) for s in mask])  # axial hole filling
        body = largest_component(ct > -300)
        assert (mask & body).sum() / (mask | body).sum() > 0.85
        assert mask[lab == 1].all()


def test_grid_scales_with_spacing_and_size():
    image, label = make_phantom("head", 5, "CT", spacing=3.0, size=40)  # 120 mm field
    lab, arr = to_array(label), to_array(image)
    assert image.GetSize() == (40, 40, 40)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    body = largest_component(arr > -300)
    assert not (body[-1].any() or body[:, 0].any() or body[:, :, -1].any())
    _, fine = make_phantom("heart", 5, "MR", spacing=1.5, size=64)
    assert set(np.unique(to_array(fine))) == set(range(8))


@pytest.mark.parametrize("workers", [1, 2])
def test_write_phantom_dataset(tmp_path, workers):
    root = write_phantom_dataset(tmp_path / "ds", kind="heart", n=3, modality="MR", seed=4,
                                 workers=workers, **SMALL)
    assert root == tmp_path / "ds"
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        f"heart_{i:03d}_0000.nii.gz" for i in (1, 2, 3)]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == [
        f"heart_{i:03d}.nii.gz" for i in (1, 2, 3)]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"}
    assert meta["labels"] == LABELS["heart"]
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert isinstance(meta["name"], str) and isinstance(meta["description"], str)
    image, label = make_phantom("heart", 4 * 1000 + 2, "MR", **SMALL)
    read = read_image(root / "imagesTr" / "heart_002_0000.nii.gz")
    np.testing.assert_array_equal(to_array(read), to_array(image))
    read_label = read_image(root / "labelsTr" / "heart_002.nii.gz")
    np.testing.assert_array_equal(to_array(read_label), to_array(label))
    assert same_geometry(read, read_label) is None
    assert not any(p.name.startswith(".tmp_") for p in root.rglob("*"))


def test_dataset_json_for_ct_head(tmp_path):
    root = write_phantom_dataset(tmp_path, n=1, **SMALL)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == {"background": 0, "brainstem": 1, "eye_left": 2, "eye_right": 3}
    assert (root / "imagesTr" / "head_001_0000.nii.gz").is_file()
    assert (root / "labelsTr" / "head_001.nii.gz").is_file()


@pytest.mark.parametrize("kwargs, words", [
    ({"kind": "liver"}, "kind"),
    ({"modality": "PET"}, "modality"),
    ({"size": 8}, "size"),
    ({"size": 32.5}, "size"),
    ({"spacing": 0}, "spacing"),
    ({"spacing": float("nan")}, "spacing"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments(kwargs, words):
    args = {"kind": "head", "seed": 0, **kwargs}
    with pytest.raises(GbmsegError, match=words):
        make_phantom(**args)


@pytest.mark.parametrize("kwargs, words", [
    ({"n": 0}, "n="), ({"workers": 0}, "workers"), ({"kind": "lung"}, "kind"),
])
def test_bad_dataset_arguments(tmp_path, kwargs, words):
    with pytest.raises(GbmsegError, match=words):
        write_phantom_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_mr_modality_is_case_insensitive():
    image, _ = make_phantom("head", 0, "mr", **SMALL)
    assert image.GetPixelID() == sitk.sitkFloat32
