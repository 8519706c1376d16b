"""Training: one U-Net on cached cases, Dice loss, Adam, best checkpoint on validation Dice.

A run directory holds everything about one training run::

    config.json        resolved config, mode, labels, mask record, cases, seed, versions, device
    train.log          log
    history.csv        iteration, train_loss, val_loss, val_dice, wall_s (one row per validation)
    last.pt            latest state (model, optimizer, RNG, counters): resume after interruption
    model.pt           best weights on validation (loaded with ``weights_only=True``)
    loss_curve.png     train/val loss and val Dice per validation
    result.json        best iteration and Dice, iterations, training time, why it stopped

Example:
    >>> train(cache, "image+mask", ["a", "b"], ["c"], load_config("fast"), "runs/x")   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss
from monai.metrics import compute_dice
from tqdm import tqdm

from . import __version__
from .config import RETIRED, Config, channels_for_mode
from .errors import GbmsegError
from .io import atomic_path, read_json, write_text
from .network import build_network, select_device
from .preprocessing import load_case, load_plan, stack_inputs

HISTORY_FIELDS = ["iteration", "train_loss", "val_loss", "val_dice", "wall_s"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loss(name: str):
    """``dice`` (the paper, MONAI DiceLoss over the structures) or ``dicece`` (Dice + cross-entropy)."""
    if name == "dice":
        return DiceLoss(include_background=False, to_onehot_y=True, softmax=True)
    if name == "dicece":
        return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)
    raise GbmsegError(f"unknown loss '{name}' (choose dice or dicece)")


def mean_dice(pred: torch.Tensor, label: torch.Tensor, n_classes: int) -> float:
    """Mean Dice over structures (background excluded) of argmax ``pred`` (B,1,...) vs ``label`` (B,1,...)."""
    onehot = lambda t: torch.nn.functional.one_hot(t[:, 0].long(), n_classes).movedim(-1, 1)
    d = compute_dice(onehot(pred), onehot(label), include_background=False, ignore_empty=True)
    return float(torch.nanmean(d))


class Trainer:
    """Holds the model, data and state of one run; :meth:`fit` runs it to the end."""

    def __init__(self, cache: Path, mode: str, train_cases: list[str], val_cases: list[str],
                 config: Config, out_dir: Path, seed: int = 0, device: str | None = None,
                 progress: bool = True):
        if not train_cases:
            raise GbmsegError("no training cases given")
        if not val_cases:
            raise GbmsegError("no validation cases given (the best checkpoint is chosen on them)")
        overlap = set(train_cases) & set(val_cases)
        if overlap:
            raise GbmsegError(f"cases in both training and validation: {', '.join(sorted(overlap))}")
        self.cache, self.mode, self.out = Path(cache), mode, Path(out_dir)
        self.cfg, self.tcfg, self.seed, self.progress = config, config.training, seed, progress
        self.plan = load_plan(self.cache)
        if self.plan["preprocessing"] != dataclasses.asdict(config.preprocessing):
            raise GbmsegError(f"{self.cache / 'plan.json'}: this cache was made with other preprocessing settings "
                              "than the run's config; preprocess with this config first")
        self.n_classes = len(self.plan["labels"]) + 1
        self.device = select_device(device)
        self.amp = bool(self.tcfg.amp) and self.device.type == "cuda"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = _logger(self.out / "train.log")
        seed_everything(seed)
        self.train_data = [self._load(c) for c in train_cases]
        self.val_data = [self._load(c) for c in val_cases]
        self.net = build_network(config.network, len(channels_for_mode(mode)), self.n_classes).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.tcfg.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss_fn = make_loss(self.tcfg.loss)
        self.gen = torch.Generator().manual_seed(seed)
        self.state = {"iteration": 0, "best_dice": -1.0, "best_iteration": 0, "bad_evals": 0, "elapsed": 0.0}
        self.resolved = {"gbmseg_version": __version__, "mode": mode, "seed": seed,
                         "train_cases": list(train_cases), "val_cases": list(val_cases),
                         "labels": self.plan["labels"], "modality": self.plan["modality"],
                         "masks": self.plan["masks"], "channels": list(channels_for_mode(mode)),
                         "config": config.to_dict(), "device": str(self.device), "amp": self.amp,
                         "torch": torch.__version__, "python": platform.python_version(),
                         "host": platform.node(), "cache": str(self.cache)}

    def _load(self, case: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = load_case(self.cache, case)
        x = torch.from_numpy(stack_inputs(data, self.mode))[None]
        y = torch.from_numpy(data["label"].astype(np.int64))[None, None]
        return x, y

    # -- checkpoints -------------------------------------------------------------------------
    def _save_last(self) -> None:
        ckpt = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(), "state": dict(self.state),
                "torch_rng": torch.get_rng_state(), "sampler_rng": self.gen.get_state()}
        with atomic_path(self.out / "last.pt") as tmp:
            torch.save(ckpt, tmp)

    def _resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return False
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        self.net.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = dict(ckpt["state"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.gen.set_state(ckpt["sampler_rng"])
        _truncate_history(self.out / "history.csv", self.state["iteration"])
        self.log.info("resumed from %s at iteration %d", path, self.state["iteration"])
        return True

    # -- loop --------------------------------------------------------------------------------
    def validate(self) -> tuple[float, float]:
        self.net.eval()
        losses, dices = [], []
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            for x, y in self.val_data:
                x, y = x.to(self.device), y.to(self.device)
                logits = self.net(x).float()
                losses.append(float(self.loss_fn(logits, y)))
                dices.append(mean_dice(logits.argmax(1, keepdim=True), y, self.n_classes))
        self.net.train()
        return float(np.mean(losses)), float(np.nanmean(dices))

    def fit(self) -> dict:
        """Train until max iterations, the time budget, or early stopping; return ``result.json``'s content."""
        write_text(json.dumps(self.resolved, indent=2), self.out / "config.json")
        resumed = self._resume()
        t = self.tcfg
        max_it, interval, patience = int(t.max_iterations), int(t.val_interval), int(t.patience)
        budget = t.max_time_s or float("inf")
        self.log.info("%s run: mode=%s train=%d val=%d device=%s seed=%d", "resumed" if resumed else "new",
                      self.mode, len(self.train_data), len(self.val_data), self.device, self.seed)
        self.net.train()
        start = time.time() - self.state["elapsed"]
        stop, running = "max_iterations", []
        bar = tqdm(total=max_it, initial=self.state["iteration"], desc=f"train {self.mode}",
                   disable=not self.progress, leave=False)
        while self.state["iteration"] < max_it:
            i = int(torch.randint(len(self.train_data), (1,), generator=self.gen))
            x, y = (a.to(self.device) for a in self.train_data[i])
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = self.loss_fn(self.net(x).float(), y)
            if not torch.isfinite(loss):
                raise GbmsegError(f"training diverged (loss {float(loss)}) at iteration {self.state['iteration']}; "
                                  "lower training.lr")
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            running.append(float(loss.detach()))
            self.state["iteration"] += 1
            bar.update(1)
            out_of_time = time.time() - start > budget  # checked every iteration, validated once more
            if self.state["iteration"] % interval == 0 or self.state["iteration"] == max_it or out_of_time:
                stop = self._after_interval(running, start, patience) or ("time_budget" if out_of_time else None)
                running = []
                bar.set_postfix(val_dice=f"{self.state['best_dice']:.3f}")
                if stop:
                    break
        bar.close()
        result = {"best_iteration": self.state["best_iteration"], "best_val_dice": self.state["best_dice"],
                  "iterations": self.state["iteration"], "train_time_s": round(self.state["elapsed"], 2),
                  "time_to_best_s": self.state.get("time_to_best", None),
                  "stop_reason": stop or "max_iterations", "device": str(self.device)}
        write_text(json.dumps(result, indent=2), self.out / "result.json")
        plot_history(self.out / "history.csv", self.out / "loss_curve.png")
        self.log.info("done: %s", result)
        return result

    def _after_interval(self, running: list[float], start: float, patience: int) -> str | None:
        val_loss, val_dice = self.validate()
        self.state["elapsed"] = time.time() - start
        it = self.state["iteration"]
        row = {"iteration": it, "train_loss": float(np.mean(running)) if running else float("nan"),
               "val_loss": val_loss, "val_dice": val_dice, "wall_s": round(self.state["elapsed"], 2)}
        _append_history(self.out / "history.csv", row)
        self.log.info("it %d train_loss %.4f val_loss %.4f val_dice %.4f", it, row["train_loss"], val_loss, val_dice)
        if val_dice > self.state["best_dice"]:
            self.state.update(best_dice=val_dice, best_iteration=it, bad_evals=0, time_to_best=row["wall_s"])
            with atomic_path(self.out / "model.pt") as tmp:
                torch.save({"model": self.net.state_dict()}, tmp)
        else:
            self.state["bad_evals"] += 1
        self._save_last()
        if self.state["bad_evals"] >= patience:
            return "early_stopping"
        return None


