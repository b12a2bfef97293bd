"""`snakemake --profile profiles/slurm` against a real single-node SLURM cluster (tests/slurm_cluster.py).

The cluster has no accounting, so these runs also prove the profile's squeue status setup.
GPU rules must reach sbatch with --gpus (from the `gpu` resource only), CPU rules without.
Test 3 cancels a training job with SIGUSR1 and checks that the rerun resumes from its checkpoint.
"""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from model.checkpoint import load_checkpoint

from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
# Snakemake's CLI with one test-only change: the plugin waits 10 s longer after every status check
# that saw no job finish (hard-coded, up to 180 s), which makes a 10-level DAG of short jobs
# spend most of its time sleeping; here that wait is capped at 3 s. Everything else is the real
# CLI, profile, plugin and cluster.
FAST_POLL = (
    "import sys\n"
    "from snakemake_executor_plugin_slurm import Executor\n"
    "from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor\n"
    "base = RemoteExecutor.next_seconds_between_status_checks\n"
    "Executor.next_seconds_between_status_checks = property(base.fget, lambda self, v: base.fset(self, min(v, 3)))\n"
    "from snakemake.cli import main\n"
    "sys.exit(main())\n"
)
SNAKEMAKE = [sys.executable, "-c", FAST_POLL]
# Test speed: status checks every few seconds instead of 40 s (MinJobAge=600 >> 3 x 2 s), short
# latency wait (local disk), no automatic retries (a failure must show at once).
FAST = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
        "--latency-wait", "5", "--retries", "0", "--slurm-keep-successful-logs"]


def snakemake(cluster: SlurmCluster, workdir: Path, *args: str, timeout: float = 240,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake with the SLURM profile in ``workdir`` (clients see the test cluster)."""
    cmd = [*SNAKEMAKE, "--profile", str(REPO / "profiles" / "slurm"), *FAST, *args]
    return subprocess.run(cmd, cwd=workdir, env=env or cluster.env, capture_output=True, text=True,
                          timeout=timeout)


def calls_by_rule(cluster: SlurmCluster, since: int = 0) -> dict[str, list[list[str]]]:
    """sbatch argument lists (recorded by the cluster's sbatch wrapper) keyed by rule name."""
    out: dict[str, list[list[str]]] = {}
    for args in cluster.sbatch_calls()[since:]:
        comment = args[args.index("--comment") + 1]  # "rule_<name>" or "rule_<name>_wildcards_..."
        rule = comment.removeprefix("rule_").split("_wildcards_")[0]
        out.setdefault(rule, []).append(args)
    return out


def gpu_request(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith(("--gpus", "--gres", "--gpus-per"))]


def _fail(res: subprocess.CompletedProcess, workdir: Path) -> str:
    logs = []
    for p in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))[-4:]:
        logs.append(f"--- {p}\n{p.read_text(errors='replace')[-2500:]}")
    for p in sorted((workdir / "results" / "logs").rglob("*.log"))[-3:] if (workdir / "results").exists() else []:
        logs.append(f"--- {p}\n{p.read_text(errors='replace')[-2500:]}")
    return f"rc={res.returncode}\nSTDERR:\n{res.stderr[-5000:]}\n" + "\n".join(logs)


