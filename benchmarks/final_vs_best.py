"""Issue-8 benchmark: the kept checkpoint (best validation Dice) against the final weights.

    python benchmarks/final_vs_best.py SWEEP_DIR [SWEEP_DIR ...] --out CSV

For every finished run of each sweep whose kept checkpoint is not its last iteration, the final
weights (``last.pt``) predict the run's test cases as the sweep did (the dataset's global masks,
:func:`gbmseg.predict.predict_file`) and are scored with :func:`gbmseg.evaluation.evaluate_case`;
runs whose best iteration is the last keep their Dice for both. Writes one row per (sweep, run,
case, structure): ``best_dice`` (the sweep's ``metrics.csv``) and ``final_dice``, and prints both
means per run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from gbmseg.dataset import Dataset
from gbmseg.evaluation import evaluate_case
from gbmseg.io import read_image, read_json
from gbmseg.network import load_checkpoint, load_weights
from gbmseg.predict import load_model, predict_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweeps", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    df = pd.concat([compare_sweep(Path(s)) for s in args.sweeps])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    print(f"wrote {args.out}")


def final_dice(job_dir: Path, ds: Dataset, cases: list[str]) -> dict[tuple[str, str], float]:
    """Dice per (case, structure) of a run's final weights (``last.pt``) on ``cases``."""
    model = load_model(job_dir / "train")
    last = job_dir / "train" / "last.pt"
    load_weights(model.net, load_checkpoint(last, model.device)["model"], last)
    dice = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            pred = predict_file(model, ds.image_path(case), Path(tmp) / f"{case}.nii.gz", mask_path=ds.mask_path(case))
            for r in evaluate_case(read_image(pred), read_image(ds.label_path(case)), ds.labels, case):
                dice[(case, r["structure"])] = r["dice"]
    return dice


def compare_sweep(sweep_dir: Path) -> pd.DataFrame:
    """Best and final test Dice of every trained run of one sweep."""
    sweep = read_json(sweep_dir / "sweep.json")
    ds = Dataset(Path(sweep["dataset"]), work=Path(sweep["work"]))
    frames = []
    for job_dir in sorted(p for p in (sweep_dir / "runs").iterdir() if (p / "train" / "result.json").exists()):
        result = read_json(job_dir / "train" / "result.json")
        m = pd.read_csv(job_dir / "metrics.csv")[["case", "structure", "dice"]].rename(columns={"dice": "best_dice"})
        if result["best_iteration"] == result["iterations"]:
            m["final_dice"] = m["best_dice"]
        else:
            final = final_dice(job_dir, ds, sorted(m["case"].unique()))
            m["final_dice"] = [final[(c, s)] for c, s in zip(m["case"], m["structure"])]
        m.insert(0, "run", job_dir.name)
        m.insert(0, "sweep", sweep_dir.name)
        for key in ("best_iteration", "iterations", "stop_reason"):
            m[key] = result[key]
        print(f"{sweep_dir.name}/{job_dir.name}: best iteration {result['best_iteration']} of {result['iterations']}, "
              f"test Dice kept {m.best_dice.mean():.3f}, final {m.final_dice.mean():.3f}", flush=True)
        frames.append(m)
    return pd.concat(frames)


if __name__ == "__main__":
    main()
