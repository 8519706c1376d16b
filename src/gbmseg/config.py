"""Configuration is typed data: presets are JSON files, overrides are ``section.key=value`` strings.

Built-in presets live in ``gbmseg/presets/*.json`` (``paper``, ``fast``, ``demo``, ``coarse``). A
preset argument may also be a path to a JSON file of the same shape. A preset becomes a
:class:`Config`: ``name``, ``description`` and one dataclass per section. Unknown keys are refused
with a one-line error naming the key and the preset; adding a setting is one line in its section's
dataclass (and its value in the presets). :meth:`Config.to_dict` gives the JSON that run records
store, :meth:`Config.hash` a stable hash of it.

Example:
    >>> cfg = load_config("fast", ["training.lr=3e-4", "network.activation=relu"])
    >>> cfg.training.lr, cfg.network.activation
    (0.0003, 'relu')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GbmsegError
from .io import read_json

PRESET_DIR = Path(__file__).parent / "presets"
# mode -> its input channels (made by gbmseg.channels); image+coords and image+sdm are controls that
# separate what the mask gives (position, shape) from what the image gives
MODES = {"image": ("image",), "mask": ("mask",), "image+mask": ("image", "mask"),
         "image+coords": ("image", "coords"), "image+sdm": ("image", "sdm")}
# keys that older versions wrote into run records and nothing reads: skipped when a record is read
RETIRED = {"training": {"batch_size"}}


@dataclass
class PreprocessingConfig:
    spacing: list[float]
    size: list[int]
    ct_window: list[float]
    mr_percentiles: list[float]
    frame: str = "scan"
    crop: str = "mask_center"             # or "planned": placed and sized from the training labels (crop_plan)
    margin_mm: float = 10.0               # planned crop: added around the training structures
    max_size: list[int] | None = None     # planned crop: largest grid (voxels); larger is cut to this
    coarsen: bool = False                 # planned crop: a grid that would exceed max_size gets coarser voxels
                                          # (one factor on every axis) instead of being cut


@dataclass
class NetworkConfig:
    depth: int
    base_channels: int
    activation: str
    norm: str
    dropout: float
    deep_supervision: bool = False        # extra 1x1 heads on the coarser decoder levels, trained too (nnU-Net)


@dataclass
class TrainingConfig:
    loss: str
    lr: float
    max_iterations: int
    val_interval: int
    patience: int
    max_time_s: float | None = None
    amp: bool = True
    augment: bool = False
    schedule: str = "constant"            # or "poly": lr * (1 - it / max_iterations) ** 0.9
    warmup: int = 0                       # iterations of linear warm-up
    min_iterations: int = 0               # no early stop before this
    dice_floor: float = 0.05              # patience counts once validation Dice has passed this
    optimizer: str = "adam"               # or "sgd": SGD, Nesterov momentum 0.99 (nnU-Net)
    mask_augment: float = 0.0             # probability per iteration of a perturbed global mask (augment.perturb_mask)
    mask_dropout: float = 0.0             # probability per iteration of an all-zero mask channel (augment.Augmenter);
                                          # only in modes with another input beside the mask
    mirror: bool = False                  # left-right mirroring, left/right labels swapped, in training and at prediction,
                                          # where the training labels show symmetric anatomy (gbmseg.mirror)
    rotate_deg: float = 15.0              # augmentation: rotation about each axis uniform in [-rotate_deg, rotate_deg]
    foreground: float = 1 / 3             # crop larger than the patch: share of patches centred on a structure
    extend_iterations: int = 0            # once: iterations added when a run reaches max_iterations with a structure
                                          # not learned (its Dice at the kept checkpoint <= dice_floor); the decay runs
                                          # over the extended budget (gbmseg.training.Trainer)
    extend_from: float = 1.0              # share of max_iterations from which a validation that finds a structure not
                                          # learned extends the budget (1.0: only at max_iterations)


SECTIONS = {"preprocessing": PreprocessingConfig, "network": NetworkConfig, "training": TrainingConfig}


@dataclass
class Config:
    """A resolved preset: ``name``, ``description`` and the three sections."""

    name: str
    preprocessing: PreprocessingConfig
    network: NetworkConfig
    training: TrainingConfig
    description: str = ""
    source: str = field(default="", compare=False, repr=False)  # preset name or file, for errors

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", record: bool = False) -> Config:
        """Build from a preset's JSON. Unknown or missing keys raise :class:`GbmsegError` naming
        ``source``; ``record=True`` (a stored run record) also skips :data:`RETIRED` keys."""
        if not isinstance(data, dict):
            raise GbmsegError(f"{source}: a preset is a JSON object with name, description and sections")
        top = {"name", "description", *SECTIONS}
        _check_keys(data, top, {"name", *SECTIONS}, source, "")
        sections = {}
        for name, kind in SECTIONS.items():
            values = data[name]
            if not isinstance(values, dict):
                raise GbmsegError(f"{source}: section '{name}' must be a JSON object")
            if record:
                values = {k: v for k, v in values.items() if k not in RETIRED.get(name, ())}
            known = {f.name for f in dataclasses.fields(kind)}
            required = {f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING}
            _check_keys(values, known, required, source, f"{name}.")
            sections[name] = kind(**values)
        return cls(name=str(data["name"]), description=str(data.get("description", "")), source=source, **sections)

    def to_dict(self) -> dict:
        """The JSON form (as in the presets), for run records."""
        return {"name": self.name, "description": self.description,
                **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}}

    def hash(self) -> str:
        """sha256 of the canonical JSON of :meth:`to_dict` (sorted keys, no whitespace)."""
        return canonical_hash(self.to_dict())

    def set_value(self, item: str) -> None:
        """Apply one ``section.key=value`` override in place (value parsed as JSON; the key must exist)."""
        if "=" not in item:
            raise GbmsegError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # plain strings need no quotes
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] in ("name", "description"):
            setattr(self, parts[0], str(value))
            return
        if len(parts) != 2 or parts[0] not in SECTIONS:
            raise GbmsegError(f"override '{item}': unknown section '{parts[0]}' (known: {', '.join(SECTIONS)})")
        section = getattr(self, parts[0])
        known = [f.name for f in dataclasses.fields(section)]
        if parts[1] not in known:
            raise GbmsegError(f"override '{item}': unknown key '{key.strip()}' (known: {', '.join(known)})")
        setattr(section, parts[1], value)


def _check_keys(values: dict, known: set, required: set, source: str, prefix: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise GbmsegError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(known))})")
    missing = sorted(required - set(values))
    if missing:
        raise GbmsegError(f"{source}: missing key '{prefix}{missing[0]}'")


def canonical_hash(data) -> str:
    """sha256 hex digest of the canonical JSON of ``data``."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config(preset: str = "fast", overrides: list[str] | None = None) -> Config:
    """Load a preset by name or path and apply ``section.key=value`` overrides (values parsed as JSON)."""
    path = PRESET_DIR / f"{preset}.json"
    if not path.exists():
        path = Path(preset)
    if not path.is_file():
        raise GbmsegError(f"unknown preset '{preset}' (built-in: {', '.join(presets())}, or a JSON file)")
    cfg = Config.from_dict(read_json(path), source=f"preset '{preset}' ({path})")
    for item in overrides or []:
        cfg.set_value(item)
    return cfg


def channels_for_mode(mode: str) -> tuple[str, ...]:
    """Input channels of a mode (:data:`MODES`), e.g. ``("image", "mask")`` for ``image+mask``."""
    if mode not in MODES:
        raise GbmsegError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    return MODES[mode]