def test_profile_cpu_and_gpu_rules_on_cluster(slurm_cluster, tmp_path):
    """A trivial workflow: a CPU rule and a `gpu: 1` rule, partition/account from the environment."""
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "cpu.txt", "gpu.txt"\n\n'
        'rule cpu:\n    output: "cpu.txt"\n    threads: 1\n    resources: mem_mb=500, runtime=5\n'
        '    shell: "echo ${{SLURM_JOB_ID}} ${{SLURM_JOB_PARTITION}} gpus=${{SLURM_GPUS_ON_NODE:-none}} > {output}"\n\n'
        'rule gpu:\n    output: "gpu.txt"\n    threads: 1\n    resources: mem_mb=500, runtime=5, gpu=1\n'
        '    shell: "echo ${{SLURM_JOB_ID}} ${{SLURM_JOB_PARTITION}} gpus=${{SLURM_GPUS_ON_NODE:-none}} > {output}"\n')
    env = dict(slurm_cluster.env, SLURM_PARTITION="debug")
    env.pop("SLURM_ACCOUNT", None)
    n0 = len(slurm_cluster.sbatch_calls())
    res = snakemake(slurm_cluster, tmp_path, env=env, timeout=120)
    assert res.returncode == 0, _fail(res, tmp_path)

    cpu_job, cpu_part, cpu_gpus = (tmp_path / "cpu.txt").read_text().split()
    gpu_job, gpu_part, gpu_gpus = (tmp_path / "gpu.txt").read_text().split()
    assert cpu_part == gpu_part == "debug"
    assert cpu_gpus == "gpus=none" and gpu_gpus == "gpus=1"  # SLURM allocated one (fake) GPU
    calls = calls_by_rule(slurm_cluster, n0)
    assert set(calls) == {"cpu", "gpu"}  # `all` is local
    [cpu], [gpu] = calls["cpu"], calls["gpu"]
    assert gpu_request(gpu) == ["--gpus=1"] and gpu_request(cpu) == []
    for args in (cpu, gpu):
        assert args[args.index("-p") + 1] == "debug"
        assert "-A" not in args  # no SLURM_ACCOUNT, cluster without accounting
        assert args[args.index("--mem") + 1] == "500" and args[args.index("-t") + 1] == "5"
    # finished jobs stay visible to squeue (the profile's status source), none failed
    states = slurm_cluster.run("squeue", "-h", "-t", "all", "-j", f"{cpu_job},{gpu_job}", "-o", "%T").stdout.split()
    assert states == ["COMPLETED", "COMPLETED"]


def _demo_workdir(tmp_path: Path, overlay: dict) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    tiny = yaml.safe_load((REPO / "tests" / "tiny_config.yaml").read_text())
    for key, value in overlay.items():
        tiny[key] = {**tiny.get(key, {}), **value}
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return work


def _demo_env(cluster: SlurmCluster, mammal_dir: Path) -> dict[str, str]:
    env = dict(cluster.env, MAMMAL_MOUSE_DIR=str(mammal_dir), OMP_NUM_THREADS="1")
    env.pop("SLURM_PARTITION", None)  # the plugin picks the default partition
    env.pop("SLURM_ACCOUNT", None)
    return env


# The tiny CPU model needs far less than the GPU default (16 GB); keeps the test within small CI
# machines. Always last on the command line: --set-resources takes every following word.
TRAIN_MEM = ["--set-resources", "train_synthetic:mem_mb=3000", "train_mouse_model:mem_mb=3000"]


def test_demo_dag_through_slurm_profile(slurm_cluster, tmp_path, mammal_dir):
    """The tiny demo DAG up to the fine-tuned model as SLURM jobs (21 jobs: body model, demo
    recording, preprocessing, synthetic shards, both trainings); the training rules (gpus: 1)
    ask for a GPU, all others not. Evaluation and report are left out: they add minutes of CPU
    work and no new kind of SLURM job (the local end-to-end test covers them)."""
    # gpus: 1 makes the training rules GPU rules (they still train on CPU here); fewer steps than
    # tests/tiny_config.yaml keep 23 SLURM jobs on 2 cores within a few minutes.
    short = {"gpus": 1, "steps": 2, "checkpoint_every": 2, "log_every": 1}
    work = _demo_workdir(tmp_path, {"train_synthetic": short, "train_mouse": short})
    n0 = len(slurm_cluster.sbatch_calls())
    res = snakemake(slurm_cluster, work, "results/train/main/mouse/checkpoint.pt", "-s", str(REPO / "Snakefile"), "--configfile", "tiny.yaml",
                    *TRAIN_MEM, env=_demo_env(slurm_cluster, mammal_dir), timeout=600)
    assert res.returncode == 0, _fail(res, work)
    for out in ("results/train/main/mouse/checkpoint.pt", "results/train/main/synthetic/checkpoint.pt",
                "results/shards/real/demo/chunk000.h5", "results/shards/synthetic/train_0000.h5"):
        assert (work / out).stat().st_size > 0, out
    assert load_checkpoint(work / "results/train/main/mouse/checkpoint.pt")["step"] == 2

    calls = calls_by_rule(slurm_cluster, n0)
    assert {"train_synthetic", "train_mouse_model", "demo_recording", "masks",
            "crop_shards"} <= set(calls)
    # every job of the DAG went through sbatch (none of these rules is a localrule)
    total = re.findall(r"(\d+) of (\d+) steps \(100%\) done", res.stderr)
    assert total and total[-1][0] == total[-1][1]
    assert sum(len(c) for c in calls.values()) == int(total[-1][1])
    for rule, rule_calls in calls.items():
        for args in rule_calls:
            if rule in ("train_synthetic", "train_mouse_model"):
                assert gpu_request(args) == ["--gpus=1"], (rule, args)
            else:
                assert gpu_request(args) == [], (rule, args)


