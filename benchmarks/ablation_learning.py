"""Issue-8 ablation trainer, as it was run (fixed iteration budget; val/test Dice on the crops every 50 iterations).

It ran against gbmseg as it was before issue 8 (commit 1ed9ba9, checked out as SRC below) on head_CT's
fast-preset cache made by that code (threshold masks, 48^3 at 4 mm on the mask's centre), with the
split of benchmarks/sweep_head_ct.py (val head_002, head_010; test head_006, head_009; pool of 8),
training subsets as the sweep draws them (seed 0). Options: --aug on|off (MONAI RandAffined +
intensity transforms; the product's gbmseg.augment applies the same ranges with its own affine),
--sched const|poly, --lr, --dropout. Results: benchmarks/results/ablation_learning/*.jsonl.
"""
import sys, json, time, argparse, ctypes
SRC = "/work/exp/src_orig"  # gbmseg at commit 1ed9ba9
sys.path.insert(0, SRC)
import numpy as np, torch
from pathlib import Path
from monai.losses import DiceCELoss
from monai.metrics import compute_dice
from monai import transforms as T
from gbmseg.network import build_network
from gbmseg.preprocessing import load_case
from gbmseg.config import load_config
from gbmseg.sweep import training_subset

libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 1 << 30)
ap = argparse.ArgumentParser()
ap.add_argument("--data", default="head_CT"); ap.add_argument("--n", type=int, default=2)
ap.add_argument("--seed", type=int, default=0); ap.add_argument("--mode", default="image+mask")
ap.add_argument("--aug", default="off"); ap.add_argument("--sched", default="const")
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--iters", type=int, default=800)
ap.add_argument("--opt", default="adam"); ap.add_argument("--tag", default="")
ap.add_argument("--dropout", type=float, default=None); ap.add_argument("--norm", default=None)
a = ap.parse_args()
cache = Path(f"/work/exp/work/{a.data}/gbmseg_preprocessed/fast")
split = json.load(open(f"/work/exp/{a.data}_split.json"))
train_cases = training_subset(split["pool"], a.n, a.seed)
cfg = load_config("fast")
if a.dropout is not None: cfg["network"]["dropout"] = a.dropout
if a.norm: cfg["network"]["norm"] = a.norm
plan = json.load(open(cache / "plan.json")); ncls = len(plan["labels"]) + 1
chans = {"image": ["image"], "mask": ["mask"], "image+mask": ["image", "mask"]}[a.mode]
def load(c):
    d = load_case(cache, c)
    return {"image": torch.from_numpy(d["image"]), "mask": torch.from_numpy(d["mask"][None].astype(np.float32)),
            "label": torch.from_numpy(d["label"][None].astype(np.float32))}
tr = [load(c) for c in train_cases]; va = [load(c) for c in split["val"]]; te = [load(c) for c in split["test"]]
def inp(d): return torch.cat([d[k] for k in chans], 0)[None]
torch.manual_seed(a.seed); np.random.seed(a.seed)
aug = None
if a.aug == "on":
    aug = T.Compose([
        T.RandAffined(keys=["image", "mask", "label"], mode=("bilinear", "nearest", "nearest"), prob=0.8,
                      rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15), translate_range=(4, 4, 4),
                      padding_mode="zeros"),
        T.RandAdjustContrastd(keys=["image"], prob=0.3, gamma=(0.7, 1.5)),
        T.RandScaleIntensityd(keys=["image"], prob=0.3, factors=0.15),
        T.RandShiftIntensityd(keys=["image"], prob=0.3, offsets=0.1),
        T.RandGaussianNoised(keys=["image"], prob=0.2, std=0.03),
        T.RandGaussianSmoothd(keys=["image"], prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
    ])
    aug.set_random_state(a.seed)
net = build_network(cfg["network"], len(chans), ncls)
if a.opt == "adam": opt = torch.optim.Adam(net.parameters(), lr=a.lr)
else: opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.99, nesterov=True, weight_decay=3e-5)
loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
def lr_at(it):
    if a.sched == "const": return a.lr
    warm = 50 if a.sched == "warmpoly" else 0
    if it < warm: return a.lr * (it + 1) / warm
    return a.lr * (1 - it / a.iters) ** 0.9
def dice(data):
    net.eval(); out = []
    with torch.no_grad():
        for d in data:
            p = net(inp(d)).argmax(1)
            oh = lambda t: torch.nn.functional.one_hot(t.long(), ncls).movedim(-1, 1)
            out.append(compute_dice(oh(p), oh(d["label"][None, 0]), include_background=False, ignore_empty=True)[0].numpy())
    net.train(); return np.array(out)  # cases x structures
g = torch.Generator().manual_seed(a.seed); hist = []; t0 = time.time(); run = []
for it in range(1, a.iters + 1):
    for pg in opt.param_groups: pg["lr"] = lr_at(it - 1)
    d = tr[int(torch.randint(len(tr), (1,), generator=g))]
    if aug is not None: d = aug(dict(d))
    x = inp(d); y = d["label"][None].long()
    opt.zero_grad(); loss = loss_fn(net(x), y); loss.backward(); opt.step(); run.append(float(loss))
    if it % 50 == 0:
        v, t = dice(va), dice(te)
        hist.append({"it": it, "loss": float(np.mean(run)), "val": float(np.nanmean(v)), "test": float(np.nanmean(t)),
                     "test_struct": np.nanmean(t, 0).round(3).tolist(), "s": round(time.time() - t0, 1)})
        run = []; print(json.dumps(hist[-1]), flush=True)
res = {"args": vars(a), "train": train_cases, "hist": hist}
with open("/work/exp/results.jsonl", "a") as fh: fh.write(json.dumps(res) + "\n")
