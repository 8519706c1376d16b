"""Fixtures for the tests (no file from ../shared is used); helpers live in :mod:`gbmseg.testing`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gbmseg.testing import write_toy_dataset

torch.set_num_threads(2)


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "Toy", n=6)
