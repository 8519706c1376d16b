"""Slow checks on the development datasets in ../shared/data (deselected by default: pytest -m slow)."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gbmseg.config import load_config
from gbmseg.dataset import Dataset
from gbmseg.io import read_image
from gbmseg.global_masks import make_mask
from gbmseg.preprocessing import preprocess_image, to_original_geometry

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")]


@pytest.mark.parametrize("name", ["head_CT", "head_MR", "heart_CT", "hn_CT"])
def test_development_datasets_validate(name):
    ds = Dataset(DATA / name)
    ds.validate(progress=False)
    assert ds.labels and len(ds.cases) >= 8


@pytest.mark.parametrize("name,method", [("head_CT", "threshold"), ("head_MR", "otsu")])
def test_head_masks_hold_the_structures(name, method):
    ds = Dataset(DATA / name)
    for case in ds.cases[:3]:
        mask = sitk.GetArrayFromImage(make_mask(read_image(ds.image_path(case)), method)) > 0
        label = sitk.GetArrayFromImage(read_image(ds.label_path(case))) > 0
        assert mask[label].mean() > 0.7, case


def test_round_trip_on_a_real_case():
    ds = Dataset(DATA / "head_CT")
    case = ds.cases[0]
    image, label = read_image(ds.image_path(case)), read_image(ds.label_path(case))
    data = preprocess_image(image, make_mask(image, "threshold"), load_config("paper").preprocessing, "CT", label=label)
    back = sitk.GetArrayFromImage(to_original_geometry(data["label"], data["grid"], image))
    ref = sitk.GetArrayFromImage(label)
    for value in ds.labels.values():
        a, b = ref == value, back == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
        assert np.linalg.norm(np.argwhere(a).mean(0) - np.argwhere(b).mean(0)) < 1.0
