"""Issue-3/8/12 benchmark: the paper's training-size sweep with the fast preset (head_CT by default).

    python benchmarks/sweep_head_ct.py [--data ../shared/data] [--dataset head_CT] [--seeds 3]
        [--sizes 1,2,4,8] [--modes image,mask,image+mask] [--n-val 2] [--n-test 2]
        [--mask-method auto] [--also-test head_MR] [--tag NAME] [--set k=v ...] [--plan-only]

Modes x sizes x seeds on one fixed split (``--n-val`` validation and ``--n-test`` test cases,
drawn with split seed 0; 2 + 2 of head_CT's 12 cases so that N=8 fits). Writes the sweep (resumable)
to benchmarks/work/sweep_<dataset>[_<tag>] and copies the report's Markdown and CSVs to
benchmarks/results/sweep_<dataset>[_<tag>]/. ``--plan-only`` plans and preprocesses (global masks,
cache) and stops: the jobs can then be trained elsewhere (benchmarks/gpu_jobs.py) and finished by
running this again without it. ``--mask-method`` other than auto keeps its masks and cache in
benchmarks/work/<dataset>_<method>. ``--also-test`` predicts another dataset's cases of the same
ids (head_MR beside head_CT) with masks made there by the same ``--mask-method`` (auto: Otsu on MR).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from gbmseg.dataset import Dataset
from gbmseg.global_masks import make_dataset_masks
from gbmseg.report import make_report
from gbmseg.sweep import plan_sweep, prepare_sweep, run_sweep

HERE = Path(__file__).parent


def where_trained(sweep_dir: Path) -> str:
    """Where the sweep's runs were trained, from each run's config.json (device, host, torch)."""
    counts: dict[str, int] = {}
    for cfg in sorted(sweep_dir.glob("runs/*/train/config.json")):
        rec = json.loads(cfg.read_text())
        key = f"{rec.get('device')} on {rec.get('host')} (torch {rec.get('torch')}, amp {rec.get('amp')})"
        counts[key] = counts.get(key, 0) + 1
    atlas = len(list(sweep_dir.glob("runs/atlas*/done.json")))
    return "trained: " + "; ".join(f"{n} runs {k}" for k, n in counts.items()) + (
        f"; {atlas} atlas jobs (no training) here" if atlas else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--dataset", default="head_CT")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--modes", default="image,mask,image+mask")
    ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=2)
    ap.add_argument("--mask-method", default="auto")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--tag", default="")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--also-test", default="")
    ap.add_argument("--plan-only", action="store_true")
    args = ap.parse_args()
    def work(name: str) -> Path:
        return HERE / "work" / (name if args.mask_method == "auto" else f"{name}_{args.mask_method}")

    ds = Dataset(Path(args.data) / args.dataset, work=work(args.dataset))
    also = [Dataset(Path(args.data) / a, work=work(a)) for a in args.also_test.split(",") if a]
    for d in (ds, *also):  # keeps masks made the same way; remakes ones an older gbmseg made
        make_dataset_masks(d, args.mask_method)
    n = len(ds.cases)
    name = f"sweep_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
    sweep_dir = plan_sweep(ds, HERE / "work" / name, modes=args.modes.split(","),
                           sizes=[int(s) for s in args.sizes.split(",")], seeds=list(range(args.seeds)),
                           preset=args.preset, overrides=args.set, val_fraction=args.n_val / n,
                           test_fraction=args.n_test / n, also_test=also, also_test_masks=args.mask_method)
    if args.plan_only:
        print(f"planned {len(prepare_sweep(sweep_dir))} jobs in {sweep_dir}")
        return
    start = time.time()
    run_sweep(sweep_dir)
    html = make_report(sweep_dir)
    out = HERE / "results" / name
    out.mkdir(parents=True, exist_ok=True)
    for f in [*html.parent.iterdir(), html.parent / "figures" / "dice_vs_n.png"]:
        if f.suffix in (".md", ".csv", ".png") and f.exists():
            shutil.copy(f, out / f.name)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    (out / "machine.txt").write_text(f"this invocation (prediction and evaluation of jobs not done yet, report): "
                                     f"{platform.node()} {platform.machine()} {torch.get_num_threads()} threads, "
                                     f"{dev}, torch {torch.__version__}, {time.time() - start:.0f} s; "
                                     f"preset {args.preset} {' '.join(args.set)}\n{where_trained(sweep_dir)}\n")
    print(f"report: {html}")


if __name__ == "__main__":
    main()
