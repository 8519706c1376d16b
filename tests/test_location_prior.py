"""The location prior: where each structure sat in the training crops, in millimetres from the crop centre."""

from __future__ import annotations

import numpy as np
import pytest

from gbmseg.location_prior import apply_location_prior, centred_mm, distance_outside, fit_location_prior


def _probs(shape, pieces):
    """Probabilities (2 classes) with class 1 certain on each (z, y, x) slice box in ``pieces``."""
    p = np.zeros((2, *shape), np.float32)
    p[0] = 1.0
    for sl in pieces:
        p[0][sl], p[1][sl] = 0.0, 1.0
    return p


@pytest.mark.parametrize("index,shape,spacing,expected", [
    ((2, 2, 2), (5, 5, 5), (1, 1, 1), (0, 0, 0)),          # the centre voxel of an odd grid
    ((0, 0, 0), (4, 4, 4), (1, 1, 1), (-1.5, -1.5, -1.5)),  # an even grid's centre lies between voxels
    ((4, 0, 2), (5, 5, 5), (2, 3, 4), (8, -6, 0)),          # spacing is x y z, positions z y x
])
def test_positions_are_millimetres_from_the_grid_centre(index, shape, spacing, expected):
    assert np.allclose(centred_mm(np.array([index]), shape, spacing)[0], expected)


def test_the_prior_box_holds_the_structure_in_every_training_case():
    a = np.zeros((10, 10, 10), np.uint8); a[1:3, 4:6, 4:6] = 1
    b = np.zeros((10, 10, 10), np.uint8); b[6:8, 4:6, 4:6] = 1; b[0, 0, 0] = 2
    prior = fit_location_prior([a, b], spacing_xyz=(2.0, 2.0, 2.0))
    assert prior["n_cases"] == 2
    lo, hi = np.array(prior["structures"]["1"])
    assert np.allclose(lo, [-7, -1, -1]) and np.allclose(hi, [5, 1, 1])
    assert "2" in prior["structures"]


@pytest.mark.parametrize("point,expected", [((0, 0, 0), 0.0), ((3, 0, 0), 2.0), ((3, 4, 0), np.hypot(2, 3))])
def test_distance_outside_a_box(point, expected):
    box = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    assert distance_outside(np.array(point, float), box) == pytest.approx(expected)


def test_a_piece_far_from_the_prior_goes_to_the_background_and_a_near_one_stays():
    prior = {"structures": {"1": [[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]}}
    probs = _probs((21, 21, 21), [np.s_[9:12, 9:12, 9:12], np.s_[0:2, 9:12, 9:12]])  # 0 mm and ~9.5 mm off
    out, dropped = apply_location_prior(probs, prior, (1.0, 1.0, 1.0), margin_mm=5.0)
    assert dropped == {"1": 18}
    assert out[1][9:12, 9:12, 9:12].min() == 1.0 and out[1][0:2].max() == 0.0
    assert np.allclose(out.sum(0), 1.0)  # probabilities still sum to one


def test_within_the_margin_nothing_is_dropped():
    prior = {"structures": {"1": [[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]}}
    probs = _probs((21, 21, 21), [np.s_[9:12, 9:12, 9:12], np.s_[0:2, 9:12, 9:12]])
    out, dropped = apply_location_prior(probs, prior, (1.0, 1.0, 1.0), margin_mm=8.0)
    assert dropped == {} and np.array_equal(out, probs)


def test_a_structure_keeps_its_nearest_piece_when_every_piece_is_far():
    prior = {"structures": {"1": [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]}}
    probs = _probs((21, 21, 21), [np.s_[0:2, 9:12, 9:12], np.s_[19:21, 0:2, 0:2]])  # ~9.5 mm and ~16 mm off
    out, dropped = apply_location_prior(probs, prior, (1.0, 1.0, 1.0), margin_mm=1.0)
    assert out[1][0:2, 9:12, 9:12].min() == 1.0 and out[1][19:21].max() == 0.0
    assert dropped == {"1": 8}


def test_millimetres_not_voxels_decide():
    prior = {"structures": {"1": [[-2.0, -2.0, -2.0], [2.0, 2.0, 2.0]]}}
    probs = _probs((21, 21, 21), [np.s_[9:12, 9:12, 9:12], np.s_[0:2, 9:12, 9:12]])  # the far piece: 9.5 voxels
    _, at_1mm = apply_location_prior(probs, prior, (1.0, 1.0, 1.0), margin_mm=12.0)
    _, at_2mm = apply_location_prior(probs, prior, (2.0, 2.0, 2.0), margin_mm=12.0)  # 19 mm from the centre
    assert at_1mm == {} and at_2mm == {"1": 18}
