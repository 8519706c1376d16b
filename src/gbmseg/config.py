"""Configuration is data: presets are JSON files, overrides are ``section.key=value`` strings.

Built-in presets live in ``gbmseg/presets/*.json`` (``paper``, ``fast``, ``demo``). A preset
argument may also be a path to a JSON file of the same shape.

Example:
    >>> cfg = load_config("fast", ["training.lr=3e-4", "network.activation=relu"])
    >>> cfg["training"]["lr"], cfg["network"]["activation"]
    (0.0003, 'relu')
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .errors import GbmsegError
from .io import read_json

PRESET_DIR = Path(__file__).parent / "presets"
MODES = {"image": ("image",), "mask": ("mask",), "image+mask": ("image", "mask")}


def presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config(preset: str = "fast", overrides: list[str] | None = None) -> dict:
    """Load a preset by name or path and apply ``section.key=value`` overrides (values parsed as JSON)."""
    path = PRESET_DIR / f"{preset}.json"
    if not path.exists():
        path = Path(preset)
    if not path.is_file():
        raise GbmsegError(f"unknown preset '{preset}' (built-in: {', '.join(presets())}, or a JSON file)")
    cfg = read_json(path)
    for item in overrides or []:
        set_value(cfg, item)
    return cfg


def set_value(cfg: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the key must exist in the preset."""
    if "=" not in item:
        raise GbmsegError(f"override '{item}' is not of the form section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # plain strings need no quotes
    node = cfg
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise GbmsegError(f"override '{item}': unknown section '{part}'")
        node = node[part]
    if parts[-1] not in node:
        raise GbmsegError(f"override '{item}': unknown key '{key}' (known: {', '.join(node)})")
    node[parts[-1]] = value


def channels_for_mode(mode: str) -> tuple[str, ...]:
    """Input channels of a mode: ``image``, ``mask`` or ``image+mask``."""
    if mode not in MODES:
        raise GbmsegError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    return MODES[mode]


def copy_config(cfg: dict) -> dict:
    return copy.deepcopy(cfg)
