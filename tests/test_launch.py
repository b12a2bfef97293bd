"""Training launch commands: the three cases, and real 2-process torchrun runs on CPU (gloo)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.launch import LaunchConfig, plan_launch, run, slurm_hostnames

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]


def _after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_single_process_is_plain_python():
    plan = plan_launch(["--config", "c.json"], LaunchConfig(nproc_per_node=1), env={})
    assert plan.mode == "single" and plan.world_size == 1
    assert plan.command == [PY, "-m", "model.train", "--config", "c.json"]


def test_single_process_inside_one_node_slurm_job_is_plain_python():
    env = {"SLURM_JOB_ID": "12", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "gpu01", "SLURM_GPUS_ON_NODE": "1"}
    plan = plan_launch(["a"], LaunchConfig(nproc_per_node=1), env=env)
    assert plan.command == [PY, "-m", "model.train", "a"]


def test_several_gpus_one_node_is_standalone_torchrun():
    plan = plan_launch(["--steps", "5"], LaunchConfig(nproc_per_node=4), env={})
    cmd = plan.command
    assert plan.mode == "standalone" and plan.world_size == 4
    assert cmd[:3] == [PY, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and _after(cmd, "--nproc_per_node") == "4" and _after(cmd, "--nnodes") == "1"
    assert "SIGUSR1" in _after(cmd, "--signals-to-handle").split(",")
    # the module and its arguments come last, unchanged
    assert cmd[-4:] == ["-m", "model.train", "--steps", "5"]
    assert "srun" not in cmd and "--rdzv_endpoint" not in cmd


def test_multinode_slurm_uses_srun_and_c10d_rendezvous_on_first_host():
    env = {"SLURM_JOB_ID": "4242", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "gpu[07-09]",
           "SLURM_GPUS_ON_NODE": "8"}
    seen = []

    def hosts(nodelist):
        seen.append(nodelist)
        return ["gpu07", "gpu08", "gpu09"]

    plan = plan_launch(["--x"], LaunchConfig(nproc_per_node=2, rdzv_port=29411), env=env, hostnames=hosts)
    cmd = plan.command
    assert seen == ["gpu[07-09]"]
    assert plan.mode == "multinode" and plan.nnodes == 3 and plan.nproc_per_node == 8 and plan.world_size == 24
    assert cmd[0] == "srun" and "--overlap" in cmd
    assert _after(cmd, "--nodes") == "3" and _after(cmd, "--ntasks-per-node") == "1"
    torchrun = cmd.index("torch.distributed.run")
    assert cmd[torchrun - 2:torchrun] == [PY, "-m"]
    assert _after(cmd, "--nnodes") == "3"
    assert _after(cmd, "--nproc_per_node") == "8"  # SLURM_GPUS_ON_NODE wins over the config
    assert _after(cmd, "--rdzv_backend") == "c10d"
    assert _after(cmd, "--rdzv_endpoint") == "gpu07:29411"
    assert _after(cmd, "--rdzv_id") == "4242"
    assert "--standalone" not in cmd
    assert cmd[-3:] == ["-m", "model.train", "--x"]


def test_multinode_without_gpus_on_node_uses_config_count():
    env = {"SLURM_JOB_ID": "1", "SLURM_NNODES": "2", "SLURM_NODELIST": "a,b"}
    plan = plan_launch([], LaunchConfig(nproc_per_node=4), env=env, hostnames=lambda nl: nl.split(","))
    assert plan.nproc_per_node == 4 and _after(plan.command, "--rdzv_endpoint") == "a:29500"


def test_nnodes_ignored_outside_a_slurm_job():
    plan = plan_launch([], LaunchConfig(nproc_per_node=2), env={"SLURM_NNODES": "4"})
    assert plan.mode == "standalone"


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="nproc_per_node"):
        plan_launch([], LaunchConfig(nproc_per_node=0), env={})
    with pytest.raises(InputError, match="SLURM_NNODES"):
        plan_launch([], LaunchConfig(), env={"SLURM_JOB_ID": "1", "SLURM_NNODES": "two"})
    with pytest.raises(InputError, match="SLURM_JOB_NODELIST"):
        plan_launch([], LaunchConfig(), env={"SLURM_JOB_ID": "1", "SLURM_NNODES": "2"})


def test_slurm_hostnames_expands_with_scontrol(tmp_path):
    if shutil.which("scontrol") is None:
        from tests.slurm_cluster import require_slurm

        require_slurm()  # fails in CI (CI=true), skips locally, with the install hint
    # `scontrol show hostnames` only parses; it needs a readable config but no controller.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=n1\nPartitionName=p Nodes=n1\n")
    env = dict(os.environ, SLURM_CONF=str(conf))
    assert slurm_hostnames("gpu[01-03],login", env=env) == ["gpu01", "gpu02", "gpu03", "login"]


WORKER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    import torch.distributed as dist

    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    (out / f"rank{rank}.txt").write_text(f"{world} {int(os.environ['LOCAL_RANK'])} {t.item()}")
    dist.destroy_process_group()
""")


