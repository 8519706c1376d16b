import json

import pandas as pd
import pytest
import SimpleITK as sitk
from gbmseg.testing import clip_air, tiny_config

from gbmseg.cli import build_parser, main


def test_cli_pipeline_end_to_end(toy_dataset, tmp_path, capsys):
    work, preset = tmp_path / "work", tmp_path / "tiny.json"
    preset.write_text(json.dumps(tiny_config(max_iterations=10, val_interval=5).to_dict()))
    ds = str(toy_dataset)
    assert main(["masks", ds, "--work", str(work)]) == 0
    assert main(["preprocess", ds, "--work", str(work), "--preset", str(preset)]) == 0
    assert main(["train", ds, "--work", str(work), "--preset", str(preset), "--mode", "image+mask",
                 "--train", "toy_000,toy_001,toy_002", "--val", "toy_003", "-o", str(tmp_path / "run"),
                 "--set", "training.max_iterations=5"]) == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["training"]["max_iterations"] == 5  # --set reached the resolved config
    assert main(["predict", "-m", str(tmp_path / "run"), "-i", str(toy_dataset / "imagesTr"),
                 "-o", str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 6
    single = tmp_path / "one.nii.gz"
    assert main(["predict", "-m", str(tmp_path / "run"), "-i", str(toy_dataset / "imagesTr" / "toy_004_0000.nii.gz"),
                 "-o", str(single)]) == 0
    assert sitk.ReadImage(str(single)).GetSize() == sitk.ReadImage(str(toy_dataset / "labelsTr" / "toy_004.nii.gz")).GetSize()
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(toy_dataset / "labelsTr"), "-o", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 12 and set(df["structure"]) == {"upper", "lower"}
    assert (tmp_path / "metrics_summary.csv").exists()
    assert main(["evaluate", "--masks", "--pred", str(work / "masksTr"), "--ref", str(toy_dataset / "labelsTr")]) == 0


def test_cli_errors_are_one_line_with_the_file(toy_dataset, tmp_path, capsys):
    (toy_dataset / "imagesTr" / "toy_002_0000.nii.gz").unlink()
    assert main(["masks", str(toy_dataset), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "toy_002_0000.nii.gz" in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # validated up front: nothing written
    assert main(["predict", "-m", str(tmp_path / "nope"), "-i", "x.nii.gz", "-o", "y.nii.gz"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", str(toy_dataset), "--mode", "ct", "-o", str(tmp_path / "r")]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["preprocess", str(toy_dataset), "--preset", "fast", "--set", "training.nope=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_cli_phantoms(tmp_path):
    assert main(["phantoms", "--kind", "heart", "--n", "2", "--spacing", "4", "--size", "48", "-o", str(tmp_path / "h")]) == 0
    meta = json.loads((tmp_path / "h" / "dataset.json").read_text())
    assert meta["labels"]["pulmonary_artery"] == 7 and len(list((tmp_path / "h" / "labelsTr").iterdir())) == 2


def test_preset_help_names_the_default_that_is_used(capsys):
    """The mask model trains with the coarse preset by default, and its --help says so (not 'fast')."""
    parser = build_parser()
    assert parser.parse_args(["mask-model", "train", "d", "-o", "r"]).preset == "coarse"
    assert parser.parse_args(["train", "d", "--mode", "image", "--train", "a", "--val", "b", "-o", "r"]).preset == "fast"
    with pytest.raises(SystemExit):
        parser.parse_args(["mask-model", "train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default coarse)" in help_text and "coarse, demo, fast, paper" in help_text


def test_cli_warning_is_one_line_naming_the_mask_folder(toy_dataset, tmp_path, capsys):
    """Masks that fill the scan (no air in the images) are made, and said to be useless in one line."""
    clip_air(toy_dataset)
    assert main(["masks", str(toy_dataset), "--work", str(tmp_path / "w")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and err[0].startswith("gbmseg masks: warning: ") and str(tmp_path / "w" / "masksTr") in err[0]
