"""GS-LRM training loop: checkpoints, exact resume, preemption, DDP.

How to call::

    python -m model.train --config cfg.yaml [--set steps=1000 --set data.image_size=128]
    torchrun --nproc_per_node 4 -m model.train --config cfg.yaml          # one node, 4 GPUs
    run_training(config_dict, out_dir, init_checkpoint=None) -> Path       # Snakemake entry scripts

Outputs in ``out_dir``: ``checkpoints/step_{step:09d}.pt`` (every ``checkpoint_every`` steps, the
newest ``keep_checkpoints`` kept), ``checkpoint.pt`` (final, a hard link of the last step file),
``log.csv`` (step, every loss term, lr, grad_norm, samples_per_s, time_s, nonfinite_steps),
``tb/`` (TensorBoard), ``metrics.json`` (final figures). All are written atomically except the
growing CSV, which is rewritten atomically on resume and at the end.

Resume: a run starts from the newest ``checkpoints/step_*.pt`` in ``out_dir`` when there is one
(model, optimizer, scheduler, RNG states and data position are restored, so the loss curve
continues exactly as if never stopped); otherwise from ``init_checkpoint`` weights (the previous
stage or FaceLift weights) or from scratch.

Preemption (SLURM): SIGTERM or SIGUSR1 sets a flag; at the end of the current step a checkpoint
is written and ``train`` raises ``Preempted``; the CLI exits with ``PREEMPTED_EXIT_CODE`` = 75
(EX_TEMPFAIL, "try again"). Rerunning the same command resumes. ``time_limit_s`` does the same
before a wall-clock limit, ``stop_at_step`` at a given step. With SLURM send the signal early,
e.g. ``#SBATCH --signal=B:USR1@180`` (batch shell) or ``srun --signal=USR1@180`` (tasks).

Non-finite steps: a step whose loss or gradient norm is not finite is skipped (no update; it still
consumes its batch and advances the schedule, so resume stays aligned) and counted
(``nonfinite_steps`` in the log); ``max_consecutive_nonfinite`` in a row abort with RuntimeError.

DDP: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised (NCCL on CUDA, Gloo on
CPU), each rank reads its slice of every global batch (``model.data.MixedBatchSampler``; the
global batch is ``batch_size * world_size``) and only rank 0 writes logs and checkpoints.
Multi-node under SLURM (one task per node, each starting the local workers)::

    srun --nodes $SLURM_NNODES --ntasks-per-node 1 torchrun --nnodes $SLURM_NNODES \\
        --nproc_per_node $SLURM_GPUS_ON_NODE --rdzv_id $SLURM_JOB_ID --rdzv_backend c10d \\
        --rdzv_endpoint $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1):29500 \\
        -m model.train --config cfg.yaml

Precision: bf16 autocast for the network on CUDA (``bf16``), fp32 on CPU; Gaussians, rendering and
losses are fp32.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import math
import os
import signal
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from model.checkpoint import (checkpoint_path, latest_checkpoint, link_or_copy, list_checkpoints, load_checkpoint, model_state_from_file,
                              prune_checkpoints, restore_training_state, save_checkpoint, to_plain, unwrap)
from model.config import ModelConfig, preset
from model.data import DataConfig, build_loader
from model.gslrm import GSLRM
from model.renderer import render
from model.schedule import build_optimizer, warmup_cosine
from workflow_scripts.atomic import atomic_path, write_json, write_text
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

#: Exit status of a run stopped by SIGTERM/SIGUSR1/time limit after saving a checkpoint (EX_TEMPFAIL).
PREEMPTED_EXIT_CODE = 75


class Preempted(RuntimeError):
    """Raised by ``train`` after it saved a checkpoint because it was asked to stop; rerun to resume."""

    def __init__(self, checkpoint: Path | None, step: int, reason: str):
        super().__init__(f"training stopped at step {step} ({reason}); checkpoint {checkpoint}. Rerun to resume.")
        self.checkpoint, self.step, self.reason = checkpoint, step, reason


@dataclass
class TrainConfig:
    """One training stage. ``model`` overrides fields of the ``preset`` ModelConfig (image_size and
    num_input_views follow ``data`` unless overridden); ``losses`` holds ``model.losses.LossConfig``
    fields. ``gpus`` is read by launchers only. ``stop_at_step``/``time_limit_s``: stop like a
    preemption (checkpoint + ``Preempted``) at that step / after that many seconds of this run.
    """

    stage: str = "synthetic"
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    losses: dict[str, Any] = field(default_factory=dict)
    steps: int = 300
    batch_size: int = 2
    lr: float = 1e-3
    min_lr_ratio: float = 0.0
    warmup_steps: int = 20
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    init_checkpoint: str | None = None
    bf16: bool = True
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    out_dir: str = "results/train/default"
    device: str = "auto"
    render_backend: str = "auto"
    max_consecutive_nonfinite: int = 20
    stop_at_step: int | None = None
    time_limit_s: float | None = None
    gpus: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "train config") -> "TrainConfig":
        """Nested (``data: {...}``) or flat (config.yaml ``train_*`` sections: data fields at the
        top level) form; unknown keys -> InputError naming ``source``."""
        d = dict(d)
        data = dict(d.pop("data", None) or {})
        data_fields = {f.name for f in dataclasses.fields(DataConfig)}
        own = {f.name for f in dataclasses.fields(cls)}
        for k in list(d):
            if k in data_fields and k not in own:
                data[k] = d.pop(k)
        if "seed" in d and "seed" not in data:
            data["seed"] = d["seed"]
        unknown = sorted(set(d) - own)
        bad_data = sorted(set(data) - data_fields)
        if unknown or bad_data:
            raise InputError(f"{source}: unknown training setting(s) {unknown + ['data.' + k for k in bad_data]}. "
                             f"Fix: remove them or use one of {sorted(own | data_fields)}.")
        if "losses" in d and d["losses"] is None:
            d["losses"] = {}
        try:
            cfg = cls(**_coerce_floats(cls, d), data=DataConfig(**_coerce_floats(DataConfig, data)).validate(source))
        except TypeError as e:
            raise InputError(f"{source}: {e}. Fix: correct the training settings.") from e
        return cfg.validate(source)

    def validate(self, source: str = "train config") -> "TrainConfig":
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "max_consecutive_nonfinite"):
            if int(getattr(self, name)) <= 0:
                raise InputError(f"{source}: {name}={getattr(self, name)} must be positive. Fix: set it > 0.")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise InputError(f"{source}: lr must be > 0, warmup_steps and grad_clip >= 0. Fix: correct them.")
        self.model_config()
        self.loss_config(source=f"{source} (losses)")
        return self

    def model_config(self) -> ModelConfig:
        over = {"image_size": self.data.image_size, "num_input_views": self.data.num_input_views,
                "activation_checkpointing": self.activation_checkpointing, **self.model}
        return preset(self.preset, source="train config (preset/model)", **over)

    def loss_config(self, source: str = "train config (losses)"):
        """``model.losses.LossConfig`` from ``losses`` (unknown keys -> InputError)."""
        from model.losses import LossConfig

        return LossConfig.from_dict(dict(self.losses), source=source)

    def to_plain(self) -> dict[str, Any]:
        return to_plain(self)


# --------------------------------------------------------------------------------------------
# distributed + device helpers


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available() or device_name.startswith("cuda")
    if world > 1:
        d = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if want_cuda:
            torch.cuda.set_device(d.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        device = torch.device(f"cuda:{d.local_rank}") if want_cuda else torch.device("cpu")
        return d, device
    if device_name == "auto":
        return _Dist(), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _Dist(), torch.device(device_name)


def _all_reduce(x: torch.Tensor, d: _Dist, op=None) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(x, op=op or dist.ReduceOp.SUM)
    return x


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; handlers are installed for the duration of ``train`` only."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def __call__(self, signum, frame) -> None:
        self.reason = signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator["_StopFlag"]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        old = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


# --------------------------------------------------------------------------------------------
# logging


class _CsvLog:
    """log.csv: header from the first row; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.fields: list[str] | None = None
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                self.rows = [r for r in reader if int(r["step"]) <= resume_step]
        self._rewrite()

    def _text(self) -> str:
        buf = io.StringIO()
        if self.fields:
            w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        return buf.getvalue()

    def _rewrite(self) -> None:
        write_text(self.path, self._text())

    def add(self, row: dict[str, Any]) -> None:
        row = {k: (f"{v:.9g}" if isinstance(v, float) else str(v)) for k, v in row.items()}
        if self.fields is None:
            self.fields = list(row)
            self.rows.append(row)
            self._rewrite()
            return
        new = [k for k in row if k not in self.fields]
        self.rows.append(row)
        if new:  # a loss term appeared (e.g. first real batch): widen the header
            self.fields += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        self._rewrite()


