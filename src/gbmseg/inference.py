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

from .dataset import check_image
from .config import Config
from .errors import GbmsegError
from .io import read_json
from . import runtime
from .network import UNet3D, build_network, select_device
from .patches import predict_logits
from .preprocessing import preprocess_image, stack_inputs, to_original_geometry


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


def load_model(run_dir: str | Path, device: str | None = None) -> Model:
    """Load ``model.pt`` (``weights_only=True``) and ``config.json`` from a run directory."""
    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.pt"
    for p in (cfg_path, weights):
        if not p.exists():
            raise GbmsegError(f"{p}: not found; is {run_dir} a finished training run?")
    info = read_json(cfg_path)
    config = Config.from_dict(info["config"], source=str(cfg_path), record=True)
    dev = select_device(device)
    runtime.configure(dev)
    net = build_network(config.network, len(info["channels"]), len(info["labels"]) + 1)
    net.load_state_dict(torch.load(weights, map_location=dev, weights_only=True)["model"])
    return Model(net.to(dev).eval(), info, dev, config)


def segment(model: Model, image: sitk.Image, mask: sitk.Image, transform: sitk.Transform | None = None,
            name: str = "image", timings: dict | None = None) -> sitk.Image:
    """Label map (uint8) of ``image`` given its global ``mask`` (and, for models trained in the
    template's standard frame, its registration ``transform``), with exactly the image's geometry.

    ``timings``, if given, receives the seconds spent in ``resample`` (onto the model grid),
    ``network`` and ``resample_back``."""
    clock = Stopwatch(timings)
    check_image(image, Path(name))
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    prep = model.config.preprocessing
    data = preprocess_image(image, mask, prep, model.info["modality"], name=name, transform=transform,
                            plan=model.info.get("crop_plan"))
    x = torch.from_numpy(stack_inputs(data, model.mode))[None].to(model.device)
    clock.lap("resample")
    dtype = runtime.amp_dtype(model.device)
    with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
        logits = predict_logits(model.net, x, [int(s) for s in prep.size[::-1]])
        probs = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
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
