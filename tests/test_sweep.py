import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from gbmseg.testing import tiny_config, write_toy_dataset

from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.global_masks import make_dataset_masks
from gbmseg.sweep import collect_metrics, jobs, plan_sweep, run_sweep, split_cases, training_subset


def test_split_and_nested_subsets():
    cases = [f"c{i:02d}" for i in range(20)]
    split = split_cases(cases, 4, 4, seed=0)
    assert len(split["val"]) == 4 and len(split["test"]) == 4 and len(split["pool"]) == 12
    assert not set(split["val"]) & set(split["test"]) and not set(split["pool"]) & set(split["test"])
    for seed in (0, 1):
        subsets = [training_subset(split["pool"], n, seed) for n in (1, 2, 4, 8)]
        for small, big in zip(subsets, subsets[1:]):
            assert set(small) < set(big)
    assert training_subset(split["pool"], 4, 0) != training_subset(split["pool"], 4, 1)
    with pytest.raises(GbmsegError):
        split_cases(cases[:3], 2, 1)


def _toy_sweep(tmp_path, sizes=(1, 2, 50)):
    root = write_toy_dataset(tmp_path / "Toy", n=6, seed=2)
    ds = Dataset(root, work=tmp_path / "work")
    make_dataset_masks(ds, progress=False)
    cfg = tiny_config(max_iterations=20, val_interval=10)
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps(cfg.to_dict()))
    sweep = plan_sweep(ds, tmp_path / "sweep", modes=["image", "image+mask"], sizes=list(sizes), seeds=[0],
                       preset=str(preset), val=["toy_000"], test=["toy_001"])
    return ds, sweep


def test_plan_caps_sizes_and_is_self_describing(tmp_path):
    ds, sweep = _toy_sweep(tmp_path)
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["sizes"] == [1, 2, 4]  # 50 capped at the 4 pool cases
    job_dirs = jobs(sweep)
    assert len(job_dirs) == 6
    job = json.loads((job_dirs[0] / "job.json").read_text())
    assert job["dataset"] and job["config"]["name"] == "tiny" and job["test"] == ["toy_001"]
    with pytest.raises(GbmsegError, match="different sweep"):
        plan_sweep(ds, sweep, modes=["mask"], sizes=[1], seeds=[0], preset=str(tmp_path / "tiny.json"),
                   val=["toy_000"], test=["toy_001"])


