import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from gbmseg.testing import tiny_config, toy_case, write_toy_dataset

from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.evaluation import evaluate_folder
from gbmseg.predict import load_model, predict_file, predict_folder, predict_image
from gbmseg.io import write_image
from gbmseg.global_masks import make_dataset_masks
from gbmseg.network import UNet3D
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.training import train


def _prepared(root, tmp_path, n=6, method="auto"):
    ds = Dataset(root, work=tmp_path / "work")
    make_dataset_masks(ds, method, progress=False)
    return ds, preprocess_dataset(ds, tiny_config(), progress=False)


def test_unet_shapes_and_options():
    for act in ("sigmoid", "relu", "leakyrelu"):
        net = UNet3D(2, 4, depth=3, base_channels=4, activation=act, norm="batch", dropout=0.2)
        assert net(torch.zeros(1, 2, 16, 16, 16)).shape == (1, 4, 16, 16, 16)
    assert UNet3D(1, 2, depth=4, base_channels=32).encoder[3][0].out_channels == 256  # 32 doubling


@pytest.mark.parametrize("mode", ["image", "mask", "image+mask"])
def test_each_mode_trains_and_loss_falls(toy_dataset, tmp_path, mode):
    ds, cache = _prepared(toy_dataset, tmp_path)
    cfg = tiny_config(max_iterations=40, val_interval=10)
    result = train(cache, mode, ds.cases[:4], ds.cases[4:], cfg, tmp_path / mode, seed=1, progress=False)
    hist = pd.read_csv(tmp_path / mode / "history.csv")
    assert list(hist["iteration"]) == [10, 20, 30, 40]
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    assert result["iterations"] == 40 and 10 <= result["best_iteration"] <= 40
    info = json.loads((tmp_path / mode / "config.json").read_text())
    assert info["mode"] == mode and info["seed"] == 1 and info["masks"]["method"] == "threshold"
    assert info["channels"] == {"image": ["image"], "mask": ["mask"], "image+mask": ["image", "mask"]}[mode]
    assert (tmp_path / mode / "loss_curve.png").stat().st_size > 1000
    torch.load(tmp_path / mode / "model.pt", weights_only=True)  # loads safely


def test_resume_after_interruption_matches_uninterrupted_run(toy_dataset, tmp_path):
    ds, cache = _prepared(toy_dataset, tmp_path)
    full = train(cache, "image+mask", ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=30), tmp_path / "a",
                 seed=3, progress=False)
    # a run stopped after 20 iterations (as if killed), then started again with the full budget
    train(cache, "image+mask", ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=20), tmp_path / "b",
          seed=3, progress=False)
    (tmp_path / "b" / "result.json").unlink()
    resumed = train(cache, "image+mask", ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=30),
                    tmp_path / "b", seed=3, progress=False)
    assert resumed["iterations"] == 30
    a = pd.read_csv(tmp_path / "a" / "history.csv")
    b = pd.read_csv(tmp_path / "b" / "history.csv")
    assert list(b["iteration"]) == [10, 20, 30]
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-4)
    assert "resumed" in (tmp_path / "b" / "train.log").read_text()
    assert full["best_iteration"] == resumed["best_iteration"]


def test_bad_split_is_an_error(toy_dataset, tmp_path):
    ds, cache = _prepared(toy_dataset, tmp_path)
    with pytest.raises(GbmsegError, match="both"):
        train(cache, "image", ds.cases[:3], ds.cases[2:4], tiny_config(), tmp_path / "x", progress=False)
    with pytest.raises(GbmsegError, match="mode"):
        train(cache, "ct", ds.cases[:3], ds.cases[3:], tiny_config(), tmp_path / "y", progress=False)
    train(cache, "image", ds.cases[:3], ds.cases[3:], tiny_config(max_iterations=2), tmp_path / "z", progress=False)
    with pytest.raises(GbmsegError, match="another mode"):  # never resume a different run's checkpoint
        train(cache, "mask", ds.cases[:3], ds.cases[3:], tiny_config(max_iterations=2), tmp_path / "z", progress=False)


