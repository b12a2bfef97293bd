"""One call to render Gaussians, whatever the backend.

How to call::

    from model.renderer import render
    out = render(gaussians, K, c2w, width=64, height=64, background=(1.0, 1.0, 1.0))
    out.rgb    # [B, M, 3, H, W]  composited over the background
    out.alpha  # [B, M, 1, H, W]  accumulated opacity (1 - final transmittance)
    out.depth  # [B, M, 1, H, W]  expected camera-z depth, sum(w z) / alpha (0 where alpha = 0)
    out.depth_acc  # [B, M, 1, H, W] accumulated camera-z depth sum(w z) (not normalized)

``K`` [B, M, 3, 3] in pixels (pixel centres at +0.5); ``c2w`` [B, M, 4, 4] OpenCV
**camera-to-world** of the M target cameras of each batch element; the Gaussians (batch B) are in
the same world frame. ``backend``: "torch" (model/render_torch.py, CPU or GPU, pure PyTorch
autograd), "gsplat" (model/render_gsplat.py, CUDA only, gsplat 1.5.3), "auto" = gsplat when the
tensors are on CUDA and gsplat imports, else torch. Both backends follow gsplat's "classic" 3DGS
rules (EWA + 0.3 px low-pass, alpha clamp 0.999, skip alpha < 1/255, stop at T <= 1e-4) and agree.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from model.gaussians import Gaussians


@dataclass
class RenderOutput:
    """rgb [B,M,3,H,W]; alpha, depth (expected = depth_acc / alpha), depth_acc [B,M,1,H,W]."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    depth_acc: Tensor


def background_tensor(background: Sequence[float] | Tensor, B: int, M: int, dtype, device) -> Tensor:
    """[3] or [B, M, 3] background -> [B, M, 3] tensor."""
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.shape == (3,):
        bg = bg.expand(B, M, 3)
    if bg.shape != (B, M, 3):
        raise ValueError(f"render: background must be [3] or [B={B}, M={M}, 3], got {tuple(bg.shape)}")
    return bg


def gsplat_available() -> bool:
    return importlib.util.find_spec("gsplat") is not None


def render(
    gaussians: Gaussians,
    K: Tensor,
    c2w: Tensor,
    width: int,
    height: int,
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
    backend: str = "auto",
    near: float = 0.01,
    far: float = 100.0,
) -> RenderOutput:
    """Render every batch element's Gaussians into its M cameras (see the module docstring)."""
    B = gaussians.batch_size
    if K.dim() != 4 or K.shape[0] != B or K.shape[-2:] != (3, 3) or c2w.shape != (*K.shape[:2], 4, 4):
        raise ValueError(f"render: K must be [B={B},M,3,3] and c2w [B,M,4,4]; got {tuple(K.shape)}, {tuple(c2w.shape)}")
    if backend == "auto":
        backend = "gsplat" if gaussians.means.is_cuda and gsplat_available() else "torch"
    if backend == "torch":
        from model.render_torch import render_torch

        return render_torch(gaussians, K, c2w, width, height, background, near=near, far=far)
    if backend == "gsplat":
        from model.render_gsplat import render_gsplat

        return render_gsplat(gaussians, K, c2w, width, height, background, near=near, far=far)
    raise ValueError(f"render: unknown backend {backend!r}; use 'auto', 'torch' or 'gsplat'")