# --------------------------------------------------------------------------------------------
# one step


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _slice_gaussians(g, sl: slice):
    """The batch elements ``sl`` of a ``Gaussians`` (every tensor field sliced on dim 0)."""
    return dataclasses.replace(g, **{f.name: getattr(g, f.name)[sl] for f in dataclasses.fields(g)
                                     if torch.is_tensor(getattr(g, f.name))})


def _render(g, batch: dict[str, torch.Tensor], prefix: str, cfg: TrainConfig):
    B, M = batch[f"{prefix}target_K"].shape[:2]
    H, W = batch[f"{prefix}target_images"].shape[-2:]
    bg = batch["background"][:, None].expand(B, M, 3)
    return render(g, batch[f"{prefix}target_K"].float(), batch[f"{prefix}target_c2w"].float(), W, H, bg,
                  backend=cfg.render_backend)


def _forward(model, images: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, cfg: TrainConfig, device: torch.device):
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.bf16 and device.type == "cuda") else nullcontext()
    with amp:
        return model(images, K, c2w)


def _targets(batch: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    t = {"images": batch[f"{prefix}target_images"], "masks": batch[f"{prefix}target_masks"],
         "background": batch["background"]}
    if f"{prefix}target_depth" in batch:
        t["depth"] = batch[f"{prefix}target_depth"]
    return t


def compute_step_losses(model, batch: dict[str, torch.Tensor], cfg: TrainConfig, loss_cfg,
                        device: torch.device, step: int | None = None, vgg=None) -> tuple[dict[str, torch.Tensor], Any]:
    """Forward + render + ``model.losses.compute_losses``; returns (loss dict with 'total', render).

    Raises FloatingPointError (from compute_losses) when a loss term is not finite."""
    from model.losses import compute_losses

    keys = ("input_images", "input_K", "input_c2w")
    if "neighbor_input_images" in batch and getattr(loss_cfg, "temporal", 0.0) > 0:
        # One forward over [current; neighbour] frames: DDP allows one forward per backward.
        B = batch["input_images"].shape[0]
        g = _forward(model, *(torch.cat([batch[k], batch[f"neighbor_{k}"]]) for k in keys), cfg, device)
        out = _render(_slice_gaussians(g, slice(0, B)), batch, "", cfg)
        neighbor = _render(_slice_gaussians(g, slice(B, 2 * B)), batch, "neighbor_", cfg)
    else:
        out = _render(_forward(model, *(batch[k] for k in keys), cfg, device), batch, "", cfg)
        neighbor = None
    losses = compute_losses(out, _targets(batch), loss_cfg, neighbor_render=neighbor, step=step, vgg=vgg)
    return losses, out


# --------------------------------------------------------------------------------------------
# the loop


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = torch.mean((pred.detach().float().clamp(0, 1) - target.float()) ** 2).item()
    return float(10 * math.log10(1.0 / max(mse, 1e-10)))


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) one training stage; returns the final checkpoint ``out_dir/checkpoint.pt``.

    Raises ``Preempted`` after saving a checkpoint when stopped by a signal / time limit /
    ``stop_at_step``; RuntimeError after ``max_consecutive_nonfinite`` non-finite steps in a row.
    """
    cfg.validate()
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "checkpoints"
    final_path = out_dir / "checkpoint.pt"
    d, device = _init_distributed(cfg.device)
    try:
        with _StopFlag().installed() as stop:
            return _train(cfg, d, device, out_dir, ckpt_dir, final_path, stop)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


# Settings a run may be resumed under with other values: how often things are written, how long
# a job may run, and ``steps`` (raising it extends a finished or preempted run from its last
# checkpoint, the schedule following the new length from there; every other change starts afresh).
_NOT_IDENTITY = {"out_dir", "checkpoint_every", "log_every", "keep_checkpoints", "stop_at_step", "time_limit_s",
                 "num_workers", "gpus", "steps"}


def _file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap content fingerprint of a (possibly large) file: size + sha256 of its first and last MiB."""
    import hashlib

    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(p, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def run_identity(cfg: TrainConfig) -> str:
    """A hash of everything that determines a training run's result: the settings (minus
    bookkeeping such as checkpoint_every) and the content of the init checkpoint and shards."""
    import hashlib
    import json

    plain = {k: v for k, v in to_plain(cfg).items() if k not in _NOT_IDENTITY}
    data = to_plain(cfg.data)
    plain["data"] = {k: v for k, v in data.items() if k != "num_workers"}
    files = [cfg.init_checkpoint] if cfg.init_checkpoint else []
    for kind in ("synthetic", "real"):
        files += [str(p) for p in (data.get(kind) or [])]
    plain["files"] = {str(f): _file_fingerprint(f) for f in files if Path(f).is_file()}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def _train(cfg: TrainConfig, d: _Dist, device: torch.device, out_dir: Path, ckpt_dir: Path, final_path: Path,
           stop: _StopFlag) -> Path:
    t_start = time.time()
    mcfg = cfg.model_config()
    loss_cfg = cfg.loss_config()
    plain_cfg = {**cfg.to_plain(), "model": mcfg.to_dict(), "model_overrides": to_plain(cfg.model),
                 "run_identity": run_identity(cfg)}

    _seed_everything(cfg.seed)
    model = GSLRM(mcfg).to(device)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=True if device.type == "cuda" else None)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)

    resume = latest_checkpoint(ckpt_dir)
    if resume is not None and d.main:
        previous = load_checkpoint(resume, map_location="cpu").get("config", {}).get("run_identity")
        if previous != plain_cfg["run_identity"]:
            # Snakemake reruns a training job when its settings or inputs changed: the step
            # checkpoints of the earlier run must not be resumed then (only a preempted run of the
            # same settings is). They are intermediate files of a run whose output is gone.
            stale = [p for _, p in list_checkpoints(ckpt_dir)]
            log.warning("checkpoints in %s come from other settings or inputs; starting afresh (removing %d)",
                        ckpt_dir, len(stale))
            for p in stale:
                p.unlink()
    if d.enabled and dist.is_initialized():
        dist.barrier()
    resume = latest_checkpoint(ckpt_dir)
    step, nonfinite_total, metrics_prev = 0, 0, {}
    if resume is not None:
        ck = load_checkpoint(resume, map_location="cpu")
        restore_training_state(ck, model, optimizer, scheduler, rng=True)
        step = int(ck["step"])
        if int(ck["data_position"]) != step:
            raise InputError(f"{resume}: data position {ck['data_position']} differs from step {step}. Fix: delete it.")
        metrics_prev = dict(ck.get("metrics", {}))
        nonfinite_total = int(metrics_prev.get("nonfinite_steps", 0))
        log.info("resumed from %s (step %d)", resume, step)
    elif cfg.init_checkpoint:
        state = model_state_from_file(cfg.init_checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise InputError(f"{cfg.init_checkpoint}: weights do not fit preset {cfg.preset!r} + {cfg.model} ({e}). "
                             "Fix: use the same model settings as the run that wrote it.") from e
        log.info("initialised weights from %s", cfg.init_checkpoint)

    if step >= cfg.steps:  # already finished: make sure the final outputs exist
        if d.main:
            if not final_path.exists():
                link_or_copy(resume, final_path)
        return final_path

    fwd_model: torch.nn.Module = model
    if d.enabled:
        fwd_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        fwd_model = torch.compile(fwd_model)
    model.train()

    loader = build_loader(cfg.data, cfg.batch_size, start=step, rank=d.rank, world_size=d.world_size,
                          pin_memory=device.type == "cuda")
    csv_log = _CsvLog(out_dir / "log.csv", resume_step=step) if d.main else None
    tb = None
    if d.main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out_dir / "tb"), purge_step=step if step > 0 else None)

    vgg = None
    if getattr(loss_cfg, "perceptual", 0.0) > 0:
        from model.losses import load_vgg19

        if not loss_cfg.perceptual_weights:
            raise InputError(f"{cfg.out_dir}: losses.perceptual > 0 needs losses.perceptual_weights (a local VGG19 file). "
                             "Fix: set it or set losses.perceptual: 0.")
        vgg = load_vgg19(loss_cfg.perceptual_weights).to(device)
    consecutive_bad, last = 0, {}
    samples_since, t_since = 0, time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=not d.main, desc=f"train {cfg.stage}", file=sys.stderr)
    it = iter(loader)

    def save(at_step: int, metrics: dict[str, Any]) -> Path | None:
        path = None
        if d.main:
            path = save_checkpoint(checkpoint_path(ckpt_dir, at_step), model=model, optimizer=optimizer,
                                   scheduler=scheduler, step=at_step, data_position=at_step, config=plain_cfg,
                                   metrics=metrics)
            prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        if d.enabled:
            dist.barrier()
        return path or checkpoint_path(ckpt_dir, at_step)

    try:
        while step < cfg.steps:
            batch = _to_device(next(it), device)
            try:
                losses, out = compute_step_losses(fwd_model, batch, cfg, loss_cfg, device, step=step, vgg=vgg)
            except FloatingPointError as e:  # a non-finite loss term: skip like a NaN total
                log.warning("%s", e)
                losses, out = {"total": torch.tensor(float("nan"), device=device)}, None
            total = losses["total"]
            finite = torch.isfinite(total.detach()).float().reshape(1)
            finite = _all_reduce(finite, d, dist.ReduceOp.MIN if d.enabled else None)
            optimizer.zero_grad(set_to_none=True)
            grad_norm = float("nan")
            ok = bool(finite.item() > 0)
            if ok:
                total.backward()
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                grad_norm = float(gn)
                ok = math.isfinite(grad_norm)  # identical on all ranks: DDP already averaged the grads
            if ok:
                optimizer.step()
                consecutive_bad = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                consecutive_bad += 1
                nonfinite_total += 1
                log.warning("step %d: non-finite loss/gradient, update skipped (%d in a row)", step, consecutive_bad)
                if consecutive_bad >= cfg.max_consecutive_nonfinite:
                    raise RuntimeError(
                        f"{consecutive_bad} consecutive non-finite training steps (last at step {step}); aborting. "
                        f"Fix: lower lr ({cfg.lr}), check the data, or resume from an earlier checkpoint in {ckpt_dir}.")
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():
                # A skipped first step triggers "lr_scheduler.step() before optimizer.step()"; the
                # schedule must still advance with the step counter (resume alignment).
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()
            step += 1
            samples_since += cfg.batch_size * d.world_size
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                vals = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
                vals = _all_reduce(vals, d) / d.world_size
                now = time.time()
                last = {"step": step, **{k: float(v) for k, v in zip(losses.keys(), vals.tolist())},
                        "psnr": _psnr(out.rgb, batch["target_images"]) if out is not None else float("nan"), "lr": lr, "grad_norm": grad_norm,
                        "samples_per_s": samples_since / max(now - t_since, 1e-9),
                        "time_s": now - t_start, "nonfinite_steps": nonfinite_total}
                samples_since, t_since = 0, now
                if d.main:
                    csv_log.add(last)
                    for k, v in last.items():
                        if k != "step" and isinstance(v, float) and math.isfinite(v):
                            tb.add_scalar(f"{cfg.stage}/{k}", v, step)
                    bar.set_postfix(loss=f"{last['total']:.4f}", psnr=f"{last['psnr']:.1f}")

            # Agree on stopping (signals may reach ranks at different times).
            reason = stop.reason
            if cfg.stop_at_step is not None and step >= cfg.stop_at_step and step < cfg.steps:
                reason = reason or "stop_at_step"
            if cfg.time_limit_s is not None and time.time() - t_start > cfg.time_limit_s:
                reason = reason or "time_limit"
            flag = _all_reduce(torch.tensor([1.0 if reason else 0.0], device=device), d, dist.ReduceOp.MAX if d.enabled else None)
            if flag.item() > 0 and step < cfg.steps:
                metrics = {**last, "nonfinite_steps": nonfinite_total}
                path = save(step, metrics)
                log.warning("stopping at step %d (%s); checkpoint %s; exit code %d resumes on rerun",
                            step, reason or "peer rank", path, PREEMPTED_EXIT_CODE)
                raise Preempted(path, step, reason or "peer rank")
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                save(step, {**last, "nonfinite_steps": nonfinite_total})
    finally:
        bar.close()
        if tb is not None:
            tb.close()
        if csv_log is not None:
            csv_log.close()

    metrics = {**last, "nonfinite_steps": nonfinite_total, "steps": step, "stage": cfg.stage,
               "world_size": d.world_size, "device": str(device), "wall_time_s": time.time() - t_start}
    path = save(step, metrics)
    if d.main:
        link_or_copy(path, final_path)
        write_json(out_dir / "metrics.json", {k: v for k, v in to_plain(metrics).items()
                                               if not (isinstance(v, float) and not math.isfinite(v))})
    if d.enabled:
        dist.barrier()
    return final_path


