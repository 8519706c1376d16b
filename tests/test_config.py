import json

import pytest

from gbmseg.config import Config, TrainingConfig, load_config, presets
from gbmseg.errors import GbmsegError
from gbmseg.io import read_json


def test_presets_load_typed_and_round_trip():
    for name in presets():
        cfg = load_config(name)
        assert isinstance(cfg.training, TrainingConfig) and cfg.name == name
        assert Config.from_dict(cfg.to_dict()) == cfg
        assert "batch_size" not in cfg.to_dict()["training"] and "augment" in cfg.to_dict()["training"]


def test_unknown_key_is_refused_in_one_line_naming_key_and_file(tmp_path):
    data = load_config("fast").to_dict()
    data["training"]["batch_size"] = 2
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GbmsegError, match=r"mine\.json.*unknown key 'training\.batch_size'") as err:
        load_config(str(path))
    assert "\n" not in str(err.value)
    # a stored run record written by an older version may carry it
    assert Config.from_dict(data, record=True) == Config.from_dict(load_config("fast").to_dict())
    data["extra"] = 1
    with pytest.raises(GbmsegError, match="unknown key 'extra'"):
        Config.from_dict(data, source=str(path), record=True)


def test_overrides_and_hash():
    base, same = load_config("fast"), load_config("fast")
    assert base.hash() == same.hash() and len(base.hash()) == 64
    cfg = load_config("fast", ["training.lr=3e-4", "preprocessing.frame=template", "network.depth=4"])
    assert (cfg.training.lr, cfg.preprocessing.frame, cfg.network.depth) == (0.0003, "template", 4)
    assert cfg.hash() != base.hash()
    with pytest.raises(GbmsegError, match="unknown key 'training.nope'"):
        load_config("fast", ["training.nope=1"])
    with pytest.raises(GbmsegError, match="unknown section 'nosuch'"):
        load_config("fast", ["nosuch.x=1"])


def test_corrupt_json_record_is_one_line(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{"id": "image_n01')  # truncated
    with pytest.raises(GbmsegError, match=r"job\.json: invalid JSON") as err:
        read_json(path)
    assert "\n" not in str(err.value)
    with pytest.raises(GbmsegError, match="not found"):
        read_json(tmp_path / "missing.json")
