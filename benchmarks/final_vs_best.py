"""Issue-8 benchmark: the kept checkpoint (best validation Dice) against the final weights.

    python benchmarks/final_vs_best.py OUT.csv SWEEP [SWEEP ...]

For every finished run of each sweep whose kept checkpoint is not its last iteration, the final
weights (``last.pt``) predict the run's test cases with ``gbmseg predict`` and are scored with
``gbmseg evaluate``; runs whose best iteration is the last keep their Dice for both. Writes one row per
(sweep, run, case, structure): best_dice (the sweep's metrics.csv) and final_dice.
"""
import json, subprocess, sys, tempfile, shutil, glob
from pathlib import Path
import pandas as pd, torch
rows = []
for sweep in sys.argv[2:]:
    sj = json.load(open(Path(sweep) / "sweep.json"))
    data = Path(sj["dataset"])
    for run in sorted(Path(sweep, "runs").iterdir()):
        res = json.load(open(run / "train" / "result.json"))
        m = pd.read_csv(run / "metrics.csv")
        base = dict(sweep=Path(sweep).name, run=run.name, best=res["best_iteration"], iters=res["iterations"],
                    stop=res["stop_reason"])
        if res["best_iteration"] == res["iterations"]:
            for r in m.itertuples():
                rows.append(dict(base, case=r.case, structure=r.structure, best_dice=r.dice, final_dice=r.dice))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(run / "train", f"{tmp}/run", ignore=shutil.ignore_patterns("last.pt"))
            c = torch.load(run / "train" / "last.pt", weights_only=False)
            assert c["state"]["iteration"] == res["iterations"], run
            torch.save({"model": c["model"]}, f"{tmp}/run/model.pt")
            Path(tmp, "in").mkdir()
            cases = sorted(m.case.unique())
            for case in cases:
                Path(tmp, "in", f"{case}_0000.nii.gz").symlink_to(data / "imagesTr" / f"{case}_0000.nii.gz")
            subprocess.run([sys.executable, "-m", "gbmseg", "predict", "-m", f"{tmp}/run", "-i", f"{tmp}/in", "-o", f"{tmp}/pred", "--overwrite"], check=True, capture_output=True)
            subprocess.run([sys.executable, "-m", "gbmseg", "evaluate", "--pred", f"{tmp}/pred", "--ref", str(data / "labelsTr"), "--cases", ",".join(cases), "-o", f"{tmp}/d.csv"], check=True, capture_output=True)
            f = pd.read_csv(f"{tmp}/d.csv").set_index(["case", "structure"]).dice
        for r in m.itertuples():
            rows.append(dict(base, case=r.case, structure=r.structure, best_dice=r.dice, final_dice=float(f[(r.case, r.structure)])))
        d = pd.DataFrame([x for x in rows if x["run"] == run.name and x["sweep"] == base["sweep"]])
        print(base, round(d.best_dice.mean(), 3), round(d.final_dice.mean(), 3), flush=True)
out = pd.DataFrame(rows); out.to_csv(sys.argv[1], index=False)
