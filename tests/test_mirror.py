"""gbmseg.mirror: left-right mirroring with the lateral labels swapped (one property per test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gbmseg.augment import Augmenter
from gbmseg.dataset import Dataset
from gbmseg.global_masks import make_dataset_masks
from gbmseg.mirror import lateral_pairs, mirror_case, mirrored_probabilities, plan_mirror, swap_table
from gbmseg.phantoms import write_phantom_dataset
from gbmseg.predict import load_model, predict_file
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.testing import tiny_config
from gbmseg.training import Trainer, network_input, train

HEAD = {"brainstem": 1, "eye_left": 2, "eye_right": 3}


@pytest.mark.parametrize("labels,pairs", [
    (HEAD, [(2, 3)]),
    ({"parotid_right": 4, "parotid_left": 3, "mandible": 5}, [(3, 4)]),
    ({"Parotid_L": 1, "Parotid_R": 2, "cord": 3}, [(1, 2)]),
    ({"Lens_Left": 7, "lens_right": 2}, [(2, 7)]),
    ({"brainstem": 1, "spinal_cord": 2}, []),
    ({"eye_left": 1, "brainstem": 2}, []),           # a left without its right is no pair
    ({"background": 0, "left": 1, "right": 2}, [(1, 2)]),
])
def test_lateral_pairs_by_name(labels, pairs):
    assert lateral_pairs(labels) == pairs


def test_swap_table_swaps_pairs_and_is_an_involution():
    table = swap_table(6, [(2, 3), (4, 5)])
    assert table.tolist() == [0, 1, 3, 2, 5, 4]
    assert table[table].tolist() == list(range(6))


def _pair_case(axis=2, shape=(24, 24, 24), offset=0, oblique=False):
    """Label 2 ('left') at the high end of ``axis``, label 3 at the low end, about the mask's centre
    (moved by ``offset`` voxels); image = label value / 3; mask = a centred box."""
    label = np.zeros(shape, np.uint8)
    hi, lo = [slice(10, 14)] * 3, [slice(10, 14)] * 3
    hi[axis], lo[axis] = slice(17 + offset, 21 + offset), slice(3 + offset, 7 + offset)
    if oblique:  # also apart along another axis, as a heart's left and right atria are
        other = (axis + 1) % 3
        hi[other], lo[other] = slice(16, 20), slice(4, 8)
    label[tuple(hi)], label[tuple(lo)] = 2, 3
    label[10:14, 10:14, 10:14] = 1
    mask = np.zeros(shape, np.uint8)
    mask[2:22, 2:22, 2:22] = 1
    return {"label": label, "mask": mask, "image": label[None] / 3.0}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_plan_finds_the_axis_along_which_the_pairs_lie_apart(axis):
    plan = plan_mirror(HEAD, [_pair_case(axis), _pair_case(axis)], (2.0, 2.0, 2.0))
    assert plan["axis"] == axis and plan["pairs"] == [[2, 3]]


@pytest.mark.parametrize("case,why", [
    (dict(oblique=True), "not mirror-symmetric"),      # heart-like: the pair lies apart along two axes
    (dict(offset=4), "midline"),                       # pair midpoint 4 voxels x 5 mm = 20 mm off the mask's centre
])
def test_plan_refuses_anatomy_that_is_not_its_own_mirror_image(case, why):
    plan = plan_mirror(HEAD, [_pair_case(2, **case)], (5.0, 5.0, 5.0))
    assert plan["axis"] is None and why in plan["reason"]


def test_plan_without_pairs_mirrors_nothing():
    plan = plan_mirror({"upper": 1, "lower": 2}, [_pair_case()], (2.0, 2.0, 2.0))
    assert plan == {"axis": None, "pairs": [], "reason": "no structures named as left/right pairs"}


def test_plan_refuses_cases_whose_pairs_lie_along_different_axes():
    assert plan_mirror(HEAD, [_pair_case(2), _pair_case(1)], (2.0, 2.0, 2.0))["axis"] is None


def _tensors(case):
    return {"image": torch.as_tensor(case["image"], dtype=torch.float32),
            "mask": torch.as_tensor(case["mask"][None], dtype=torch.float32),
            "label": torch.as_tensor(case["label"][None], dtype=torch.float32)}


def test_mirrored_case_keeps_left_labels_on_the_left_and_reflects_the_anatomy():
    case = _tensors(_pair_case(2))
    out = mirror_case(case, 2, swap_table(4, [(2, 3)]))
    # image and mask are reflected exactly; the structure that now lies on the high side is called left (2)
    assert torch.equal(out["image"], torch.flip(case["image"], [-1]))
    assert torch.equal(out["mask"], torch.flip(case["mask"], [-1]))
    assert torch.equal(out["label"] > 0, torch.flip(case["label"], [-1]) > 0)
    left_x = torch.nonzero(out["label"][0] == 2)[:, 2].float().mean()
    right_x = torch.nonzero(out["label"][0] == 3)[:, 2].float().mean()
    assert left_x > right_x
    # the reflected image carries the other structure's intensity where the label now says left
    assert torch.allclose(out["image"][0][out["label"][0] == 2], torch.tensor(1.0))


def test_mirroring_twice_gives_the_case_back():
    case, table = _tensors(_pair_case(1)), swap_table(4, [(2, 3)])
    twice = mirror_case(mirror_case(case, 1, table), 1, table)
    assert all(torch.equal(twice[k], case[k]) for k in case)


def test_augmenter_mirrors_about_half_the_crops_and_only_with_a_plan():
    case, table = _tensors(_pair_case(2)), swap_table(4, [(2, 3)])
    flipped_image = torch.flip(case["image"], [-1])
    mirrored = [torch.equal(Augmenter(seed=5, anatomy=False, mirror=(2, table))(case, it)["image"], flipped_image)
                for it in range(60)]
    assert 15 < sum(mirrored) < 45
    plain = [torch.equal(Augmenter(seed=5, anatomy=False)(case, it)["image"], case["image"]) for it in range(20)]
    assert all(plain)


def _by_position(x: torch.Tensor) -> torch.Tensor:
    """A model that knows anatomy: a structure's side follows its place (high x = left, class 2)."""
    inside = x[:, :1] > 0.5
    high = torch.zeros_like(inside)
    high[..., x.shape[-1] // 2:] = True
    probs = torch.stack([~inside, torch.zeros_like(inside), inside & high, inside & ~high], 1)[:, :, 0]
    return probs.float()


def test_test_time_mirroring_leaves_a_mirror_consistent_prediction_unchanged():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 1:3, 2:5, 1:3] = 1
    x[..., 5:7, 2:5, 5:7] = 1
    out = mirrored_probabilities(_by_position, x, 2, swap_table(4, [(2, 3)]))
    assert torch.equal(out, _by_position(x))


