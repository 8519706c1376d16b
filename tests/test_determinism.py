"""Same command, same seed -> the same model and the same metrics, on CPU (issue 13 item 5).

Run ``a`` trains in this process, run ``b`` is the same ``gbmseg train`` command in a fresh Python
process (other hash seed, other allocations) with the same number of threads, run ``c`` differs only
in its seed. Augmentation is on, so its random draws are covered too.
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from gbmseg.testing import tiny_config, write_toy_dataset

from gbmseg.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("det")
    data = write_toy_dataset(tmp / "Toy", n=3, size=24)
    preset = tmp / "tiny.json"
    cfg = tiny_config(max_iterations=4, val_interval=2, augment=True)
    cfg.set_value("preprocessing.size=[16,16,16]")
    preset.write_text(json.dumps(cfg.to_dict()))

    def command(out, seed):
        return ["train", str(data), "--work", str(tmp / "work"), "--preset", str(preset), "--mode", "image+mask",
                "--train", "toy_000,toy_001", "--val", "toy_002", "--seed", str(seed), "-o", str(tmp / out)]

    assert main(["masks", str(data), "--work", str(tmp / "work")]) == 0
    assert main(command("a", 5)) == 0
    threads = str(torch.get_num_threads())  # torch takes the smaller of these two
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": "random"}
    subprocess.run([sys.executable, "-m", "gbmseg", *command("b", 5)], env=env, check=True, capture_output=True)
    assert main(command("c", 6)) == 0

    def load(name):
        return (torch.load(tmp / name / "last.pt", weights_only=True)["model"],
                pd.read_csv(tmp / name / "history.csv"),
                json.loads((tmp / name / "config.json").read_text())["runtime"]["threads"])

    return {name: load(name) for name in "abc"}


def test_same_seed_gives_bitwise_equal_weights_and_equal_validation(runs):
    (wa, ha, ta), (wb, hb, tb) = runs["a"], runs["b"]
    assert ta == tb  # the same number of threads (oneDNN's sums may depend on it)
    assert list(wa) == list(wb)
    unequal = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not unequal, f"tensors differ between two runs with the same seed: {unequal[:5]}"
    assert list(ha["iteration"]) == [2, 4]
    assert list(ha["val_dice"]) == list(hb["val_dice"]) and list(ha["train_loss"]) == list(hb["train_loss"])


def test_another_seed_gives_other_weights(runs):
    (wa, ha, _), (wc, hc, _) = runs["a"], runs["c"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())
    assert list(ha["train_loss"]) != list(hc["train_loss"])