def train(cache: Path, mode: str, train_cases: list[str], val_cases: list[str], config: Config,
          out_dir: Path, seed: int = 0, device: str | None = None, progress: bool = True) -> dict:
    """Train (or resume, or skip if finished) one run; returns the content of ``result.json``."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        old = read_json(out / "config.json")
        new = {"mode": mode, "seed": seed, "train_cases": list(train_cases), "val_cases": list(val_cases),
               "config": _without_budget(config.to_dict())}
        if any((_without_budget(old[k]) if k == "config" else old.get(k)) != v for k, v in new.items()):
            raise GbmsegError(f"{out}: holds a run with another mode, seed, cases or config; "
                              "choose another output folder")
    if (out / "result.json").exists() and (out / "model.pt").exists():
        return read_json(out / "result.json")
    return Trainer(cache, mode, train_cases, val_cases, config, out, seed, device, progress).fit()


def _without_budget(config: dict) -> dict:
    """A config minus what may change when a run is continued (budget, patience, description)."""
    cfg = {k: v for k, v in config.items() if k != "description"}
    cfg["training"] = {k: v for k, v in config.get("training", {}).items()
                       if k not in ("max_iterations", "max_time_s", "patience", *RETIRED["training"])}
    return cfg


def _logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"gbmseg.train.{path}")
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


def _append_history(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_history(path: Path, iteration: int) -> None:
    """Drop history rows written after the checkpoint we resume from."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["iteration"]) <= iteration]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot_history(history_csv: Path, out_png: Path) -> None:
    """Loss curves (train, val) and validation Dice against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not Path(history_csv).exists():
        return
    h = pd.read_csv(history_csv)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(h["iteration"], h["train_loss"], label="train")
    ax[0].plot(h["iteration"], h["val_loss"], label="validation")
    ax[0].set(xlabel="iteration", ylabel="Dice loss", title="loss")
    ax[0].legend()
    ax[1].plot(h["iteration"], h["val_dice"], color="C2")
    ax[1].set(xlabel="iteration", ylabel="mean Dice", title="validation Dice", ylim=(0, 1))
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
