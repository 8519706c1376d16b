"""Multi-atlas segmentation (gbmseg.atlas) and the sweep mode ``atlas``, on small head phantoms.

One phantom dataset (6 mm, 40^3) for the module: the registrations test_atlas_segments_the_brainstem
makes are cached in its work folder and reused by the sweep test.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gbmseg.atlas import cache_key, local_weighted_vote, majority_vote, segment_case
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.global_masks import make_dataset_masks
from gbmseg.io import to_array, read_image
from gbmseg.phantoms import write_phantom_dataset
from gbmseg.report import make_report
from gbmseg.sweep import plan_sweep, run_sweep, training_subset
from gbmseg.testing import tiny_config

VAL, TEST = ["head_001"], ["head_002"]
POOL = ["head_003", "head_004", "head_005"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Dataset:
    tmp = tmp_path_factory.mktemp("atlas")
    root = write_phantom_dataset(tmp / "Heads", kind="head", n=5, modality="CT", seed=0, spacing=6.0, size=40)
    return Dataset(root, work=tmp / "work")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("votes, expected", [
    ([[1, 2, 0], [1, 2, 0], [1, 2, 0]], [1, 2, 0]),  # unanimous
    ([[1, 2, 3], [1, 0, 3], [0, 2, 1]], [1, 2, 3]),  # 2 of 3
    ([[1, 2, 3], [0, 1, 2]], [0, 1, 2]),             # 1 against 1: the lower value, background first
    ([[1, 3, 2], [2, 3, 0], [3, 1, 0]], [1, 3, 0]),  # 1-1-1: the lowest; 2 of 3 for background
    ([[7, 7, 1]], [0, 0, 1]),                        # a value that is no label is a vote for nothing
])
def test_majority_vote(votes, expected):
    assert majority_vote([np.array(v) for v in votes], [1, 2, 3]).tolist() == expected


def test_local_weighted_vote_trusts_the_atlas_that_looks_like_the_target():
    target = np.zeros((1, 1, 6), np.float32)
    target[..., 3:] = 100.0
    good = target.copy()                              # matches the target everywhere
    bad = np.where(np.arange(6) < 3, 100.0, 0.0)[None, None].astype(np.float32)  # the opposite
    labels = [np.array([[[0, 0, 0, 1, 1, 1]]]), np.array([[[1, 1, 1, 0, 0, 0]]])]
    fused = local_weighted_vote(labels, [good, bad], target, [1], sigma_mm=0.5)
    assert fused.tolist() == labels[0].tolist()       # majority_vote would give all background (1-1 ties)
    assert majority_vote(labels, [1]).tolist() == [[[0] * 6]]
    same = local_weighted_vote(labels, [good, good], target, [1], sigma_mm=0.5)
    assert same.tolist() == [[[0] * 6]]               # equal weights: a tie, background
    with pytest.raises(GbmsegError, match="2 label maps, 1 images"):
        local_weighted_vote(labels, [good], target, [1])


def test_majority_vote_of_nothing_is_an_error():
    with pytest.raises(GbmsegError, match="no label map"):
        majority_vote([], [1])


def test_atlas_segments_the_brainstem_and_caches_the_registrations(phantoms):
    atlases = training_subset(POOL, 2, 0)  # the sweep's N=2 atlases: the sweep test finds them cached
    label, stats = segment_case(phantoms, TEST[0], atlases)
    assert stats["registrations"] == 2 and stats["registrations_cached"] == 0
    pred, ref = to_array(label), to_array(read_image(phantoms.label_path(TEST[0])))
    assert pred.shape == ref.shape
    dice = _dice(pred == 1, ref == 1)
    assert dice > 0.5, f"brainstem Dice {dice:.3f}"
    cache = phantoms.atlas_dir(cache_key())
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.tfm")}
    assert set(files) == {f"{a}_to_{TEST[0]}.tfm" for a in atlases}
    again, stats = segment_case(phantoms, TEST[0], atlases)  # read back, not registered again
    assert stats["registrations"] == 0 and stats["registrations_cached"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.tfm")} == files
    assert not list(cache.glob(".tmp_*"))
    np.testing.assert_array_equal(to_array(again), pred)
    with pytest.raises(GbmsegError, match="its own atlas"):
        segment_case(phantoms, TEST[0], [TEST[0]])


def test_sweep_mode_atlas_writes_metrics_done_and_the_report_time(phantoms, tmp_path):
    make_dataset_masks(phantoms, "threshold", progress=False)
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(GbmsegError, match="unknown mode 'atlases'"):
        plan_sweep(phantoms, tmp_path / "bad", modes=["atlases"], sizes=[1], preset=str(preset), val=VAL, test=TEST)
    sweep = plan_sweep(phantoms, tmp_path / "sweep", modes=["atlas", "atlas-lw"], sizes=[1, 2], seeds=[0],
                       preset=str(preset), val=VAL, test=TEST)
    metrics = run_sweep(sweep, progress=False)
    assert set(metrics["mode"]) == {"atlas", "atlas-lw"} and set(metrics["n_train"]) == {1, 2}
    for mode, n in [("atlas", 1), ("atlas-lw", 1), ("atlas-lw", 2), ("atlas", 2)]:
        job = sweep / "runs" / f"{mode}_n{n:02d}_seed0"
        done = json.loads((job / "done.json").read_text())
        assert {"id", "mean_dice", "train", "predict_s_per_case", "job_wall_s", "finished"} <= set(done)
        assert done["train"]["iterations"] == 0 and done["train"]["stop_reason"] == "atlas"
        assert done["predict_s_per_case"] > 0 and not (job / "train").exists()
        assert done["registrations"] + done["registrations_cached"] == n
        assert (job / "predictions" / f"{TEST[0]}.nii.gz").exists()
        rows = pd.read_csv(job / "metrics.csv")
        assert set(rows["structure"]) == {"brainstem", "eye_left", "eye_right"} and (rows["job"] == done["id"]).all()
        if mode == "atlas-lw":  # atlas ran first: every pair is cached
            assert done["registrations_cached"] == n
    assert done["registrations_cached"] >= 1  # N=1's atlas is in N=2's set
    html = make_report(sweep).read_text()
    assert "multi-atlas" in html and "multi-atlas (local weights)" in html and "s per test case" in html
    time_csv = pd.read_csv(sweep / "report" / "time.csv")
    assert (time_csv.loc[time_csv["mode"] == "atlas", "predict_s_per_case_mean"] > 0).all()
