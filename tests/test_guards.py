"""Guards against silently wrong answers: each bad input is one line naming the file and the problem.

One tiny model is trained once (in a folder named ``Ärzte daten``, so every test also runs on a
non-ASCII path with a space) and each bad input is tried through the command line, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from gbmseg.testing import tiny_config, toy_case, write_dicom_series, write_toy_dataset

from gbmseg.cli import main
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError, GbmsegWarning
from gbmseg.global_masks import check_mask, check_modality, expected_modality, make_dataset_masks
from gbmseg.io import check_scan_geometry, writable_problem
from gbmseg.preprocessing import _read_transform, case_stats, load_case, preprocess_dataset
from gbmseg.training import train

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
needs_non_root = pytest.mark.skipif(ROOT, reason="running as root, which ignores folder permissions")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 2-iteration image+mask model on 4 toy CT cases, everything under ``.../Ärzte daten/``."""
    base = tmp_path_factory.mktemp("guards") / "Ärzte daten"
    ds = Dataset(write_toy_dataset(base / "Toy", n=4), work=base / "work")
    make_dataset_masks(ds, progress=False)
    cache = preprocess_dataset(ds, tiny_config(), progress=False)
    train(cache, "image+mask", ds.cases[:3], ds.cases[3:], tiny_config(max_iterations=2, val_interval=2),
          base / "run", progress=False)
    image, _ = toy_case(7)
    sitk.WriteImage(image, str(base / "ct scan.nii.gz"))
    return {"base": base, "run": base / "run", "ds": ds, "cache": cache, "image": base / "ct scan.nii.gz"}


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect the user-error exit (2), return stderr's one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _write(arr: np.ndarray, path: Path, spacing: float = 4.0, vector: bool = False) -> Path:
    image = sitk.GetImageFromArray(arr, isVector=vector)
    image.SetSpacing((spacing,) * image.GetDimension())
    sitk.WriteImage(image, str(path))
    return path


def _ct(value_inside: float, size: int = 40, body=slice(None)) -> np.ndarray:
    arr = np.full((size,) * 3, -1000, np.int16)
    arr[body, body, body] = value_inside
    return arr


def _ct_filling_the_view() -> np.ndarray:
    """20^3 voxels of soft tissue around a small air pocket (1.6% of the voxels: still CT by its air)."""
    arr = np.full((20, 20, 20), 40, np.int16)
    arr[8:13, 8:13, 8:13] = -1000
    return arr


def _toy_mr() -> np.ndarray:
    return np.clip((sitk.GetArrayFromImage(toy_case(7)[0]).astype(np.float32) + 1000) * 0.5, 0, None)


