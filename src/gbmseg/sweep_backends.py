"""Where a sweep's jobs run: here one after another (``local``), as Ray tasks (``ray``), or as a SLURM job
array written for the user to submit (:func:`write_slurm_script`).

Every backend runs the same :func:`gbmseg.sweep.run_job` on the same job folders, so the rules are
the same everywhere: a finished job (``done.json``) is skipped, an interrupted one resumes from its
``train/last.pt``, and the cache is made once, before any job, by :func:`gbmseg.sweep.prepare_sweep`.
The sweep folder and the dataset's work folder must be on a file system every worker sees.

``ray`` runs each unfinished job as one plain Ray task (not Ray Tune: the jobs are fixed in
advance, nothing is searched), as many at once as the cluster's CPUs and GPUs allow given
``cpus_per_job`` and ``gpus_per_job``. A worker process that dies (killed, out of memory, node
lost) is retried up to ``max_retries`` times and the job resumes from its checkpoint; a job
stopped by SIGTERM/SIGUSR1 (:class:`gbmseg.errors.Interrupted`, after writing its checkpoint) is
retried too; any other exception, such as a :class:`GbmsegError` about the job's input, is not
retried: it is reported and the other jobs go on.

Example:
    >>> metrics = run("sweeps/head", backend="ray", cpus_per_job=2)                # doctest: +SKIP
    >>> write_slurm_script("sweeps/head", ["--partition=gpu", "--time=04:00:00"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .errors import GbmsegError, Interrupted, one_line_warnings
from .io import write_text
from .sweep import collect_metrics, job_line, jobs, prepare_sweep, run_job, run_sweep

__all__ = ["BACKENDS", "run", "run_local", "run_ray", "write_slurm_script"]

RAY_HINT = 'pip install "gbmseg[ray]"'


def run_local(sweep_dir: Path, device: str | None = None, workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Every unfinished job in this process, one after another (:func:`gbmseg.sweep.run_sweep`)."""
    return run_sweep(sweep_dir, device=device, workers=workers, progress=progress)


def _ray_job(job_dir: str, device: str | None, threads: int) -> dict:
    """One job inside a Ray worker with ``threads`` torch threads; each attempt adds a line to
    ``JOB/attempts.jsonl`` (time, host, process id: where the job runs, how often it was retried)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)  # runtime.configure leaves the count alone when this is set
    torch.set_num_threads(threads)
    log = Path(job_dir) / "attempts.jsonl"
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "pid": os.getpid(),
             "threads": threads}
    write_text((log.read_text() if log.exists() else "") + json.dumps(entry) + "\n", log)
    with one_line_warnings("sweep"):  # as the CLI prints them: a worker does not run the CLI
        return run_job(job_dir, device=device, progress=False)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise GbmsegError(f"--backend ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


def run_ray(sweep_dir: Path, device: str | None = None, workers: int = 1, progress: bool = True,
            address: str | None = None, cpus_per_job: int = 1, gpus_per_job: float = 0,
            max_retries: int = 3) -> pd.DataFrame:
    """Every unfinished job as a Ray task, as many at once as the cluster holds; a line per finished job.

    Connects to ``address`` (e.g. ``auto`` or ``ray://head:10001``), or uses the Ray instance this process
    already started, or starts a local one (ended again at the end). Failed jobs are listed in the
    returned table's ``attrs["failed"]`` (``{job: message}``)."""
    ray = _import_ray()
    if cpus_per_job < 1 or gpus_per_job < 0:
        raise GbmsegError("--cpus-per-job must be at least 1 and --gpus-per-job at least 0")
    todo = prepare_sweep(sweep_dir, workers=workers, progress=progress)
    total = len(jobs(sweep_dir))
    failed: dict[str, str] = {}
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=max_retries,
                          retry_exceptions=[Interrupted])(_ray_job)
        pending = {task.remote(str(j), device, int(cpus_per_job)): j for j in todo}
        bar = tqdm(total=total, initial=total - len(todo), desc="sweep runs (ray)", unit="run", disable=not progress)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job_dir = pending.pop(ref)
            try:
                summary = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the job raised: not retried (unless Interrupted)
                cause = getattr(exc, "cause", None) or exc
                failed[job_dir.name] = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
            except ray.exceptions.RayError as exc:  # its worker died more than max_retries times
                failed[job_dir.name] = f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0]
            else:
                bar.update(1)
                bar.write(job_line(summary))
                continue
            bar.write(f"{job_dir.name}: FAILED: {failed[job_dir.name]}")
        bar.close()
    finally:
        if started:
            ray.shutdown()
    metrics = collect_metrics(sweep_dir)
    metrics.attrs["failed"] = failed
    return metrics


