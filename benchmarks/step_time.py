"""Issue-9 benchmark: seconds per training iteration of gbmseg's loop against a plain PyTorch loop of
the same network and MONAI's BasicUNet / DynUNet, measured in one run, interleaved; the speed levers
one at a time; and ``gbmseg predict`` end to end on one head CT case with its breakdown.

    python benchmarks/step_time.py [--data ../shared/data] [--rounds 3] [--steps 12]

Every loop runs in a fresh subprocess (so one loop's allocator or thread settings cannot reach
another), one after the other, the list repeated ``--rounds`` times; the median over rounds is
reported. The yardstick is ``../shared/tools/step_ref.py`` (fast preset's shape: 48^3, 2 inputs,
4 classes, 3 levels, 16 channels, LeakyReLU, BN, dropout 0.2, DiceCE, Adam), run as it is.
Writes benchmarks/results/step_time.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
REF = HERE.parent.parent / "shared" / "tools" / "step_ref.py"

# loops: name -> (worker kind, arguments)
LOOPS = {
    "plain PyTorch (step_ref.py)": ("ref", {}),
    "gbmseg fast, all levers (default)": ("gbmseg", {"preset": "fast", "levers": "alloc,split"}),
    "gbmseg fast, no augmentation": ("gbmseg", {"preset": "fast", "levers": "alloc,split", "augment": False}),
    "gbmseg fast, no lever": ("gbmseg", {"preset": "fast", "levers": ""}),
    "gbmseg fast, allocator only": ("gbmseg", {"preset": "fast", "levers": "alloc"}),
    "gbmseg fast, oneDNN split conv only": ("gbmseg", {"preset": "fast", "levers": "split"}),
    "gbmseg coarse (64^3, 4 levels)": ("gbmseg", {"preset": "coarse", "levers": "alloc,split"}),
    "MONAI DynUNet (3 levels, 16 ch)": ("monai", {"net": "dynunet"}),
    "MONAI BasicUNet (4 levels, 16 ch; it has no 3-level form)": ("monai", {"net": "basicunet"}),
}


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{platform.node()}: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}"


def _median_step(step, n: int) -> float:
    step()
    step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker_gbmseg(args: dict, steps: int) -> dict:
    """gbmseg's own Trainer.step on a phantom cache, with the levers named in ``levers`` on."""
    import torch

    from gbmseg import network, runtime
    from gbmseg.config import load_config
    from gbmseg.dataset import Dataset
    from gbmseg.global_masks import make_dataset_masks
    from gbmseg.phantoms import write_phantom_dataset
    from gbmseg.preprocessing import preprocess_dataset
    from gbmseg.training import Trainer

    levers = set(filter(None, args["levers"].split(",")))
    if "alloc" not in levers:
        runtime._keep_freed_memory = lambda: False
    if "split" not in levers:
        network.ONEDNN_MIN = -1  # every convolution takes PyTorch's own choice
    work = Path(args["work"])
    data = work / "phantoms"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, kind="head", n=4, modality="CT", seed=0, spacing=3.0, size=64)
    ds = Dataset(data)
    make_dataset_masks(ds, "threshold", progress=False)
    size = 48 if args["preset"] == "fast" else 64
    cfg = load_config(args["preset"], ["preprocessing.crop=mask_center", f"preprocessing.size=[{size},{size},{size}]",
                                       f"training.augment={json.dumps(args.get('augment', True))}"])
    cache = preprocess_dataset(ds, cfg, progress=False)
    trainer = Trainer(cache, "image+mask", ds.cases[:3], ds.cases[3:], cfg, work / f"run_{time.time_ns()}",
                      progress=False)
    saved, network.ONEDNN_MIN = network.ONEDNN_MIN, -1  # count the network's own FLOPs, not the split's halo
    flops = _flops(trainer.net, (1, 2, size, size, size), trainer.n_classes)
    network.ONEDNN_MIN = saved
    return {"s": _median_step(trainer.step, steps), "gflop": flops / 1e9, "torch_threads": torch.get_num_threads()}


def _flops(net, shape, n_classes) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(*shape)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return float(counter.get_total_flops())


def worker_monai(args: dict, steps: int) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet, DynUNet

    torch.manual_seed(0)
    if args["net"] == "dynunet":
        net = DynUNet(3, 2, 4, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                      filters=[16, 32, 64, 128], norm_name="batch", act_name=("leakyrelu", {"negative_slope": 0.01}),
                      dropout=0.2)
    else:
        net = BasicUNet(3, 2, 4, features=(16, 32, 64, 128, 256, 16), norm="batch", dropout=0.2)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    x, y = torch.rand(1, 2, 48, 48, 48), torch.randint(0, 4, (1, 1, 48, 48, 48))

    def step():
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    return {"s": _median_step(step, steps)}


