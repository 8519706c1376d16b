"""Optional experiment tracking: a training run's parameters, validation metrics and files in MLflow.

Off by default (:class:`Tracker` does nothing). Switched on by ``GBMSEG_MLFLOW=1`` in the
environment (every training: ``train``, sweep jobs, mask models) or ``gbmseg train --mlflow``.
MLflow reads its own settings from the environment: ``MLFLOW_TRACKING_URI`` (default ``./mlruns``
or MLflow's default store), ``MLFLOW_EXPERIMENT_NAME`` (default here: ``gbmseg``). Needs the extra
``pip install "gbmseg[mlflow]"`` (``mlflow-skinny``, the client without the server).

What one training run logs (:class:`MlflowTracker`), at the three points the training loop calls:

- ``start``: params = the resolved config flattened (``training.lr``, ``preprocessing.spacing``, ...),
  ``mode``, ``seed``, ``train_cases``, ``val_cases``, ``n_train``, ``mask_method``, ``device``; tag
  ``run_dir``. A resumed run continues its MLflow run (id kept in ``RUN/mlflow_run.json``).
- ``validation``: ``val_dice``, ``val_loss``, ``train_loss`` at step = iteration.
- ``end``: ``best_val_dice``, ``best_iteration``, ``train_time_s``; artifacts ``config.json``,
  ``result.json``, ``history.csv``, ``loss_curve.png``, ``model.pt`` (the best weights); status
  FINISHED, or FAILED/KILLED when training raised.

Example:
    >>> t = make_tracker(False)          # the default: a tracker that does nothing
    >>> t.start("runs/x", {"mode": "image"}, resumed=False); t.end("runs/x", {}, "FINISHED")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import GbmsegError
from .io import write_json

ENV = "GBMSEG_MLFLOW"
EXTRA = 'pip install "gbmseg[mlflow]"'
ARTIFACTS = ("config.json", "result.json", "history.csv", "loss_curve.png", "model.pt")
RUN_FILE = "mlflow_run.json"
MAX_PARAM = 6000  # MLflow's limit on a parameter's length
_ON, _OFF = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


class Tracker:
    """The default tracker: every call does nothing."""

    def start(self, run_dir: str | os.PathLike, resolved: dict, resumed: bool) -> None:
        """A run starts (or resumes) with the resolved record of ``config.json``."""

    def validation(self, row: dict) -> None:
        """One validation: ``row`` is the ``history.csv`` row (iteration, losses, Dice)."""

    def end(self, run_dir: str | os.PathLike, result: dict, status: str = "FINISHED") -> None:
        """The run ends: ``result`` is ``result.json``'s content (empty when training raised)."""


def enabled_by_env() -> bool:
    """True when ``GBMSEG_MLFLOW`` says so (1/true/yes/on); an unknown value is an error."""
    value = os.environ.get(ENV, "").strip().lower()
    if value not in _ON | _OFF:
        raise GbmsegError(f"{ENV}={os.environ[ENV]!r}: use 1 to log runs to MLflow, 0 (or unset) not to")
    return value in _ON


def make_tracker(enabled: bool | None = None) -> Tracker:
    """The tracker for a run: MLflow when ``enabled`` (``None``: as ``GBMSEG_MLFLOW`` says), else a no-op.

    Raises a one-line :class:`GbmsegError` naming the extra when MLflow is asked for but not installed.
    """
    if enabled is None:
        enabled = enabled_by_env()
    if not enabled:
        return Tracker()
    try:
        import mlflow
    except ImportError:
        raise GbmsegError(f"MLflow tracking ({ENV}=1 or --mlflow) needs MLflow: {EXTRA}") from None
    return MlflowTracker(mlflow)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"training": {"lr": 0.001}}`` -> ``{"training.lr": "0.001"}``; lists and None as JSON.

    Example:
        >>> flatten({"a": {"b": [1, 2], "c": None}, "d": "x"})
        {'a.b': '[1, 2]', 'a.c': 'null', 'd': 'x'}
    """
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class MlflowTracker(Tracker):
    """Logs to MLflow (see the module's docstring for what)."""

    def __init__(self, mlflow):
        self.mlflow = mlflow
        self.run = None

    def start(self, run_dir, resolved, resumed):
        run_dir = Path(run_dir)
        mlflow, record = self.mlflow, run_dir / RUN_FILE
        run_id = json.loads(record.read_text())["run_id"] if resumed and record.exists() else None
        try:
            if run_id is None:
                mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "gbmseg")
            self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_dir.name)
        except Exception as exc:  # an unreachable server, a bad URI: one line, not MLflow's traceback
            raise GbmsegError(f"MLflow ({mlflow.get_tracking_uri()}): cannot start a run "
                              f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        if run_id is None:
            write_json({"run_id": self.run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}, record)
            mlflow.log_params({k: v[:MAX_PARAM] for k, v in self._params(resolved).items()})
            mlflow.set_tag("run_dir", str(run_dir.resolve()))

    @staticmethod
    def _params(resolved: dict) -> dict[str, str]:
        params = flatten(resolved.get("config", {}))
        params.update({"mode": resolved.get("mode"), "seed": str(resolved.get("seed")),
                       "train_cases": ",".join(resolved.get("train_cases", [])),
                       "val_cases": ",".join(resolved.get("val_cases", [])),
                       "n_train": str(len(resolved.get("train_cases", []))),
                       "mask_method": str((resolved.get("masks") or {}).get("method")),
                       "device": str(resolved.get("device")), "gbmseg_version": str(resolved.get("gbmseg_version"))})
        return params

    def validation(self, row):
        step = int(row["iteration"])
        self.mlflow.log_metrics({k: float(row[k]) for k in ("val_dice", "val_loss", "train_loss")}, step=step)

    def end(self, run_dir, result, status="FINISHED"):
        if self.run is None:
            return
        run_dir = Path(run_dir)
        try:
            if result:
                self.mlflow.log_metrics({"best_val_dice": float(result["best_val_dice"]),
                                         "best_iteration": float(result["best_iteration"]),
                                         "train_time_s": float(result["train_time_s"])})
            for name in ARTIFACTS:
                if (run_dir / name).exists():
                    self.mlflow.log_artifact(str(run_dir / name))
        finally:
            self.mlflow.end_run(status=status)
            self.run = None
