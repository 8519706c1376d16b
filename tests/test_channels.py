"""The network's input channels (image, mask, coords, sdm) and the mask perturbation, one property each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gbmseg.augment import Augmenter, perturb_mask, random_affine, warp
from gbmseg.channels import SDM_SCALE_MM, channel_arrays, coordinate_channels, input_width, signed_distance, stack
from gbmseg.dataset import Dataset
from gbmseg.global_masks import make_dataset_masks
from gbmseg.predict import load_model, predict_file
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.testing import tiny_config
from gbmseg.training import train


@pytest.mark.parametrize("mode,width", [("image", 1), ("mask", 1), ("image+mask", 2), ("image+coords", 4),
                                        ("image+sdm", 2)])
def test_input_width(mode, width):
    assert input_width(mode) == width


@pytest.mark.parametrize("shape", [(8, 8, 8), (5, 7, 11), (48, 40, 32)])
def test_coordinate_channels_have_the_crop_shape(shape):
    c = coordinate_channels(shape)
    assert c.shape == (3, *shape) and c.dtype == np.float32


def test_coordinate_channels_run_along_their_axes_from_edge_to_edge():
    c = coordinate_channels((5, 7, 11))
    for axis in range(3):  # channel k grows along axis k only
        line = np.moveaxis(c[axis], axis, 0)[:, 0, 0]
        assert np.all(np.diff(line) > 0) and line[0] == pytest.approx(-line[-1])
        other = (axis + 1) % 3
        assert np.ptp(np.moveaxis(c[axis], other, 0)[:, 0, 0]) == 0


@pytest.mark.parametrize("spacing", [(4.0, 4.0, 4.0), (2.0, 2.0, 2.0)])
def test_signed_distance_is_in_millimetres_positive_inside(spacing):
    mask = np.zeros((21, 21, 21), np.uint8)
    mask[5:16, 5:16, 5:16] = 1  # a cube 11 voxels wide
    sdm = signed_distance(mask, spacing)[0]
    assert sdm.shape == mask.shape
    assert sdm[10, 10, 10] > 0 and sdm[0, 0, 0] < 0
    # the centre is 6 voxels from the nearest outside voxel, the inner edge voxel 1
    assert sdm[10, 10, 5] * SDM_SCALE_MM == pytest.approx(spacing[0])          # 1 voxel inside
    assert sdm[10, 10, 4] * SDM_SCALE_MM == pytest.approx(-spacing[0])         # 1 voxel outside
    assert sdm[10, 10, 10] * SDM_SCALE_MM == pytest.approx(6 * spacing[0])


def test_signed_distance_saturates_and_handles_empty_and_full_masks():
    mask = np.zeros((4, 4, 80), np.uint8)
    mask[..., :2] = 1
    assert signed_distance(mask, (4.0, 4.0, 4.0))[0, 0, 0, -1] == -1.0  # 78 voxels * 4 mm > 50 mm
    assert np.all(signed_distance(np.zeros((4, 4, 4)), (1, 1, 1)) == -1)
    assert np.all(signed_distance(np.ones((4, 4, 4)), (1, 1, 1)) == 1)


def test_stack_orders_channels_as_the_mode_names_them():
    case = {"image": np.full((1, 6, 6, 6), 7.0, np.float32), "mask": np.zeros((6, 6, 6), np.uint8)}
    case["mask"][2:4, 2:4, 2:4] = 1
    x = stack(case, "image+mask", (4, 4, 4))
    assert x.shape == (2, 6, 6, 6) and np.all(x[0] == 7) and x[1].sum() == 8
    x = stack(case, "image+coords", (4, 4, 4))
    assert np.all(x[0] == 7) and np.array_equal(x[1:], coordinate_channels((6, 6, 6)))
    assert set(channel_arrays(case, "image+sdm", (4, 4, 4))) == {"image", "sdm"}


def test_augmentation_moves_coordinates_with_the_anatomy():
    label = torch.zeros(1, 24, 24, 24)
    label[0, 10:14, 10:14, 10:14] = 1
    case = {"image": label.clone(), "coords": torch.from_numpy(coordinate_channels((24, 24, 24))), "label": label}
    before = case["coords"][:, label[0] > 0].mean(1)
    for seed in range(4):
        out = warp(case, *random_affine(np.random.default_rng(seed)))
        inside = out["label"][0] > 0
        # the structure keeps (about) the coordinates it had: they travel with it
        assert torch.allclose(out["coords"][:, inside].mean(1), before, atol=0.03)


def _cube_mask(shape=(24, 24, 24)):
    m = torch.zeros(1, *shape)
    m[0, 6:18, 6:18, 6:18] = 1
    return m


@pytest.mark.parametrize("seed", range(6))
def test_mask_perturbation_changes_only_the_boundary_zone(seed):
    mask = _cube_mask()
    out = perturb_mask(mask, np.random.default_rng(seed))
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0}
    core = torch.zeros_like(mask)
    core[0, 10:14, 10:14, 10:14] = 1  # 4 voxels from the boundary: always kept
    far = torch.ones_like(mask)
    far[0, 2:22, 2:22, 2:22] = 0     # 4 voxels outside: never added
    assert torch.all(out[core > 0] == 1) and torch.all(out[far > 0] == 0)
    assert not torch.equal(out, mask)


def test_mask_perturbation_is_off_unless_asked_and_leaves_other_channels():
    case = {"image": torch.rand(1, 24, 24, 24), "mask": _cube_mask(), "label": _cube_mask()}
    plain = Augmenter(seed=0, anatomy=False)(case, 3)
    assert all(torch.equal(plain[k], case[k]) for k in case)
    out = Augmenter(seed=0, anatomy=False, mask_p=1.0)(case, 3)
    assert not torch.equal(out["mask"], case["mask"])
    assert torch.equal(out["image"], case["image"]) and torch.equal(out["label"], case["label"])


@pytest.mark.parametrize("mode", ["image+coords", "image+sdm"])
def test_control_modes_train_and_predict(toy_dataset, tmp_path, mode):
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    run = tmp_path / "run"
    train(cache, mode, ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=10), run, progress=False)
    info = json.loads((run / "config.json").read_text())
    assert info["channels"] == ["image", mode.split("+")[1]]
    model = load_model(run)
    assert model.net.encoder[0][0].in_channels == input_width(mode)
    out = predict_file(model, ds.image_path(ds.cases[5]), tmp_path / "seg.nii.gz")
    assert out.exists()