# --------------------------------------------------------------------------------------------
# entry points


def run_training(config_dict: dict[str, Any] | None = None, out_dir: str | os.PathLike | None = None,
                 init_checkpoint: str | os.PathLike | None = None, *, stage: str | None = None,
                 settings: dict[str, Any] | None = None, shards: dict[str, list[str]] | None = None,
                 seed: int | None = None, holdout_fraction: float | None = None,
                 checkpoint_out: str | os.PathLike | None = None, log_csv_out: str | os.PathLike | None = None,
                 source: str = "train config") -> Path:
    """Train from a config dict into ``out_dir``; returns the final checkpoint path.

    ``config_dict`` (alias ``settings``): the flat config.yaml ``train_*`` section (or the nested
    TrainConfig form), optionally with ``synthetic``/``real`` shard lists, ``seed``, ``stage``,
    ``holdout_fraction``. The keyword arguments, when given, override it (``shards`` =
    ``{"synthetic": [...], "real": [...]}``). ``init_checkpoint`` overrides the dict's.
    The run writes ``out_dir/checkpoint.pt`` and ``out_dir/log.csv``; ``checkpoint_out`` /
    ``log_csv_out`` (Snakemake outputs) receive them too when they name other paths.
    Raises ``Preempted`` (rerun to resume) when stopped by SIGTERM/SIGUSR1.
    """
    if out_dir is None:
        raise InputError(f"{source}: run_training needs out_dir. Fix: pass the stage's output folder.")
    d = dict(config_dict if config_dict is not None else settings or {})
    for key, value in (("stage", stage), ("seed", seed), ("holdout_fraction", holdout_fraction)):
        if value is not None:
            d[key] = value
    for kind, paths in (shards or {}).items():
        d[kind] = [str(p) for p in paths]
    d["out_dir"] = str(out_dir)
    if init_checkpoint is not None:
        d["init_checkpoint"] = str(init_checkpoint)
    final = train(TrainConfig.from_dict(d, source=source))
    publish_outputs(out_dir, checkpoint_out, log_csv_out)
    return final