def run_loop(kind: str, args: dict, steps: int) -> dict:
    if kind == "ref":
        out = subprocess.run([sys.executable, str(REF)], capture_output=True, text=True, check=True)
        return {"s": float(out.stdout.strip().splitlines()[-1])}
    cmd = [sys.executable, __file__, "--worker", kind, "--args", json.dumps(args), "--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kind} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def predict_breakdown(data: Path, work: Path) -> dict:
    """Train a 30-iteration fast model on two head_CT cases, then time ``predict_file`` on a third."""
    from gbmseg.config import load_config
    from gbmseg.dataset import Dataset
    from gbmseg.global_masks import make_dataset_masks
    from gbmseg.predict import load_model, predict_file
    from gbmseg.preprocessing import preprocess_dataset
    from gbmseg.training import train

    ds = Dataset(data / "head_CT", work=work / "head_CT")
    make_dataset_masks(ds, "threshold", progress=False)
    cfg = load_config("fast", ["training.max_iterations=30", "training.min_iterations=0"])
    cache = preprocess_dataset(ds, cfg, progress=False, plan_cases=ds.cases[:3])
    train(cache, "image+mask", ds.cases[:2], ds.cases[2:3], cfg, work / "predict_run", progress=False)
    model = load_model(work / "predict_run")
    case = ds.cases[-1]
    timings: dict = {}
    t = time.perf_counter()
    predict_file(model, ds.image_path(case), work / "pred.nii.gz", timings=timings)
    timings["total"] = time.perf_counter() - t
    return {"case": case, **{k: round(v, 3) for k, v in timings.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--worker")
    ap.add_argument("--args")
    args = ap.parse_args()
    if args.worker:
        fn = {"gbmseg": worker_gbmseg, "monai": worker_monai}[args.worker]
        print(json.dumps(fn(json.loads(args.args), args.steps)))
        return
    work = Path(tempfile.mkdtemp(prefix="gbmseg_step_time_"))
    results: dict[str, list[dict]] = {name: [] for name in LOOPS}
    start = time.time()
    for r in range(args.rounds):
        for name, (kind, loop_args) in LOOPS.items():
            res = run_loop(kind, {**loop_args, "work": str(work)}, args.steps)
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res['s']:.3f} s/iteration", flush=True)
    pred = predict_breakdown(Path(args.data), work)
    ref = statistics.median(x["s"] for x in results["plain PyTorch (step_ref.py)"])
    gflop = next(x["gflop"] for x in results["gbmseg fast, all levers (default)"])
    rows = []
    for name, rs in results.items():
        s = statistics.median(x["s"] for x in rs)
        g = rs[0].get("gflop", gflop if name.startswith(("plain", "MONAI Dyn", "gbmseg fast")) else None)
        rows.append({"loop": name, "s_per_iteration": round(s, 3), "ratio_to_plain": round(s / ref, 2),
                     "gflop_per_iteration": round(g, 1) if g else None,
                     "gflop_per_s": round(g / s, 1) if g else None,
                     "all_rounds_s": " ".join(f"{x['s']:.3f}" for x in rs)})
    import pandas as pd

    df = pd.DataFrame(rows)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    df.to_csv(out / "step_time.csv", index=False)
    md = [f"# Training-iteration time (issue 9)", "",
          f"Machine: {machine()}. Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.rounds} rounds x {args.steps} timed steps per loop (median), {time.time() - start:.0f} s in all.", "",
          df.to_markdown(index=False), "",
          "GFLOP per iteration: forward + backward of the network, counted with torch.utils.flop_counter "
          "(the same network shape for the plain loop, DynUNet and gbmseg fast; the plain step runs a ",
          "network of the same architecture). Augmentation and patch sampling are inside gbmseg's loop, not in the others.",
          "", f"## gbmseg predict, one head CT case end to end (fast preset, CPU)", "",
          "| stage | s |", "|---|---|", *[f"| {k} | {v} |" for k, v in pred.items() if k != "case"],
          "", f"Case {pred['case']} of head_CT; the model was trained for 30 iterations only (the time does not "
          "depend on how well it is trained)."]
    (out / "step_time.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