def _steps(log_csv: Path) -> list[int]:
    with open(log_csv, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_training_cancelled_with_usr1_resumes_from_checkpoint(slurm_cluster, tmp_path, mammal_dir):
    """scancel --signal=USR1 a running train_synthetic job; the rerun continues from its checkpoint."""
    steps = 400
    work = _demo_workdir(tmp_path, {"train_synthetic": {"steps": steps, "checkpoint_every": 1000, "log_every": 1}})
    env = _demo_env(slurm_cluster, mammal_dir)
    target = "results/train/main/synthetic/checkpoint.pt"
    out_dir = work / "results/train/main/synthetic"
    cmd = [*SNAKEMAKE, "--profile", str(REPO / "profiles" / "slurm"), *FAST, target, "-s", str(REPO / "Snakefile"),
           "--configfile", "tiny.yaml", *TRAIN_MEM]
    n0 = len(slurm_cluster.sbatch_calls())
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "run1.err", "w"), text=True)
    try:
        # wait until training has logged a few steps, then signal its job like a preemption would
        deadline = time.monotonic() + 400
        job = None
        while time.monotonic() < deadline and proc.poll() is None:
            if (out_dir / "log.csv").exists() and len(_steps(out_dir / "log.csv")) >= 3:
                calls = calls_by_rule(slurm_cluster, n0).get("train_synthetic")
                running = slurm_cluster.run("squeue", "-h", "-t", "R", "-o", "%i %k").stdout.split("\n")
                job = next((ln.split()[0] for ln in running if "rule_train_synthetic" in ln), None)
                if calls and job:
                    break
            time.sleep(0.5)
        assert job, "train_synthetic never ran\n" + (tmp_path / "run1.err").read_text()[-4000:]
        # to the job steps (where the trainer runs), like sbatch --signal=USR1@120 before a time limit
        slurm_cluster.run("scancel", "--signal=USR1", job)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    assert rc != 0  # the job stopped early: Snakemake reports it failed
    assert not (work / target).exists()
    ckpts = sorted((out_dir / "checkpoints").glob("step_*.pt"))
    assert ckpts, "no checkpoint written on USR1\n" + "\n".join(
        p.read_text()[-3000:] for p in (work / "results/logs/train_synthetic").glob("*.log"))
    stopped_at = load_checkpoint(ckpts[-1])["step"]
    assert 3 <= stopped_at < steps
    log_text = (work / "results/logs/train_synthetic/main.log").read_text()
    assert f"stopping at step {stopped_at} (SIGUSR1)" in log_text, log_text[-3000:]

    # Rerun with the step count lowered to finish soon (a params change, so Snakemake reruns the
    # job): the trainer must continue from the saved step rather than start over.
    tiny = yaml.safe_load((work / "tiny.yaml").read_text())
    tiny["train_synthetic"]["steps"] = stopped_at + 3
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    res = snakemake(slurm_cluster, work, target, "-s", str(REPO / "Snakefile"), "--configfile", "tiny.yaml",
                    *TRAIN_MEM, env=env, timeout=300)
    assert res.returncode == 0, _fail(res, work)
    rerun_log = (work / "results/logs/train_synthetic/main.log").read_text()
    assert f"(step {stopped_at})" in rerun_log and "resumed from" in rerun_log, rerun_log[-3000:]
    assert load_checkpoint(work / target)["step"] == stopped_at + 3
    # the CSV ends with exactly the 3 new steps (earlier rows kept or not, never a restart from 1)
    logged = _steps(out_dir / "log.csv")
    assert logged[-3:] == [stopped_at + 1, stopped_at + 2, stopped_at + 3]
    assert logged in (list(range(1, stopped_at + 4)), list(range(stopped_at + 1, stopped_at + 4)))
    assert [r for r in logged if r > stopped_at] == logged[-3:]