def test_predict_keeps_input_geometry_and_makes_its_own_mask(toy_dataset, tmp_path):
    ds, cache = _prepared(toy_dataset, tmp_path)
    train(cache, "image+mask", ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=10), tmp_path / "run",
          progress=False)
    model = load_model(tmp_path / "run")
    # a new scan with another size, spacing and an oblique-free but flipped direction
    image, _ = toy_case(77, size=36, spacing=3.5, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(image, tmp_path / "new.nii.gz")
    out = predict_file(model, tmp_path / "new.nii.gz", tmp_path / "seg.nii.gz")
    a, b = nib.load(tmp_path / "new.nii.gz"), nib.load(out)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    assert b.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2}
    # folder mode: nnU-Net channel files collapse to one case; other names are kept whole
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a_0000.nii.gz", "a_0001.nii.gz", "ct_2020.nii.gz"):
        write_image(image, folder / name)
    predict_folder(model, folder, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "ct_2020.nii.gz"]


def test_predict_errors(toy_dataset, tmp_path):
    ds, cache = _prepared(toy_dataset, tmp_path, method="labels")
    train(cache, "mask", ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=10), tmp_path / "run",
          progress=False)
    model = load_model(tmp_path / "run")
    image, _ = toy_case(5)
    with pytest.raises(GbmsegError, match="--mask"):  # label-derived masks cannot be made at prediction
        predict_image(model, image)
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(GbmsegError, match="empty"):
        predict_image(model, image, empty)
    with pytest.raises(GbmsegError, match="not found"):
        load_model(tmp_path / "nothing")
    nan = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(nan)
    arr[1, 1, 1] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(image)
    write_image(bad, tmp_path / "nan.mha")
    with pytest.raises(GbmsegError, match="nan.mha"):
        predict_file(model, tmp_path / "nan.mha", tmp_path / "out.nii.gz", mask_path=ds.mask_path(ds.cases[0]))
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_sweep_job_folder_names_its_run_and_a_sweep_folder_is_refused(toy_dataset, tmp_path):
    from gbmseg.mask_model import model_hash

    ds, cache = _prepared(toy_dataset, tmp_path)
    sweep = tmp_path / "sweep"
    job = sweep / "runs" / "image_n04_seed0"
    job.mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    (job / "job.json").write_text("{}")
    with pytest.raises(GbmsegError, match="none has yet"):
        load_model(sweep)
    with pytest.raises(GbmsegError, match="a sweep job without a trained model"):
        load_model(job)  # an atlas job, or one not started
    train(cache, "image", ds.cases[:4], ds.cases[4:], tiny_config(max_iterations=2), job / "train", progress=False)
    model = load_model(job)  # what the sweep's progress line names
    assert model.mode == "image" and model.n_classes == len(ds.labels) + 1
    assert model_hash(job) == model_hash(job / "train")
    with pytest.raises(GbmsegError, match=r"a sweep, not one trained model.*runs/image_n04_seed0") as exc:
        load_model(sweep)
    assert "\n" not in str(exc.value)


