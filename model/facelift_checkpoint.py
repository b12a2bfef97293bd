"""Load FaceLift's released GS-LRM weights (spec: /work/shared/specs/facelift_gslrm_checkpoint.md).

How to call::

    from model.config import preset
    from model.gslrm import GSLRM
    from model.facelift_checkpoint import load_facelift_state_dict, load_facelift_model
    cfg = preset("facelift")
    model = GSLRM(cfg)
    model.load_state_dict(load_facelift_state_dict("ckpt_0000000000021125.pt", cfg), strict=True)
    # or: model = load_facelift_model("ckpt_0000000000021125.pt")

The file is never downloaded here: a user supplies it (Adobe Research License, noncommercial). Our
module names are FaceLift's, so the conversion only unwraps ``ckpt["model"]``, strips a DDP
``module.`` prefix, drops the VGG19 perceptual-loss weights (``loss_calculator.*``) and checks every
name and shape against ``GSLRM(cfg)``; a mismatch raises InputError naming the file and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from workflow_scripts.errors import InputError

from model.config import ModelConfig, preset
from model.gslrm import GSLRM

DROP_PREFIXES = ("loss_calculator.",)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of GSLRM(cfg)'s state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = GSLRM(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _read(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(path_or_dict, Mapping):
        return path_or_dict, "<state dict>"
    path = Path(path_or_dict)
    if not path.is_file():
        raise InputError(f"{path}: FaceLift checkpoint not found. Fix: download gslrm/ckpt_0000000000021125.pt from "
                         "HF wlyu/OpenFaceLift yourself (Adobe Research License) and pass its path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle with non-tensor objects, truncated file, ...
        raise InputError(f"{path}: cannot be read with torch.load(weights_only=True): {e}. "
                         "Fix: pass the original FaceLift .pt file (or a plain state dict).") from e
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a dict. Fix: pass a FaceLift checkpoint or state dict.")
    return obj, str(path)


def load_facelift_state_dict(path_or_dict: str | os.PathLike | Mapping[str, Any], cfg: ModelConfig) -> dict[str, Tensor]:
    """FaceLift checkpoint (file path, the whole checkpoint dict or its ``"model"`` state dict)
    -> a state dict that ``GSLRM(cfg).load_state_dict(..., strict=True)`` accepts (float32 tensors)."""
    obj, source = _read(path_or_dict)
    sd = obj.get("model", obj) if isinstance(obj.get("model", None), Mapping) else obj
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if k.startswith(DROP_PREFIXES):
            continue
        if not isinstance(v, Tensor):
            raise InputError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor. Fix: pass ckpt['model'].")
        out[k] = v.detach().to(torch.float32)
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(out))
    unexpected = sorted(set(out) - set(want))
    wrong = sorted(f"{k}: file {tuple(out[k].shape)} vs model {want[k]}" for k in set(want) & set(out)
                   if tuple(out[k].shape) != want[k])
    if missing or unexpected or wrong:
        def few(x: list[str]) -> str:
            return ", ".join(x[:5]) + (f" (+{len(x) - 5} more)" if len(x) > 5 else "")

        raise InputError(
            f"{source}: does not match the GS-LRM config (width={cfg.width}, depth={cfg.depth}, patch={cfg.patch_size}, "
            f"global={cfg.num_global_gaussians}). Missing: [{few(missing)}]; unexpected: [{few(unexpected)}]; "
            f"wrong shapes: [{few(wrong)}]. Fix: use preset('facelift') for FaceLift's released weights, or the "
            "config the checkpoint was trained with."
        )
    return out


def load_facelift_model(path_or_dict: str | os.PathLike | Mapping[str, Any], cfg: ModelConfig | None = None,
                        **overrides: Any) -> GSLRM:
    """GSLRM(cfg or preset("facelift", **overrides)) with FaceLift's weights loaded strictly, eval mode."""
    cfg = cfg if cfg is not None else preset("facelift", **overrides)
    model = GSLRM(cfg)
    model.load_state_dict(load_facelift_state_dict(path_or_dict, cfg), strict=True)
    return model.eval()
