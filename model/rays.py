"""Per-pixel rays and FaceLift's 9-channel pixel-aligned input ("custom Plücker").

How to call::

    from model.rays import pixel_rays, ray_input
    o, d = pixel_rays(K, c2w, H, W)        # [B,V,H,W,3] each, world frame
    x = ray_input(images, K, c2w)          # [B,V,9,H,W]

Conventions (docs/conventions.md): ``K`` [B,V,3,3] in pixels, may have skew; ``c2w`` [B,V,4,4] is
OpenCV **camera-to-world** (x right, y down, z forward). The ray of pixel (row r, column c) passes
through the continuous pixel position (c + 0.5, r + 0.5) (pixel centres at +0.5, FaceLift and gsplat
convention). Without skew the camera-space direction is ((c+0.5-cx)/fx, (r+0.5-cy)/fy, 1), exactly
FaceLift's; with skew it is K^-1 (c+0.5, r+0.5, 1).
"""
from __future__ import annotations

import torch
from torch import Tensor


def pixel_rays(K: Tensor, c2w: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """World-space ray origins and unit directions of every pixel centre.

    Args:
        K: [..., 3, 3] intrinsics in pixels.
        c2w: [..., 4, 4] OpenCV camera-to-world.
        height, width: image size in pixels.
    Returns:
        origins [..., H, W, 3] (the camera centre, translation column of c2w) and
        directions [..., H, W, 3] (unit length, world frame), same dtype/device as c2w.
    """
    dtype, device = c2w.dtype, c2w.device
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    cols = torch.arange(width, dtype=dtype, device=device) + 0.5
    v, u = torch.meshgrid(rows, cols, indexing="ij")  # [H, W]
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # [H, W, 3] homogeneous pixel centres
    K_inv = torch.linalg.inv(K.to(dtype))  # handles skew exactly
    # camera-space directions: K^-1 p, normalised (as FaceLift, before rotating)
    d_cam = torch.einsum("...ij,hwj->...hwi", K_inv, pix)
    d_cam = d_cam / d_cam.norm(dim=-1, keepdim=True)
    R = c2w[..., :3, :3]
    d = torch.einsum("...ij,...hwj->...hwi", R, d_cam)
    d = d / d.norm(dim=-1, keepdim=True)  # FaceLift normalises again after the rotation
    o = c2w[..., None, None, :3, 3].expand_as(d)
    return o, d


def nearest_points_to_origin(origins: Tensor, directions: Tensor) -> Tensor:
    """o + (-o.d) d: the point of each ray closest to the world origin. Shapes [..., 3]."""
    t = -(origins * directions).sum(dim=-1, keepdim=True)
    return origins + t * directions


def input_from_rays(images: Tensor, origins: Tensor, directions: Tensor) -> Tensor:
    """The 9 channels from precomputed rays.

    images [B,V,3,H,W] in [0,1]; origins, directions [B,V,H,W,3] world (from ``pixel_rays``).
    Returns [B,V,9,H,W]: RGB*2-1, d, o + (-o.d) d (dtype of ``directions``).
    """
    p = nearest_points_to_origin(origins, directions)
    rays = torch.cat([directions, p], dim=-1).permute(0, 1, 4, 2, 3)  # [B, V, 6, H, W]
    return torch.cat([images.to(rays.dtype) * 2.0 - 1.0, rays], dim=2)


def ray_input(images: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """FaceLift's 9-channel network input.

    Args:
        images: [B, V, 3, H, W] RGB in [0, 1].
        K: [B, V, 3, 3] pixels.
        c2w: [B, V, 4, 4] OpenCV camera-to-world.
    Returns:
        [B, V, 9, H, W]: channels 0-2 RGB*2-1, 3-5 world ray direction d, 6-8 o + (-o.d) d.
        float32 (float64 when c2w is float64; never half precision).
    """
    H, W = images.shape[-2:]
    dt = torch.float64 if c2w.dtype == torch.float64 else torch.float32
    o, d = pixel_rays(K.to(dt), c2w.to(dt), H, W)
    return input_from_rays(images, o, d)
