"""The demo: built-in head phantoms -> global masks -> reduced sweep of all three modes -> report.

Everything it writes lives in one folder; running it again resumes (finished runs are kept).

Example:
    >>> run_demo("gbmseg_demo")            # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .dataset import Dataset
from .global_masks import make_dataset_masks
from .phantoms import write_phantom_dataset
from .report import make_report
from .sweep import collect_metrics, plan_sweep, run_sweep

N_CASES = 12
SIZES = [1, 4]


def run_demo(out_dir: str | Path = "gbmseg_demo", device: str | None = None, progress: bool = True,
             sizes: list[int] | None = None, seeds: int = 1, overrides: list[str] | None = None) -> Path:
    """Run the demo and return the path of the HTML report."""
    out = Path(out_dir)
    data = out / "head_phantoms"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, kind="head", n=N_CASES, modality="CT", seed=0, spacing=3.0, size=64)
    ds = Dataset(data)
    make_dataset_masks(ds, "threshold", progress=progress)
    sweep_dir = plan_sweep(ds, out / "sweep", sizes=sizes or SIZES, seeds=list(range(seeds)), preset="demo",
                           overrides=overrides, val=ds.cases[-4:-3], test=ds.cases[-3:])
    run_sweep(sweep_dir, device=device, progress=progress)
    return make_report(sweep_dir)


def dice_table(sweep_dir: str | Path) -> str:
    """Mean test Dice (over test cases, structures and seeds) per mode and training-set size, as text."""
    df = collect_metrics(sweep_dir)
    if df.empty:
        return "no finished runs"
    table = df.pivot_table(index="n_train", columns="mode", values="dice", aggfunc="mean")
    table = table[[m for m in ("image", "mask", "image+mask") if m in table.columns]]
    table.index.name = "N"
    return "mean test Dice\n" + table.to_string(float_format=lambda v: f"{v:.2f}")
