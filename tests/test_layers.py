"""Every import in gbmseg points down: a module may import only modules of lower layers.

The layers, lowest first (a module imports nothing of its own layer or above). Function-level
imports count like any other: the AST of every module is walked whole.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gbmseg

LAYERS = [
    ["__init__", "errors"],
    ["io", "parallel", "crop_plan", "stopping", "mirror", "losses"],   # crop_plan, stopping: pure numbers; mirror: left-right reflection of tensors; losses: training.loss -> MONAI loss
    ["config", "phantoms", "tracking"],   # tracking: optional MLflow logging of training runs
    ["dataset", "network", "testing", "runtime", "augment", "patches", "distributed", "channels"],   # channels: what each mode feeds the network; dataset: owns every path of a work folder; the U-Net; toy data; torchrun
    ["morphology", "evaluation"],        # image-only mask methods; metrics
    ["registration"],                    # register to a template (mask method 'register', standard frame)
    ["preprocessing"],                   # model grid, cache (is given masks and transforms)
    ["training", "inference"],           # the engine; a model applied on its grid
    ["mask_model"],                      # learned whole-organ masks
    ["global_masks"],                    # the one entry point for global masks (method registry)
    ["predict", "export_nnunet", "atlas"],  # two-stage prediction: mask, then segmentation; nnU-Net raw export; multi-atlas segmentation
    ["export_dicom"],                    # label maps out as DICOM-SEG / RTSTRUCT against the source series
    ["cross_modality"],                  # a sweep's jobs also tested on another dataset (--also-test)
    ["sweep"],
    ["sweep_backends"],                  # where a sweep's jobs run: local, Ray, a SLURM job array
    ["sweep_stats"],
    ["report"],
    ["demo"],
    ["cli"],
    ["__main__"],
]
PACKAGE = Path(gbmseg.__file__).parent


def layer_of() -> dict[str, int]:
    return {m: i for i, layer in enumerate(LAYERS) for m in layer}


def gbmseg_imports(path: Path) -> set[str]:
    """Names of the gbmseg modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x, y
                found.update("__init__" if a.name == "__version__" else a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "gbmseg":
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "gbmseg":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(layer_of()), f"declare a layer for {sorted(modules ^ set(layer_of()))}"


def test_imports_point_down():
    layers = layer_of()
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        me = path.stem
        for other in sorted(gbmseg_imports(path)):
            if other in layers and layers[other] >= layers[me]:
                upward.append(f"{me} (layer {layers[me]}) imports {other} (layer {layers[other]})")
    assert not upward, "imports that do not point down: " + "; ".join(upward)