def _worker_module(tmp_path: Path) -> dict[str, str]:
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "gloo_worker.py").write_text(WORKER)
    return dict(os.environ, PYTHONPATH=f"{pkg}{os.pathsep}{REPO}", OMP_NUM_THREADS="1")


def test_standalone_two_processes_gloo_all_reduce(tmp_path):
    env = _worker_module(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    plan = plan_launch([str(out)], LaunchConfig(nproc_per_node=2, module="gloo_worker"), env={})
    rc = run(plan, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.txt", "w"))
    assert rc == 0, (tmp_path / "err.txt").read_text()[-3000:]
    results = sorted((out / f"rank{r}.txt").read_text() for r in range(2))
    # world size 2, local ranks 0 and 1, all-reduced sum 1 + 2 = 3
    assert results == ["2 0 3.0", "2 1 3.0"]


def _csv_steps(path: Path) -> list[int]:
    import csv

    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_launch_training_two_gloo_ranks_preempted_by_usr1_then_resumed(tmp_path):
    """The real trainer through the launcher: 2 ranks (gloo), USR1 to the launcher only (like
    --signal=B:USR1): run() forwards it to torchrun, torchrun to both ranks, which agree on a step,
    checkpoint and stop; rerunning the same launch resumes there."""
    from model.checkpoint import latest_checkpoint, load_checkpoint
    from model.data import write_toy_shard

    from workflow_scripts.launch import launch_training

    toy = write_toy_shard(tmp_path / "toy.h5", "synthetic", num_samples=1, num_views=6, size=32)
    out = tmp_path / "run"
    steps = 400  # far more than can run before the signal: the first run must stop early
    cfg = {"stage": "test", "preset": "tiny", "synthetic": [str(toy)], "image_size": 16, "num_input_views": 4,
           "num_supervision_views": 2, "view_selection": "random", "background": "white", "batch_size": 1,
           "steps": steps, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 1000, "log_every": 1,
           "num_workers": 0, "seed": 3,
           "losses": {"mse": 1.0, "masked_mse": 0.0, "ssim": 0.0, "silhouette": 0.0, "depth": 0.0,
                      "temporal": 0.0, "perceptual": 0.0}}
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = tmp_path / "csv_seen"
    finished = threading.Event()

    def signal_after_two_steps():
        deadline = time.time() + 120
        while time.time() < deadline and not finished.is_set():
            if (out / "log.csv").exists() and len(_csv_steps(out / "log.csv")) >= 2:
                log.touch()
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.1)

    t = threading.Thread(target=signal_after_two_steps)
    t.start()
    err1 = open(tmp_path / "err1.txt", "w")
    try:
        rc = launch_training(cfg, out, nproc_per_node=2, env=env, stdout=subprocess.DEVNULL, stderr=err1)
    finally:
        finished.set()
        t.join()
    assert log.exists(), (tmp_path / "err1.txt").read_text()[-3000:]
    assert rc != 0  # stopped, not finished
    assert not (out / "checkpoint.pt").exists()
    ck = latest_checkpoint(out / "checkpoints")
    assert ck is not None, (tmp_path / "err1.txt").read_text()[-3000:]
    stopped_at = load_checkpoint(ck)["step"]
    assert 2 <= stopped_at < steps

    # rerun the same command with fewer total steps to finish fast: it must continue, not restart
    cfg["steps"] = stopped_at + 2
    rc2 = launch_training(cfg, out, nproc_per_node=2, env=env, stdout=subprocess.DEVNULL,
                          stderr=open(tmp_path / "err2.txt", "w"))
    assert rc2 == 0, (tmp_path / "err2.txt").read_text()[-3000:]
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["step"] == stopped_at + 2 and final["metrics"]["world_size"] == 2
    assert _csv_steps(out / "log.csv") == list(range(1, stopped_at + 3))