def test_end_to_end_beats_chance_on_held_out_cases(tmp_path):
    """Train for well under a minute on the toy task, predict held-out cases, Dice clearly above chance."""
    root = write_toy_dataset(tmp_path / "Toy", n=10, seed=4)
    ds, cache = _prepared(root, tmp_path)
    cfg = tiny_config(max_iterations=160, val_interval=20, lr=0.003)
    train(cache, "image+mask", ds.cases[:6], ds.cases[6:8], cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")
    test_dir = tmp_path / "test_images"
    test_dir.mkdir()
    for case in ds.cases[8:]:
        shutil.copy(ds.image_path(case), test_dir / ds.image_path(case).name)
    predict_folder(model, test_dir, tmp_path / "pred", progress=False)
    df = evaluate_folder(tmp_path / "pred", root / "labelsTr", cases=ds.cases[8:])
    # chance: a structure is about 1% of the volume, so a random guess scores Dice ~0.01
    assert df["dice"].mean() > 0.5, df


def test_time_budget_stops_training(toy_dataset, tmp_path):
    ds, cache = _prepared(toy_dataset, tmp_path)
    cfg = tiny_config(max_iterations=100000, val_interval=1000, max_time_s=1.0)
    result = train(cache, "image", ds.cases[:4], ds.cases[4:], cfg, tmp_path / "run", progress=False)
    assert result["stop_reason"] == "time_budget"
    assert 0 < result["iterations"] < 100000 and (tmp_path / "run" / "model.pt").exists()  # validated before stopping


def test_planned_crop_with_patches_trains_and_predicts_without_augmenting(toy_dataset, tmp_path, monkeypatch):
    """A planned grid larger than the network input: patches in training, sliding window at validation
    and prediction; augmentation on in training, never called at validation or prediction."""
    from gbmseg import augment
    from gbmseg.preprocessing import coverage

    calls = {"n": 0}
    original = augment.Augmenter.__call__

    def counting(self, case, iteration):
        calls["n"] += 1
        return original(self, case, iteration)

    monkeypatch.setattr(augment.Augmenter, "__call__", counting)
    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    cfg = tiny_config(max_iterations=20, augment=True, schedule="poly")
    for item in ("preprocessing.crop=planned", "preprocessing.size=[16,16,16]", "preprocessing.max_size=[48,48,48]"):
        cfg.set_value(item)
    cache = preprocess_dataset(ds, cfg, progress=False, plan_cases=ds.cases[:5])
    plan = json.loads((cache / "plan.json").read_text())["crop_plan"]
    assert max(plan["grid_size"]) > 16 and plan["cases"] == sorted(ds.cases[:5])
    assert all(min(v.values()) == 1.0 for v in coverage(cache).values())  # every structure inside its grid
    train(cache, "image+mask", ds.cases[:4], ds.cases[4:5], cfg, tmp_path / "run", seed=0, progress=False)
    assert calls["n"] == 20  # once per training iteration, not in the two validations
    model = load_model(tmp_path / "run")
    assert model.info["crop_plan"] == plan
    image = sitk.ReadImage(str(ds.image_path(ds.cases[5])))
    seg = predict_image(model, image)
    assert calls["n"] == 20  # prediction never augments
    assert seg.GetSize() == image.GetSize() and seg.GetOrigin() == image.GetOrigin()


@pytest.mark.parametrize("coarsen", [False, True])
def test_a_field_of_view_larger_than_max_size_is_cut_or_kept_whole_at_coarser_voxels(toy_dataset, tmp_path, coarsen):
    from gbmseg.preprocessing import coverage

    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    cfg = tiny_config(max_iterations=2)
    for item in ("preprocessing.crop=planned", "preprocessing.size=[16,16,16]", "preprocessing.max_size=[16,16,16]",
                 f"preprocessing.coarsen={str(coarsen).lower()}"):
        cfg.set_value(item)
    cache = preprocess_dataset(ds, cfg, progress=False, plan_cases=ds.cases[:5])
    plan = json.loads((cache / "plan.json").read_text())["crop_plan"]
    assert plan["grid_size"] == [16, 16, 16]
    worst = min(min(v.values()) for v in coverage(cache).values())
    if not coarsen:  # 16 voxels of 4 mm cannot hold the structures: the grid cuts them
        assert plan["spacing"] == [4.0, 4.0, 4.0] and worst < 1.0
        return
    assert plan["spacing"][0] > 4.0 and len(set(plan["spacing"])) == 1  # one factor on every axis
    assert all(16 * s >= n for s, n in zip(plan["spacing"], plan["needed_mm"]))
    assert worst == 1.0  # every structure of every case inside its grid
    case = json.loads((cache / f"{ds.cases[0]}.json").read_text())
    assert case["grid"]["spacing"] == plan["spacing"]
    train(cache, "image+sdm", ds.cases[:4], ds.cases[4:5], cfg, tmp_path / "run", seed=0, progress=False)
    image = sitk.ReadImage(str(ds.image_path(ds.cases[5])))
    seg = predict_image(load_model(tmp_path / "run"), image)
    assert seg.GetSize() == image.GetSize() and seg.GetSpacing() == image.GetSpacing()


def test_coverage_skips_a_record_another_process_is_still_writing(toy_dataset, tmp_path):
    """Two DDP ranks preprocess one cache: a rank must not read the other's empty temp file."""
    from gbmseg.dataset import Dataset
    from gbmseg.global_masks import make_dataset_masks
    from gbmseg.preprocessing import coverage, preprocess_dataset
    from gbmseg.testing import tiny_config

    ds = Dataset(toy_dataset, work=tmp_path / "work")
    make_dataset_masks(ds, "auto", progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    (cache / ".tmp_abc123.json").write_text("")  # as atomic_path's mkstemp leaves it before the write
    assert sorted(coverage(cache)) == sorted(ds.cases)