BACKENDS: dict[str, Callable[..., pd.DataFrame]] = {"local": run_local, "ray": run_ray}


def run(sweep_dir: str | Path, backend: str = "local", device: str | None = None, workers: int = 1,
        progress: bool = True, **options) -> pd.DataFrame:
    """Run a planned sweep's unfinished jobs on ``backend``; ``options`` are the backend's own
    (ray: ``address``, ``cpus_per_job``, ``gpus_per_job``, ``max_retries``)."""
    if backend not in BACKENDS:
        raise GbmsegError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    if backend == "local" and options:
        names = ", ".join("--" + k.replace("_", "-") for k in options)
        raise GbmsegError(f"{names}: only for --backend ray")
    return BACKENDS[backend](Path(sweep_dir), device=device, workers=workers, progress=progress, **options)


def write_slurm_script(sweep_dir: str | Path, options: list[str] | None = None, cpus_per_job: int = 4,
                       gpus_per_job: int = 0) -> Path:
    """``SWEEP/slurm.sh``: a SLURM job array with one task per job folder (``sbatch SWEEP/slurm.sh``).

    Task ``i`` runs ``gbmseg job JOBS[i]`` (a finished job exits at once, an interrupted one resumes).
    120 s before the time limit SLURM sends USR1 to the script, which passes it to the training
    (it writes ``last.pt`` and exits) and requeues the task; on preemption (SIGTERM) the training
    does the same and ``--requeue`` lets SLURM requeue it. ``options`` are extra ``#SBATCH`` lines
    (``--partition=gpu``, ``--time=04:00:00``, ``--mem=16G``, ...). The script activates the Python
    environment it was written from when that is a virtual environment; set ``GBMSEG`` to another
    ``gbmseg`` executable if needed."""
    sweep_dir = Path(sweep_dir).resolve()
    job_dirs = jobs(sweep_dir)
    if not job_dirs:
        raise GbmsegError(f"{sweep_dir / 'sweep.json'}: the sweep has no jobs")
    for opt in options or []:
        if not opt.startswith("-") or "\n" in opt:
            raise GbmsegError(f"--slurm-opt '{opt}': give one sbatch option such as --partition=gpu")
    (sweep_dir / "slurm").mkdir(exist_ok=True)  # SLURM does not create the folder of --output
    sbatch = [f"--job-name=gbmseg-{sweep_dir.name}", f"--array=0-{len(job_dirs) - 1}",
              f"--cpus-per-task={int(cpus_per_job)}"]
    if gpus_per_job:
        sbatch.append(f"--gres=gpu:{int(gpus_per_job)}")
    sbatch += [f"--output={sweep_dir / 'slurm' / '%A_%a.out'}", "--signal=B:USR1@120", "--requeue",
               *(options or [])]
    venv = ""
    if sys.prefix != sys.base_prefix:
        activate = shlex.quote(str(Path(sys.prefix) / "bin" / "activate"))
        venv = f"[ -f {activate} ] && . {activate}   # the environment this script was written from\n"
    lines = "\n".join(f"  {shlex.quote(str(j))}" for j in job_dirs)
    text = f"""#!/bin/bash
# gbmseg sweep {sweep_dir.name} as a SLURM job array, one task per job folder: sbatch {shlex.quote(str(sweep_dir / 'slurm.sh'))}
# Task i runs 'gbmseg job JOBS[i]': a finished job exits at once, an interrupted one resumes from its last.pt.
{chr(10).join('#SBATCH ' + o for o in sbatch)}

JOBS=(
{lines}
)
{venv}GBMSEG="${{GBMSEG:-gbmseg}}"
export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"
JOB="${{JOBS[$SLURM_ARRAY_TASK_ID]}}"

# USR1, 120 s before the time limit (sent to this script only): the training writes last.pt and
# exits; the task goes back to the queue and resumes. TERM (preemption, scancel): passed on the same
# way; --requeue lets SLURM requeue a preempted task.
requeue() {{
  kill -USR1 "$child" 2>/dev/null
  wait "$child"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
  exit 1
}}
stop() {{
  kill -TERM "$child" 2>/dev/null
  wait "$child"
  exit $?
}}
trap requeue USR1
trap stop TERM

"$GBMSEG" job "$JOB" &
child=$!
wait "$child"
"""
    path = sweep_dir / "slurm.sh"
    write_text(text, path)
    path.chmod(0o755)
    return path
