"""Tests for gbmseg.evaluation on small synthetic volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from gbmseg.errors import GbmsegError
from gbmseg.evaluation import (COLUMNS, _com_world, evaluate_case, evaluate_folder, evaluate_masks,
                               summarize)

SHAPE = (20, 24, 28)  # array [z, y, x]
SPACING = (0.7, 1.3, 2.5)  # sitk (x, y, z)


def oblique() -> tuple[float, ...]:
    """A rotation (30 deg about z, then 20 deg about x), row-major as SimpleITK wants."""
    a, b = math.radians(30), math.radians(20)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rx @ rz).ravel())


def image(arr, spacing=SPACING, origin=(-10.0, 5.0, 2.0), direction=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def sphere(center_zyx, radius=4.0, shape=SHAPE, value=1) -> np.ndarray:
    z, y, x = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip((z, y, x), center_zyx))
    return np.where(d2 <= radius**2, value, 0).astype(np.uint8)


def cube(start_zyx, size=8, shape=SHAPE, value=1) -> np.ndarray:
    arr = np.zeros(shape, np.uint8)
    arr[tuple(slice(s, s + size) for s in start_zyx)] = value
    return arr


def test_perfect_prediction():
    ref = sphere((10, 12, 14)) + cube((2, 2, 2), size=4, value=2)
    rows = evaluate_case(image(ref), image(ref), {"background": 0, "a": 1, "b": 2}, case="c1")
    assert [r["structure"] for r in rows] == ["a", "b"]
    assert all(list(r) == COLUMNS for r in rows)
    for r in rows:
        assert r["status"] == "ok" and r["case"] == "c1"
        assert r["dice"] == pytest.approx(1.0)
        assert r["com_mm"] == pytest.approx(0.0, abs=1e-9)
        assert r["hd95_mm"] == pytest.approx(0.0) and r["asd_mm"] == pytest.approx(0.0)
        assert r["ref_voxels"] == r["pred_voxels"]
    voxel_ml = np.prod(SPACING) / 1000
    assert rows[1]["ref_ml"] == pytest.approx(64 * voxel_ml)


@pytest.mark.parametrize("direction", [None, oblique()], ids=["identity", "oblique"])
@pytest.mark.parametrize("axis_zyx", [0, 1, 2])
def test_com_shift_each_axis(axis_zyx, direction):
    k = 3
    c = [10, 12, 14]
    shifted = list(c)
    shifted[axis_zyx] += k
    ref, pred = image(sphere(c), direction=direction), image(sphere(shifted), direction=direction)
    (row,) = evaluate_case(pred, ref, {"s": 1})
    spacing_of_axis = SPACING[::-1][axis_zyx]
    assert row["com_mm"] == pytest.approx(k * spacing_of_axis, rel=1e-6)


def test_com_world_uses_direction_and_origin():
    d = oblique()
    img = image(sphere((10, 12, 14)), direction=d)
    got = _com_world(sphere((10, 12, 14)).astype(bool), (0, 0, 0), img)
    expected = np.array((-10.0, 5.0, 2.0)) + np.array(d).reshape(3, 3) @ (np.array(SPACING) * [14, 12, 10])
    assert got == pytest.approx(expected)
    # cropping offset is added back
    arr = sphere((10, 12, 14)).astype(bool)
    assert _com_world(arr[5:, 6:, 7:], (5, 6, 7), img) == pytest.approx(expected)


def test_hd95_of_shifted_cube_is_shift_in_mm():
    ref = cube((6, 6, 6), size=10)
    pred = cube((6, 6, 9), size=10)  # 3 voxels along x, spacing 0.7 mm
    (row,) = evaluate_case(image(pred), image(ref), {"cube": 1})
    assert row["hd95_mm"] == pytest.approx(3 * 0.7, rel=0.05)
    assert 0 < row["asd_mm"] < row["hd95_mm"]
    assert row["dice"] == pytest.approx(7 / 10)
    assert row["com_mm"] == pytest.approx(3 * 0.7)
    # along z (2.5 mm): the array axis order must be reversed for MONAI
    (row_z,) = evaluate_case(image(cube((9, 6, 6), size=10)), image(ref), {"cube": 1})
    assert row_z["hd95_mm"] == pytest.approx(3 * 2.5, rel=0.05)


def test_empty_statuses_and_summary():
    ref = sphere((10, 12, 14)) + cube((1, 1, 1), size=3, value=2)
    pred = cube((1, 1, 1), size=3, value=2) + cube((15, 18, 20), size=3, value=3)
    labels = {"a": 1, "b": 2, "c": 3, "d": 4}
    rows = {r["structure"]: r for r in evaluate_case(image(pred), image(ref), labels, case="x")}
    assert rows["a"]["status"] == "empty_pred" and rows["a"]["dice"] == 0.0
    assert rows["b"]["status"] == "ok"
    assert rows["c"]["status"] == "empty_ref" and rows["c"]["dice"] == 0.0
    assert rows["d"]["status"] == "both_empty" and math.isnan(rows["d"]["dice"])
    for s in "acd":
        assert all(math.isnan(rows[s][m]) for m in ("com_mm", "hd95_mm", "asd_mm"))
    df = pd.DataFrame(list(rows.values()))
    summ = summarize(df).set_index("structure")
    assert summ.loc["a", "n_empty_pred"] == 1 and summ.loc["a", "n_missing"] == 1
    all_row = summ.loc["ALL"]
    assert (all_row["n"], all_row["n_ok"], all_row["n_missing"]) == (4, 1, 3)
    assert (all_row["n_empty_ref"], all_row["n_both_empty"]) == (1, 1)
    assert all_row["dice_mean"] == pytest.approx(1 / 3)  # both_empty NaN is skipped


def test_summarize_by_group():
    df = pd.DataFrame({"model": ["m1", "m1", "m2"], "case": ["a", "b", "a"], "structure": ["s"] * 3,
                       "dice": [0.8, 0.6, 1.0], "com_mm": [1.0, 3.0, 0.0], "hd95_mm": [1.0] * 3,
                       "asd_mm": [0.5] * 3, "status": ["ok"] * 3})
    summ = summarize(df, by=["model"])
    m1 = summ[(summ.model == "m1") & (summ.structure == "s")].iloc[0]
    assert m1["n"] == 2 and m1["dice_mean"] == pytest.approx(0.7)
    assert m1["dice_sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert set(summ.structure) == {"s", "ALL"} and len(summ) == 4


def write(arr, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image(arr, **kw), str(path))


@pytest.fixture
def dataset(tmp_path):
    """nnU-Net layout: DATASET/labelsTr, DATASET/dataset.json, plus predictions."""
    ds = tmp_path / "Dataset001"
    refs = {"c1": sphere((10, 12, 14)) + cube((1, 1, 1), 3, value=2),
            "c2": sphere((9, 11, 13), radius=5) + cube((14, 2, 2), 3, value=2)}
    for case, arr in refs.items():
        write(arr, ds / "labelsTr" / f"{case}.nii.gz")
    write(refs["c1"], tmp_path / "pred" / "c1.nii.gz")
    write(sphere((10, 12, 15)), tmp_path / "pred" / "c2.nii.gz")  # misses label 2
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "brainstem": 1, "eye": 2}}))
    return tmp_path


def test_evaluate_folder_writes_csv_and_summary(dataset):
    out = dataset / "eval" / "metrics.csv"
    df = evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr", out_csv=out)
    assert list(df.columns) == COLUMNS and len(df) == 4
    assert list(df.structure.unique()) == ["brainstem", "eye"]
    back = pd.read_csv(out)
    assert back.shape == df.shape and list(back.status) == ["ok", "ok", "ok", "empty_pred"]
    summ = pd.read_csv(dataset / "eval" / "metrics_summary.csv").set_index("structure")
    assert summ.loc["eye", "n_empty_pred"] == 1 and summ.loc["ALL", "n"] == 4
    assert summ.loc["ALL", "n_missing"] == 1
    assert not list((dataset / "eval").glob(".tmp_*"))


def test_evaluate_folder_labels_from_references_and_cases(dataset):
    (dataset / "Dataset001" / "dataset.json").unlink()
    df = evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr", cases=["c1"])
    assert list(df.structure) == ["label_1", "label_2"] and list(df.case) == ["c1", "c1"]
    assert (df.dice == 1.0).all()


def test_missing_prediction_of_a_named_case_names_file(dataset):
    (dataset / "pred" / "c2.nii.gz").unlink()
    with pytest.raises(GbmsegError, match="c2.nii.gz"):
        evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr", cases=["c1", "c2"])


def test_only_references_with_a_prediction_are_scored_and_the_rest_listed(dataset):
    (dataset / "pred" / "c2.nii.gz").unlink()
    df = evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr")
    assert set(df.case) == {"c1"} and df.attrs["left_out"] == ["c2"]


def test_no_matching_prediction_is_an_error_naming_the_folder(dataset):
    for p in (dataset / "pred").iterdir():
        p.rename(p.with_name("other_" + p.name))
    with pytest.raises(GbmsegError, match="no prediction named like a reference"):
        evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr")


def test_geometry_mismatch_names_file(dataset):
    write(sphere((10, 12, 14)), dataset / "pred" / "c2.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(GbmsegError, match=r"c2\.nii\.gz.*spacing"):
        evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr")
    write(sphere((10, 12, 14), shape=(20, 24, 30)), dataset / "pred" / "c2.nii.gz")
    with pytest.raises(GbmsegError, match=r"c2\.nii\.gz.*shape"):
        evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr")


def test_unknown_label_names_file(dataset):
    write(sphere((10, 12, 14), value=7), dataset / "pred" / "c2.nii.gz")
    with pytest.raises(GbmsegError, match=r"c2\.nii\.gz.*\[7\]"):
        evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr")


def test_nan_and_non_integer_name_file(dataset, tmp_path):
    # SimpleITK's NIfTI reader turns NaN into 0, so the NaN case uses MetaImage files
    arr = sphere((10, 12, 14)).astype(np.float32)
    write(arr, tmp_path / "mha_ref" / "c3.mha")
    arr[0, 0, 0] = np.nan
    write(arr, tmp_path / "mha_pred" / "c3.mha")
    with pytest.raises(GbmsegError, match=r"c3\.mha.*NaN"):
        evaluate_folder(tmp_path / "mha_pred", tmp_path / "mha_ref", {"s": 1}, file_ending=".mha")
    with pytest.raises(GbmsegError, match="case c3 prediction.*NaN"):
        evaluate_case(image(arr), image(sphere((10, 12, 14))), {"s": 1}, case="c3")
    arr[0, 0, 0] = 0.5
    write(arr, dataset / "pred" / "c2.nii.gz")
    with pytest.raises(GbmsegError, match=r"c2\.nii\.gz.*non-integer"):
        evaluate_folder(dataset / "pred", dataset / "Dataset001" / "labelsTr")


def test_evaluate_case_errors_name_case():
    ref = image(sphere((10, 12, 14)))
    with pytest.raises(GbmsegError, match="case c9 prediction.*origin"):
        evaluate_case(image(sphere((10, 12, 14)), origin=(0.0, 0.0, 0.0)), ref, {"s": 1}, case="c9")


def test_evaluate_masks(dataset):
    refs = dataset / "Dataset001" / "labelsTr"
    for case in ("c1", "c2"):
        union = (sitk.GetArrayFromImage(sitk.ReadImage(str(refs / f"{case}.nii.gz"))) > 0).astype(np.uint8)
        if case == "c2":
            union[0:10] = 1  # over-segment
        write(union, dataset / "masks" / f"{case}.nii.gz")
    df = evaluate_masks(dataset / "masks", refs, out_csv=dataset / "masks.csv")
    assert list(df.columns) == ["case", "dice", "volume_error_pct", "mask_ml", "ref_ml", "com_mm"]
    c1, c2 = df.set_index("case").loc["c1"], df.set_index("case").loc["c2"]
    assert c1["dice"] == pytest.approx(1.0) and c1["volume_error_pct"] == pytest.approx(0.0)
    assert c1["com_mm"] == pytest.approx(0.0, abs=1e-9)
    assert c2["dice"] < 1 and c2["volume_error_pct"] > 0 and c2["mask_ml"] > c2["ref_ml"]
    assert pd.read_csv(dataset / "masks.csv").shape == df.shape
    write(np.full(SHAPE, 2, np.uint8), dataset / "masks" / "c2.nii.gz")
    with pytest.raises(GbmsegError, match=r"c2\.nii\.gz"):
        evaluate_masks(dataset / "masks", refs)


def test_scores_an_nnunet_prediction_folder(dataset):
    """nnUNetv2_predict writes <case>.nii.gz (uint8) beside dataset.json, plans.json,
    predict_from_raw_data_args.json and, with --save_probabilities, <case>.npz and <case>.pkl."""
    pred = dataset / "nnunet_pred"
    write(sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "pred" / "c1.nii.gz"))), pred / "c1.nii.gz")
    for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (pred / name).write_text(json.dumps({"labels": {"background": 0, "other": 9}}))
    np.savez_compressed(pred / "c1.npz", probabilities=np.zeros((3, *SHAPE), np.float16))
    (pred / "c1.pkl").write_bytes(b"\x80\x04N.")
    df = evaluate_folder(pred, dataset / "Dataset001" / "labelsTr")
    assert set(df.case) == {"c1"} and df.attrs["left_out"] == ["c2"]
    assert list(df.structure) == ["brainstem", "eye"] and (df.dice == 1.0).all()
