"""Prediction: image (and optionally a ready global mask) in, label map out in the input's geometry.

If the model needs a global mask (every model does, to place its crop) and none is given, it is
made from the image with the method recorded at training time (``threshold``, ``otsu``,
``register``, ``model``). A model trained on label-derived masks cannot make its own and asks for
``--mask``. A model whose crops are taken in the template's standard frame
(``preprocessing.frame = "template"``) registers the scan to its template, also when a mask is given.

Example:
    >>> model = load_model("runs/x")                                      # doctest: +SKIP
    >>> predict_file(model, "new_ct.nii.gz", "new_seg.nii.gz")            # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
import torch
from tqdm import tqdm

from .dataset import check_image
from .errors import GbmsegError
from .io import read_image, to_array, write_image
from .masks import IMAGE_METHODS, make_mask
from .network import UNet3D, build_network
from .preprocessing import frame_of, preprocess_image, to_original_geometry
from .training import select_device, stack_inputs

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class Model:
    """A trained model: network in eval mode plus the resolved config of its run."""

    net: UNet3D
    info: dict
    device: torch.device

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
    info = json.loads(cfg_path.read_text())
    dev = select_device(device)
    net = build_network(info["config"]["network"], len(info["channels"]), len(info["labels"]) + 1)
    net.load_state_dict(torch.load(weights, map_location=dev, weights_only=True)["model"])
    return Model(net.to(dev).eval(), info, dev)


def global_mask_for(model: Model, image: sitk.Image, name: str = "image") -> sitk.Image:
    """Make the global mask the way the model's training masks were made (image-only methods)."""
    rec = model.info["masks"]
    if rec["method"] not in IMAGE_METHODS:
        raise GbmsegError(f"{name}: the model was trained on '{rec['method']}' masks, which cannot be made "
                          "from the image alone; pass a global mask (--mask)")
    return make_mask(image, rec["method"], rec.get("params"))


def predict_image(model: Model, image: sitk.Image, mask: sitk.Image | None = None,
                  name: str = "image") -> sitk.Image:
    """Label map (uint8) for ``image`` with exactly its size, spacing, origin and direction."""
    check_image(image, Path(name))
    prep = model.info["config"]["preprocessing"]
    rec = model.info["masks"]
    standard_frame = frame_of(prep) == "template"
    transform = None
    if mask is None and standard_frame and rec["method"] == "register":
        from .registration import mask_from_params

        mask, transform = mask_from_params(image, rec.get("params") or {})
    elif mask is None:
        mask = global_mask_for(model, image, name)
    elif not (to_array(mask) > 0).any():
        raise GbmsegError(f"{name}: the given global mask is empty")
    if standard_frame and transform is None:
        from .registration import transform_from_params

        transform = transform_from_params(image, rec.get("params") or {})
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    data = preprocess_image(image, mask, prep, model.info["modality"], name=name, transform=transform)
    x = torch.from_numpy(stack_inputs(data, model.mode))[None].to(model.device)
    with torch.no_grad(), torch.autocast(model.device.type, enabled=model.device.type == "cuda"):
        probs = torch.softmax(model.net(x).float(), dim=1)[0].cpu().numpy()
    return to_original_geometry(probs, data["grid"], image)


def predict_file(model: Model, image_path: str | Path, out_path: str | Path,
                 mask_path: str | Path | None = None) -> Path:
    """Predict one file (or DICOM folder) and write the label map atomically."""
    image = read_image(image_path)
    mask = read_image(mask_path) if mask_path else None
    seg = predict_image(model, image, mask, name=str(image_path))
    return write_image(seg, out_path)


def _split_name(path: Path) -> tuple[str, str | None]:
    """``head_001_0000.nii.gz`` -> (``head_001``, ``0000``); names without a channel suffix -> (name, None)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    match = re.fullmatch(r"(.+)_(\d{4})", name)
    return (match[1], match[2]) if match else (name, None)


def predict_folder(model: Model, in_dir: str | Path, out_dir: str | Path, mask_dir: str | Path | None = None,
                   progress: bool = True, overwrite: bool = False) -> list[Path]:
    """Predict every image in ``in_dir`` (``<case>_0000.nii.gz`` or any image file) into ``out_dir/<case>.nii.gz``.

    Masks, if given, are ``mask_dir/<case>.nii.gz``. Existing outputs are skipped unless ``overwrite``.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    images = sorted(p for p in in_dir.iterdir() if p.name.endswith(IMAGE_SUFFIXES))
    nnunet_cases = {case for case, channel in map(_split_name, images) if channel == "0000"}
    todo = {}  # case -> first-channel file; nnU-Net's other channels (_0001, ...) are skipped
    for path in images:
        case, channel = _split_name(path)
        if case in nnunet_cases:
            if channel == "0000":
                todo[case] = path
        else:
            todo[case if channel is None else f"{case}_{channel}"] = path
    if not todo:
        raise GbmsegError(f"{in_dir}: no image files found")
    written = []
    for case, path in tqdm(sorted(todo.items()), desc="predict", disable=not progress):
        out = out_dir / f"{case}.nii.gz"
        if out.exists() and not overwrite:
            written.append(out)
            continue
        mask = Path(mask_dir) / f"{case}.nii.gz" if mask_dir else None
        if mask is not None and not mask.exists():
            raise GbmsegError(f"{mask}: global mask for '{case}' not found")
        written.append(predict_file(model, path, out, mask))
    return written