def publish_outputs(out_dir: str | os.PathLike, checkpoint_out: str | os.PathLike | None = None,
                    log_csv_out: str | os.PathLike | None = None) -> None:
    """Make a finished run's ``out_dir/checkpoint.pt`` and ``out_dir/log.csv`` also appear at the
    paths a caller (a Snakemake rule) names for them, when those are other paths."""
    for produced, wanted in ((Path(out_dir) / "checkpoint.pt", checkpoint_out), (Path(out_dir) / "log.csv", log_csv_out)):
        if wanted is not None and Path(wanted).resolve() != produced.resolve():
            link_or_copy(produced, wanted)


def _parse_value(text: str) -> Any:
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads "2e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _coerce_floats(cls, d: dict[str, Any]) -> dict[str, Any]:
    """Strings such as "2e-4" (YAML 1.1 reads them as str) -> float for float-typed fields."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = dict(d)
    for k, v in d.items():
        if isinstance(v, str) and types.get(k, "").startswith("float"):
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key.sub=value`` strings (values parsed as YAML) applied to a nested dict (in place)."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value. Fix: e.g. --set steps=1000")
        key, value = item.split("=", 1)
        node = d
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return d


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="YAML file with a TrainConfig (nested or flat form)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. data.image_size=128")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with open(args.config) as f:
            d = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{args.config}: cannot read the YAML config ({e}). Fix: give a readable YAML file.") from e
    apply_overrides(d, args.set)
    cfg = TrainConfig.from_dict(d, source=args.config)
    try:
        path = train(cfg)
    except Preempted as e:
        log.warning("%s", e)
        return PREEMPTED_EXIT_CODE
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
