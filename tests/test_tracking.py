"""Optional MLflow tracking (gbmseg.tracking): off by default, one-line error without MLflow, what a run logs."""

import json
import sys

import pytest
from gbmseg.testing import tiny_config, write_toy_dataset

from gbmseg import tracking
from gbmseg.cli import main
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.global_masks import make_dataset_masks
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.training import train


def _tiny(tmp_path):
    ds = Dataset(write_toy_dataset(tmp_path / "Toy", n=3, size=24), work=tmp_path / "work")
    make_dataset_masks(ds, progress=False)
    cfg = tiny_config(max_iterations=4, val_interval=2)
    cfg.set_value("preprocessing.size=[16,16,16]")
    return ds, cfg, preprocess_dataset(ds, cfg, progress=False)


def test_default_tracker_is_a_noop_that_never_imports_mlflow(monkeypatch, tmp_path):
    monkeypatch.delenv(tracking.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it would fail
    t = tracking.make_tracker()
    assert type(t) is tracking.Tracker
    assert t.start(tmp_path, {"mode": "image"}, resumed=False) is None
    assert t.validation({"iteration": 1, "val_dice": 0.5, "val_loss": 1.0, "train_loss": 1.0}) is None
    assert t.end(tmp_path, {}) is None and list(tmp_path.iterdir()) == []
    monkeypatch.setenv(tracking.ENV, "0")
    assert type(tracking.make_tracker()) is tracking.Tracker


def test_switch_on_without_mlflow_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setenv(tracking.ENV, "1")
    with pytest.raises(GbmsegError) as err:
        tracking.make_tracker()
    assert 'pip install "gbmseg[mlflow]"' in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv(tracking.ENV, "maybe")
    with pytest.raises(GbmsegError, match="GBMSEG_MLFLOW='maybe'"):
        tracking.make_tracker()


def test_cli_mlflow_flag_without_mlflow_fails_before_any_work(monkeypatch, toy_dataset, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setenv(tracking.ENV, "0")  # restored after the test (the flag sets it to 1)
    assert main(["train", str(toy_dataset), "--work", str(tmp_path / "w"), "--mode", "image", "--mlflow",
                 "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "gbmseg[mlflow]"' in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "run").exists()


def test_flatten_config_for_params():
    assert tracking.flatten({"training": {"lr": 0.001, "max_time_s": None}, "preprocessing": {"size": [16, 16]}}) == \
        {"training.lr": "0.001", "training.max_time_s": "null", "preprocessing.size": "[16, 16]"}


def test_mlflow_logs_params_metrics_and_artifacts_across_a_resume(monkeypatch, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x refuses a file store without it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gbmseg-test")
    monkeypatch.delenv(tracking.ENV, raising=False)
    ds, cfg, cache = _tiny(tmp_path)
    half = tiny_config(max_iterations=2, val_interval=2)
    half.set_value("preprocessing.size=[16,16,16]")
    train(cache, "image+mask", ds.cases[:2], ds.cases[2:], half, tmp_path / "run", seed=3, progress=False, track=True)
    first = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    (tmp_path / "run" / "result.json").unlink()  # as if interrupted: the same command again resumes
    train(cache, "image+mask", ds.cases[:2], ds.cases[2:], cfg, tmp_path / "run", seed=3, progress=False, track=True)
    run_id = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    assert run_id == first  # the resumed training continued its MLflow run
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "gbmseg-test"
    p = run.data.params
    assert p["mode"] == "image+mask" and p["seed"] == "3" and p["train_cases"] == "toy_000,toy_001"
    assert p["val_cases"] == "toy_002" and p["training.lr"] == "0.003" and p["mask_method"] == "threshold"
    assert [m.step for m in client.get_metric_history(run_id, "val_dice")] == [2, 4]
    assert "best_val_dice" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "result.json", "model.pt", "history.csv"} <= artifacts
