"""gbmseg.report on a fake sweep folder (synthetic metrics, tiny NIfTI dataset, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from gbmseg.report import make_report, overlay_panels
from gbmseg.sweep_stats import Run, convergence_table, first_reached, load_runs, wilcoxon_p

LABELS = {"brainstem": 1, "eye_left": 2, "eye_right": 3}
CASES = ["case_000", "case_001", "case_002", "case_003"]
TEST, VAL = CASES[:3], CASES[3:]
SEEDS = [0, 1]


def _write_dataset(root: Path) -> dict[str, sitk.Image]:
    """24^3 'heads': a body sphere with three labelled spheres inside; returns the label maps."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    zz, yy, xx = np.mgrid[:24, :24, :24]
    labels = {}
    for i, case in enumerate(CASES):
        lab = np.zeros((24, 24, 24), np.uint8)
        for value, (z, y, x) in zip(LABELS.values(), [(10 + i % 2, 15, 12), (14, 7, 8), (14, 7, 16)]):
            lab[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 9] = value
        body = (zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 110
        hu = np.where(body, 40, -1000) + 30 * (lab > 0)
        image = sitk.GetImageFromArray(hu.astype(np.int16))
        image.SetSpacing((2.0, 2.0, 3.0))
        label = sitk.GetImageFromArray(lab)
        label.CopyInformation(image)
        sitk.WriteImage(image, str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(label, str(root / "labelsTr" / f"{case}.nii.gz"))
        labels[case] = label
    meta = {"name": "FakeHead", "channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
            "labels": {"background": 0, **LABELS}, "numTraining": len(CASES)}
    (root / "dataset.json").write_text(json.dumps(meta))
    return labels


def fake_dice(mode: str, n: int, case: int, seed: int, s: int) -> float:
    """image+mask beats image at N=1 on every pair, equals it at N=2; mask is mixed."""
    image = 0.5 + 0.03 * case + 0.02 * seed + 0.01 * s + (0.1 if n == 2 else 0.0)
    if mode == "image+mask":
        return image + (0.1 + 0.01 * case + 0.005 * seed + 0.002 * s if n == 1 else 0.0)
    if mode == "mask":
        return image + (0.02 if (case + seed + s) % 2 else -0.03)
    return image


def _write_job(sweep_dir: Path, labels: dict, mode: str, n: int, seed: int, done: bool = True) -> Path:
    jid = f"{mode}_n{n:02d}_seed{seed}"
    job_dir = sweep_dir / "runs" / jid
    (job_dir / "train").mkdir(parents=True)
    (job_dir / "job.json").write_text(json.dumps({"id": jid, "mode": mode, "n_train": n, "seed": seed,
                                                  "train": CASES[3:3 + n], "val": VAL, "test": TEST}))
    rows = []
    for ci, case in enumerate(TEST):
        for si, (name, value) in enumerate(LABELS.items()):
            d = fake_dice(mode, n, ci, seed, si)
            status = "ok"
            if (mode, n, seed, ci, si) == ("mask", 2, 1, 0, 1):  # one empty prediction
                d, status = 0.0, "empty_pred"
            dist = np.nan if status != "ok" else 5 * (1 - d)
            rows.append(dict(case=case, structure=name, label=value, dice=d, com_mm=dist, hd95_mm=2 * dist,
                             asd_mm=dist / 2, ref_voxels=100, pred_voxels=0 if status != "ok" else 100,
                             ref_ml=1.2, pred_ml=1.2, status=status, job=jid, mode=mode, n_train=n, seed=seed))
        arr = np.roll(sitk.GetArrayFromImage(labels[case]), {"image": 2, "mask": -1}.get(mode, 0), axis=2)
        pred = sitk.GetImageFromArray(arr)
        pred.CopyInformation(labels[case])
        (job_dir / "predictions").mkdir(exist_ok=True)
        sitk.WriteImage(pred, str(job_dir / "predictions" / f"{case}.nii.gz"))
    pd.DataFrame(rows).to_csv(job_dir / "metrics.csv", index=False)
    it = np.arange(10, 110, 10)
    pd.DataFrame(dict(iteration=it, train_loss=0.9 * np.exp(-it / (40 + 10 * n)), val_loss=0.95 * np.exp(-it / (50 + 10 * n)),
                      val_dice=1 - np.exp(-it / 50), wall_s=it * 0.5)).to_csv(job_dir / "train" / "history.csv", index=False)
    (job_dir / "train" / "result.json").write_text(json.dumps(
        {"best_iteration": 90 + seed * 10, "best_val_dice": 0.8, "iterations": 100, "train_time_s": 50.0 * n + seed,
         "time_to_best_s": 45.0 * n, "stop_reason": "max_iterations", "device": "cpu"}))
    if done:
        (job_dir / "done.json").write_text(json.dumps({"id": jid}))
    return job_dir


def make_fake_sweep(root: Path, modes=("image", "mask", "image+mask"), modality: str = "CT",
                    planned=("image", "mask", "image+mask")) -> Path:
    labels = _write_dataset(root / "FakeHead")
    sweep_dir = root / "sweep"
    sweep_dir.mkdir()
    sweep = {"dataset": str(root / "FakeHead"), "work": str(root / "FakeHead"), "name": "FakeHead",
             "labels": LABELS, "modality": modality, "modes": list(planned), "sizes": [1, 2, 4],
             "seeds": SEEDS, "preset": "fast", "config": {}, "split": {"val": VAL, "test": TEST, "pool": ["p1", "p2"]},
             "masks": {"method": "threshold", "params": {"threshold": -300}}, "created": "2024-01-01T00:00:00+00:00"}
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep))
    for mode in modes:
        for n in (1, 2):
            for seed in SEEDS:
                _write_job(sweep_dir, labels, mode, n, seed)
    _write_job(sweep_dir, labels, "image", 4, 0, done=False)  # started, not finished
    pd.DataFrame(dict(case=CASES, dice=[0.95, 0.96, 0.94, 0.97], volume_error_pct=[2.0, -1.0, 3.0, 0.5],
                      mask_ml=[1500.0] * 4, ref_ml=[1480.0] * 4, com_mm=[1.0, 1.5, 0.8, 1.2])
                 ).to_csv(sweep_dir / "mask_quality.csv", index=False)
    return sweep_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, Path]:
    sweep_dir = make_fake_sweep(tmp_path_factory.mktemp("report"))
    return sweep_dir, make_report(sweep_dir)