def test_test_time_mirroring_averages_a_side_blind_prediction():
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 1:3, 2:5, 1:3] = 1

    def always_left(t):  # calls everything inside 'left', whatever its side: mirrored, that becomes 'right'
        inside = (t[:, :1] > 0.5).float()[:, 0]
        return torch.stack([1 - inside, torch.zeros_like(inside), inside, torch.zeros_like(inside)], 1)

    out = mirrored_probabilities(always_left, x, 2, swap_table(4, [(2, 3)]))
    inside = x[0, 0] > 0.5
    assert torch.allclose(out[0, 2][inside], torch.tensor(0.5)) and torch.allclose(out[0, 3][inside], torch.tensor(0.5))


@pytest.mark.parametrize("kind,mirrors", [("head", True), ("heart", False)])
def test_training_records_the_plan_and_prediction_uses_it(tmp_path, kind, mirrors):
    root = write_phantom_dataset(tmp_path / kind, kind=kind, n=3, spacing=4.0, size=48)
    ds = Dataset(root, work=tmp_path / "work")
    make_dataset_masks(ds, "threshold", progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    train(cache, "image+mask", ds.cases[:2], ds.cases[2:], tiny_config(max_iterations=4, mirror=True),
          tmp_path / "run", progress=False)
    plan = json.loads((tmp_path / "run" / "config.json").read_text())["mirror"]
    if mirrors:  # phantom eyes lie apart along patient x, the last numpy axis of an LPS-aligned grid
        assert plan["axis"] == 2 and plan["pairs"] == [[2, 3]]
    else:
        assert plan["axis"] is None and "not mirror-symmetric" in plan["reason"]
    model = load_model(tmp_path / "run")
    assert model.net.head.out_channels == model.n_classes == len(ds.labels) + 1  # background + each structure
    out = predict_file(model, ds.image_path(ds.cases[2]), tmp_path / "seg.nii.gz")
    assert out.exists()


def test_mirror_is_off_unless_asked(toy_dataset, tmp_path):
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    train(cache, "image", ds.cases[:2], ds.cases[2:3], tiny_config(max_iterations=2), tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["mirror"] is None


class _SeesOnlyTheMirrorImage(torch.nn.Module):
    """A stand-in network, right only on the mirror image: on the plain input it leans to background
    (0.6 against 0.4 for the true structure), on the mirrored input it is sure of the (mirrored,
    side-swapped) true label (0.9)."""

    def __init__(self, plain: torch.Tensor, label: torch.Tensor, axis: int, table: np.ndarray):
        super().__init__()
        self.plain, self.n = plain, len(table)
        self.truth = label.long()                                     # (1, 1, Z, Y, X)
        self.mirrored = torch.as_tensor(table)[torch.flip(self.truth, [axis - 3])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.equal(x, self.plain):
            one_hot = torch.nn.functional.one_hot(self.truth[:, 0], self.n).permute(0, 4, 1, 2, 3).float()
            probs = torch.where(self.truth > 0, 0.4 * one_hot + 0.6 * (torch.arange(self.n) == 0).view(1, -1, 1, 1, 1),
                                one_hot)
        else:
            one_hot = torch.nn.functional.one_hot(self.mirrored[:, 0], self.n).permute(0, 4, 1, 2, 3).float()
            probs = 0.9 * one_hot + 0.1 / self.n
        return torch.log(probs.clamp_min(1e-6))


def test_validation_mirrors_as_prediction_does(tmp_path):
    """With a mirror plan, the validation Dice is that of the mirrored prediction, which here finds every
    structure, and not that of the plain one, which finds none."""
    root = write_phantom_dataset(tmp_path / "head", kind="head", n=3, spacing=4.0, size=48)
    ds = Dataset(root, work=tmp_path / "work")
    make_dataset_masks(ds, "threshold", progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    trainer = Trainer(cache, "image", ds.cases[:2], ds.cases[2:], tiny_config(mirror=True), tmp_path / "run",
                      progress=False)
    assert trainer.mirror is not None
    case = trainer.val_data[0]
    x = network_input(case, "image")
    trainer.patch = tuple(x.shape[-3:])  # one network call per view
    trainer.net = _SeesOnlyTheMirrorImage(x, case["label"][None], *trainer.mirror)
    trainer.validate()
    assert np.allclose(trainer.last_structure_dice, 1.0)
