"""Inference on the model grid: a trained network applied to an image whose global mask (and, for
the standard frame, registration transform) is already known; the label map comes back in the
input's own geometry. Making the mask from the image is the job of :mod:`gbmseg.predict`.

Example:
    >>> model = load_model("runs/x")                                      # doctest: +SKIP
    >>> seg = segment(model, image, mask)                                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
import torch

from .channels import input_width, stack
from .config import Config
from .errors import GbmsegError
from .io import read_json
from . import runtime
from . import __version__
from .mirror import swap_table
from .network import UNet3D, build_network, load_checkpoint, load_weights, output_classes, select_device
from .patches import predict_probabilities
from .preprocessing import grid_spacing, preprocess_image, to_original_geometry


@dataclass
class Model:
    """A trained model: network in eval mode plus the resolved config of its run."""

    net: UNet3D
    info: dict
    device: torch.device
    config: Config

    @property
    def mode(self) -> str:
        return self.info["mode"]

    @property
    def n_classes(self) -> int:
        """Network outputs: background and one per structure."""
        return output_classes(self.info["labels"])


def run_folder(path: str | Path) -> Path:
    """The training run folder that ``path`` names: a run itself (``config.json``, ``model.pt``) or
    a sweep's job folder, whose run is its ``train/``::

        sweeps/head/runs/image+mask_n02_seed0/        <- a job folder: its run is ...
            train/config.json, train/model.pt         <- ... this one

    A sweep folder is refused with its finished jobs (``train/result.json``) named, so the user
    can pick one; so is a job folder without a training run (multi-atlas, or not started).
    """
    path = Path(path)
    if (path / "config.json").exists():
        return path
    if (path / "train" / "config.json").exists():
        return path / "train"
    if (path / "sweep.json").exists():
        done = sorted(p.parent.parent.name for p in path.glob("runs/*/train/result.json"))
        some = ", ".join(done[:4]) + (f" and {len(done) - 4} more" if len(done) > 4 else "")
        raise GbmsegError(f"{path}: a sweep, not one trained model; pass one of its jobs, "
                          + (f"e.g. {path / 'runs' / done[0]} (finished jobs: {some})" if done
                             else "once one has finished training (none has yet)"))
    if (path / "job.json").exists():
        raise GbmsegError(f"{path}: a sweep job without a trained model (multi-atlas jobs train none; "
                          "otherwise its training has not started)")
    return path


def load_model(run_dir: str | Path, device: str | None = None) -> Model:
    """Load ``model.pt`` (``weights_only=True``) and ``config.json`` from a run directory (or a
    sweep's job folder: see :func:`run_folder`)."""
    run_dir = run_folder(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.pt"
    for p in (cfg_path, weights):
        if not p.exists():
            raise GbmsegError(f"{p}: not found; is {run_dir} a finished training run?")
    info = read_run_record(cfg_path)
    config = Config.from_dict(info["config"], source=str(cfg_path), record=True)
    dev = select_device(device)
    runtime.configure(dev)
    net = build_network(config.network, input_width(info["mode"]), output_classes(info["labels"]))
    made_by = info.get("gbmseg_version", "an unknown version")
    load_weights(net, load_checkpoint(weights, dev, hint="; copy or train the model again")["model"], weights,
                 f"{cfg_path.name} (made by gbmseg {made_by}, this is {__version__})", info["channels"])
    return Model(net.to(dev).eval(), info, dev, config)


RUN_KEYS = ("config", "mode", "channels", "labels", "modality", "masks")


def read_run_record(path: Path) -> dict:
    """A run's ``config.json``, checked: the keys prediction needs, and not from a newer gbmseg
    (whose records this version may misread)."""
    info = read_json(path)
    missing = [k for k in RUN_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise GbmsegError(f"{path}: not a gbmseg training record (missing {', '.join(missing)})")
    made_by = str(info.get("gbmseg_version", "0"))
    if _major_minor(made_by) > _major_minor(__version__):
        raise GbmsegError(f"{path}: made by gbmseg {made_by}, newer than this gbmseg {__version__}; upgrade gbmseg")
    return info


def _major_minor(version: str) -> tuple[int, ...]:
    """``"0.2.1"`` -> ``(0, 2)``; anything unparsable counts as ``(0,)``."""
    parts = []
    for p in version.split(".")[:2]:
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts) or (0,)


def segment(model: Model, image: sitk.Image, mask: sitk.Image, transform: sitk.Transform | None = None,
            name: str = "image", timings: dict | None = None) -> sitk.Image:
    """Label map (uint8) of ``image`` given its global ``mask`` (and, for models trained in the
    template's standard frame, its registration ``transform``), with exactly the image's geometry.
    The image is not checked here (see :func:`gbmseg.predict.predict_image`). A model trained with
    ``training.mirror`` and a mirror plan also predicts the mirrored crop (:mod:`gbmseg.mirror`).

    ``timings``, if given, receives the seconds spent in ``resample`` (onto the model grid),
    ``network`` and ``resample_back``."""
    clock = Stopwatch(timings)
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    prep = model.config.preprocessing
    data = preprocess_image(image, mask, prep, model.info["modality"], name=name, transform=transform,
                            plan=model.info.get("crop_plan"))
    spacing = grid_spacing(prep, model.info.get("crop_plan"))
    x = torch.from_numpy(stack(data, model.mode, spacing))[None].to(model.device)
    clock.lap("resample")
    dtype = runtime.amp_dtype(model.device)
    patch = [int(s) for s in prep.size[::-1]]

    plan = model.info.get("mirror") or {}  # test-time mirroring where it was trained with it
    mirror = None if plan.get("axis") is None else (plan["axis"], swap_table(model.n_classes, plan["pairs"]))
    with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
        probs = predict_probabilities(model.net, x, patch, mirror)[0].cpu().numpy()
    clock.lap("network")
    out = to_original_geometry(probs, data["grid"], image)
    clock.lap("resample_back")
    return out


class Stopwatch:
    """Adds the seconds since the last lap to ``timings[name]`` (does nothing when ``timings`` is None)."""

    def __init__(self, timings: dict | None):
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now