def test_kill_minus_9_loses_no_finished_run(tmp_path):
    ds, sweep = _toy_sweep(tmp_path, sizes=(1, 2))
    job_dirs = jobs(sweep)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = f"from gbmseg.sweep import run_sweep; run_sweep({str(sweep)!r}, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill -9 once the first run is finished and the second has written a checkpoint
    deadline = time.time() + 240
    while time.time() < deadline and not ((job_dirs[0] / "done.json").exists()
                                         and (job_dirs[1] / "train" / "last.pt").exists()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (job_dirs[0] / "done.json").exists(), "the first run did not finish in time"
    first = {p.name: p.stat().st_mtime_ns for p in (job_dirs[0] / "train").iterdir()}
    first_done = (job_dirs[0] / "done.json").read_text()
    # killed mid-training of the second run, which must resume from last.pt instead of starting over
    assert not (job_dirs[1] / "train" / "result.json").exists(), "the second run finished before the kill"
    assert "resumed" not in (job_dirs[1] / "train" / "train.log").read_text()
    metrics = run_sweep(sweep, progress=False)
    assert all((j / "done.json").exists() for j in job_dirs)
    assert (job_dirs[0] / "done.json").read_text() == first_done
    assert {p.name: p.stat().st_mtime_ns for p in (job_dirs[0] / "train").iterdir()} == first
    assert "resumed from" in (job_dirs[1] / "train" / "train.log").read_text()
    assert len(metrics) == len(job_dirs) * 2  # one test case x two structures per run
    assert set(metrics["job"]) == {j.name for j in job_dirs}
    assert len(collect_metrics(sweep)) == len(metrics)
    quality = pd.read_csv(sweep / "mask_quality.csv")  # stated in the report
    assert len(quality) == 6 and quality["dice"].between(0, 1).all()


def test_demo_runs_end_to_end_and_writes_the_report(tmp_path):
    """The README's main command, shrunk to seconds (same code path, tiny training)."""
    from gbmseg.demo import run_demo

    html = run_demo(tmp_path / "demo", progress=False, sizes=[1],
                    overrides=["training.max_iterations=4", "training.val_interval=2", "network.base_channels=4",
                               "preprocessing.size=[32,32,32]", "preprocessing.spacing=[6,6,6]"])
    text = html.read_text()
    assert html.exists() and "data:image/png;base64" in text
    for section in ("Dice per structure", "Training time", "image+mask"):
        assert section in text
    assert len(list((html.parent / "figures").glob("overlay_*.png"))) == 3
    assert len(pd.read_csv(html.parent / "dice.csv")) > 0


def test_two_sweeps_with_other_preprocessing_each_train_on_their_own_grid(tmp_path):
    """Same dataset, same preset, different --set preprocessing.*: two caches, each job on its own."""
    import numpy as np

    from gbmseg.sweep import run_job

    ds, _ = _toy_sweep(tmp_path, sizes=(1,))
    preset = str(tmp_path / "tiny.json")
    sweeps = {}
    for size in (24, 32):
        sweeps[size] = plan_sweep(ds, tmp_path / f"sweep{size}", modes=["image"], sizes=[1], seeds=[0], preset=preset,
                                  overrides=[f"preprocessing.size=[{size},{size},{size}]", "training.max_iterations=2",
                                             "training.val_interval=2"], val=["toy_000"], test=["toy_001"])
    keys = {size: json.loads((jobs(s)[0] / "job.json").read_text())["cache_key"] for size, s in sweeps.items()}
    assert keys[24] != keys[32]
    for size in (32, 24, 32):  # interleaved: neither sweep's cache is rewritten by the other
        job_dir = jobs(sweeps[size])[0]
        for done in job_dir.glob("done.json"):
            done.unlink()
        run_job(job_dir, progress=False)
        cache = json.loads((job_dir / "train" / "config.json").read_text())["cache"]
        assert cache.endswith(f"tiny_{keys[size]}")
        plan = json.loads((tmp_path / "work" / "gbmseg_preprocessed" / f"tiny_{keys[size]}" / "plan.json").read_text())
        assert plan["preprocessing"]["size"] == [size] * 3 and plan["key"] == keys[size]
        with np.load(next((tmp_path / "work" / "gbmseg_preprocessed" / f"tiny_{keys[size]}").glob("*.npz"))) as z:
            assert z["label"].shape == (size,) * 3


def test_masks_remade_with_another_method_make_an_existing_job_refuse(tmp_path):
    from gbmseg.sweep import run_job

    ds, sweep = _toy_sweep(tmp_path, sizes=(1,))
    job_dir = jobs(sweep)[0]
    make_dataset_masks(ds, "otsu", progress=False)  # another method: every mask is made again
    with pytest.raises(GbmsegError, match="masks changed since") as err:
        run_job(job_dir, progress=False)
    assert "\n" not in str(err.value)
    assert not (job_dir / "train").exists()  # refused before training started



def test_a_sweep_may_gain_modes_but_not_lose_them(tmp_path):
    ds, sweep = _toy_sweep(tmp_path, sizes=(1,))
    before = {j.name: (j / "job.json").read_text() for j in jobs(sweep)}
    plan = dict(sizes=[1], seeds=[0], preset=str(tmp_path / "tiny.json"), val=["toy_000"], test=["toy_001"])
    plan_sweep(ds, sweep, modes=["image", "image+mask", "image+coords"], **plan)
    assert json.loads((sweep / "sweep.json").read_text())["modes"] == ["image", "image+mask", "image+coords"]
    assert [j.name for j in jobs(sweep)] == ["image_n01_seed0", "image+mask_n01_seed0", "image+coords_n01_seed0"]
    assert all((sweep / "runs" / name / "job.json").read_text() == text for name, text in before.items())
    with pytest.raises(GbmsegError, match="only gain modes"):
        plan_sweep(ds, sweep, modes=["image"], **plan)


def test_a_job_trained_and_predicted_elsewhere_is_only_evaluated(tmp_path):
    """benchmarks/gpu_jobs.py brings back train/result.json and the predictions, not the model."""
    ds, sweep = _toy_sweep(tmp_path, sizes=(1,))
    run_sweep(sweep, progress=False)
    job = jobs(sweep)[0]
    metrics = pd.read_csv(job / "metrics.csv")
    for name in ("done.json", "metrics.csv", "train/model.pt", "train/last.pt"):
        (job / name).unlink(missing_ok=True)
    run_sweep(sweep, progress=False)
    assert not (job / "train" / "model.pt").exists()  # not trained again
    pd.testing.assert_frame_equal(pd.read_csv(job / "metrics.csv"), metrics)
    assert json.loads((job / "done.json").read_text())["predict_s_per_case"] is None


def test_without_modes_a_sweep_runs_the_papers_three(tmp_path):
    """The controls (image+coords, image+sdm) and atlases are asked for, never added silently (the demo's time)."""
    root = write_toy_dataset(tmp_path / "Toy", n=6, seed=2)
    ds = Dataset(root, work=tmp_path / "work")
    make_dataset_masks(ds, progress=False)
    sweep = plan_sweep(ds, tmp_path / "sweep", sizes=[1], seeds=[0], preset="demo", val=["toy_000"], test=["toy_001"])
    assert json.loads((sweep / "sweep.json").read_text())["modes"] == ["image", "mask", "image+mask"]


def test_a_test_case_with_an_unusual_mask_is_predicted_and_its_warning_kept(tmp_path):
    """A test scan whose body mask is far smaller than the training masks' (a shorter scan) is segmented,
    and the job's done.json says which case was unusual."""
    import numpy as np
    import SimpleITK as sitk

    from gbmseg.report import make_report
    from gbmseg.sweep import prepare_sweep

    ds, sweep = _toy_sweep(tmp_path, sizes=(1,))
    prepare_sweep(sweep, progress=False)  # the cache holds the masks as they were
    path = ds.mask_path("toy_001")
    mask = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(mask)
    z, y, x = (int(c) for c in np.argwhere(arr).mean(0))
    small = np.zeros_like(arr)
    small[z - 4:z + 4, y - 4:y + 4, x - 4:x + 4] = arr[z - 4:z + 4, y - 4:y + 4, x - 4:x + 4]  # 8^3 voxels at most
    shrunk = sitk.GetImageFromArray(small)
    shrunk.CopyInformation(mask)
    sitk.WriteImage(shrunk, str(path))
    with pytest.warns(UserWarning, match="toy_001.*under 1/3 of the smallest training mask"):
        run_sweep(sweep, progress=False)
    for job in jobs(sweep):
        [note] = json.loads((job / "done.json").read_text())["predict_warnings"]
        assert note["case"] == "toy_001" and "under 1/3 of the smallest training mask" in note["warning"], job
        assert (job / "predictions" / "toy_001.nii.gz").exists()
    report = (make_report(sweep).parent / "report.md").read_text()
    assert "Test cases whose global mask was unusual at prediction" in report and "toy_001 (2 of 2 runs)" in report


@pytest.mark.parametrize("train,shown", [
    ({"extended_iterations": 1000, "extended_for": ["brainstem"]}, "budget extended by 1000 for brainstem"),
    ({"extended_iterations": 0, "extended_for": []}, None),
    ({}, None),  # a run recorded before extensions existed
])
def test_the_progress_line_says_when_a_budget_was_extended(train, shown):
    from gbmseg.sweep import job_line
    line = job_line({"id": "image_n01_seed0", "mean_dice": 0.5, "predict_s_per_case": 1.0,
                     "train": {"iterations": 1500, "train_time_s": 300.0, "learned": True, **train}})
    assert line.startswith("image_n01_seed0: mean test Dice 0.500 (1500 iterations")
    assert ("budget extended" in line) == (shown is not None) and (shown is None or shown in line)
