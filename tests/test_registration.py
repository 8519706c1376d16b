"""Mask method ``register``: template registration (rigid + affine, mutual information)."""

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from gbmseg.config import PreprocessingConfig
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.io import read_image
from gbmseg.global_masks import IMAGE_METHODS, make_dataset_masks, make_mask
from gbmseg.phantoms import make_phantom, write_phantom_dataset
from gbmseg.registration import register, register_mask, resolve_params, template_image

SPACING, SIZE = 4.0, 48


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _arr(image):
    return sitk.GetArrayFromImage(image)


def _moved(image, label, truth):
    """``image`` and ``label`` moved by the rigid ``truth`` onto a larger grid (nothing cut off):
    moved(x) = image(truth(x)), so the transform that registration should find is truth^-1."""
    ref = sitk.Image([SIZE + 8] * 3, sitk.sitkUInt8)
    ref.SetSpacing((SPACING,) * 3)
    ref.SetOrigin((-(SIZE + 7) / 2 * SPACING,) * 3)
    background = float(_arr(image).min())
    moved = sitk.Resample(image, ref, truth, sitk.sitkLinear, background, image.GetPixelID())
    return moved, sitk.Resample(label, ref, truth, sitk.sitkNearestNeighbor, 0)


def _truth() -> sitk.Euler3DTransform:
    truth = sitk.Euler3DTransform()
    truth.SetRotation(np.radians(12.0), 0.0, np.radians(-5.0))  # mostly a nod, a little turn
    truth.SetTranslation((10.0, -12.0, 6.0))  # 17 mm
    return truth


def _point_error(found, expected, reference, mask) -> float:
    """RMS distance (mm) between where ``found`` and ``expected`` send the points of ``mask``."""
    idx = np.argwhere(mask)[::5]
    pts = [reference.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx]
    diff = np.array([np.subtract(found.TransformPoint(p), expected.TransformPoint(p)) for p in pts])
    return float(np.sqrt((diff**2).sum(1).mean()))


@pytest.mark.parametrize("fixed_modality", ["CT", "MR"])
def test_known_rigid_motion_is_recovered(fixed_modality):
    """A CT phantom rotated (12 and 5 degrees) and shifted (17 mm) goes back onto the unmoved CT, or
    onto the MR of the same seed (same anatomy, other contrast: mutual information): points within
    a voxel of the truth, labels overlap."""
    source, source_label = make_phantom("head", 3, "CT", SPACING, SIZE)
    fixed, fixed_label = make_phantom("head", 3, fixed_modality, SPACING, SIZE)
    truth = _truth()
    moving, moving_label = _moved(source, source_label, truth)
    found = register(moving, fixed)
    assert isinstance(found, sitk.CompositeTransform) and found.GetNumberOfTransforms() == 2
    head = _arr(source) > -300
    assert _point_error(found, truth.GetInverse(), fixed, head) < SPACING  # < 1 voxel RMS
    back = sitk.Resample(moving_label, fixed_label, found, sitk.sitkNearestNeighbor, 0)
    assert _dice(_arr(back), _arr(fixed_label)) > 0.8
    for value in (1, 2, 3):  # each structure, eyes included (left stays left)
        assert _dice(_arr(back) == value, _arr(fixed_label) == value) > 0.6
    if fixed_modality == "CT":  # fixed sampling seed, one thread: the same numbers every time
        again = register(moving, fixed)
        for i in range(2):
            assert again.GetNthTransform(i).GetParameters() == found.GetNthTransform(i).GetParameters()


def test_ct_registers_to_mr_of_other_subject_head_outline():
    """Across subjects and modalities (the real use): the CT's head outline moves onto the MR's.
    (For this pair an affine fit of the masks themselves reaches Dice 0.87: the heads differ.)"""
    fixed, _ = make_phantom("head", 5, "MR", SPACING, SIZE)
    moving, _ = make_phantom("head", 6, "CT", SPACING, SIZE)
    found = register(moving, fixed)
    ct_head = make_mask(moving, "threshold")
    mr_head = make_mask(fixed, "otsu")
    warped = sitk.Resample(ct_head, mr_head, found, sitk.sitkNearestNeighbor, 0)
    before = sitk.Resample(ct_head, mr_head, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert _dice(_arr(warped), _arr(mr_head)) > 0.85
    assert _dice(_arr(warped), _arr(mr_head)) > _dice(_arr(before), _arr(mr_head)) + 0.1


def test_register_mask_matches_threshold_on_clean_phantom():
    image, label = make_phantom("head", 2, "CT", SPACING, SIZE)
    mask = make_mask(image, "register")  # default template: the built-in phantom
    m = _arr(mask)
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    assert mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin())
    assert m[_arr(label) > 0].all()
    assert _dice(m, _arr(make_mask(image, "threshold"))) > 0.9
    assert "register" in IMAGE_METHODS  # remade from the image alone at prediction time