def test_files_and_self_contained_html(report):
    sweep_dir, html_path = report
    out = sweep_dir / "report"
    assert html_path == out / "report.html"
    for name in ["report.md", "dice.csv", "com.csv", "hd95.csv", "time.csv", "comparison.csv",
                 "convergence.csv", "figures/dice_vs_n.png", "figures/loss_curves.png", "figures/val_dice.png"]:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "figures").glob("overlay_*.png")) == [f"overlay_{c}.png" for c in TEST]
    text = html_path.read_text()
    assert text.count("data:image/png;base64,") == 6
    assert 'src="http' not in text and "src='http" not in text and "<link" not in text and "<script" not in text
    md = (out / "report.md").read_text()
    assert "![dice_vs_n.png](figures/dice_vs_n.png)" in md and "| 1 | brainstem | 0.54 (0.03) |" in md and "[1 missing]" in md  # a Dice cell


def test_dice_csv_matches_pandas(report):
    sweep_dir, _ = report
    dice = pd.read_csv(sweep_dir / "report" / "dice.csv")
    raw = pd.concat(pd.read_csv(p) for p in sweep_dir.glob("runs/*/metrics.csv")
                    if (p.parent / "done.json").exists())
    expected = raw.groupby(["mode", "n_train", "structure"])["dice"].agg(["mean", "std", "count"]).reset_index()
    merged = dice.merge(expected, on=["mode", "n_train", "structure"])
    assert len(merged) == 3 * 2 * 3
    assert np.allclose(merged["mean_x"], merged["mean_y"]) and np.allclose(merged["sd"], merged["std"])
    assert (merged["n"] == 6).all()
    all_rows = dice[(dice["structure"] == "ALL") & (dice["mode"] == "image") & (dice["n_train"] == 1)].iloc[0]
    assert all_rows["n"] == 18 and np.isclose(all_rows["mean"], raw[(raw["mode"] == "image") & (raw["n_train"] == 1)]["dice"].mean())
    # the unfinished N=4 job is excluded: empty cells
    n4 = dice[dice["n_train"] == 4]
    assert (n4["n"] == 0).all() and n4["mean"].isna().all()
    com = pd.read_csv(sweep_dir / "report" / "com.csv").set_index(["mode", "n_train", "structure"])
    assert com.loc[("mask", 2, "eye_left"), "n_missing"] == 1 and com.loc[("mask", 2, "eye_left"), "n"] == 5
    assert com.loc[("mask", 2, "ALL"), "n_missing"] == 1 and com.loc[("image", 1, "ALL"), "n_missing"] == 0


