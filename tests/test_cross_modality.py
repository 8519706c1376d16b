"""--also-test: a sweep trained on CT phantoms also segments the MR phantoms of the same subjects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gbmseg.cli import main
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.phantoms import write_phantom_dataset
from gbmseg.report import make_report
from gbmseg.sweep import jobs, plan_sweep, run_job
from gbmseg.testing import tiny_config, write_toy_dataset

SMALL = dict(n=4, spacing=4.0, size=48)
TINY = ["training.max_iterations=4", "training.val_interval=2"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """CT phantoms trained (image, mask; N=1), MR phantoms of the same seeds (same case ids, same label
    maps) as --also-test, through the command line; the MR masks are made by the sweep (auto: otsu)."""
    tmp = tmp_path_factory.mktemp("cross")
    ct = write_phantom_dataset(tmp / "head_CT", modality="CT", **SMALL)
    mr = write_phantom_dataset(tmp / "head_MR", modality="MR", **SMALL)
    preset = tmp / "tiny.json"
    preset.write_text(json.dumps(tiny_config().to_dict()))
    args = ["sweep", str(ct), "--work", str(tmp / "work_CT"), "--also-test", str(mr), "--also-test-work",
            str(tmp / "work_MR"), "--preset", str(preset), *[a for t in TINY for a in ("--set", t)],
            "--modes", "image,mask", "--sizes", "1", "--seeds", "1", "--val", "head_001", "--test", "head_002",
            "-o", str(tmp / "sweep")]
    assert main(args) == 0
    return tmp / "sweep"


def test_every_job_tests_the_other_dataset(sweep):
    meta = json.loads((sweep / "sweep.json").read_text())
    (rec,) = meta["also_test"]
    assert rec["name"] == "head_MR" and rec["modality"] == "MR" and rec["masks"]["method"] == "otsu"
    assert rec["cases"] == ["head_002"]  # the same subject as the sweep's test case
    for job_dir in jobs(sweep):
        assert json.loads((job_dir / "job.json").read_text())["also_test"] == meta["also_test"]
        df = pd.read_csv(job_dir / "metrics_head_MR.csv")
        assert set(df["tested_on"]) == {"head_MR"} and set(df["case"]) == {"head_002"}
        assert {"job", "mode", "n_train", "seed", "dice", "com_mm"} <= set(df.columns)
        assert (job_dir / "predictions_head_MR" / "head_002.nii.gz").exists()
        done = json.loads((job_dir / "done.json").read_text())
        assert done["also_test"]["head_MR"] == pytest.approx(df["dice"].mean())
    agreement = pd.read_csv(sweep / "mask_agreement_head_MR.csv")
    assert list(agreement["case"]) == ["head_002"] and agreement["dice"].between(0.5, 1).all()
    out = sweep / "report"
    cross = pd.read_csv(out / "cross_modality.csv")
    assert {"own_mean", "other_mean", "ratio"} <= set(cross.columns)
    row = cross[(cross["mode"] == "mask") & (cross["structure"] == "ALL")].iloc[0]
    assert row["other_n"] > 0
    assert pd.isna(row["ratio"]) or row["ratio"] == pytest.approx(row["other_mean"] / row["own_mean"])
    md = (out / "report.md").read_text()
    assert "Trained on head_CT (CT), tested on head_MR (MR)" in md and "| ratio |" in md
    assert "mask only at N=1" in md and "Global masks, head_MR (otsu)" in md


def test_a_job_finished_before_the_also_test_gets_it_without_retraining(sweep):
    job_dir = jobs(sweep)[0]
    result = (job_dir / "train" / "result.json").stat().st_mtime_ns
    done = json.loads((job_dir / "done.json").read_text())
    del done["also_test"]
    (job_dir / "done.json").write_text(json.dumps(done))
    shutil.rmtree(job_dir / "predictions_head_MR")
    (job_dir / "metrics_head_MR.csv").unlink()
    summary = run_job(job_dir, progress=False)
    assert "head_MR" in summary["also_test"] and (job_dir / "metrics_head_MR.csv").exists()
    assert (job_dir / "train" / "result.json").stat().st_mtime_ns == result


def test_other_labels_are_refused_in_one_line(sweep, tmp_path):
    meta = json.loads((sweep / "sweep.json").read_text())
    ds = Dataset(meta["dataset"], work=meta["work"])
    toy = Dataset(write_toy_dataset(tmp_path / "Toy", n=2, size=24), work=tmp_path / "w")
    with pytest.raises(GbmsegError) as err:
        plan_sweep(ds, tmp_path / "s", modes=["image"], sizes=[1], preset="fast", val=["head_001"],
                   test=["head_002"], also_test=[toy])
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "Toy" / "dataset.json") in text and "head_CT/dataset.json" in text
    assert not (tmp_path / "w" / "masksTr").exists()  # refused before any mask was made


def _copy_job(sweep: Path, src: str, mode: str) -> None:
    """A finished job of another mode, made by relabelling one (no training)."""
    old = sweep / "runs" / src
    new = sweep / "runs" / old.name.replace(old.name.split("_n")[0], mode)
    shutil.copytree(old, new)
    job = json.loads((new / "job.json").read_text())
    (new / "job.json").write_text(json.dumps({**job, "id": new.name, "mode": mode}))
    for csv in new.glob("metrics*.csv"):
        pd.read_csv(csv).assign(job=new.name, mode=mode).to_csv(csv, index=False)


def test_report_with_more_modes_and_an_unknown_one(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report"))
    for src, mode in [("image_n01_seed0", "image+coords"), ("mask_n01_seed0", "image+mask"),
                      ("image_n01_seed0", "weird")]:
        _copy_job(copy, src, mode)
    text = make_report(copy).read_text()
    assert "weird" in text and "Every mode vs image+mask" in text
    assert "image+coords vs image+mask at N=1" in text and "too few pairs" in text  # 2 pairs: no test
    vs = pd.read_csv(copy / "report" / "comparison_vs_image_mask.csv")
    assert set(vs["mode"]) == {"image", "mask", "image+coords", "weird"} and {"p_dice", "p_com"} <= set(vs.columns)
    assert set(pd.read_csv(copy / "report" / "cross_modality.csv")["mode"]) >= {"weird", "image+coords"}
    comp = pd.read_csv(copy / "report" / "comparison.csv")
    assert "weird" in set(comp["mode"])


def _rows(mode: str, dice: list[float], **extra) -> pd.DataFrame:
    return pd.DataFrame([dict(case=f"c{i}", structure="s", dice=d, com_mm=1.0 - d, status="ok", job=f"{mode}_n08_seed0",
                              mode=mode, n_train=8, seed=0, **extra) for i, d in enumerate(dice)])


def test_statements_are_computed_from_the_numbers():
    from gbmseg.sweep_stats import compare_to, coords_statement, cross_statements, cross_table

    own = pd.concat([_rows("image", [0.8] * 6), _rows("mask", [0.6] * 6)])
    other = pd.concat([_rows("image", [0.04] * 6, tested_on="MR"), _rows("mask", [0.57] * 6, tested_on="MR")])
    table = cross_table(own, other, ["image", "mask"], [8], ["s"])
    assert table.set_index(["mode", "structure"]).loc[("mask", "ALL"), "ratio"] == pytest.approx(0.95)
    lines = cross_statements(table, "CT", "MR", {"mask": "mask only"})
    assert lines == ["image at N=8 keeps 5 % of its CT Dice on MR (0.040 vs 0.800): collapses",
                     "mask only at N=8 keeps 95 % of its CT Dice on MR (0.570 vs 0.600): holds"]
    base = _rows("image+mask", [0.7, 0.72, 0.74, 0.76, 0.78, 0.8])
    near = _rows("image+coords", [0.71, 0.71, 0.75, 0.75, 0.79, 0.79])  # +-0.01, mixed signs
    far = _rows("image+coords", [0.6, 0.62, 0.64, 0.66, 0.68, 0.7])  # 0.1 lower on every pair
    matches = coords_statement(compare_to(pd.concat([base, near]), [8], ["s"], "image+mask", ["image+coords"]))
    assert "matches image+mask" in matches and "localisation" in matches and "within 0.02" in matches
    short = coords_statement(compare_to(pd.concat([base, far]), [8], ["s"], "image+mask", ["image+coords"]))
    assert "falls short" in short and "more than position" in short and "p=0.031" in short


def test_planning_again_agrees(sweep):
    meta = json.loads((sweep / "sweep.json").read_text())
    ds = Dataset(meta["dataset"], work=meta["work"])
    mr = Dataset(meta["also_test"][0]["dataset"], work=meta["also_test"][0]["work"])
    again = dict(modes=["image", "mask"], sizes=[1], seeds=[0], preset=str(sweep.parent / "tiny.json"),
                 overrides=TINY, val=["head_001"], test=["head_002"])
    for also in ([mr], None):  # the same --also-test, or none: the plan stands
        plan_sweep(ds, sweep, also_test=also, **again)
        assert json.loads((sweep / "sweep.json").read_text())["also_test"] == meta["also_test"]
        assert json.loads((jobs(sweep)[0] / "job.json").read_text())["also_test"] == meta["also_test"]
