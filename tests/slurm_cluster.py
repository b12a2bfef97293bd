"""A private single-node SLURM cluster for tests: munged + slurmctld + slurmd in a temp folder.

Nothing system-wide is touched: the cluster has its own munge key and socket, its own
``slurm.conf`` (clients find it through ``SLURM_CONF`` in :attr:`SlurmCluster.env`), its own
ports, state and spool folders. One node named after ``hostname -s`` with the machine's CPUs and
memory, ``gpus`` fake GPUs (``gres.conf``: one ``File`` each, symlinks to ``/dev/null``) so GPU jobs can be scheduled
on a CPU machine, and no accounting (``accounting_storage/none``): ``sacct`` does not work, job
status comes from ``squeue`` (``MinJobAge=600`` keeps finished jobs visible for 10 minutes).

Teardown cancels the cluster's jobs, stops exactly the daemons started here by PID (never by
name) and removes the folder.

Usage (pytest)::

    from tests.slurm_cluster import slurm_cluster  # noqa: F401  (module-scoped fixture)

    def test_x(slurm_cluster):
        slurm_cluster.run("sbatch", "--wrap", "true")
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
INSTALL_HINT = "install them with `bash scripts/install_slurm.sh` (Debian: apt-get install -y slurm-wlm munge)"


def missing_binaries() -> list[str]:
    """Names of the SLURM/MUNGE programs not found on PATH (or in /usr/sbin)."""
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def require_slurm() -> None:
    """Fail (in CI, where CI=true) or skip (locally) when slurm-wlm/munge are not installed."""
    missing = missing_binaries()
    if not missing:
        return
    msg = f"SLURM/MUNGE programs not found: {', '.join(missing)}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + " (CI must install them: .ci/run calls scripts/install_slurm.sh)")
    pytest.skip(msg)


def _which(name: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    assert found, name
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machine() -> tuple[int, int]:
    """(CPUs usable by this process, MemTotal in MB)."""
    cpus = len(os.sched_getaffinity(0))
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return cpus, mem_kb // 1024


@dataclass
class SlurmCluster:
    """A running single-node cluster. ``env`` is os.environ plus SLURM_CONF for client commands."""

    root: Path
    node: str
    cpus: int
    real_memory_mb: int
    gpus: int
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def sbatch_calls(self) -> list[list[str]]:
        """Arguments of every sbatch call made through this cluster's PATH, in order."""
        files = sorted((self.root / "sbatch_calls").glob("*.json"),
                       key=lambda p: int(p.name.split("_")[0]))
        return [json.loads(p.read_text()) for p in files]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; returns the completed process (text)."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def node_state(self) -> str:
        out = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%t", check=False)
        return out.stdout.strip()

    def job_ids(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i", check=False)
        return [j for j in out.stdout.split() if j]

    def active_job_ids(self) -> list[str]:
        """Jobs not yet finished (squeue keeps finished ones for MinJobAge)."""
        out = self.run("squeue", "-h", "-t", "PD,R,CG,CF,S,RQ,RS,RF,SO,ST", "-o", "%i", check=False)
        return [j for j in out.stdout.split() if j]

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` parsed into key -> value (values may contain no spaces)."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def logs(self) -> str:
        """Tail of every daemon log, for failure messages."""
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / "log" / name
            if p.exists():
                parts.append(f"--- {p} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until the node is idle (or mixed/allocated: anything schedulable)."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}\n{self.logs()}")
            state = self.node_state()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.node} not idle after {timeout}s (state {state!r})\n{self.logs()}")

    def cancel_all(self, timeout: float = 60) -> None:
        """Cancel every job of this cluster and wait until none is pending/running."""
        ids = self.active_job_ids()
        if ids:
            self.run("scancel", "--full", *ids, check=False)
        deadline = time.monotonic() + timeout
        while self.active_job_ids() and time.monotonic() < deadline:
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel jobs, stop the daemons started here (by PID, in reverse order), remove files."""
        try:
            if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
                self.cancel_all()
        finally:
            for name in reversed(list(self.procs)):
                p = self.procs[name]
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(timeout=10)
            shutil.rmtree(self.root, ignore_errors=True)


def _write_config(root: Path, node: str, cpus: int, mem_mb: int, gpus: int,
                  ctld_port: int, slurmd_port: int) -> None:
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    etc = root / "etc"
    conf = f"""\
# Private single-node test cluster (tests/slurm_cluster.py). No accounting: status via squeue.
ClusterName=mftest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / 'munge' / 'munge.socket'}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
PlugStackConfig={etc / 'plugstack.conf'}
# no cgroups in containers: track job processes by /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
ReturnToService=2
# finished jobs stay visible to squeue for 10 min (>= 3x the first status-check wait)
MinJobAge=600
DefMemPerCPU=1000
# seconds between SIGTERM and SIGKILL when a job is cancelled or times out
KillWait=15
InactiveLimit=0
# trust the node line below even if slurmd measures slightly different hardware
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    (etc / "slurm.conf").write_text(conf)
    # Fake GPUs: schedulable GRES without devices (CPU-only CI machines).
    # One File per GPU is required (Count must match, names must differ) and each must be a
    # device: distinct symlinks to /dev/null.
    (root / "dev").mkdir(exist_ok=True)
    for i in range(gpus):
        (root / "dev" / f"fakegpu{i}").symlink_to("/dev/null")
    (etc / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={node} Name=gpu Count={gpus} File={root / 'dev'}/fakegpu[0-{gpus - 1}]\n")
    (etc / "plugstack.conf").write_text("")


def _write_wrappers(root: Path, conf: Path) -> None:
    """``bin/srun`` and ``bin/sbatch`` wrappers, first on the cluster's PATH.

    srun: Snakemake's jobstep executor drops every SLURM_* variable (SLURM_CONF too) before it
    calls ``srun`` inside the job; a real cluster has /etc/slurm/slurm.conf, ours is private, so
    the wrapper puts SLURM_CONF back. sbatch: records each call's arguments (a JSON list per file
    in ``sbatch_calls/``) so tests can check what was requested, then runs the real one.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = root / "sbatch_calls"
    calls.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text(f"#!/bin/sh\nexport SLURM_CONF={conf}\nexec {_which('srun')} \"$@\"\n")
    # one file per call (the plugin submits from two threads: appends to one file could interleave)
    record = ("import json, os, sys, time; "
              f"open(os.path.join({str(calls)!r}, f'{{time.time_ns()}}_{{os.getpid()}}.json'), 'w')"
              ".write(json.dumps(sys.argv[1:]))")
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\nexport SLURM_CONF={conf}\n"
        f"{sys.executable} -c \"{record}\" \"$@\"\n"
        f"exec {_which('sbatch')} \"$@\"\n")
    for name in ("srun", "sbatch"):
        (bin_dir / name).chmod(0o755)


def start_cluster(gpus: int = 2, timeout: float = 90) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in a fresh temp folder; return once the node is idle.

    The caller owns the result and must call :meth:`SlurmCluster.stop`.
    """
    # Short path under /tmp: the munge socket path must stay under the 108-byte UNIX limit.
    root = Path(tempfile.mkdtemp(prefix="mfslurm-"))
    for sub in ("etc", "munge", "state", "spool", "run", "log"):
        (root / sub).mkdir(mode=0o700)
    node = socket.gethostname().split(".")[0]
    cpus, mem_total = _machine()
    # leave room for the OS; slurmd would drain a node that claims more memory than it has
    mem_mb = max(1000, int(mem_total * 0.9))
    _write_config(root, node, cpus, mem_mb, gpus, _free_port(), _free_port())
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)

    conf_path = root / "etc" / "slurm.conf"
    _write_wrappers(root, conf_path)
    env = dict(os.environ, SLURM_CONF=str(conf_path),
               PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    for var in [v for v in env if v.startswith(("SLURM_JOB", "SLURM_STEP", "SBATCH_"))]:
        env.pop(var)  # a test run inside a SLURM job must not talk to the outer job
    cluster = SlurmCluster(root=root, node=node, cpus=cpus, real_memory_mb=mem_mb, gpus=gpus, env=env)
    logs = root / "log"
    try:
        cluster.procs["munged"] = subprocess.Popen(
            [_which("munged"), "--foreground", "--force", f"--key-file={key}",
             f"--socket={root / 'munge' / 'munge.socket'}", f"--pid-file={root / 'run' / 'munged.pid'}",
             f"--seed-file={root / 'munge' / 'munged.seed'}", f"--log-file={logs / 'munged.log'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(logs / "munged.err", "w"))
        sock = root / "munge" / "munge.socket"
        deadline = time.monotonic() + 20
        while not sock.exists():
            if cluster.procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start\n{(logs / 'munged.err').read_text()}\n{cluster.logs()}")
            time.sleep(0.1)
        # -D: stay in the foreground so the PID we hold is the daemon's; -c / -i: fresh state.
        cluster.procs["slurmctld"] = subprocess.Popen(
            [_which("slurmctld"), "-D", "-c", "-i", "-f", str(cluster.conf)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(logs / "slurmctld.err", "w"))
        cluster.procs["slurmd"] = subprocess.Popen(
            [_which("slurmd"), "-D", "-N", node, "-f", str(cluster.conf)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(logs / "slurmd.err", "w"))
        cluster.wait_idle(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node cluster with 2 fake GPUs, shared by the tests of one module."""
    require_slurm()
    cluster = start_cluster(gpus=2)
    try:
        yield cluster
    finally:
        cluster.stop()
