"""Train planned sweep jobs on a machine with one GPU and predict their test cases there; finish here.

A sweep job (:func:`gbmseg.sweep.run_job`) trains, predicts its test cases and evaluates. This
script runs the first two on a GPU machine that has neither the datasets nor the network: what
travels is the jobs' ``job.json`` files, the preprocessed caches they train on, and the test
images with their global masks (a few MB each). There each job is trained with
:func:`gbmseg.training.train` and its test images predicted with :func:`gbmseg.predict.predict_file`
(the product's own two functions; the test images' global masks are given, as ``run_job`` gives
them). Back come the predictions (label maps in each scan's geometry) and the run records
(``config.json``, ``result.json``, ``history.csv``, ``train.log``; ``model.pt`` only for jobs marked
``return_model``, in float16: at 5.6-20 MB a model, 100 of them do not fit the way back). ``run_sweep`` here then
finds the training finished and the predictions written, and evaluates
(:func:`gbmseg.sweep.run_job` skips what exists).

    python benchmarks/gpu_jobs.py pack BUNDLE SWEEP_DIR[:also=OTHER_DATASET=ITS_WORK][:model] ...   # here
    python benchmarks/gpu_jobs.py train BUNDLE OUT --workers 14 --deadline 420   # there
    python benchmarks/gpu_jobs.py unpack OUT BUNDLE                              # here

``:also=`` adds the same case ids of another dataset (e.g. head_MR beside head_CT; its images from
its dataset folder, its masks from that work folder) as extra predictions in
``predictions_<work folder name>/``. ``:model`` returns the model. ``train`` runs the jobs in
manifest order on a pool of worker processes (one torch thread each), starts no job after
``--deadline`` seconds and stops the running ones at ``--hard-deadline`` (left out). It writes
``OUT/trained_<k>.tar.gz`` (each under 15 MB), ``OUT/gpu_jobs.log`` and ``OUT/machine.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path

PART_BYTES = 14 * 2**20
LAST_MODES = {"*": ("image+sdm",), "sweep_hn_CT": ("image+sdm", "image+coords")}


def pack(bundle: Path, specs: list[str]) -> None:
    """Copy every unfinished job's record, the caches, and the test images and masks into ``bundle``."""
    from gbmseg.config import Config
    from gbmseg.dataset import Dataset
    from gbmseg.sweep import jobs

    manifest, caches, files = [], {}, {}
    for spec in specs:
        sweep_dir, *opts = spec.split(":")
        sweep_dir = Path(sweep_dir)
        also = [tuple(map(Path, o[5:].split("="))) for o in opts if o.startswith("also=")]  # (dataset, work)
        for job_dir in jobs(sweep_dir):
            if (job_dir / "done.json").exists() or (job_dir / "train" / "result.json").exists():
                continue
            job = json.loads((job_dir / "job.json").read_text())
            if job["mode"] == "atlas":
                continue
            cfg = Config.from_dict(job["config"], record=True)
            cache = Path(job["work"]) / "gbmseg_preprocessed" / f"{cfg.name}_{job['cache_key']}"
            if not (cache / "plan.json").exists():
                raise SystemExit(f"{cache}: not made yet; run the sweep's preprocessing first")
            name = f"{Path(job['work']).name}_{cache.name}"
            caches[name] = cache
            ds = Dataset(job["dataset"], work=job["work"])
            predict = []
            sets = [] if "model" in opts else [("predictions", ds)] + [(f"predictions_{root.name}", Dataset(root, work=w)) for root, w in also]
            for folder, d in sets:
                for case in job["test"]:
                    img = f"images/{d.root.name}/{d.image_path(case).name}"
                    msk = f"masks/{Path(d.work).name}/{case}.nii.gz"
                    files[img], files[msk] = d.image_path(case), d.mask_path(case)
                    predict.append({"image": img, "mask": msk, "out": f"{folder}/{case}.nii.gz"})
            manifest.append({"sweep": sweep_dir.name, "job": job_dir.name, "cache": name, "job_json": job,
                             "dest": str(job_dir), "predict": predict, "return_model": "model" in opts})
    # controls last: they are what a short lease may leave out
    manifest.sort(key=lambda m: m["job_json"]["mode"] in LAST_MODES.get(m["sweep"], LAST_MODES["*"]))
    bundle.mkdir(parents=True, exist_ok=True)
    for name, src in caches.items():
        if not (bundle / "caches" / name).exists():
            shutil.copytree(src, bundle / "caches" / name)
    for rel, src in files.items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, bundle / rel)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"{len(manifest)} jobs, {len(caches)} caches, {len(files)} image/mask files -> {bundle}")