def test_comparison_as_constructed(report):
    sweep_dir, html_path = report
    comp = pd.read_csv(sweep_dir / "report" / "comparison.csv").set_index(["n_train", "structure", "mode"])
    n1 = comp.loc[(1, "ALL", "image+mask")]
    assert n1["n_pairs"] == 18 and n1["p_value"] < 0.05 and n1["rel_change_pct"] > 10
    assert np.isclose(n1["rel_change_pct"], 100 * (n1["dice_mode"] - n1["dice_image"]) / n1["dice_image"])
    for s in LABELS:  # 6 pairs, all positive: exact p = 2 / 2**6
        assert np.isclose(comp.loc[(1, s, "image+mask"), "p_value"], 2 / 64)
    n2 = comp.loc[(2, "ALL", "image+mask")]
    assert n2["p_value"] == 1.0 and n2["rel_change_pct"] == 0.0
    assert comp.loc[(2, "ALL", "mask"), "p_value"] > 0.05
    assert np.isnan(comp.loc[(4, "ALL", "mask"), "p_value"]) and comp.loc[(4, "ALL", "mask"), "n_pairs"] == 0
    text = html_path.read_text()
    assert "N=1: mask vs image" in text and "image+mask vs image +" in text
    assert "significant at 0.05" in text and "not significant at 0.05" in text


def test_header_counts_unfinished(report):
    sweep_dir, html_path = report
    text = html_path.read_text()
    assert "12 of 18 planned finished; 1 started but unfinished (skipped: image_n04_seed0); 5 not started" in text
    assert "Mask quality" in text and "threshold" in text and "Device: cpu" in text
    time = pd.read_csv(sweep_dir / "report" / "time.csv").set_index(["mode", "n_train"])
    assert time.loc[("image", 2), "train_time_s_mean"] == 100.5 and time.loc[("image", 2), "n_runs"] == 2
    assert time.loc[("image", 4), "n_runs"] == 0


def test_missing_modes_and_custom_out_dir(tmp_path):
    sweep_dir = make_fake_sweep(tmp_path, modes=("image",), modality="MR")  # MR: percentile window
    html_path = make_report(sweep_dir, tmp_path / "elsewhere")
    assert html_path == tmp_path / "elsewhere" / "report.html"
    comp = pd.read_csv(tmp_path / "elsewhere" / "comparison.csv")
    assert (comp["n_pairs"] == 0).all() and comp["p_value"].isna().all()
    dice = pd.read_csv(tmp_path / "elsewhere" / "dice.csv")
    assert dice[dice["mode"] == "mask"]["mean"].isna().all()
    # the missing modes get a "no finished run" panel in each overlay figure, and only there
    runs, metrics, _ = load_runs(sweep_dir)
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    panels = overlay_panels(sweep, runs, metrics, ["image", "mask", "image+mask"], sweep["split"]["test"][0])
    empty = [title for title, path in panels.items() if path is None]
    assert empty == ["mask only\n(no finished run)", "image+mask\n(no finished run)"]
    assert "no finished run" not in html_path.read_text()
    assert "no paired results" in html_path.read_text()
    assert len(list((tmp_path / "elsewhere" / "figures").glob("overlay_*.png"))) == 3


