"""mask-only, N=8, seed 1 of the head_CT sweep, trained here (CPU) on the cache made from the
old (first-axis-filled) masks, to tell whether the eye_right failure of the new-mask run is the masks."""
import json, sys
from pathlib import Path
from gbmseg.config import Config
from gbmseg.training import train
job = json.load(open("benchmarks/work/sweep_head_CT_instnorm/runs/mask_n08_seed1/job.json"))
cache = Path("/work/exp/oldcache")  # copy of the old-masks cache; plan.json given the key added since (coarsen: false)
assert cache.exists(), cache
cfg = Config.from_dict(job["config"], source="job.json", record=True)
print(train(cache, "mask", job["train"], job["val"], cfg, Path(sys.argv[1]), seed=job["seed"], progress=False))