def _train_one(args: tuple) -> dict:
    bundle, item, out_root, device = args
    import torch
    from gbmseg.config import Config
    from gbmseg.errors import Interrupted
    from gbmseg.predict import load_model, predict_file
    from gbmseg.training import train

    torch.set_num_threads(1)
    job, bundle = item["job_json"], Path(bundle)
    job_out = Path(out_root) / item["sweep"] / item["job"]
    t0 = time.time()
    key = f"{item['sweep']}/{item['job']}"
    try:
        result = train(bundle / "caches" / item["cache"], job["mode"], job["train"], job["val"],
                       Config.from_dict(job["config"], record=True), job_out / "train", seed=job["seed"],
                       device=device, progress=False)
        t1 = time.time()
        model = load_model(job_out / "train", device=device)
        for p in item["predict"]:
            predict_file(model, bundle / p["image"], job_out / p["out"], mask_path=bundle / p["mask"])
        (job_out / "train" / "predict_s.json").write_text(json.dumps({"predict_s": time.time() - t1,
                                                                      "n": len(item["predict"])}))
        weights = job_out / "train" / "model.pt"
        if item.get("return_model"):  # in float16 for the way back (load_model casts it back to float32)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
            torch.save(state, weights)
        else:
            weights.unlink()
        (job_out / "ok").write_text("")
        return {"job": key, "ok": True, "s": time.time() - t0, "train_s": t1 - t0,
                "iterations": result["iterations"], "best_val_dice": result.get("best_val_dice")}
    except Interrupted:
        return {"job": key, "ok": False, "s": time.time() - t0, "why": "deadline"}
    except Exception as exc:  # reported, the other jobs go on
        return {"job": key, "ok": False, "s": time.time() - t0, "why": repr(exc)[:300]}


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_all(bundle: Path, out: Path, workers: int, deadline: float, hard_deadline: float,
              device: str = "cuda", limit: int | None = None) -> None:
    import torch

    start = time.time()
    manifest = json.loads((bundle / "manifest.json").read_text())[:limit]
    runs = Path("/tmp/gpu_runs")
    log = open(out / "gpu_jobs.log", "a", buffering=1)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    log.write(f"{len(manifest)} jobs, {workers} workers, device {device}, GPU {gpu}\n")
    ctx = mp.get_context("spawn")
    done = []
    with ctx.Pool(workers, initializer=_ignore_sigint, maxtasksperchild=None) as pool:
        pending = {}
        queue = list(manifest)
        while queue or pending:
            while queue and len(pending) < workers and time.time() - start < deadline:
                item = queue.pop(0)
                pending[item["sweep"] + "/" + item["job"]] = pool.apply_async(_train_one, ((str(bundle), item, str(runs), device),))
            if queue and time.time() - start >= deadline:
                log.write(f"deadline: {len(queue)} jobs not started\n")
                queue = []
            for key, res in list(pending.items()):
                if res.ready():
                    r = res.get()
                    done.append(r)
                    pending.pop(key)
                    log.write(f"{time.time() - start:6.0f}s {json.dumps(r)}\n")
            if pending and time.time() - start >= hard_deadline:
                log.write(f"hard deadline: stopping {len(pending)} running jobs\n")
                for p in pool._pool:  # SIGTERM: each run writes last.pt and raises Interrupted
                    os.kill(p.pid, signal.SIGTERM)
                time.sleep(15)
                for key, res in list(pending.items()):
                    if res.ready():
                        done.append(res.get())
                        log.write(f"{time.time() - start:6.0f}s {json.dumps(done[-1])}\n")
                break
            time.sleep(1)
    _tar_parts(runs, out)
    (out / "machine.json").write_text(json.dumps({
        "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
        "cpus": os.cpu_count(), "workers": workers, "wall_s": time.time() - start, "jobs": done}, indent=1))
    log.write(f"finished in {time.time() - start:.0f} s\n")


KEEP = ("model.pt", "config.json", "result.json", "history.csv", "train.log", "predict_s.json")


def _tar_parts(runs: Path, out: Path) -> None:
    """Finished jobs (``ok`` written): predictions and the ``KEEP`` files of ``train/``, into
    ``trained_<k>.tar.gz`` parts under PART_BYTES."""
    files = []
    for ok in sorted(runs.glob("*/*/ok")):
        job = ok.parent
        files += [p for p in sorted(job.rglob("*.nii.gz"))]
        files += [job / "train" / k for k in KEEP if (job / "train" / k).exists()]
    part, size, tar = 0, 0, None
    for f in files:
        if tar is None or (size and size + f.stat().st_size > PART_BYTES):
            if tar:
                tar.close()
            tar, size, part = tarfile.open(out / f"trained_{part}.tar.gz", "w:gz"), 0, part + 1
        tar.add(f, arcname=str(f.relative_to(runs)))
        size += f.stat().st_size
    if tar:
        tar.close()


def unpack(out: Path, bundle: Path) -> None:
    """Put each job's files back into its folder (``train/...``, ``predictions*/...``)."""
    manifest = {f"{m['sweep']}/{m['job']}": Path(m["dest"]) for m in json.loads((bundle / "manifest.json").read_text())}
    n = 0
    for part in sorted(out.glob("trained_*.tar.gz")):
        with tarfile.open(part) as tar:
            for member in tar.getmembers():
                sweep, job, *rest = Path(member.name).parts
                dest = manifest[f"{sweep}/{job}"].joinpath(*rest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src:
                    dest.write_bytes(src.read())
                n += rest[-1] == "result.json"
    print(f"{n} trained runs unpacked")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("bundle", type=Path)
    p.add_argument("sweeps", nargs="+", help="SWEEP_DIR[:also=OTHER_DATASET=ITS_WORK][:model]")
    t = sub.add_parser("train")
    t.add_argument("bundle", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("--workers", type=int, default=14)
    t.add_argument("--deadline", type=float, default=420)
    t.add_argument("--hard-deadline", type=float, default=500)
    t.add_argument("--device", default="cuda")
    t.add_argument("--limit", type=int, default=None, help="only the first jobs (a check)")
    u = sub.add_parser("unpack")
    u.add_argument("out", type=Path)
    u.add_argument("bundle", type=Path)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.bundle, a.sweeps)
    elif a.cmd == "train":
        a.out.mkdir(parents=True, exist_ok=True)
        train_all(a.bundle, a.out, a.workers, a.deadline, a.hard_deadline, a.device, a.limit)
    else:
        unpack(a.out, a.bundle)


if __name__ == "__main__":
    sys.exit(main())
