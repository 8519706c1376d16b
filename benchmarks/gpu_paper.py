"""Issue-9 GPU benchmark, one command for a machine with a CUDA GPU (it has not run on one yet):
the paper preset's seconds per iteration and peak GPU memory, then time to the best validation Dice
of an image+mask model on head_CT.

    python benchmarks/gpu_paper.py [--data ../shared/data] [--iterations 2000]

Writes benchmarks/results/gpu_paper.md. Refuses to run without CUDA (the paper preset costs about
45-50 s per iteration on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gbmseg.config import load_config
from gbmseg.dataset import Dataset
from gbmseg.dataset import split_cases
from gbmseg.global_masks import make_dataset_masks
from gbmseg.preprocessing import preprocess_dataset
from gbmseg.training import Trainer

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_paper.py needs a CUDA GPU")
    ds = Dataset(Path(args.data) / "head_CT", work=HERE / "work" / "head_CT")
    make_dataset_masks(ds, "threshold", progress=False)
    split = split_cases(ds.cases, 2, 2, seed=0)
    cfg = load_config("paper", [f"training.max_iterations={args.iterations}", "training.val_interval=100",
                                f"training.min_iterations={args.iterations}"])
    cache = preprocess_dataset(ds, cfg, plan_cases=split["pool"] + split["val"])
    out = HERE / "work" / f"gpu_paper_{time.strftime('%Y%m%d_%H%M%S')}"
    trainer = Trainer(cache, "image+mask", split["pool"], split["val"], cfg, out, progress=True)
    for _ in range(3):
        trainer.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(20):
        trainer.step()
    torch.cuda.synchronize()
    s_per_it = (time.perf_counter() - t) / 20
    peak = torch.cuda.max_memory_allocated() / 2**30
    result = trainer.fit()
    lines = ["# Paper preset on one GPU (issue 9)", "",
             f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; AMP {trainer.amp_dtype}", "",
             f"- seconds per iteration (paper preset, image+mask, 128^3, batch 1): {s_per_it:.3f}",
             f"- peak GPU memory: {peak:.1f} GiB",
             f"- head_CT image+mask, {len(split['pool'])} training cases: best validation Dice "
             f"{result['best_val_dice']:.3f} at iteration {result['best_iteration']}, "
             f"{result['time_to_best_s']} s to the best, {result['train_time_s']} s in all"]
    (HERE / "results" / "gpu_paper.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
