"""Training: one U-Net on cached cases, Dice loss, Adam, best checkpoint on validation Dice.

Each iteration takes one random training case, a patch of it when its grid is larger than the
network's input (:mod:`gbmseg.patches`), and, with ``training.augment``, a random spatial and
intensity augmentation (:mod:`gbmseg.augment`). The learning rate follows ``training.schedule``
(``constant`` or ``poly``, after ``warmup`` iterations of linear warm-up). Every ``val_interval``
iterations all validation cases are predicted whole; the best mean Dice is kept. Early stopping
(:mod:`gbmseg.stopping`) cannot end a run before ``min_iterations`` or before its validation Dice
has passed ``dice_floor``; a run that never passes it is reported as not learned. Budgets are
iterations; ``max_time_s`` is an optional wall-time cap. With ``training.extend_iterations``, a run
that reaches ``max_iterations`` with a structure that the kept checkpoint does not segment on
validation (Dice at most ``dice_floor``: structures are learned one after another, a slow one may not
have come yet, and one learned early may be lost again) trains that many iterations more, once; the
learning-rate decay is then recomputed over the extended budget, so the rate rises to what a run
planned that long would have at that iteration and decays to zero at its new end. With
``training.extend_from`` below 1, the decision is made earlier: at the first validation from that
share of ``max_iterations`` on that finds a structure not learned (``fast``: 0.75), so that the
extended run keeps more of its rate; a run that loses a structure later is still extended at the end. With
``training.mirror``, the mirror plan (:mod:`gbmseg.mirror`) is made from the training cases and
recorded in ``config.json``; validation then mirrors as prediction does, so that the checkpoint kept,
early stopping and the structures reported as not learned judge the segmentations the model will
deliver.

A run directory holds everything about one training run::

    config.json        resolved config, mode, labels, mask record, cases, seed, versions, device,
                       per training case its mask's volume and the share of the scan it fills, and its modality's look
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
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.losses import DeepSupervisionLoss
from monai.metrics import compute_dice
from tqdm import tqdm

from . import __version__
from . import distributed, runtime
from .augment import Augmenter
from .channels import channel_arrays, input_width
from .config import RETIRED, Config, TrainingConfig, channels_for_mode
from .errors import GbmsegError, Interrupted
from .io import atomic_path, read_json, write_text
from .losses import make_loss
from .mirror import plan_mirror, swap_table
from .network import build_network, load_checkpoint, load_weights, output_classes, select_device
from .patches import predict_logits, predict_probabilities, random_patch
from .preprocessing import case_stats, grid_spacing, load_case, load_plan
from .stopping import MORE_ITERATIONS, StoppingRule
from .tracking import make_tracker

HISTORY_FIELDS = ["iteration", "train_loss", "val_loss", "val_dice", "wall_s"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


SCHEDULES = ("constant", "poly")
OPTIMIZERS = {  # training.optimizer -> a torch optimiser for parameters and the initial learning rate
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True),  # nnU-Net's
}


def learning_rate(t: TrainingConfig, iteration: int, budget: int | None = None) -> float:
    """Learning rate for (0-based) ``iteration``: linear warm-up, then constant or polynomial decay
    ``lr * (1 - it / budget) ** 0.9`` (nnU-Net's schedule); ``budget`` is ``max_iterations`` unless
    the run's budget was extended (``training.extend_iterations``).

    >>> t = TrainingConfig(loss="dice", lr=1.0, max_iterations=100, val_interval=10, patience=2, schedule="poly")
    >>> learning_rate(t, 100), round(learning_rate(t, 100, budget=200), 3)
    (0.0, 0.536)
    """
    if t.schedule not in SCHEDULES:
        raise GbmsegError(f"training.schedule '{t.schedule}': choose {' or '.join(SCHEDULES)}")
    if iteration < t.warmup:
        return t.lr * (iteration + 1) / t.warmup
    if t.schedule == "poly":
        return t.lr * max(0.0, 1.0 - iteration / max(1, budget or t.max_iterations)) ** 0.9
    return t.lr


def case_tensors(data: dict, mode: str, spacing_xyz) -> dict[str, torch.Tensor]:
    """A cached case's arrays (:func:`gbmseg.preprocessing.load_case`) as float tensors: the
    channels of ``mode`` (:mod:`gbmseg.channels`, each ``(width, Z, Y, X)``), and ``label`` (1, Z, Y, X)."""
    tensors = {k: torch.from_numpy(v) for k, v in channel_arrays(data, mode, spacing_xyz).items()}
    tensors["label"] = torch.from_numpy(data["label"][None].astype(np.float32))
    return tensors


def network_input(case: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
    """``(1, C, Z, Y, X)``: the channels of ``mode`` stacked (see :mod:`gbmseg.channels`)."""
    return torch.cat([case[c] for c in channels_for_mode(mode)], 0)[None]


def structure_dice(pred: torch.Tensor, label: torch.Tensor, n_classes: int) -> np.ndarray:
    """Dice per structure (background excluded; NaN where both are empty) of argmax ``pred``
    (B,1,...) vs ``label`` (B,1,...), averaged over the batch."""
    onehot = lambda t: torch.nn.functional.one_hot(t[:, 0].long(), n_classes).movedim(-1, 1)
    d = compute_dice(onehot(pred), onehot(label), include_background=False, ignore_empty=True)
    return torch.nanmean(d.float(), dim=0).cpu().numpy()


class StopSignals:
    """Within ``with StopSignals() as s:``, SIGTERM and SIGUSR1 only set ``s.received`` (the loop checks it
    each iteration, writes ``last.pt`` and stops). Handlers are installed only in the main thread (Python
    allows no other); elsewhere the signals keep their usual effect. The old handlers come back on exit."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        self._old = {}


class Trainer:
    """Holds the model, data and state of one run; :meth:`fit` runs it to the end.

    Started by ``torchrun`` (see :mod:`gbmseg.distributed`), each process is one rank of a
    DistributedDataParallel run: every rank builds the same initial model (same seed), draws cases,
    patches and augmentations from its own share of the training cases with its own seed, and the
    gradients are averaged. Rank 0 alone validates, writes the log, history and checkpoints and
    decides when to stop; the other ranks receive its decision and state.
    """

    def __init__(self, cache: Path, mode: str, train_cases: list[str], val_cases: list[str],
                 config: Config, out_dir: Path, seed: int = 0, device: str | None = None,
                 progress: bool = True, track: bool | None = None):
        if not train_cases:
            raise GbmsegError("no training cases given")
        if not val_cases:
            raise GbmsegError("no validation cases given (the best checkpoint is chosen on them)")
        overlap = set(train_cases) & set(val_cases)
        if overlap:
            raise GbmsegError(f"cases in both training and validation: {', '.join(sorted(overlap))}")
        t = config.training  # settings checked before any work
        if not 0.0 <= float(t.foreground) <= 1.0:
            raise GbmsegError(f"training.foreground {t.foreground}: a share of patches, from 0 to 1")
        for key in ("mask_augment", "mask_dropout"):
            if not 0.0 <= float(getattr(t, key)) <= 1.0:
                raise GbmsegError(f"training.{key} {getattr(t, key)}: a probability per iteration, from 0 to 1")
        if not 0.0 <= float(t.rotate_deg) <= 180.0:
            raise GbmsegError(f"training.rotate_deg {t.rotate_deg}: the rotation bound in degrees, from 0 to 180")
        if int(t.extend_iterations) < 0:
            raise GbmsegError(f"training.extend_iterations {t.extend_iterations}: iterations, 0 (never) or more")
        if not 0.0 < float(t.extend_from) <= 1.0:
            raise GbmsegError(f"training.extend_from {t.extend_from}: a share of max_iterations, above 0 and at most 1")
        if t.optimizer not in OPTIMIZERS:
            raise GbmsegError(f"training.optimizer '{t.optimizer}': choose {' or '.join(OPTIMIZERS)}")
        self.cache, self.mode, self.out = Path(cache), mode, Path(out_dir)
        self.tracker = make_tracker(track)  # before any work: a missing MLflow is a one-line error now
        self.cfg, self.tcfg, self.seed, self.progress = config, config.training, seed, progress
        self.plan = load_plan(self.cache)
        if self.plan["preprocessing"] != dataclasses.asdict(config.preprocessing):
            raise GbmsegError(f"{self.cache / 'plan.json'}: this cache was made with other preprocessing settings "
                              "than the run's config; preprocess with this config first")
        self.n_classes = output_classes(self.plan["labels"])
        self.device = distributed.setup(select_device(device))
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        if not self.main:
            self.tracker = make_tracker(False)  # under DDP only rank 0 logs, as it alone writes the run folder
        self.sample_seed = seed + 1_000_003 * self.rank  # what each rank draws; the model's init uses seed
        self.runtime = runtime.configure(self.device)
        self.amp_dtype = runtime.amp_dtype(self.device) if self.tcfg.amp else None
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = _logger(self.out / "train.log") if self.main else _silent_logger()
        seed_everything(seed)
        spacing = grid_spacing(config.preprocessing, self.plan.get("crop_plan"))
        # every training case is read once: this rank's share becomes tensors; with mirroring, every case's
        # label and mask (small, uint8) go to the mirror plan, which all ranks make alike from all the cases
        mine, tensors, lateral = distributed.shard(list(train_cases)), {}, []
        for case in dict.fromkeys(train_cases):
            data = load_case(self.cache, case)
            if self.tcfg.mirror:
                lateral.append({"label": data["label"], "mask": data["mask"]})
            if case in mine:
                tensors[case] = case_tensors(data, mode, spacing)
        self.train_data = [tensors[c] for c in mine]
        # mirroring: only where the training labels show left/right pairs about the midline (gbmseg.mirror)
        self.mirror_plan = plan_mirror(self.plan["labels"], lateral, spacing[::-1]) if self.tcfg.mirror else None
        self.val_data = [case_tensors(load_case(self.cache, c), mode, spacing) for c in val_cases] if self.main else []
        self.patch = [int(s) for s in config.preprocessing.size[::-1]]  # (Z, Y, X), the network's largest input
        self.net = build_network(config.network, input_width(mode), self.n_classes).to(self.device)
        self.model = self.net  # what the training step calls: the network, or its DDP wrapper
        if self.world > 1:
            torch.manual_seed(self.sample_seed)  # same initial weights, own dropout from here on
            if self.device.type == "cuda":  # batch norm over every rank's case (on CPU, Gloo has no SyncBatchNorm)
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = OPTIMIZERS[self.tcfg.optimizer](self.net.parameters(), self.tcfg.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = make_loss(self.tcfg.loss)
        # the training loss takes the network's output as it comes: one tensor, or with deep supervision a
        # list whose coarser outputs meet nearest-downsampled labels (weights 1, 1/2, 1/4; labels as float)
        self.train_loss_fn = DeepSupervisionLoss(self.loss_fn)
        # mask dropout needs an input beside the mask: a mask-only model would see nothing (image-only has no mask)
        mask_drop = float(self.tcfg.mask_dropout) if len(channels_for_mode(mode)) > 1 else 0.0
        # (axis, swap table) or None: training crops are mirrored with it, and validation predicts with it as
        # gbmseg.inference does
        self.mirror = (None if self.mirror_plan is None or self.mirror_plan["axis"] is None
                       else (self.mirror_plan["axis"], swap_table(self.n_classes, self.mirror_plan["pairs"])))
        self.augment = (Augmenter(self.sample_seed, anatomy=bool(self.tcfg.augment), mask_p=float(self.tcfg.mask_augment),
                                  mask_drop=mask_drop, mirror=self.mirror,
                                  rotate_deg=float(self.tcfg.rotate_deg))
                        if self.tcfg.augment or self.tcfg.mask_augment or mask_drop or self.mirror else None)
        self.stopping = StoppingRule(int(self.tcfg.patience), int(self.tcfg.min_iterations), float(self.tcfg.dice_floor))
        learning_rate(self.tcfg, 0)  # checks the schedule's name before any work
        self.gen = torch.Generator().manual_seed(self.sample_seed)
        self.state = self._initial_state()
        self.resolved = {"gbmseg_version": __version__, "mode": mode, "seed": seed,
                         "train_cases": list(train_cases), "val_cases": list(val_cases),
                         "labels": self.plan["labels"], "modality": self.plan["modality"],
                         "masks": self.plan["masks"], "crop_plan": self.plan.get("crop_plan"),
                         "case_stats": case_stats(self.cache, list(train_cases) + list(val_cases)),
                         "channels": list(channels_for_mode(mode)), "mirror": self.mirror_plan,
                         "config": config.to_dict(), "device": str(self.device),
                         "amp": str(self.amp_dtype) if self.amp_dtype else None, "runtime": self.runtime,
                         "torch": torch.__version__, "python": platform.python_version(),
                         "processes": self.world,
                         "host": platform.node(), "cache": str(self.cache)}

    # -- checkpoints -------------------------------------------------------------------------
    def _save_last(self) -> None:
        """Write ``last.pt`` (rank 0; every rank must call it: the ranks' random states are gathered)."""
        rngs = distributed.gather((torch.get_rng_state(), self.gen.get_state()))
        if not self.main:
            return
        ckpt = {"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                "scaler": self.scaler.state_dict(), "state": dict(self.state),
                "torch_rng": torch.get_rng_state(), "sampler_rng": self.gen.get_state()}
        if self.world > 1:
            ckpt["rank_rng"] = rngs
        with atomic_path(self.out / "last.pt") as tmp:
            torch.save(ckpt, tmp)

    def _resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return False
        ckpt = load_checkpoint(path, self.device, ("model", "optimizer", "scaler", "state", "torch_rng", "sampler_rng"),
                               hint="; delete it to start this run again")
        load_weights(self.net, ckpt["model"], path, "this run's config")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = {**self._initial_state(), **dict(ckpt["state"])}  # keys newer than the checkpoint: defaults
        if self.main:  # random states are CPU tensors, whatever map_location moved them to
            torch.set_rng_state(ckpt["torch_rng"].cpu())
            self.gen.set_state(ckpt["sampler_rng"].cpu())
            _truncate_history(self.out / "history.csv", self.state["iteration"])
        elif len(ckpt.get("rank_rng", [])) == self.world:  # saved by as many ranks as now run
            torch.set_rng_state(ckpt["rank_rng"][self.rank][0].cpu())
            self.gen.set_state(ckpt["rank_rng"][self.rank][1].cpu())
        else:  # another number of processes: this rank draws anew (still its own stream)
            torch.manual_seed(self.sample_seed + self.state["iteration"])
            self.gen.manual_seed(self.sample_seed + self.state["iteration"])
        self.log.info("resumed from %s at iteration %d", path, self.state["iteration"])
        return True

    # -- loop --------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def step(self) -> float:
        """One training iteration (case, patch, augmentation, forward, backward, update); returns the loss."""
        it = self.state["iteration"]
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.tcfg, it, self.budget())
        case = self.train_data[int(torch.randint(len(self.train_data), (1,), generator=self.gen))]
        case = random_patch(case, self.patch, np.random.default_rng([self.sample_seed, it, 1]),
                            foreground=float(self.tcfg.foreground))
        if self.augment is not None:
            case = self.augment(case, it)
        x = network_input(case, self.mode).to(self.device, non_blocking=True)
        y = case["label"][None].long().to(self.device, non_blocking=True)
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.train_loss_fn(self.model(x), y.float())
        if not torch.isfinite(loss):
            raise GbmsegError(f"training diverged (loss {float(loss)}) at iteration {it}; lower training.lr")
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.state["iteration"] += 1
        return float(loss.detach())

    def validate(self) -> tuple[float, float]:
        """Mean loss and mean Dice over the validation cases, each predicted whole (no augmentation) as
        prediction does it (with the mirror plan, the mean of the crop's and its mirror image's class
        probabilities; the loss is the unmirrored prediction's); the Dice per structure goes to
        ``self.last_structure_dice``."""
        self.net.eval()
        losses, per = [], []
        with torch.no_grad(), self._autocast():
            for case in self.val_data:
                x = network_input(case, self.mode).to(self.device)
                y = case["label"][None].long().to(self.device)
                logits = predict_logits(self.net, x, self.patch).float()
                losses.append(float(self.loss_fn(logits, y)))
                scores = logits if self.mirror is None else predict_probabilities(
                    self.net, x, self.patch, self.mirror, logits=logits)
                per.append(structure_dice(scores.argmax(1, keepdim=True), y, self.n_classes))
        self.net.train()
        with warnings.catch_warnings():  # a structure absent from every validation case: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            self.last_structure_dice = np.nanmean(np.stack(per), axis=0)
        return float(np.mean(losses)), float(np.nanmean([np.nanmean(p) for p in per]))

    def fit(self) -> dict:
        """Train until max iterations, early stopping or the optional time budget; return ``result.json``'s content.

        SIGTERM or SIGUSR1 (a scheduler's preemption or time limit) ends the run after the current
        iteration with ``last.pt`` written, raising :class:`gbmseg.errors.Interrupted`."""
        if self.main:
            write_text(json.dumps(self.resolved, indent=2), self.out / "config.json")
        resumed = self._resume()
        self.tracker.start(self.out, self.resolved, resumed)
        try:
            result = self._loop(resumed)
        except BaseException as exc:
            self.tracker.end(self.out, {}, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        self.tracker.end(self.out, result)
        return result

    def _loop(self, resumed: bool) -> dict:
        t = self.tcfg
        interval = int(t.val_interval)
        budget = t.max_time_s or float("inf")
        self.log.info("%s run: mode=%s train=%d val=%d device=%s seed=%d", "resumed" if resumed else "new",
                      self.mode, len(self.train_data), len(self.val_data), self.device, self.seed)
        if self.mirror_plan is not None:
            self.log.info("mirroring %s: %s", "off" if self.mirror_plan["axis"] is None else
                          f"along grid axis {self.mirror_plan['axis']} (numpy, Z Y X), label pairs "
                          f"{self.mirror_plan['pairs']}", self.mirror_plan["reason"])
        self.net.train()
        start = time.time() - self.state["elapsed"]
        stop, running = None, []
        bar = tqdm(total=self.budget(), initial=self.state["iteration"], desc=f"train {self.mode}",
                   disable=not (self.progress and self.main), leave=False)
        with StopSignals() as signals:
            while stop is None and self.state["iteration"] < self.budget():  # validations extend the budget
                running.append(self.step())
                bar.update(1)
                out_of_time = time.time() - start > budget  # checked every iteration, validated once more
                signalled, out_of_time = distributed.any_rank([signals.received is not None, out_of_time],
                                                              self.device)  # every rank decides alike
                if signalled:
                    bar.close()
                    self._interrupt(signals.received or signal.SIGTERM, start)
                if self.state["iteration"] % interval == 0 or self.state["iteration"] == self.budget() or out_of_time:
                    stop = self._after_interval(running, start, out_of_time) or ("time_budget" if out_of_time else None)
                    running = []
                    bar.total = self.budget()
                    bar.set_postfix(val_dice=f"{self.state['best_dice']:.3f}")
        bar.close()
        distributed.broadcast_buffers(self.net)  # every rank ends with rank 0's model, running statistics too
        result = {"best_iteration": self.state["best_iteration"], "best_val_dice": self.state["best_dice"],
                  "learned": bool(self.state["learned"]),
                  "iterations": self.state["iteration"], "train_time_s": round(self.state["elapsed"], 2),
                  "time_to_best_s": self.state.get("time_to_best", None),
                  "stop_reason": stop or "max_iterations", "device": str(self.device),
                  "extended_iterations": int(self.state["extension"]), "extended_for": list(self.state["extended_for"]),
                  "extended_at": int(self.state["extended_at"])}
        if self.state.get("structure_at_best") is not None:
            result["structures_not_learned"] = self._not_learned()
        if not self.main:
            return result
        write_text(json.dumps(result, indent=2), self.out / "result.json")
        plot_history(self.out / "history.csv", self.out / "loss_curve.png")
        if not result["learned"]:
            self.log.warning("validation Dice never rose above %.2f: this run did not learn", t.dice_floor)
        elif result.get("structures_not_learned"):
            self.log.warning("validation Dice of %s at the kept checkpoint is at most %.2f: not learned%s%s",
                             ", ".join(result["structures_not_learned"]), t.dice_floor,
                             f" (also after {result['extended_iterations']} more iterations)"
                             if result["extended_iterations"] else "",
                             f"; {MORE_ITERATIONS}" if result["stop_reason"] == "max_iterations" else "")
        self.log.info("done: %s", result)
        return result

    def _initial_state(self) -> dict:
        """The counters of a new run (a checkpoint's state is laid over them on resume)."""
        return {"iteration": 0, "elapsed": 0.0, "extension": 0, "extended_for": [], "extended_at": 0,
                **self.stopping.initial_state()}

    def budget(self) -> int:
        """The run's iteration budget: ``max_iterations``, plus ``extend_iterations`` once extended."""
        return int(self.tcfg.max_iterations) + int(self.state["extension"])

    def _not_learned(self) -> list[str]:
        """Structures that the kept model (the best checkpoint so far) does not segment: their validation
        Dice there is at most the floor. A structure that passed the floor once and was lost again counts.
        Never validated (absent from every validation case): not listed."""
        at_best = self.state.get("structure_at_best") or []
        return [name for name, d in zip(self._structure_names(), at_best) if 0 <= d <= self.tcfg.dice_floor]

    def _extend(self) -> bool:
        """Add ``training.extend_iterations`` once, where a structure is not learned. Called at every
        validation from ``training.extend_from`` of ``max_iterations`` on, the one at the end of the budget
        included. Every rank decides alike (the state comes from rank 0). True when extended."""
        extra = int(self.tcfg.extend_iterations)
        missing = self._not_learned()
        if extra <= 0 or self.state["extension"] or not missing:
            return False
        self.state.update(extension=extra, extended_for=missing, extended_at=self.state["iteration"],
                          bad_evals=0)  # patience counts afresh
        self.log.info("it %d: %s not learned; budget extended by %d iterations to %d, the decay with it",
                      self.state["iteration"], ", ".join(missing), extra, self.budget())
        return True

    def _structure_names(self) -> list[str]:
        """Label names in the order of the network's classes 1, 2, ..."""
        labels = self.plan["labels"]
        return sorted(labels, key=labels.get)

    def _interrupt(self, signum: int, start: float) -> None:
        """Write ``last.pt`` now and stop with :class:`Interrupted`."""
        self.state["elapsed"] = time.time() - start
        self._save_last()
        it, name = self.state["iteration"], signal.Signals(signum).name
        self.log.info("stopped by %s at iteration %d; last.pt written", name, it)
        raise Interrupted(signum, f"{self.out}: stopped by {name} at iteration {it}; {self.out / 'last.pt'} "
                                  "written, run the same command again to resume")

    def _after_interval(self, running: list[float], start: float, ending: bool = False) -> str | None:
        """Validate (rank 0), record, keep the best model; every rank gets rank 0's state and decision.
        Unless the run ends here (early stopping, or ``ending``: out of time), decide the extension."""
        self.state["elapsed"] = time.time() - start
        stop = False
        if self.main:
            val_loss, val_dice = self.validate()
            self.state["elapsed"] = time.time() - start
            it = self.state["iteration"]
            row = {"iteration": it, "train_loss": float(np.mean(running)) if running else float("nan"),
                   "val_loss": val_loss, "val_dice": val_dice, "wall_s": round(self.state["elapsed"], 2)}
            _append_history(self.out / "history.csv", row)
            self.tracker.validation(row)
            self.log.info("it %d train_loss %.4f val_loss %.4f val_dice %.4f", it, row["train_loss"], val_loss,
                          val_dice)
            self.log.info("it %d val_dice per structure %s", it, " ".join(
                f"{name} {d:.3f}" for name, d in zip(self._structure_names(), self.last_structure_dice)))
            improved = val_dice > self.state["best_dice"]
            stop = self.stopping.update(self.state, it, val_dice)
            if improved:  # the kept model's Dice per structure (NaN: absent from every validation case)
                self.state["structure_at_best"] = [float(d) for d in self.last_structure_dice]
                self.state["time_to_best"] = row["wall_s"]
                with atomic_path(self.out / "model.pt") as tmp:
                    torch.save({"model": self.net.state_dict()}, tmp)
        stop, self.state = distributed.broadcast((stop, self.state))
        decide_from = float(self.tcfg.extend_from) * int(self.tcfg.max_iterations)
        if not (stop or ending) and self.state["iteration"] >= decide_from:
            self._extend()  # before last.pt is written: a resumed run continues with the decision made
        self._save_last()
        return "early_stopping" if stop else None


def train(cache: Path, mode: str, train_cases: list[str], val_cases: list[str], config: Config,
          out_dir: Path, seed: int = 0, device: str | None = None, progress: bool = True,
          track: bool | None = None) -> dict:
    """Train (or resume, or skip if finished) one run; returns the content of ``result.json``.

    ``track``: log the run to MLflow (:mod:`gbmseg.tracking`); ``None`` (default) follows ``GBMSEG_MLFLOW``."""
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
    try:
        return Trainer(cache, mode, train_cases, val_cases, config, out, seed, device, progress, track).fit()
    finally:
        distributed.teardown()


def _without_budget(config: dict) -> dict:
    """A config minus what may change when a run is continued (budget, patience, description)."""
    cfg = {k: v for k, v in config.items() if k != "description"}
    cfg["training"] = {k: v for k, v in config.get("training", {}).items()
                       if k not in ("max_iterations", "max_time_s", "patience", "min_iterations", "extend_iterations",
                                    "extend_from", *RETIRED["training"])}
    return cfg


def _logger(path: Path) -> logging.Logger:
    log = logging.getLogger(f"gbmseg.train.{path}")
    log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    return log


def _silent_logger() -> logging.Logger:
    """The log of a rank other than 0: rank 0 alone writes ``train.log``."""
    log = logging.getLogger("gbmseg.train.other_rank")
    log.disabled = True
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
