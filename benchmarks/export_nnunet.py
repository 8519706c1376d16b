"""Issue-13 check: does nnU-Net v2 itself accept what ``gbmseg export-nnunet`` writes?

    python benchmarks/export_nnunet.py [--data ../shared/data/head_CT] [--cases head_001,head_002]
                                       [--nnunet-venv /work/venv_nnunet] [--tmp /tmp/gbmseg_nnunet]
                                       [--fingerprint-only]

Steps: threshold global masks into ``TMP/work`` (the dataset stays untouched), export the cases in
mode image+mask as ``TMP/nnUNet_raw/Dataset901_HeadCTgbm``, then, in nnU-Net's own environment
(a separate venv: ``python3 -m venv V && V/bin/pip install torch==2.13.0 nnunetv2``),
``nnUNetv2_plan_and_preprocess -d 901 --verify_dataset_integrity -c 3d_fullres -np 1`` (or, with
``--fingerprint-only``, ``nnUNetv2_extract_fingerprint -d 901 --verify_dataset_integrity -np 1``)
with ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` under ``TMP`` and one thread.
Finally the normalisation nnU-Net planned per channel and the values of the mask channel in its
preprocessed data are read back. Writes benchmarks/results/export_nnunet.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gbmseg.dataset import Dataset
from gbmseg.export_nnunet import export_nnunet
from gbmseg.global_masks import make_dataset_masks

HERE = Path(__file__).parent
NAME = "Dataset901_HeadCTgbm"

# run in nnU-Net's venv: the planned normalisation per channel, and the preprocessed mask channel's values
INSPECT = r"""
import glob, json, sys
import numpy as np
pre = sys.argv[1]
plans = json.load(open(f"{pre}/nnUNetPlans.json"))
cfg = plans["configurations"]["3d_fullres"]
print("normalization_schemes", cfg["normalization_schemes"], "use_mask_for_norm", cfg["use_mask_for_norm"])
print("patch_size", cfg["patch_size"], "spacing", cfg["spacing"])
files = sorted(glob.glob(f"{pre}/nnUNetPlans_3d_fullres/*"))
print("preprocessed files", [f.split("/")[-1] for f in files])
data = [f for f in files if f.endswith(".b2nd") and not f.endswith("_seg.b2nd")]
if data:
    import blosc2
    arr = blosc2.open(urlpath=data[0], mode="r")[:]
else:
    arr = np.load(sorted(f for f in files if f.endswith(".npz"))[0])["data"]
mask = arr[-1]
values = np.unique(mask)
print(f"{data[0].split('/')[-1] if data else 'npz'}: shape {arr.shape}; mask channel min {mask.min():.3f} "
      f"max {mask.max():.3f}, {len(values)} distinct values, fraction not 0 or 1: "
      f"{float(np.mean((mask != 0) & (mask != 1))):.4f}")
"""


def run(cmd: list[str], env: dict) -> tuple[int, str, float]:
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return proc.returncode, (proc.stdout + proc.stderr), time.time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "head_CT"))
    p.add_argument("--cases", default="head_001,head_002")
    p.add_argument("--nnunet-venv", default="/work/venv_nnunet")
    p.add_argument("--tmp", default="/tmp/gbmseg_nnunet")
    p.add_argument("--fingerprint-only", action="store_true")
    args = p.parse_args()
    tmp = Path(args.tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    ds = Dataset(args.data, work=tmp / "work")
    make_dataset_masks(ds, "threshold", progress=False)
    cases = args.cases.split(",")
    t = time.time()
    out = export_nnunet(ds, tmp / "nnUNet_raw" / NAME, mode="image+mask", cases=cases, progress=False)
    export_s = time.time() - t
    meta = json.loads((out / "dataset.json").read_text())

    venv = Path(args.nnunet_venv) / "bin"
    env = {**os.environ, "nnUNet_raw": str(tmp / "nnUNet_raw"), "nnUNet_preprocessed": str(tmp / "nnUNet_preprocessed"),
           "nnUNet_results": str(tmp / "nnUNet_results"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "nnUNet_n_proc_DA": "1", "PATH": f"{venv}:{os.environ['PATH']}"}
    if args.fingerprint_only:
        cmd = ["nnUNetv2_extract_fingerprint", "-d", "901", "--verify_dataset_integrity", "-np", "1"]
    else:
        cmd = ["nnUNetv2_plan_and_preprocess", "-d", "901", "--verify_dataset_integrity", "-c", "3d_fullres", "-np", "1"]
    rc, log, seconds = run(cmd, env)
    nnunet_version = subprocess.run([str(venv / "pip"), "show", "nnunetv2"], capture_output=True,
                                    text=True).stdout.split("\n")[1]
    inspect = ""
    if rc == 0 and not args.fingerprint_only:
        irc, inspect, _ = run([str(venv / "python"), "-c", INSPECT, str(tmp / "nnUNet_preprocessed" / NAME)], env)
    lines_out = log.strip().splitlines()
    tail = "\n".join(line if len(line) <= 300 else line[:300] + " ..." for line in lines_out[-14:])
    integrity = [line for line in lines_out
                 if "verify_dataset_integrity" in line or line.startswith(("Error", "Warning", "WARNING"))]
    lines = [
        "# nnU-Net v2 accepts gbmseg's export (issue 13 item 2)", "",
        f"Machine: {platform.node()} {platform.machine()}, 2 vCPU (shared with a benchmark), Python "
        f"{platform.python_version()}; nnU-Net: {nnunet_version} in its own venv ({args.nnunet_venv}), "
        f"torch 2.13.0+cpu; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"1. `gbmseg masks {args.data} --work {tmp / 'work'}` (threshold)",
        f"2. `gbmseg export-nnunet {args.data} {out} --work {tmp / 'work'} --cases {args.cases}` "
        f"({export_s:.1f} s): `channel_names` {meta['channel_names']}, `labels` {meta['labels']}, "
        f"`numTraining` {meta['numTraining']}, files: {sorted(p.name for p in (out / 'imagesTr').iterdir())}",
        f"3. `{' '.join(cmd)}` with nnUNet_raw/_preprocessed/_results under {tmp}, OMP_NUM_THREADS=1: "
        f"exit status **{rc}** after {seconds:.0f} s. Its integrity check's messages (errors, warnings, the "
        f"closing line): {integrity or 'none'}. Last lines of its output (long lines cut):", "",
        "```", tail, "```", "",
    ]
    if inspect:
        lines += ["4. nnU-Net's plan and preprocessed data, read back in its venv:", "", "```", inspect.strip(), "```", ""]
    (HERE / "results" / "export_nnunet.md").write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(rc)


if __name__ == "__main__":
    main()
