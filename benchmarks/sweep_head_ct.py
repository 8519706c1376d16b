"""Issue-3 benchmark: the paper's training-size sweep on head_CT with the fast preset.

    python benchmarks/sweep_head_ct.py [--data ../shared/data] [--seeds 2] [--sizes 1,2,4,8] [--set k=v ...]

Modes image, mask, image+mask x sizes x seeds; 2 validation and 2 test cases (12 cases in all, so
that N=8 fits). Writes the sweep (resumable) to benchmarks/work/sweep_head_CT and copies the
report's Markdown and CSVs to benchmarks/results/sweep_head_CT/.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import torch

from gbmseg.dataset import Dataset
from gbmseg.global_masks import make_dataset_masks
from gbmseg.report import make_report
from gbmseg.sweep import plan_sweep, run_sweep

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--dataset", default="head_CT")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    ds = Dataset(Path(args.data) / args.dataset, work=HERE / "work" / args.dataset)
    make_dataset_masks(ds, "auto")
    n = len(ds.cases)
    sweep_dir = plan_sweep(ds, HERE / "work" / f"sweep_{args.dataset}", sizes=[int(s) for s in args.sizes.split(",")],
                           seeds=list(range(args.seeds)), preset=args.preset, overrides=args.set,
                           val_fraction=2 / n, test_fraction=2 / n)
    start = time.time()
    run_sweep(sweep_dir)
    html = make_report(sweep_dir)
    out = HERE / "results" / f"sweep_{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    for f in html.parent.iterdir():
        if f.suffix in (".md", ".csv"):
            shutil.copy(f, out / f.name)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    (out / "machine.txt").write_text(f"{platform.node()} {platform.machine()} {torch.get_num_threads()} threads, "
                                     f"{dev}, torch {torch.__version__}; this invocation {time.time() - start:.0f} s; "
                                     f"preset {args.preset} {' '.join(args.set)}\n")
    print(f"report: {html}")


if __name__ == "__main__":
    main()