def test_register_mask_drops_what_the_template_head_lacks():
    """A head rest touching the back of the head is part of the threshold mask; the registered
    mask keeps only what lies within ``margin_mm`` (20) of the template's warped head."""
    size = 64  # room behind the head
    image, label = make_phantom("head", 2, "CT", SPACING, size)
    arr = _arr(image)
    head = _arr(make_mask(image, "threshold")) > 0
    back = np.nonzero(head.any((0, 2)))[0].max()  # last y (posterior) row of the head
    arr[size // 4: 3 * size // 4, back - 1:, :] = 200  # a slab from inside the scalp to the edge
    rest = sitk.GetImageFromArray(arr)
    rest.CopyInformation(image)
    far = np.zeros_like(head)
    far[:, back + 8:, :] = True  # > 30 mm behind the head
    threshold = _arr(make_mask(rest, "threshold")) > 0
    registered = _arr(make_mask(rest, "register")) > 0
    assert threshold[far].sum() > 1000
    assert registered[far].sum() == 0
    assert registered[_arr(label) > 0].all()
    assert _dice(registered, head) > 0.9


def test_dataset_masks_with_case_template_write_transforms_and_record(tmp_path):
    root = write_phantom_dataset(tmp_path / "Heads", n=2, spacing=SPACING, size=SIZE)
    ds = Dataset(root, work=tmp_path / "work")
    rec = make_dataset_masks(ds, "register", {"template": None}, progress=False)
    first = str(ds.image_path(ds.cases[0]).resolve())
    assert rec["method"] == "register" and rec["params"]["template"] == first
    assert rec["params"]["modality"] == "CT"
    saved = json.loads((ds.mask_dir / "masks.json").read_text())
    assert saved["method"] == "register" and saved["params"] == rec["params"]
    for case in ds.cases:
        tfm = ds.mask_dir / f"{case}_to_template.tfm"
        assert tfm == ds.transform_path(case) and tfm.exists()
        transform = sitk.ReadTransform(str(tfm))
        image, mask = read_image(ds.image_path(case)), read_image(ds.mask_path(case))
        assert mask.GetSize() == image.GetSize() and _arr(mask).any()
        if case == ds.cases[0]:  # the template itself: identity
            p = (10.0, -20.0, 30.0)
            assert np.allclose(transform.TransformPoint(p), p, atol=1.0)
    # prediction remakes the mask from the image and the record alone (template reloaded by path)
    image = read_image(ds.image_path(ds.cases[1]))
    remade = make_mask(image, saved["method"], saved["params"])
    assert np.array_equal(_arr(remade), _arr(read_image(ds.mask_path(ds.cases[1]))))
    assert not list(ds.mask_dir.glob(".tmp_*"))


def test_template_sources_and_errors(tmp_path):
    root = write_phantom_dataset(tmp_path / "Heads", n=2, spacing=SPACING, size=SIZE)
    ds = Dataset(root)
    assert resolve_params({"template": "phantom"}, ds) == {"template": "phantom", "modality": "CT"}
    assert resolve_params({"template": ds.cases[1]}, ds)["template"] == str(ds.image_path(ds.cases[1]).resolve())
    mr = template_image("phantom", None, "MR")
    assert mr.GetPixelID() == sitk.sitkFloat32 and mr.GetSpacing() == (2.5, 2.5, 2.5)
    assert template_image(None, ds, "CT").GetSize() == (SIZE,) * 3
    with pytest.raises(GbmsegError, match="template not found"):
        resolve_params({"template": str(tmp_path / "missing.nii.gz")}, ds)
    with pytest.raises(GbmsegError, match="no dataset"):
        template_image(None, None, "CT")
    image, _ = make_phantom("head", 1, "CT", SPACING, SIZE)
    with pytest.raises(GbmsegError, match="stages"):
        register(image, image, stages=("affine", "rigid"))


def _angle_deg(a, b) -> float:
    """Angle (degrees) of the rotation taking ``b`` to ``a``."""
    cos = (np.trace(np.asarray(a) @ np.asarray(b).T) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def test_template_frame_crops_a_tilted_head_upright():
    """``preprocessing.frame = "template"``: the crop's axes follow the template, so a head tilted by
    12/5 degrees is cropped as if it were upright (its label crop matches the untilted one), while
    the scanner-axis crop does not; voxels stay 4 mm (no scaling)."""
    from gbmseg.preprocessing import preprocess_image, standard_axes

    template, _ = make_phantom("head", 99, "CT", SPACING, SIZE)  # another subject
    tmask = make_mask(template, "threshold")
    image, label = make_phantom("head", 3, "CT", SPACING, SIZE)
    truth = _truth()
    moved, moved_label = _moved(image, label, truth)
    prep = PreprocessingConfig(spacing=[SPACING] * 3, size=[40] * 3, ct_window=[-200, 200], mr_percentiles=[0.5, 99.5],
                               frame="template")
    crops, axes = {}, {}
    for name, (img, lab) in {"upright": (image, label), "tilted": (moved, moved_label)}.items():
        mask, transform = register_mask(img, template, tmask)
        data = preprocess_image(img, mask, prep, "CT", label=lab, name=name, transform=transform)
        crops[name] = data["label"]
        axes[name] = np.reshape(data["grid"]["direction"], (3, 3))
        assert data["grid"]["spacing"] == [SPACING] * 3
        assert np.allclose(axes[name] @ axes[name].T, np.eye(3), atol=1e-6)  # a rotation
        assert axes[name] == pytest.approx(standard_axes(transform, (0, 0, 0)), abs=0.05)
    # moved(x) = image(truth(x)): the tilted head's axes are the upright head's, turned by truth^-1
    turn = np.reshape(truth.GetInverse().GetMatrix(), (3, 3))
    assert _angle_deg(axes["tilted"], turn @ axes["upright"]) < 3.0
    assert _angle_deg(axes["tilted"], axes["upright"]) > 9.0
    standard = _dice(crops["tilted"], crops["upright"])
    scanner = {}
    for name, (img, lab) in {"upright": (image, label), "tilted": (moved, moved_label)}.items():
        data = preprocess_image(img, make_mask(img, "threshold"), dataclasses.replace(prep, frame="scan"), "CT", label=lab)
        scanner[name] = data["label"]
    assert standard > 0.8
    assert standard > _dice(scanner["tilted"], scanner["upright"]) + 0.1


def test_template_frame_needs_register_masks_and_predicts_in_input_geometry(tmp_path):
    """The standard frame end to end on a phantom dataset: transforms read from the mask folder,
    a clear error for masks without transforms, and prediction (which registers the new scan, with
    or without a given mask) returns the input's geometry."""
    from gbmseg.testing import tiny_config

    from gbmseg.predict import load_model, predict_image
    from gbmseg.preprocessing import preprocess_dataset
    from gbmseg.training import train

    root = write_phantom_dataset(tmp_path / "Heads", n=3, spacing=SPACING, size=SIZE)
    ds = Dataset(root, work=tmp_path / "work")
    cfg = tiny_config(max_iterations=2, val_interval=1)
    cfg.preprocessing.frame = "template"
    make_dataset_masks(ds, "threshold", progress=False)
    with pytest.raises(GbmsegError, match="needs masks made with --method register"):
        preprocess_dataset(ds, cfg, progress=False)
    make_dataset_masks(ds, "register", progress=False)
    cache = preprocess_dataset(ds, cfg, progress=False)
    grid = json.loads((cache / f"{ds.cases[0]}.json").read_text())["grid"]
    assert not np.allclose(np.reshape(grid["direction"], (3, 3)), np.eye(3))  # phantoms are tilted
    ds.mask_dir.joinpath(f"{ds.cases[1]}_to_template.tfm").unlink()
    (cache / f"{ds.cases[1]}.npz").unlink()
    with pytest.raises(GbmsegError, match="_to_template.tfm: not found"):
        preprocess_dataset(ds, cfg, progress=False)
    make_dataset_masks(ds, "register", overwrite=True, progress=False)
    cache = preprocess_dataset(ds, cfg, progress=False)
    train(cache, "image+mask", ds.cases[:2], ds.cases[2:], cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    image, _ = make_phantom("head", 42, "CT", 3.5, 52)
    for mask in (None, make_mask(image, "threshold")):
        seg = predict_image(model, image, mask)
        assert seg.GetSize() == image.GetSize() and seg.GetDirection() == image.GetDirection()
        assert np.allclose(seg.GetOrigin(), image.GetOrigin())