def test_a_sweep_of_image_only_reports_without_a_comparison(tmp_path):
    sweep_dir = make_fake_sweep(tmp_path, modes=("image",), planned=("image",))
    text = make_report(sweep_dir).read_text()
    assert "Dice per structure" in text and "vs image only" not in text
    assert not (sweep_dir / "report" / "comparison.csv").exists()


def test_nothing_finished_yet(tmp_path):
    sweep_dir = make_fake_sweep(tmp_path, modes=())
    (sweep_dir / "runs" / "mask_n01_seed0").mkdir()
    (sweep_dir / "runs" / "mask_n01_seed0" / "job.json").write_text("{}")  # planned, not started
    text = make_report(sweep_dir).read_text()
    assert "0 of 18 planned finished; 1 started but unfinished (skipped: image_n04_seed0); 17 not started" in text
    assert pd.read_csv(sweep_dir / "report" / "dice.csv")["n"].eq(0).all()
    assert not (sweep_dir / "report" / "figures" / "loss_curves.png").exists()
    assert not (sweep_dir / "report" / "figures" / "val_dice.png").exists()


def test_wilcoxon_p_rules():
    assert np.isnan(wilcoxon_p([0.1, 0.2, 0.3, 0.4]))
    assert wilcoxon_p(np.zeros(10)) == 1.0
    assert wilcoxon_p(np.linspace(0.01, 0.1, 10)) < 0.01


@pytest.mark.parametrize("val_dice, target, expected", [
    ([0.1, 0.4, 0.6, 0.8], 0.5, (150.0, 30.0)),   # first crossing, not the best
    ([0.1, 0.7, 0.3, 0.9], 0.7, (100.0, 20.0)),   # reached exactly, then lost: still counts
    ([0.1, 0.2, 0.3, 0.4], 0.5, None),            # never
    ([0.6, 0.1, 0.1, 0.1], 0.5, (50.0, 10.0)),    # at the first validation
])
def test_first_reached(val_dice, target, expected):
    history = pd.DataFrame(dict(iteration=[50, 100, 150, 200], val_dice=val_dice, wall_s=[10.0, 20.0, 30.0, 40.0]))
    assert first_reached(history, target) == expected


def _run(mode: str, n: int, seed: int, val_dice) -> Run:
    it = 50 * np.arange(1, len(val_dice) + 1)
    return Run(Path("."), f"{mode}_n{n:02d}_seed{seed}", mode, n, seed, {},
               pd.DataFrame(dict(iteration=it, val_dice=val_dice, wall_s=it / 5.0)))


def test_convergence_table_counts_runs_that_never_reach_a_target():
    runs = [_run("image", 1, 0, [0.2, 0.5, 0.6, 0.72]), _run("image", 1, 1, [0.3, 0.4, 0.55, 0.6]),
            _run("image+mask", 1, 0, [0.5, 0.7, 0.75, 0.8]), _run("image+mask", 1, 1, [0.6, 0.65, 0.71, 0.8])]
    conv = convergence_table(runs, ["image", "image+mask"], [1, 2]).set_index(["mode", "n_train", "target"])
    assert conv.loc[("image", 1, 0.5), ["n_reached", "iterations_mean"]].tolist() == [2, 125.0]
    assert conv.loc[("image", 1, 0.7), ["n_runs", "n_reached", "iterations_mean", "seconds_mean"]].tolist() == [2, 1, 200.0, 40.0]
    assert conv.loc[("image+mask", 1, 0.7), "iterations_mean"] == 125.0  # 100 and 150
    assert conv.loc[("image+mask", 1, 0.5), "iterations_sd"] == 0.0
    assert conv.loc[("image", 2, 0.5), "n_runs"] == 0 and np.isnan(conv.loc[("image", 2, 0.5), "iterations_mean"])


