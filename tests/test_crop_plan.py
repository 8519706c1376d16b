"""Crop plans (gbmseg.crop_plan), one property each, on small synthetic arrays and boxes."""

import json

import numpy as np
import pytest

from gbmseg import crop_plan as cp

SPACING, SIZE = [4.0, 4.0, 4.0], [48, 48, 48]


def _box(lo, hi):
    return np.array([lo, hi], dtype=float)


def _phantom(rng, torso: bool, shape=(70, 24, 24)):
    """Array [z, y, x] with 4 mm voxels, z up (index 0 = inferior). A head (ball, radius varying per
    case) near the top; a 'brainstem' label in its middle; optionally a torso below it down to a
    random depth (the scan's lower extent varies)."""
    z, y, x = np.indices(shape)
    r = rng.uniform(7.0, 9.0)
    cz = shape[0] - 1 - r - rng.uniform(0, 2)  # top of the head near the top of the scan
    cy = cx = shape[1] / 2
    mask = ((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= r ** 2
    if torso:
        bottom = int(rng.uniform(0, 20))
        mask |= (z >= bottom) & (z <= cz - r + 2) & (np.abs(y - cy) <= 10) & (np.abs(x - cx) <= 10)
    label = (((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) <= 9).astype(np.uint8)
    label[(np.abs(z - (cz - 3)) <= 1) & (np.abs(y - cy - 3) <= 1) & (np.abs(x - cx) <= 1)] = 2
    return mask, label


def _boxes(mask, label):
    return cp.case_boxes(mask, label, origin=[0, 0, 0], spacing=[4.0] * 3, direction=np.eye(3))


def test_paper_rule_recovered_when_structures_sit_at_mask_centre():
    rng = np.random.default_rng(0)
    masks, labels = [], []
    for _ in range(10):
        c, h, w = rng.normal(0, 30, 3), rng.uniform(60, 110, 3), rng.uniform(10, 30, 3)
        masks.append(_box(c - h, c + h))
        labels.append(_box(c - w, c + w))
    plan = cp.fit_crop_plan(masks, labels, SPACING, SIZE)
    for a in plan["axes"]:
        assert a["anchor"] == "centre"
        assert abs(a["offset_mm"]) < 1e-6
    paper = cp.paper_plan(SPACING, SIZE)
    for m in masks:
        np.testing.assert_allclose(cp.crop_center(plan, m), cp.crop_center(paper, m), atol=1e-6)


def test_paper_plan_is_mask_box_centre():
    m = _box([-10, 0, 5], [30, 100, 25])
    np.testing.assert_allclose(cp.crop_center(cp.paper_plan(SPACING, SIZE), m), [10, 50, 15])


def test_torso_below_head_gets_crop_at_head_structures_from_mask_alone():
    rng = np.random.default_rng(1)
    train = [_boxes(*_phantom(rng, torso=True)) for _ in range(8)]
    plan = cp.fit_crop_plan([b["mask"] for b in train], [b["labels"] for b in train], [4.0] * 3, [16] * 3)
    assert plan["axes"][2]["anchor"] == "high"  # z: anchored at the top of the head, not the body centre
    mask, label = _phantom(np.random.default_rng(99), torso=True)
    new = cp.case_boxes(mask, None, [0, 0, 0], [4.0] * 3, np.eye(3))  # prediction: mask only
    truth = _boxes(mask, label)["labels"]
    centre = cp.crop_center(plan, new["mask"])
    assert abs(centre[2] - truth[:, 2].mean()) < 8.0
    paper_centre = cp.crop_center(cp.paper_plan([4.0] * 3, [16] * 3), new["mask"])
    assert paper_centre[2] < truth[0, 2]  # the paper's rule centres below the head's structures
    idx = np.argwhere(label > 0)
    local = cp.project(cp.voxel_world(idx, [0, 0, 0], [4.0] * 3, np.eye(3)))
    assert cp.fraction_inside(local, cp.crop_box(plan, new["mask"])) == 1.0


def test_fitted_plan_holds_every_training_structure():
    rng = np.random.default_rng(2)
    masks, labels = [], []
    for _ in range(15):
        lo = rng.uniform(-300, -100, 3)
        hi = lo + rng.uniform(150, 400, 3)
        a = hi - rng.uniform(20, 60, 3)
        w = rng.uniform(20, 50, 3)
        masks.append(_box(lo, hi))
        labels.append(_box(a - w, a + w * rng.uniform(0.5, 1.5, 3)))
    plan = cp.fit_crop_plan(masks, labels, SPACING, SIZE, margin_mm=0.0)
    for m, lab in zip(masks, labels):
        box = cp.crop_box(plan, m, size=plan["needed_size"])
        assert np.all(box[0] <= lab[0] + 1e-6) and np.all(box[1] >= lab[1] - 1e-6)
        exact = cp.crop_box(plan, m, size=[1, 1, 1], spacing=plan["needed_mm"])
        assert np.all(exact[0] <= lab[0] + 1e-6) and np.all(exact[1] >= lab[1] - 1e-6)


def test_plan_reports_when_needed_size_exceeds_preset():
    masks = [_box([0, 0, 0], [200, 200, 400]), _box([0, 0, 0], [200, 200, 600])]
    labels = [_box([50, 50, 100], [150, 150, 350]), _box([50, 50, 300], [150, 150, 550])]
    plan = cp.fit_crop_plan(masks, labels, SPACING, SIZE, margin_mm=10.0)
    assert plan["fits"] is False
    assert plan["needed_size"][2] % 16 == 0 and plan["needed_size"][2] * 4.0 >= plan["needed_mm"][2] > 192
    assert plan["coarse_spacing_mm"][2] * 48 >= plan["needed_mm"][2]


def test_plan_survives_a_json_round_trip():  # plans are stored in JSON records (cache plan, run config)
    rng = np.random.default_rng(3)
    masks = [_box(-rng.uniform(50, 100, 3), rng.uniform(50, 100, 3)) for _ in range(4)]
    labels = [_box([-10] * 3, [10] * 3) for _ in range(4)]
    plan = cp.fit_crop_plan(masks, labels, SPACING, SIZE)
    back = json.loads(json.dumps(plan))
    assert back == plan
    np.testing.assert_allclose(cp.crop_center(back, masks[0]), cp.crop_center(plan, masks[0]))


def test_one_training_case():
    m, lab = _box([0, 0, 0], [100, 100, 300]), _box([40, 40, 250], [60, 60, 280])
    plan = cp.fit_crop_plan([m], [lab], SPACING, SIZE, margin_mm=0.0)
    np.testing.assert_allclose(cp.crop_center(plan, m), (lab[0] + lab[1]) / 2)
    np.testing.assert_allclose(plan["needed_mm"], lab[1] - lab[0])


def test_empty_mask_is_a_clear_value_error():
    with pytest.raises(ValueError, match="empty"):
        cp.case_boxes(np.zeros((4, 4, 4)), None, [0, 0, 0], [1, 1, 1], np.eye(3))


def test_no_cases_and_bad_boxes_are_value_errors():
    with pytest.raises(ValueError, match="no training cases"):
        cp.fit_crop_plan([], [], SPACING, SIZE)
    with pytest.raises(ValueError, match="lo > hi"):
        cp.fit_crop_plan([_box([1, 0, 0], [0, 1, 1])], [_box([0] * 3, [1] * 3)], SPACING, SIZE)


def test_rotated_axes_boxes_follow_projection():
    rot = np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=float)  # columns are the crop axes
    mask = np.zeros((3, 4, 5), np.uint8)
    mask[1, 2, 3] = 1
    world = cp.voxel_world(np.argwhere(mask), [1, 2, 3], [2, 2, 2], np.eye(3))[0]  # (7, 6, 5)
    box = cp.case_boxes(mask, None, [1, 2, 3], [2, 2, 2], np.eye(3), axes=rot)["mask"]
    np.testing.assert_allclose(box[0], world @ rot)
    np.testing.assert_allclose(rot @ cp.crop_center(cp.paper_plan(SPACING, SIZE), box), world)


def test_coverage_objective_beats_centring_the_union_when_the_crop_is_too_small():
    # a short 'brainstem' at the top and a long 'cord' below it that no 192 mm crop can hold
    rng = np.random.default_rng(4)
    masks, labels, structs = [], [], []
    for _ in range(10):
        top = rng.uniform(0, 40)
        bottom = top + rng.uniform(250, 380)
        bs = _box([-10, -10, top + 2], [10, 10, top + 50])
        cord = _box([-5, -5, top + 50], [5, 5, bottom])
        masks.append(_box([-100, -100, top], [100, 100, bottom]))
        labels.append(_box([-10, -10, top + 2], [10, 10, bottom]))
        structs.append({1: bs, 2: cord})
    plain = cp.fit_crop_plan(masks, labels, SPACING, SIZE)
    cov = cp.fit_crop_plan(masks, labels, SPACING, SIZE, structure_boxes=structs)
    assert plain["fits"] is False and cov["axes"][2]["objective"] == "worst"

    def worst(plan):
        return min(cp.interval_coverage(s[0, 2], s[1, 2], cp.crop_center(plan, m)[2], 96.0)
                   for m, sb in zip(masks, structs) for s in sb.values())
    assert worst(cov) >= worst(plain)
    assert cov["axes"][0]["objective"] == "hold_all"  # axes that fit keep the hold-all rule


# -- the planned crop in preprocessing (SimpleITK images, the product's own functions) -------------
def _head_with_torso(seed: int):
    """A CT of 4 mm voxels: a head (ball) near the top of the scan with one structure inside it, and
    a torso below the head down to a random depth (the scan's lower extent varies, as in
    head-and-neck planning CTs). Returns image, label and the global mask."""
    import SimpleITK as sitk

    from gbmseg.global_masks import make_mask

    rng = np.random.default_rng(seed)
    shape = (110, 40, 40)  # z, y, x
    zz, yy, xx = np.indices(shape)
    cz, cy, cx = shape[0] - 14 - rng.uniform(0, 3), 20 + rng.uniform(-2, 2), 20 + rng.uniform(-2, 2)
    head = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(9, 11) ** 2
    torso = (zz < cz - 8) & (zz > rng.uniform(0, 50)) & (np.abs(yy - cy) <= 12) & (np.abs(xx - cx) <= 16)
    structure = (zz - cz + 3) ** 2 + (yy - cy) ** 2 + (xx - cx - 3) ** 2 <= 9
    hu = np.where(head | torso, 40.0, -1000.0) + rng.normal(0, 5, shape)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    label = sitk.GetImageFromArray(structure.astype(np.uint8))
    label.CopyInformation(image)
    return image, label, make_mask(image, "threshold")


def test_planned_crop_holds_the_structures_of_a_scan_with_a_torso_from_its_mask_alone():
    from gbmseg.config import load_config
    from gbmseg.preprocessing import case_boxes, label_coverage, place_grid

    prep = load_config("fast", ["preprocessing.size=[16,16,16]", "preprocessing.crop=planned",
                                "preprocessing.max_size=[64,64,64]", "preprocessing.margin_mm=8"]).preprocessing
    boxes = [case_boxes(m, lab) for _, lab, m in (_head_with_torso(s) for s in range(5))]
    plan = cp.fit_crop_plan([b["mask"] for b in boxes], [b["labels"] for b in boxes], prep.spacing,
                            prep.max_size, margin_mm=prep.margin_mm)
    plan["grid_size"] = [min(n, m) for n, m in zip(plan["needed_size"], prep.max_size)]
    _, label, mask = _head_with_torso(11)  # a new scan: only its mask places the crop
    planned = label_coverage(label, place_grid(mask, prep, plan))
    paper_prep = load_config("fast", [f"preprocessing.size={plan['grid_size']}",
                                      "preprocessing.crop=mask_center"]).preprocessing
    paper = label_coverage(label, place_grid(mask, paper_prep, None))  # the paper's rule, same grid size
    assert plan["axes"][2]["anchor"] == "high"  # placed from the top of the head, not the body's centre
    assert planned["1"] == 1.0
    assert paper["1"] < 0.5  # the torso pulls the paper's crop away from the structure
