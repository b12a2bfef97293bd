"""The command that starts training: plain Python, single-node torchrun, or multi-node srun+torchrun.

Three cases, chosen from the process count and SLURM's environment:

1. one process (CPU, or one GPU), one node -> ``python -m model.train ARGS``
2. N > 1 processes on one node           -> ``python -m torch.distributed.run --standalone
   --nnodes 1 --nproc_per_node N -m model.train ARGS`` (a private c10d rendezvous on a free port)
3. a SLURM allocation with SLURM_NNODES > 1 -> ``srun --overlap --nodes NN --ntasks-per-node 1 python -m
   torch.distributed.run --nnodes NN --nproc_per_node G --rdzv_id $SLURM_JOB_ID --rdzv_backend
   c10d --rdzv_endpoint MASTER:PORT -m model.train ARGS``, one torchrun per node; MASTER is the
   first host of ``scontrol show hostnames $SLURM_JOB_NODELIST``, G is SLURM_GPUS_ON_NODE.

Preemption: torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT by default; the commands built
here add SIGUSR1/SIGUSR2 (``--signals-to-handle``) so a ``--signal=USR1@120`` from SLURM reaches
every training process, and give the workers ``shutdown_timeout_s`` to write their checkpoint
before torchrun kills them. :func:`run` forwards the same signals from the calling process.

No global state: the environment is passed in (``env``), the host-name lookup is injectable.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

from workflow_scripts.errors import InputError

Mode = Literal["single", "standalone", "multinode"]
DEFAULT_RDZV_PORT = 29500
# signals torchrun forwards to its workers (torch >= 2.6 supports --signals-to-handle)
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


@dataclass(frozen=True)
class LaunchConfig:
    """How to start training.

    nproc_per_node: worker processes per node (= GPUs per node; >1 on CPU uses gloo, for tests).
        In a multi-node SLURM allocation SLURM_GPUS_ON_NODE, when set, takes precedence.
    module: the Python module run by every worker (``python -m module args``).
    python: interpreter for the workers and torchrun (default: this one).
    rdzv_port: TCP port of the c10d rendezvous on the first node (multi-node only).
    shutdown_timeout_s: seconds torchrun waits after forwarding a signal before SIGKILL.
    srun_extra: extra ``srun`` arguments for the multi-node case (e.g. ``--cpu-bind=none``).
    """

    nproc_per_node: int = 1
    module: str = "model.train"
    python: str = field(default_factory=lambda: sys.executable)
    rdzv_port: int = DEFAULT_RDZV_PORT
    shutdown_timeout_s: int = 90
    srun_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchPlan:
    """The chosen case and its argv (``command[0]`` is an executable, no shell involved)."""

    mode: Mode
    nnodes: int
    nproc_per_node: int
    command: list[str]

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def shell(self) -> str:
        """The command as one shell-quoted line (for logs and docs)."""
        import shlex

        return shlex.join(self.command)


def slurm_hostnames(nodelist: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Expand a SLURM node list (``node[01-03],gpu7``) with ``scontrol show hostnames``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, env=dict(env) if env is not None else None)
    except (OSError, subprocess.CalledProcessError) as e:
        raise InputError(f"SLURM_JOB_NODELIST={nodelist!r}: `scontrol show hostnames` failed ({e}). "
                         "Fix: run inside a SLURM allocation with scontrol on PATH.") from e
    hosts = out.stdout.split()
    if not hosts:
        raise InputError(f"SLURM_JOB_NODELIST={nodelist!r}: no host names. Fix: run inside a SLURM allocation.")
    return hosts


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    # SLURM_GPUS_ON_NODE is an integer; SLURM_NNODES too. Anything else is a broken environment.
    try:
        return int(raw)
    except ValueError as e:
        raise InputError(f"environment variable {name}={raw!r} is not an integer. "
                         f"Fix: unset it or run inside a proper SLURM allocation.") from e


def _torchrun(cfg: LaunchConfig, nproc: int) -> list[str]:
    return [cfg.python, "-m", "torch.distributed.run",
            "--signals-to-handle", ",".join(FORWARDED_SIGNALS),
            "--shutdown-timeout", str(cfg.shutdown_timeout_s),
            "--nproc_per_node", str(nproc)]


def plan_launch(train_args: Sequence[str], cfg: LaunchConfig = LaunchConfig(),
                env: Mapping[str, str] | None = None,
                hostnames: Callable[[str], list[str]] | None = None) -> LaunchPlan:
    """Pick the launch case for ``cfg`` in environment ``env`` (default ``os.environ``).

    train_args: arguments after ``-m module`` (passed through unchanged).
    hostnames: node-list expander (default :func:`slurm_hostnames`; tests inject a fake).
    Multi-node is chosen only inside a SLURM job (SLURM_JOB_ID set) with SLURM_NNODES > 1.
    """
    env = os.environ if env is None else env
    if cfg.nproc_per_node < 1:
        raise InputError(f"nproc_per_node={cfg.nproc_per_node}: need at least 1 process per node. "
                         "Fix: set train_*.gpus to 0 (CPU) or a positive GPU count in config.yaml.")
    nnodes = _int_env(env, "SLURM_NNODES", 1) if env.get("SLURM_JOB_ID") else 1
    args = list(train_args)
    if nnodes > 1:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise InputError("SLURM_NNODES > 1 but SLURM_JOB_NODELIST is not set. "
                             "Fix: start training from inside the SLURM batch job.")
        hosts = (hostnames or (lambda nl: slurm_hostnames(nl, env)))(nodelist)
        # all nodes of one allocation have the same GPU count; SLURM tells us how many
        nproc = _int_env(env, "SLURM_GPUS_ON_NODE", cfg.nproc_per_node) or cfg.nproc_per_node
        # --overlap: Snakemake's jobstep already runs this rule inside an `srun -n1` step that
        # holds the allocation; without it the nested step would wait for those resources forever.
        command = (["srun", "--overlap", "--nodes", str(nnodes), "--ntasks", str(nnodes),
                    "--ntasks-per-node", "1", "--kill-on-bad-exit=1", *cfg.srun_extra]
                   + _torchrun(cfg, nproc)
                   + ["--nnodes", str(nnodes), "--rdzv_id", env.get("SLURM_JOB_ID", "0"),
                      "--rdzv_backend", "c10d", "--rdzv_endpoint", f"{hosts[0]}:{cfg.rdzv_port}",
                      "-m", cfg.module, *args])
        return LaunchPlan("multinode", nnodes, nproc, command)
    if cfg.nproc_per_node > 1:
        command = (_torchrun(cfg, cfg.nproc_per_node)
                   + ["--standalone", "--nnodes", "1", "-m", cfg.module, *args])
        return LaunchPlan("standalone", 1, cfg.nproc_per_node, command)
    return LaunchPlan("single", 1, 1, [cfg.python, "-m", cfg.module, *args])


def run(plan: LaunchPlan, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
        stdout=None, stderr=None) -> int:
    """Run ``plan.command``; forward SIGTERM/SIGINT/SIGUSR1/SIGUSR2 to it; return its exit code.

    Forwarding matters when only this process is signalled (``kill PID``, ``--signal=B:USR1``):
    the child (the trainer, or torchrun which passes it on) gets the signal and can checkpoint.
    A negative return value -N means the child died from signal N.
    """
    proc = subprocess.Popen(plan.command, env=dict(env) if env is not None else None, cwd=cwd,
                            stdout=stdout, stderr=stderr)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    # signal handlers can only be installed from the main thread; elsewhere we just wait
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in forwarded} if in_main else {}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def launch_training(config_dict: Mapping[str, object], out_dir: str | os.PathLike, nproc_per_node: int,
                    init_checkpoint: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                    cfg: LaunchConfig | None = None, stdout=None, stderr=None) -> int:
    """Run ``model.train`` on ``nproc_per_node`` processes (or across a SLURM allocation's nodes).

    config_dict: the training settings in the form ``model.train.run_training`` takes (flat
    config.yaml ``train_*`` section plus shard lists, seed, stage). They are written to
    ``{out_dir}/launch_config.yaml`` (atomically) and passed as ``--config``, so every worker
    reads the same file. Returns the exit code: 0 done; non-zero otherwise. A single process stopped
    by a signal after checkpointing returns 75 (``model.train.PREEMPTED_EXIT_CODE``); under
    torchrun the code is torchrun's own (1). Either way rerunning resumes from the checkpoint.
    """
    import yaml

    from workflow_scripts.atomic import write_text

    d = dict(config_dict)
    d["out_dir"] = str(out_dir)
    if init_checkpoint is not None:
        d["init_checkpoint"] = str(init_checkpoint)
    cfg_path = os.path.join(str(out_dir), "launch_config.yaml")
    write_text(cfg_path, yaml.safe_dump(d, sort_keys=False))
    base = cfg or LaunchConfig()
    launch_cfg = LaunchConfig(nproc_per_node=nproc_per_node, module=base.module, python=base.python,
                              rdzv_port=base.rdzv_port, shutdown_timeout_s=base.shutdown_timeout_s,
                              srun_extra=base.srun_extra)
    plan = plan_launch(["--config", cfg_path], launch_cfg, env=env)
    return run(plan, env=env, stdout=stdout, stderr=stderr)