def test_convergence_cells_say_not_reached_and_drop_missing_seconds():
    from gbmseg.report import _convergence_blocks

    runs = [_run("image", 1, 0, [0.2, 0.4, 0.45]), _run("image+mask", 1, 0, [0.3, 0.6, 0.75])]
    runs[1].history["wall_s"] = np.nan  # a history without wall times
    conv = convergence_table(runs, ["image", "image+mask", "atlas"], [1])
    (_, _), (_, header, rows, _) = _convergence_blocks(conv)
    assert header == ["N", "mode", "to validation Dice 0.5", "to validation Dice 0.7"]
    assert rows == [[1, "image only", "not reached [0/1]", "not reached [0/1]"],
                    ["", "image+mask", "100 (–) it [1/1]", "150 (–) it [1/1]"]]  # atlas: no training, no row


def test_report_has_the_convergence_table(report):
    sweep_dir, html_path = report
    conv = pd.read_csv(sweep_dir / "report" / "convergence.csv").set_index(["mode", "n_train", "target"])
    # the fake histories: val Dice 1 - exp(-it / 50) at it = 10, 20, ..., wall 0.5 s per iteration
    assert conv.loc[("mask", 2, 0.5), ["n_reached", "iterations_mean", "seconds_mean"]].tolist() == [2, 40.0, 20.0]
    assert conv.loc[("image", 1, 0.7), "iterations_mean"] == 70.0
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "## Convergence" in md and "| 1 | image only | 40 (0) it, 20 (0) s [2/2] | 70 (0) it, 35 (0) s [2/2] |" in md


@pytest.mark.parametrize("stop_reason,hinted", [("max_iterations", True), ("early_stopping", False)])
def test_a_structure_not_learned_at_the_budget_suggests_more_iterations(tmp_path, stop_reason, hinted):
    """The report names a run's unlearned structure, and where the run ended at its iteration budget it
    says that more iterations may teach it."""
    sweep_dir = make_fake_sweep(tmp_path, modes=("image",), planned=("image",))
    result_path = sweep_dir / "runs" / "image_n01_seed0" / "train" / "result.json"
    result = json.loads(result_path.read_text())
    result.update(learned=True, structures_not_learned=["eye_left"], stop_reason=stop_reason)
    result_path.write_text(json.dumps(result))
    text = (make_report(sweep_dir).parent / "report.md").read_text()
    assert "image_n01_seed0 (eye_left)" in text
    assert ("more iterations may teach it" in text) == hinted


@pytest.mark.parametrize("at, shown", [(None, "(+1000 for eye_left; 1650 iterations run)"),
                                        (750, "(+1000 for eye_left at iteration 750; 1650 iterations run)")])
def test_the_report_names_runs_whose_budget_was_extended(tmp_path, at, shown):
    sweep_dir = make_fake_sweep(tmp_path, modes=("image",), planned=("image",))
    result_path = sweep_dir / "runs" / "image_n01_seed0" / "train" / "result.json"
    result = json.loads(result_path.read_text())
    result.update(extended_iterations=1000, extended_for=["eye_left"], iterations=1650)
    if at is not None:
        result["extended_at"] = at
    result_path.write_text(json.dumps(result))
    text = (make_report(sweep_dir).parent / "report.md").read_text()
    assert "image_n01_seed0 " + shown in text
    assert "image_n02_seed0 (+" not in text
