"""Issue-11 benchmark: the same 6-job phantom sweep (3 modes x N = 1, 4; the demo's data and preset, fewer
iterations) run one job after another here (local backend, 2 torch threads) and on a local Ray instance
with 2 single-CPU workers (2 jobs at once, 1 torch thread each). Wall times side by side.

    python benchmarks/cluster_sweep.py [--iterations 150] [--cpus 2]

Writes benchmarks/results/cluster_sweep.md. Work files go to benchmarks/work/cluster_sweep/ (ignored by git);
both sweeps are started afresh each time (the phantoms, masks and the cache are kept and made before timing).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from gbmseg.dataset import Dataset
from gbmseg.global_masks import make_dataset_masks
from gbmseg.io import read_json
from gbmseg.phantoms import write_phantom_dataset
from gbmseg.sweep import jobs, plan_sweep, prepare_sweep
from gbmseg.sweep_backends import run

HERE = Path(__file__).parent
WORK = HERE / "work" / "cluster_sweep"


def machine(cpus: int) -> str:
    return (f"{platform.node()}: {platform.processor() or platform.machine()}, {cpus} CPUs used, "
            f"torch {torch.__version__}, python {platform.python_version()}")


def plan(ds: Dataset, name: str, iterations: int) -> Path:
    out = WORK / name
    shutil.rmtree(out, ignore_errors=True)  # start afresh: nothing skipped, nothing resumed
    return plan_sweep(ds, out, sizes=[1, 4], seeds=[0], preset="demo",
                      overrides=[f"training.max_iterations={iterations}"],
                      val=ds.cases[-4:-3], test=ds.cases[-3:])


def job_times(sweep: Path) -> pd.DataFrame:
    rows = [{"job": j.name, **{k: read_json(j / "done.json")[k] for k in ("mean_dice", "job_wall_s")},
             "train_s": read_json(j / "done.json")["train"]["train_time_s"]} for j in jobs(sweep)]
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=150, help="training iterations per job (default 150)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs: torch threads of the sequential run, Ray workers")
    args = p.parse_args()
    data = WORK / "head_phantoms"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, kind="head", n=12, modality="CT", seed=0, spacing=3.0, size=64)
    ds = Dataset(data)
    make_dataset_masks(ds, "threshold", progress=False)
    seq, par = plan(ds, "sequential", args.iterations), plan(ds, "ray", args.iterations)
    prepare_sweep(seq, progress=False)  # the cache, mask quality: not timed (both sweeps share the cache)
    prepare_sweep(par, progress=False)

    torch.set_num_threads(args.cpus)
    t0 = time.time()
    run(seq, backend="local", progress=False)
    seq_s = time.time() - t0

    import ray

    t0 = time.time()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.time() - t0
    t0 = time.time()
    metrics = run(par, backend="ray", progress=False, cpus_per_job=1)
    par_s = time.time() - t0
    ray.shutdown()
    assert not metrics.attrs["failed"], metrics.attrs["failed"]

    a, b = job_times(seq), job_times(par)
    both = a.merge(b, on="job", suffixes=("_local", "_ray"))
    lines = [
        "# Sweep backends: 6 phantom jobs, one after another vs. on a local Ray instance",
        "",
        f"`python benchmarks/cluster_sweep.py --iterations {args.iterations} --cpus {args.cpus}`; "
        f"{machine(args.cpus)}; {time.strftime('%Y-%m-%d')}.",
        "",
        f"Demo phantoms (12 head CTs, 3 mm), demo preset with {args.iterations} iterations per job, "
        "3 modes x N = 1, 4, seed 0; the cache was made before timing.",
        "",
        "| backend | jobs at once x torch threads | wall s | speed-up |",
        "| --- | --- | --- | --- |",
        f"| local (sequential) | 1 x {args.cpus} | {seq_s:.0f} | 1.00 |",
        f"| ray (local instance) | {args.cpus} x 1 | {par_s:.0f} | {seq_s / par_s:.2f} |",
        "",
        f"Ray start-up (`ray.init`, not in the wall time above): {init_s:.1f} s.",
        "",
        "Per job (job_wall_s: training + prediction + evaluation; Dice differs between the two only by "
        "the thread count's summation order):",
        "",
        both.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
    out = HERE / "results" / "cluster_sweep.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
