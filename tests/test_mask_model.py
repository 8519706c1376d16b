import json

import numpy as np
import pytest
import SimpleITK as sitk
from gbmseg.testing import tiny_config

from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.predict import load_model, predict_image
from gbmseg.io import read_image
from gbmseg.mask_model import train_mask_model
from gbmseg.global_masks import make_dataset_masks, make_mask
from gbmseg.phantoms import make_phantom, write_phantom_dataset
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.training import train


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    """Heart phantoms, a whole-heart mask model trained on them, and masks made with it."""
    tmp = tmp_path_factory.mktemp("heart")
    root = write_phantom_dataset(tmp / "Heart", kind="heart", n=6, spacing=4.0, size=48)
    ds = Dataset(root, work=tmp / "work")
    preset = tmp / "coarse_tiny.json"
    cfg = tiny_config(max_iterations=80, val_interval=20, lr=0.003)
    cfg.name = "coarse_tiny"
    cfg.preprocessing.spacing, cfg.preprocessing.size = [5.0, 5.0, 5.0], [40, 40, 40]
    preset.write_text(json.dumps(cfg.to_dict()))
    result = train_mask_model(ds, tmp / "mask_model", preset=str(preset), val_cases=["heart_006"], progress=False)
    record = make_dataset_masks(ds, "model", {"model": str(tmp / "mask_model")}, progress=False)
    return ds, tmp, record, result


def test_mask_model_learns_the_whole_heart(heart):
    ds, tmp, record, result = heart
    assert record["method"] == "model" and len(record["params"]["sha256"]) == 16
    organ = Dataset(ds.work / "mask_model_data")
    assert organ.labels == {"organ": 1}
    dices = []
    for case in ds.cases:
        mask = sitk.GetArrayFromImage(read_image(ds.mask_path(case))).astype(bool)
        union = sitk.GetArrayFromImage(read_image(ds.label_path(case))) > 0
        dices.append(2 * (mask & union).sum() / (mask.sum() + union.sum()))
    assert np.mean(dices) > 0.6, dices  # a short training; chance is about 0.05


def test_two_stage_prediction_and_changed_mask_model(heart, tmp_path):
    ds, tmp, record, _ = heart
    cfg = tiny_config(max_iterations=5)
    cache = preprocess_dataset(ds, cfg, progress=False)
    train(cache, "image+mask", ds.cases[:4], ds.cases[4:5], cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    assert model.info["masks"]["method"] == "model"
    image, _ = make_phantom("heart", seed=123, spacing=4.0, size=48)
    seg = predict_image(model, image)  # makes its own mask with the mask model, then segments
    assert seg.GetSize() == image.GetSize()
    # the mask model changes after the masks were made: prediction refuses to silently use it
    weights = tmp / "mask_model" / "model.pt"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved + b"x")
        with pytest.raises(GbmsegError, match="changed"):
            make_mask(image, "model", record["params"])
    finally:
        weights.write_bytes(saved)


def test_model_method_needs_a_model(heart):
    ds, *_ = heart
    with pytest.raises(GbmsegError, match="--model"):
        make_dataset_masks(ds, "model", progress=False)


def test_the_mask_model_is_hashed_once_per_unchanged_file(heart):
    """Masks for a folder of scans read model.pt's bytes once, and again only after it is rewritten."""
    from gbmseg import mask_model

    _, tmp, record, _ = heart
    mask_model._file_hash.cache_clear()
    first = [mask_model.model_hash(tmp / "mask_model") for _ in range(3)]
    assert first == [record["params"]["sha256"]] * 3 and mask_model._file_hash.cache_info().misses == 1
    weights = tmp / "mask_model" / "model.pt"
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved + b"x")
        assert mask_model.model_hash(tmp / "mask_model") != first[0]
        assert mask_model._file_hash.cache_info().misses == 2
    finally:
        weights.write_bytes(saved)
    assert mask_model.model_hash(tmp / "mask_model") == first[0]
