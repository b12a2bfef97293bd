"""Training checkpoints: atomic save, safe load, latest-of-directory, keep-last-K.

A checkpoint is one ``torch.save`` file ``{out_dir}/checkpoints/step_{step:09d}.pt`` holding only
tensors and primitive containers, so it loads with ``torch.load(weights_only=True)`` (no
pickled code runs when a file is read)::

    {"format": "mouse-facelift-ckpt", "version": 1,
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict,
     "step": int,                 # optimizer steps done (including skipped non-finite steps)
     "data_position": int,        # global batches consumed; the sampler resumes here
     "rng": {"torch_cpu": uint8 tensor, "torch_cuda": [uint8 tensors], "numpy": {...}, "python": [...]},
     "config": dict,              # the TrainConfig as plain data
     "metrics": dict}             # last logged values, counters

It is written to a temporary sibling and renamed (``workflow_scripts.atomic.atomic_path``), so a
job killed while saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError

FORMAT, VERSION = "mouse-facelift-ckpt", 1
_NAME = re.compile(r"^step_(\d{9,})\.pt$")


def checkpoint_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{int(step):09d}.pt"


def to_plain(obj: Any) -> Any:
    """Dataclasses/Paths/tuples/NumPy scalars -> dicts/str/lists/Python scalars (weights_only-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG the training loop touches, as tensors / lists."""
    np_state = np.random.get_state(legacy=False)
    py = random.getstate()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"], np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": [py[0], list(py[1]), py[2]],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    if state.get("torch_cuda") and torch.cuda.is_available():
        cuda = state["torch_cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.cpu() for t in cuda])
        else:  # different GPU count: restore the devices both runs have
            for i, t in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(t.cpu(), i)
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    p = state["python"]
    random.setstate((int(p[0]), tuple(int(x) for x in p[1]), p[2]))


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any | None, step: int, data_position: int, config: Any = None,
                    metrics: dict[str, Any] | None = None, rng: dict[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint (schema in the module docstring). ``model`` may be DDP-wrapped
    or compiled; the unwrapped module's state_dict is stored. Returns ``path``."""
    model = unwrap(model)
    obj = {
        "format": FORMAT, "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "step": int(step), "data_position": int(data_position),
        "rng": capture_rng_state() if rng is None else rng,
        "config": to_plain(config) if config is not None else {},
        "metrics": to_plain(metrics or {}),
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def restore_training_state(ckpt: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                           scheduler: Any | None, rng: bool = True) -> None:
    """Load model/optimizer/scheduler (and the global RNGs) from a loaded checkpoint dict.

    Build the optimizer *and* the scheduler first, then call this: constructing a LambdaLR
    rewrites the optimizer's lr, so the optimizer state must be loaded after it.
    """
    unwrap(model).load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if rng and ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``; InputError naming the file if it is not a readable checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found. Fix: give the path of an existing .pt file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError for bad files
        raise InputError(f"{path}: cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: {e}). "
                         "Fix: use a checkpoint written by model.train (or a plain state_dict); delete a truncated file.") from e


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the ``step_*.pt`` files in ``ckpt_dir``, ascending; temporary files ignored."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint in ``ckpt_dir`` or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune_checkpoints(ckpt_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step checkpoints (keep <= 0 keeps all). Returns the deleted."""
    if keep <= 0:
        return []
    found = list_checkpoints(ckpt_dir)
    gone = [p for _, p in found[:-keep]]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically make ``dst`` a hard link of ``src`` (a copy where links are not supported)."""
    import shutil

    dst = Path(dst)
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst


def model_state_from_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from a training checkpoint (``ckpt["model"]``), a FaceLift checkpoint (same key;
    its frozen VGG ``loss_calculator.*`` tensors dropped) or a plain state_dict."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: holds no model state_dict (expected key 'model' or a dict of tensors). "
                         "Fix: point init_checkpoint at a model.train checkpoint or FaceLift weights.")
    return {k: v for k, v in state.items() if not k.startswith("loss_calculator.")}
