"""CUDA backend: gsplat 1.5.3 ``gsplat.rasterization`` ("classic" 3DGS), same call and output as render_torch.

How to call (usually through ``model.renderer.render(..., backend="gsplat")``)::

    out = render_gsplat(gaussians, K, c2w, width, height, background=(1, 1, 1))

gsplat is imported lazily (it is installed on GPU machines only: ``pip install .[gpu]``).
Conversions: ``c2w`` [B,M,4,4] OpenCV camera-to-world -> gsplat ``viewmats`` = world-to-camera;
colours = max(0, SH_C0 dc + 0.5) passed as post-activation RGB (``sh_degree=None``, identical to
degree 0); render_mode "RGB+D" (accumulated depth) so that both the expected depth
(= D / max(alpha, 1e-10), gsplat's "ED") and the accumulated depth are returned; the background is
composited here (rgb + (1 - alpha) bg), which is what gsplat's ``backgrounds`` does.
gsplat ignores the skew K[0, 1]; a K with skew raises (use the torch backend).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from model.gaussians import Gaussians
from model.render_torch import EPS2D, c2w_to_w2c
from model.renderer import RenderOutput, background_tensor


def _import_gsplat():
    try:
        import gsplat  # noqa: PLC0415  (lazy: CUDA machines only)
    except ImportError as e:  # pragma: no cover - exercised on machines without gsplat
        raise ImportError("render backend 'gsplat' needs gsplat 1.5.3 on a CUDA machine (pip install '.[gpu]'); "
                          "use backend='torch' otherwise") from e
    return gsplat


def render_gsplat(gaussians: Gaussians, K: Tensor, c2w: Tensor, width: int, height: int,
                  background: Sequence[float] | Tensor = (1.0, 1.0, 1.0), near: float = 0.01,
                  far: float = 100.0) -> RenderOutput:
    """Render ``gaussians`` (batch B) into K [B,M,3,3] (pixels), c2w [B,M,4,4] (OpenCV camera-to-world).

    Returns RenderOutput: rgb [B,M,3,H,W], alpha, depth (expected camera z), depth_acc [B,M,1,H,W], float32.
    """
    gsplat = _import_gsplat()
    if not gaussians.means.is_cuda:
        raise ValueError("render backend 'gsplat' needs CUDA tensors; use backend='torch' on CPU")
    if (K[..., 0, 1].abs() > 1e-6 * K[..., 0, 0].abs()).any():
        raise ValueError("render backend 'gsplat' ignores the skew K[0,1]; use backend='torch' for skewed intrinsics")
    B, M = K.shape[:2]
    dt = torch.float32
    bg = background_tensor(background, B, M, dt, gaussians.means.device)
    viewmats = c2w_to_w2c(c2w.to(dt))
    colors = gaussians.colors().to(dt)
    outs, alphas = [], []
    for b in range(B):  # one call per batch element: works with and without gsplat's batch dims
        rc, ra, _ = gsplat.rasterization(
            means=gaussians.means[b].to(dt), quats=gaussians.quats[b].to(dt), scales=gaussians.scales[b].to(dt),
            opacities=gaussians.opacities[b].to(dt), colors=colors[b], viewmats=viewmats[b].contiguous(),
            Ks=K[b].to(dt).contiguous(), width=width, height=height, near_plane=near, far_plane=far,
            eps2d=EPS2D, sh_degree=None, render_mode="RGB+D", rasterize_mode="classic",
        )  # rc [M, H, W, 4] (rgb, accumulated depth), ra [M, H, W, 1]
        outs.append(rc)
        alphas.append(ra)
    rc = torch.stack(outs).permute(0, 1, 4, 2, 3)  # [B, M, 4, H, W]
    alpha = torch.stack(alphas).permute(0, 1, 4, 2, 3)
    rgb = rc[:, :, :3] + (1.0 - alpha) * bg[..., None, None]
    depth_acc = rc[:, :, 3:4]
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth_acc / torch.clamp_min(alpha, 1e-10), depth_acc=depth_acc)