# -- images: shape, spacing, modality, global mask ------------------------------------------------
BAD_IMAGES = {
    # name: (writer(path) -> path, words the one-line error must hold)
    "zeros_4cube": (lambda p: _write(np.zeros((4, 4, 4), np.int16), p), "only (4, 4, 4) voxels"),
    "thin_7_slices": (lambda p: _write(np.zeros((7, 40, 40), np.int16), p), "at least 8 per axis"),
    "zeros_40cube": (lambda p: _write(np.zeros((40, 40, 40), np.int16), p), "looks like MR"),
    "mr_for_ct_model": (lambda p: _write(_toy_mr(), p), "looks like MR"),
    "image_2d": (lambda p: _write(np.zeros((40, 40), np.int16), p), "got a 2D image"),
    "image_4d": (lambda p: nib.save(nib.Nifti1Image(np.zeros((40, 40, 40, 2), np.int16), np.eye(4)), str(p)) or p,
                 "got a 4D image"),
    "rgb": (lambda p: _write(np.zeros((40, 40, 40, 3), np.uint8), p, vector=True), "3 components per voxel"),
    "spacing_30mm": (lambda p: _write(_ct(40, body=slice(10, 30)), p, spacing=30.0), "spacing (30, 30, 30) mm"),
    "spacing_0.01mm": (lambda p: _write(_ct(40, body=slice(10, 30)), p, spacing=0.01), "outside 0.05-20.0 mm"),
    "all_air": (lambda p: _write(_ct(-1000), p), "found no foreground"),
    "body_fills_view": (lambda p: _write(_ct_filling_the_view(), p), "fills 97% of the scan: it does not outline"),
    "body_too_big": (lambda p: _write(_ct(40, size=80, body=slice(6, 74)), p), "far outside the training masks"),
    "body_too_small": (lambda p: _write(_ct(40, body=slice(18, 23)), p), "far outside the training masks"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_is_one_line_and_nothing_is_written(trained, tmp_path, capsys, name):
    write, words = BAD_IMAGES[name]
    path = write(tmp_path / f"{name}.nii.gz")
    out = tmp_path / "seg.nii.gz"
    err = _error(capsys, ["predict", "-m", str(trained["run"]), "-i", str(path), "-o", str(out)])
    assert str(path) in err and words in err
    assert not out.exists()


def test_a_body_3_to_20_times_the_training_masks_is_segmented_with_a_one_line_warning(trained, tmp_path, capsys):
    """Scans of one kind differ that much in extent (a head-and-neck CT down to the chest): it is unusual, not wrong."""
    volumes = [s["mask_volume_ml"] for s in json.loads((trained["run"] / "config.json").read_text())["case_stats"].values()]
    path = _write(_ct(40, body=slice(2, 38)), tmp_path / "long scan.nii.gz")  # 36^3 voxels of 4 mm: 2986 mL
    assert 3 * max(volumes) < 2986 < 20 * max(volumes)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-m", str(trained["run"]), "-i", str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning" in err and str(path) in err, err
    assert "mL, over 3 times the largest training mask" in err
    assert sitk.ReadImage(str(out)).GetSize() == (40, 40, 40)


def test_a_refused_image_does_not_stop_a_folder(trained, tmp_path, capsys):
    """The other images are segmented; one line at the end says which was refused and why."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(trained["image"], folder / "good_0000.nii.gz")
    _write(_toy_mr(), folder / "mr_0000.nii.gz")
    shutil.copy(trained["image"], folder / "other_0000.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", "-m", str(trained["run"]), "-i", str(folder), "-o", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("predict:")]  # not the progress bar
    assert len(lines) == 2 and "Traceback" not in "".join(lines)
    assert lines[0].startswith("gbmseg predict: warning: not segmented: ") and "mr_0000.nii.gz: " in lines[0]
    assert "made for CT images" in lines[0]
    assert lines[1].startswith("gbmseg predict: error: 1 of 3 images not segmented, the reasons above (2 "
                               f"segmentations in {out}): mr"), lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "other.nii.gz"]


def test_a_model_that_cannot_make_its_masks_stops_a_folder_before_reading_it(trained, tmp_path, capsys):
    """Trained on label masks, it needs --mask for every image: said once, for the model, not per image."""
    run = tmp_path / "labels_run"
    shutil.copytree(trained["run"], run)
    info = json.loads((run / "config.json").read_text())
    info["masks"] = {**info["masks"], "method": "labels"}
    (run / "config.json").write_text(json.dumps(info))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "junk_0000.nii.gz").write_bytes(b"not an image")  # never read
    err = _error(capsys, ["predict", "-m", str(run), "-i", str(folder), "-o", str(tmp_path / "out")])
    assert err.startswith(f"gbmseg predict: error: {run / 'config.json'}: the model was trained on 'labels' masks")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_body_filling_the_view_is_within_the_volume_range(trained):
    """The full-view test above fails for the share of the scan the mask fills, not for the volume (20^3 voxels of 4 mm = 512 mL)."""
    volumes = [s["mask_volume_ml"] for s in json.loads((trained["run"] / "config.json").read_text())["case_stats"].values()]
    assert min(volumes) / 3 < 512 < 3 * max(volumes)


def test_training_records_what_prediction_compares_with(trained):
    stats = json.loads((trained["run"] / "config.json").read_text())["case_stats"]
    assert sorted(stats) == trained["ds"].cases  # training and validation cases
    assert all(100 < s["mask_volume_ml"] < 1000 for s in stats.values())  # toy bodies: ellipsoids of about 350 mL
    assert all(0.05 < s["mask_fill_fraction"] < 0.5 and s["looks_like"] == "CT" for s in stats.values())


def test_mask_method_override_segments_another_modality(trained, tmp_path, capsys):
    mr = _write(_toy_mr(), tmp_path / "mr.nii.gz")
    for method in ("otsu", "auto"):
        out = tmp_path / f"seg_{method}.nii.gz"
        assert main(["predict", "-m", str(trained["run"]), "-i", str(mr), "-o", str(out), "--mask-method", method]) == 0
        assert sitk.ReadImage(str(out)).GetSize() == (40, 40, 40)
    err = _error(capsys, ["predict", "-m", str(trained["run"]), "-i", str(mr), "-o", str(tmp_path / "x.nii.gz"),
                          "--mask-method", "register"])
    assert "--mask-method 'register'" in err


def test_mask_and_mask_method_together_is_an_error(trained, tmp_path, capsys):
    err = _error(capsys, ["predict", "-m", str(trained["run"]), "-i", str(trained["image"]), "-o",
                          str(tmp_path / "x.nii.gz"), "--mask", str(trained["image"]), "--mask-method", "otsu"])
    assert "not both" in err


def test_a_given_mask_is_checked_too(trained, tmp_path, capsys):
    image = sitk.ReadImage(str(trained["image"]))
    full = sitk.GetImageFromArray(np.ones(image.GetSize()[::-1], np.uint8))
    full.CopyInformation(image)
    sitk.WriteImage(full, str(tmp_path / "full_mask.nii.gz"))
    err = _error(capsys, ["predict", "-m", str(trained["run"]), "-i", str(trained["image"]), "-o",
                          str(tmp_path / "x.nii.gz"), "--mask", str(tmp_path / "full_mask.nii.gz")])
    assert "fills 100% of the scan" in err and "check the mask given with --mask" in err


@pytest.mark.parametrize("record,expected", [
    ({"method": "threshold", "modality": "MR"}, "CT"),
    ({"method": "otsu", "modality": "MR"}, "MR"),
    ({"method": "otsu", "modality": "CT"}, "CT"),
    ({"method": "register", "params": {"modality": "MR"}, "modality": "CT"}, "MR"),
    ({"method": "box", "modality": "CT"}, None),
    ({"method": "labels", "modality": "CT"}, None),
])
def test_expected_modality_of_a_mask_record(record, expected):
    assert expected_modality(record) == expected


def _mask(arr: np.ndarray, spacing: float = 1.0) -> sitk.Image:
    m = sitk.GetImageFromArray(arr.astype(np.uint8))
    m.SetSpacing((spacing,) * 3)
    return m


def _stats(*volumes: float, fill: float = 0.3, looks: str = "CT") -> dict:
    return {f"c{i}": {"mask_volume_ml": v, "mask_fill_fraction": fill, "looks_like": looks} for i, v in enumerate(volumes)}


def _ball(size: int = 20, radius: float = 11.0) -> np.ndarray:
    """A ball a little wider than its box: it touches all six sides and fills about 68 % of the box."""
    z, y, x = np.mgrid[:size, :size, :size] - (size - 1) / 2
    return (x ** 2 + y ** 2 + z ** 2) <= radius ** 2


ONE_ML = np.pad(np.ones((10, 10, 10)), 1)  # 1000 voxels of 1 mm: 1 mL in a 12^3 scan


def _filled(n: int) -> np.ndarray:
    """A 10^3 scan with ``n`` voxels in the mask (``n / 1000`` of the scan)."""
    arr = np.zeros(1000)
    arr[:n] = 1
    return arr.reshape(10, 10, 10)


# trained_on: the training masks' method; body methods (threshold, otsu, box) refuse outside 1/20-20x
# and warn outside 1/3-3x; organ masks (a mask model's, a registered head, labels) refuse outside 1/3-3x
@pytest.mark.parametrize("arr,stats,method,trained_on,words", [
    (np.zeros((10, 10, 10)), None, "threshold", "threshold", "empty"),
    (np.ones((10, 10, 10)), None, "threshold", "threshold", "fills 100% of the scan"),
    (np.pad(np.ones((10, 10, 10)), ((0, 0), (0, 0), (0, 1))), None, "otsu", "otsu", "fills 91% of the scan"),
    (_filled(900), None, None, "threshold", "fills 90% of the scan"),     # the rule gbmseg masks warns by
    (ONE_ML, _stats(21.0), "threshold", "threshold", "far outside"),      # 1 mL vs 21 mL: over 20 times
    (ONE_ML, _stats(0.049), "threshold", "threshold", "far outside"),     # 1 mL vs 0.049 mL
    (ONE_ML, _stats(3.1), "model", "model", "far outside"),               # an organ: over 3 times
    (ONE_ML, _stats(0.32), None, "labels", "far outside"),
    (ONE_ML, _stats(3.1), None, None, "far outside"),                      # training masks unknown: as an organ
])
def test_check_mask_refuses(arr, stats, method, trained_on, words):
    with pytest.raises(GbmsegError, match=words):
        check_mask(_mask(arr), "case_x", stats, method, trained_on)


@pytest.mark.parametrize("arr,stats,method,trained_on", [
    (np.ones((10, 10, 10)), None, "box", "box"),                      # the field of view by design
    (_filled(899), None, None, "threshold"),                           # just under the full-view rule
    (np.ones((10, 10, 10)), _stats(1.0, fill=0.95), "threshold", "threshold"),  # so did the training masks
    (np.ones((10, 10, 10)), {"c0": {"mask_volume_ml": 1.0, "mask_border_sides": 6, "looks_like": "CT"}},
     "threshold", "threshold"),                                        # the same, recorded by an older cache
    (ONE_ML, _stats(0.5, 2.5), "threshold", "threshold"),             # 1 mL in [0.5/3, 3*2.5]
    (ONE_ML, _stats(3.0), "threshold", "threshold"),                  # 1 mL = 3.0 / 3: the warning band's edge
    (ONE_ML, _stats(2.9), None, "model"),                              # an organ: 1 mL >= 2.9 / 3
    (ONE_ML, {}, None, "threshold"),                                   # nothing recorded: no volume test
])
def test_check_mask_accepts(arr, stats, method, trained_on):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and does not warn
        check_mask(_mask(arr), "case_x", stats, method, trained_on)


@pytest.mark.parametrize("stats,side", [
    (_stats(4.0), "under 1/3 of the smallest"), (_stats(19.0), "under 1/3 of the smallest"),
    (_stats(0.3), "over 3 times the largest"), (_stats(0.06), "over 3 times the largest"),
    (_stats(0.2, 0.3), "over 3 times the largest"),
])
@pytest.mark.parametrize("trained_on", ["threshold", "otsu"])
def test_check_mask_warns_about_a_body_mask_3_to_20_times_off(stats, side, trained_on):
    """1 mL against body masks 3-20 times bigger or smaller: unusual, not wrong (the scan's extent)."""
    with pytest.warns(GbmsegWarning, match=rf"case_x: the global mask is 1 mL, {side} training mask"):
        check_mask(_mask(ONE_ML), "case_x", stats, "threshold", trained_on)


def test_an_old_cache_still_gives_what_prediction_compares_with(tmp_path):
    """Caches made before the fill share was recorded hold the number of sides the mask touched."""
    (tmp_path / "c0.json").write_text(json.dumps({"case": "c0", "mask_volume_ml": 1.0, "mask_border_sides": 6,
                                                  "looks_like": "CT"}))
    stats = case_stats(tmp_path, ["c0"])
    assert stats == {"c0": {"mask_volume_ml": 1.0, "mask_border_sides": 6, "looks_like": "CT"}}
    check_mask(_mask(np.ones((10, 10, 10))), "case_x", stats, "threshold", "threshold")  # a full view, as in training


def test_a_head_filling_a_tight_field_of_view_still_places_the_crop():
    """Touching every side of the scan is not filling it: such a mask outlines the anatomy."""
    ball = _ball()
    assert all(np.take(ball, i, axis=a).any() for a in range(3) for i in (0, -1))
    assert 0.6 < ball.mean() < 0.75
    check_mask(_mask(ball), "tight_fov", None, "threshold", "threshold")


def test_modality_is_judged_against_the_training_images_when_recorded():
    """A CT with negative values clipped to 0 looks like MR; a model trained on such CTs takes them."""
    clipped = sitk.GetImageFromArray(np.clip(sitk.GetArrayFromImage(toy_case(3)[0]), 0, None))
    record = {"method": "threshold", "modality": "CT"}
    with pytest.raises(GbmsegError, match="looks like MR"):
        check_modality(record, clipped, "clipped.nii.gz")
    check_modality(record, clipped, "clipped.nii.gz", _stats(1.0, looks="MR"))
    with pytest.raises(GbmsegError, match="looks like CT"):
        check_modality(record, toy_case(3)[0], "ct.nii.gz", _stats(1.0, looks="MR"))


@pytest.mark.parametrize("size,spacing,ok", [
    ((8, 8, 8), (1, 1, 1), True), ((7, 64, 64), (1, 1, 1), False),
    ((64, 64, 64), (20, 20, 20), True), ((64, 64, 64), (0.5, 0.5, 21), False),
    ((64, 64, 64), (0.05, 0.05, 1), True), ((64, 64, 64), (0.04, 0.5, 0.5), False),
])
def test_scan_geometry_bounds(size, spacing, ok):
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing(spacing)
    if ok:
        check_scan_geometry(image, "x.nii.gz")
    else:
        with pytest.raises(GbmsegError, match="x.nii.gz"):
            check_scan_geometry(image, "x.nii.gz")


# -- run folders, checkpoints, caches, records ----------------------------------------------------
def _truncate(path: Path, n: int = 1000) -> None:
    path.write_bytes(path.read_bytes()[:n])


def _edit_config(run: Path, **changes) -> None:
    info = json.loads((run / "config.json").read_text())
    info.update(changes)
    (run / "config.json").write_text(json.dumps(info))


def _shallower(run: Path) -> None:
    info = json.loads((run / "config.json").read_text())
    info["config"]["network"]["depth"] = 2
    (run / "config.json").write_text(json.dumps(info))


BAD_RUNS = {
    "model_pt_truncated": (lambda r: _truncate(r / "model.pt"), "model.pt: corrupt or truncated checkpoint"),
    "model_pt_garbage": (lambda r: (r / "model.pt").write_bytes(b"not a checkpoint"), "model.pt: corrupt or truncated"),
    "config_truncated": (lambda r: _truncate(r / "config.json", 30), "config.json: invalid JSON"),
    "config_foreign": (lambda r: (r / "config.json").write_text('{"a": 1}'), "config.json: not a gbmseg training record"),
    "newer_gbmseg": (lambda r: _edit_config(r, gbmseg_version="9.0.0"), "config.json: made by gbmseg 9.0.0"),
    "other_channels": (lambda r: _edit_config(r, mode="image", channels=["image"]),
                       "model.pt: weights take 2 input channel(s) but config.json"),
    "other_network": (_shallower, "model.pt: weights do not fit the network config.json"),
}


@pytest.mark.parametrize("name", sorted(BAD_RUNS))
def test_bad_run_folder_is_one_line(trained, tmp_path, capsys, name):
    damage, words = BAD_RUNS[name]
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    damage(run)
    err = _error(capsys, ["predict", "-m", str(run), "-i", str(trained["image"]), "-o", str(tmp_path / "x.nii.gz")])
    assert words in err


def test_an_older_gbmseg_run_whose_weights_fit_still_predicts(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    _edit_config(run, gbmseg_version="0.0.1")
    assert main(["predict", "-m", str(run), "-i", str(trained["image"]), "-o", str(tmp_path / "x.nii.gz")]) == 0


def test_truncated_last_pt_names_the_file(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "result.json").unlink()  # an interrupted run: resumes from last.pt
    _truncate(run / "last.pt", 500)
    ds = trained["ds"]
    with pytest.raises(GbmsegError, match=r"last.pt: corrupt or truncated checkpoint .*delete it"):
        train(trained["cache"], "image+mask", ds.cases[:3], ds.cases[3:], tiny_config(max_iterations=2, val_interval=2),
              run, progress=False)


def test_truncated_cache_file_names_the_file(trained, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(trained["cache"], cache)
    case = trained["ds"].cases[0]
    _truncate(cache / f"{case}.npz", 300)
    with pytest.raises(GbmsegError, match=rf"{case}.npz: corrupt or truncated cache file"):
        load_case(cache, case)


def test_corrupt_transform_names_the_file(tmp_path):
    path = tmp_path / "case_to_template.tfm"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: NoSuchTransform\n")
    with pytest.raises(GbmsegError, match="case_to_template.tfm: corrupt or truncated transform"):
        _read_transform(path)


def test_truncated_records_name_the_file(trained, tmp_path, capsys):
    """masks.json (preprocess), result.json (train), job.json (job): read_json's one line, through each reader."""
    work, run, job = tmp_path / "work", tmp_path / "run", tmp_path / "job"
    shutil.copytree(trained["ds"].work / "masksTr", work / "masksTr")
    shutil.copytree(trained["run"], run)
    job.mkdir()
    for path in (work / "masksTr" / "masks.json", run / "result.json"):
        _truncate(path, 5)
    (job / "job.json").write_text('{"id": "image_n1')
    ds = trained["ds"]
    assert f"{work / 'masksTr' / 'masks.json'}: invalid JSON" in _error(
        capsys, ["preprocess", str(ds.root), "--work", str(work)])
    with pytest.raises(GbmsegError, match="result.json: invalid JSON"):
        train(trained["cache"], "image+mask", ds.cases[:3], ds.cases[3:], tiny_config(max_iterations=2, val_interval=2),
              run, progress=False)
    assert f"{job / 'job.json'}: invalid JSON" in _error(capsys, ["job", str(job)])


@pytest.mark.parametrize("argv_of, text, expected", [
    (lambda d: ["job", str(d)], '{"id": "image_n1", "mode": "image"}', "job.json: not a sweep job record (missing dataset"),
    (lambda d: ["report", str(d)], '{"dataset": "x"}', "sweep.json: not a sweep record (missing work"),
    (lambda d: ["evaluate", "--pred", str(d), "--ref", str(d), "--labels", str(d / "labels.json")], "[1, 2]",
     "labels.json: not a dataset.json with labels (missing labels)"),
])
def test_valid_json_without_the_needed_keys_is_one_line(tmp_path, capsys, argv_of, text, expected):
    """A record that parses but lacks what its reader needs names the file and the missing keys."""
    name = expected.split(":")[0]
    (tmp_path / name).write_text(text)
    assert expected in _error(capsys, argv_of(tmp_path))


# -- DICOM folders and paths ------------------------------------------------------------------------
def test_dicom_folder_with_two_series_lists_them_and_series_chooses(trained, tmp_path, capsys):
    folder = trained["base"] / "DICOM Übersicht"
    image = sitk.ReadImage(str(trained["image"]))
    write_dicom_series(image, folder, series_uid="1.2.826.0.1.3680043.2.1125.101", description="CT head", prefix="a")
    write_dicom_series(image[:, :, :30], folder, series_uid="1.2.826.0.1.3680043.2.1125.102", description="CT scout",
                       prefix="b")
    out = tmp_path / "Ärzte daten" / "seg.nii.gz"
    argv = ["predict", "-m", str(trained["run"]), "-i", str(folder), "-o", str(out)]
    err = _error(capsys, argv)
    assert str(folder) in err and "holds 2 DICOM series" in err and "--series UID" in err
    assert "1.2.826.0.1.3680043.2.1125.101 'CT head' (40 slices)" in err
    assert "1.2.826.0.1.3680043.2.1125.102 'CT scout' (30 slices)" in err
    assert "holds no DICOM series '1.2.3'" in _error(capsys, argv + ["--series", "1.2.3"])
    assert main(argv + ["--series", "1.2.826.0.1.3680043.2.1125.101"]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == image.GetSize()


def test_non_ascii_paths_with_spaces_work(trained, tmp_path):
    """Read, predict and write under ``Ärzte daten/`` (the run and the image live there too)."""
    assert "Ä" in str(trained["run"]) and " " in str(trained["image"])
    out = trained["base"] / "Ergebnisse für Ärzte" / "seg ü.nii.gz"
    assert main(["predict", "-m", str(trained["run"]), "-i", str(trained["image"]), "-o", str(out)]) == 0
    seg, image = sitk.ReadImage(str(out)), sitk.ReadImage(str(trained["image"]))
    assert seg.GetSize() == image.GetSize() and seg.GetOrigin() == pytest.approx(image.GetOrigin())


# -- writable folders, checked before any work --------------------------------------------------------
def test_writable_problem(tmp_path):
    assert writable_problem(tmp_path / "new" / "deeper" / "out.nii.gz") is None
    (tmp_path / "file").write_text("x")
    assert writable_problem(tmp_path / "file" / "out.nii.gz") == f"{tmp_path / 'file'} is a file, not a folder"


@pytest.mark.parametrize("command", ["predict", "predict_folder", "train", "sweep"])
def test_output_under_a_file_is_refused_before_any_work(trained, tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    ds, run = trained["ds"], str(trained["run"])
    work = tmp_path / "work"
    argv = {"predict": ["predict", "-m", run, "-i", str(trained["image"]), "-o", str(out)],
            "predict_folder": ["predict", "-m", run, "-i", str(ds.root / "imagesTr"), "-o", str(out)],
            "train": ["train", str(ds.root), "--work", str(work), "--mode", "image", "-o", str(out)],
            "sweep": ["sweep", str(ds.root), "--work", str(work), "-o", str(out)]}[command]
    err = _error(capsys, argv)
    assert f"{out}: cannot write the output here" in err and "is a file, not a folder" in err
    assert not work.exists()  # refused before masks or preprocessing


@needs_non_root
@pytest.mark.parametrize("command", ["masks", "preprocess", "train", "sweep"])
def test_read_only_dataset_without_work_is_refused(tmp_path, capsys, command):
    root = write_toy_dataset(tmp_path / "Toy", n=3)
    root.chmod(0o555)
    try:
        extra = {"train": ["--mode", "image", "-o", str(tmp_path / "run")], "sweep": ["-o", str(tmp_path / "sw")]}
        err = _error(capsys, [command, str(root), *extra.get(command, [])])
    finally:
        root.chmod(0o755)
    assert err.endswith(f"dataset folder {root} is not writable; give --work DIR")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sw").exists()


@needs_non_root
@pytest.mark.parametrize("command", ["predict", "train", "sweep"])
def test_output_in_a_read_only_folder_is_refused_before_any_work(trained, tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out, work, ds = locked / "sub" / "out", tmp_path / "work", trained["ds"]
    argv = {"predict": ["predict", "-m", str(trained["run"]), "-i", str(trained["image"]), "-o", str(out)],
            "train": ["train", str(ds.root), "--work", str(work), "--mode", "image", "-o", str(out)],
            "sweep": ["sweep", str(ds.root), "--work", str(work), "-o", str(out)]}[command]
    try:
        err = _error(capsys, argv)
    finally:
        locked.chmod(0o755)
    assert err.endswith(f"{out}: cannot write the output here ({locked} is not writable)")
    assert not work.exists()
