"""Beyond one machine: sweeps on Ray and as a SLURM job array, signals, one training on two processes (DDP).

Ray tests need Ray (in the ``test`` extra); without it they are skipped."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from gbmseg.cli import main
from gbmseg.dataset import Dataset
from gbmseg.errors import GbmsegError
from gbmseg.global_masks import make_dataset_masks
from gbmseg.sweep import jobs, plan_sweep
from gbmseg.testing import tiny_config, write_toy_dataset

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """One masked toy dataset and a tiny preset file for the whole module (each test plans its own sweep)."""
    tmp = tmp_path_factory.mktemp("cluster")
    ds = Dataset(write_toy_dataset(tmp / "Toy", n=6, seed=2), work=tmp / "work")
    make_dataset_masks(ds, progress=False)
    preset = tmp / "tiny.json"
    preset.write_text(json.dumps(tiny_config(max_iterations=20, val_interval=10).to_dict()))
    return ds, preset


def _sweep(toy, out: Path, sizes=(1, 2, 3), modes=("image",), overrides=()) -> Path:
    ds, preset = toy
    return plan_sweep(ds, out, modes=list(modes), sizes=list(sizes), seeds=[0], preset=str(preset),
                      overrides=list(overrides), val=["toy_000"], test=["toy_001"])


# -- SLURM ------------------------------------------------------------------------------------
def _emit(toy, out: Path, *extra: str) -> Path:
    ds, preset = toy
    rc = main(["sweep", str(ds.root), "--work", str(ds.work), "--preset", str(preset), "--modes", "image,mask",
               "--sizes", "1,2", "--seeds", "1", "--val", "toy_000", "--test", "toy_001", "--plan-only",
               "--emit", "slurm", "-o", str(out), *extra])
    assert rc == 0
    return out / "slurm.sh"


def _fake(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def test_slurm_script_is_bash_with_one_array_index_per_job(toy, tmp_path):
    script = _emit(toy, tmp_path / "sweep", "--slurm-opt=--partition=gpu", "--slurm-opt", "--time=04:00:00")
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    job_dirs = jobs(tmp_path / "sweep")
    low, high = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", text, re.M).groups())
    assert (low, high) == (0, len(job_dirs) - 1) == (0, 3)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --requeue"):
        assert line in text.splitlines()
    fake = _fake(tmp_path / "fake_gbmseg", 'echo "$@" > "$OUT"\n')
    for i, job_dir in enumerate(job_dirs):  # each index runs 'gbmseg job' on its own job folder
        out = tmp_path / f"called{i}"
        env = {**os.environ, "GBMSEG": str(fake), "SLURM_ARRAY_TASK_ID": str(i), "OUT": str(out)}
        subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)
        assert out.read_text().split() == ["job", str(job_dir.resolve())]


def test_slurm_script_passes_usr1_on_and_requeues_the_task(toy, tmp_path):
    script = _emit(toy, tmp_path / "sweep")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir / "scontrol", 'echo "$@" > "$LOG/scontrol"\n')
    fake = _fake(tmp_path / "fake_gbmseg", 'trap \'echo usr1 > "$LOG/got"; exit 138\' USR1\n'
                                           'touch "$LOG/started"\nwhile true; do sleep 0.1; done\n')
    env = {**os.environ, "GBMSEG": str(fake), "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "77", "LOG": str(tmp_path),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(script)], env=env)
    deadline = time.time() + 20
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) != 0
    assert (tmp_path / "got").read_text().strip() == "usr1"
    assert (tmp_path / "scontrol").read_text().split() == ["requeue", "77_1"]


# -- signals ----------------------------------------------------------------------------------
def test_sigterm_writes_last_pt_exits_nonzero_and_a_rerun_resumes(toy, tmp_path):
    ds, preset = toy
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gbmseg", "train", str(ds.root), "--work", str(ds.work), "--preset", str(preset),
           "--mode", "image", "--train", "toy_002,toy_003", "--val", "toy_000", "-o", str(out)]
    proc = subprocess.Popen([*cmd, "--set", "training.max_iterations=100000"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600  # generous: a loaded 2-core machine runs these jobs 10x slower than an idle one
    while time.time() < deadline and "new run" not in ((out / "train.log").read_text() if (out / "train.log").exists() else ""):
        time.sleep(0.05)
    time.sleep(1.0)  # some iterations
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    stopped_at = torch.load(out / "last.pt", weights_only=True)["state"]["iteration"]
    assert 0 < stopped_at < 100000
    assert f"stopped by SIGTERM at iteration {stopped_at}; last.pt written" in (out / "train.log").read_text()
    assert main([*cmd[3:], "--set", f"training.max_iterations={stopped_at + 3}"]) == 0  # the same command, here
    assert f"resumed from {out / 'last.pt'} at iteration {stopped_at}" in (out / "train.log").read_text()
    assert json.loads((out / "result.json").read_text())["iterations"] == stopped_at + 3


def test_signal_handlers_are_restored_after_training(toy, tmp_path):
    from gbmseg.training import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as s:
        assert signal.getsignal(signal.SIGTERM) == s._handle
        os.kill(os.getpid(), signal.SIGUSR1)
        assert s.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) == before


def test_stop_signals_in_another_thread_install_nothing():
    from gbmseg.training import StopSignals

    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopSignals().__enter__()._old))
    thread.start()
    thread.join()
    assert seen == [{}]


# -- DDP --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, ports: tuple[int, int], cache: str, preset: str, dataset: str, work: str,
              out: str) -> None:
    """One rank of a 2-process Gloo run (torch.multiprocessing.spawn): train 4 iterations and save this rank's
    weights; then resume the run, to 6 iterations, with the command line (``gbmseg train`` as torchrun starts it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from gbmseg import distributed
    from gbmseg.config import load_config
    from gbmseg.training import Trainer

    config = load_config(preset, ["training.max_iterations=4", "training.val_interval=2"])
    trainer = Trainer(Path(cache), "image", TRAIN, ["toy_000"], config, Path(out), seed=0, device="cpu", progress=False)
    trainer.fit()
    torch.save(trainer.net.state_dict(), Path(out).parent / f"rank{rank}.pt")
    distributed.teardown()
    if rank == 0:  # as if stopped right after its checkpoint at iteration 4 (a finished run is not continued)
        (Path(out) / "result.json").unlink()
    os.environ["MASTER_PORT"] = str(ports[1])
    rc = main(["train", dataset, "--work", work, "--preset", preset, "--mode", "image", "--train", ",".join(TRAIN),
               "--val", "toy_000", "--set", "training.max_iterations=6", "--set", "training.val_interval=2", "-o", out])
    (Path(out).parent / f"rc{rank}").write_text(str(rc))


TRAIN = ["toy_002", "toy_003", "toy_004", "toy_005"]


def test_ddp_on_two_cpu_processes_one_checkpoint_identical_weights_and_resume(toy, tmp_path):
    import torch.multiprocessing as mp

    from gbmseg.config import load_config
    from gbmseg.preprocessing import preprocess_dataset

    ds, preset = toy
    cache = preprocess_dataset(ds, load_config(str(preset)), progress=False, plan_cases=TRAIN + ["toy_000"])
    out = tmp_path / "run"
    mp.spawn(_ddp_rank, args=(2, (_free_port(), _free_port()), str(cache), str(preset), str(ds.root), str(ds.work),
                              str(out)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys()
    assert [k for k in w0 if not torch.equal(w0[k], w1[k])] == []  # parameters and batch-norm statistics
    assert sorted(p.name for p in out.glob("*.pt")) == ["last.pt", "model.pt"]  # rank 0 alone writes
    log = (out / "train.log").read_text()
    assert log.count("new run") == 1 and log.count("resumed from") == 1  # one log, by rank 0
    assert json.loads((out / "config.json").read_text())["processes"] == 2
    assert len(torch.load(out / "last.pt", weights_only=True)["rank_rng"]) == 2
    assert [(tmp_path / f"rc{r}").read_text() for r in (0, 1)] == ["0", "0"]
    assert json.loads((out / "result.json").read_text())["iterations"] == 6
    assert pd.read_csv(out / "history.csv")["iteration"].tolist() == [2, 4, 6]


# -- Ray --------------------------------------------------------------------------------------
def test_ray_backend_without_ray_says_how_to_install(toy, tmp_path, monkeypatch):
    from gbmseg.sweep_backends import run

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GbmsegError, match=re.escape('pip install "gbmseg[ray]"')) as err:
        run(_sweep(toy, tmp_path / "sweep", sizes=(1,)), backend="ray")
    assert "\n" not in str(err.value)


def test_unknown_backend_and_ray_options_on_local_are_errors(toy, tmp_path):
    from gbmseg.sweep_backends import run

    sweep = _sweep(toy, tmp_path / "sweep", sizes=(1,))
    with pytest.raises(GbmsegError, match="unknown backend 'dask'"):
        run(sweep, backend="dask")
    with pytest.raises(GbmsegError, match="--cpus-per-job: only for --backend ray"):
        run(sweep, backend="local", cpus_per_job=2)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_sweep_gives_the_local_sweeps_metrics(toy, tmp_path, local_ray, capsys):
    from gbmseg.sweep_backends import run

    short = ["training.max_iterations=4", "training.val_interval=2"]
    local, remote = _sweep(toy, tmp_path / "local", overrides=short), _sweep(toy, tmp_path / "ray", overrides=short)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray task (--cpus-per-job 1): same sums in the same order on CPU
    try:
        expected = run(local, progress=False)
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    got = run(remote, backend="ray", progress=False, cpus_per_job=1)
    lines = capsys.readouterr().out.splitlines()
    assert got.attrs["failed"] == {}
    assert sorted(line.split(":")[0] for line in lines if "mean test Dice" in line) == [j.name for j in jobs(remote)]
    for job_dir in jobs(remote):  # ran in a Ray worker, once, with one torch thread
        attempts = [json.loads(x) for x in (job_dir / "attempts.jsonl").read_text().splitlines()]
        assert len(attempts) == 1 and attempts[0]["pid"] != os.getpid() and attempts[0]["threads"] == 1
    key = ["job", "case", "structure"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True))


def test_ray_worker_killed_mid_job_is_retried_and_resumes(toy, tmp_path, local_ray):
    from gbmseg.sweep_backends import run

    sweep = _sweep(toy, tmp_path / "sweep", sizes=(1, 2),
                   overrides=["training.max_iterations=12", "training.val_interval=2"])
    first = jobs(sweep)[0]
    result = {}
    thread = threading.Thread(target=lambda: result.update(m=run(sweep, backend="ray", progress=False)))
    thread.start()
    deadline = time.time() + 600  # generous: a loaded 2-core machine runs these jobs 10x slower than an idle one
    while time.time() < deadline and not ((first / "train" / "last.pt").exists() and (first / "attempts.jsonl").exists()):
        time.sleep(0.05)
    pid = json.loads((first / "attempts.jsonl").read_text().splitlines()[0])["pid"]
    os.kill(pid, signal.SIGKILL)  # kill -9 of the worker, after the first checkpoint
    thread.join(timeout=900)
    assert not thread.is_alive()
    assert result["m"].attrs["failed"] == {}
    assert all((j / "done.json").exists() for j in jobs(sweep))
    attempts = [json.loads(x)["pid"] for x in (first / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0] == pid != attempts[1]
    assert "resumed from" in (first / "train" / "train.log").read_text()


def test_ray_job_with_bad_input_is_reported_not_retried_and_the_others_finish(toy, tmp_path, local_ray):
    from gbmseg.sweep_backends import run

    sweep = _sweep(toy, tmp_path / "sweep", sizes=(1, 2), overrides=["training.max_iterations=4",
                                                                     "training.val_interval=2"])
    bad, good = jobs(sweep)
    job = json.loads((bad / "job.json").read_text())
    (bad / "job.json").write_text(json.dumps({**job, "cache_key": "0000"}))  # not the cache it runs with
    metrics = run(sweep, backend="ray", progress=False)
    assert list(metrics.attrs["failed"]) == [bad.name]
    assert "is not the cache" in metrics.attrs["failed"][bad.name]
    assert len((bad / "attempts.jsonl").read_text().splitlines()) == 1  # not retried
    assert (good / "done.json").exists() and set(metrics["job"]) == {good.name}
