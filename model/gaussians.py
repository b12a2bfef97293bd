"""The ``Gaussians`` container and the decoding of GS-LRM raw outputs (FaceLift spec section 4).

How to call::

    g = model(images, K, c2w)        # a Gaussians, batch B
    g.means, g.scales, g.quats, g.opacities, g.sh_dc   # see shapes below
    rgb = g.colors()                 # [B, N, 3] = max(0, SH_C0 * dc + 0.5)
    g0 = g.select(0)                 # batch of one
    g0 = g0.filter(g0.opacities[0] > 0.04)

All positions are in the **normalized world** frame (z up, see docs/conventions.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Zeroth-order real spherical-harmonic constant 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814


@dataclass
class Gaussians:
    """A batch of 3D Gaussians, all with the same count N.

    means: [B, N, 3] world positions.
    scales: [B, N, 3] world standard deviations along the local axes (linear, > 0).
    quats: [B, N, 4] rotation local->world as unit quaternions (w, x, y, z).
    opacities: [B, N] in (0, 1).
    sh_dc: [B, N, 3] raw degree-0 SH coefficients; colour = max(0, SH_C0 * sh_dc + 0.5).
    num_global: how many leading Gaussians (per batch element) are global (not pixel-aligned).
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    sh_dc: Tensor
    num_global: int = 0

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    def colors(self) -> Tensor:
        """[B, N, 3] RGB, >= 0 (no upper clamp before compositing, as FaceLift's rasteriser)."""
        return torch.clamp_min(SH_C0 * self.sh_dc + 0.5, 0.0)

    def _map(self, fn) -> "Gaussians":
        return Gaussians(fn(self.means), fn(self.scales), fn(self.quats), fn(self.opacities), fn(self.sh_dc),
                         self.num_global)

    def select(self, b: int) -> "Gaussians":
        """Batch element ``b`` as a batch of one ([1, N, ...])."""
        return self._map(lambda t: t[b : b + 1])

    def detach(self) -> "Gaussians":
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> "Gaussians":
        return self._map(lambda t: t.to(*args, **kwargs))

    def filter(self, mask: Tensor) -> "Gaussians":
        """Keep the Gaussians where ``mask`` is True.

        mask: [N] bool (applied to every batch element) or [1, N] for a batch of one. Keeping a
        different count per batch element cannot stay batched: ``select(b)`` first.
        """
        if mask.dim() == 2:
            if mask.shape[0] != 1 or self.batch_size != 1:
                raise ValueError("filter: a per-batch mask needs a batch of one; call select(b) first")
            mask = mask[0]
        if mask.shape != (self.num_gaussians,) or mask.dtype != torch.bool:
            raise ValueError(f"filter: mask must be bool [N={self.num_gaussians}], got {tuple(mask.shape)} {mask.dtype}")
        num_global = int(mask[: self.num_global].sum().item())
        out = self._map(lambda t: t[:, mask])
        out.num_global = num_global
        return out


def decode_gaussians(raw: Tensor, origins: Tensor, directions: Tensor, num_global: int, cfg) -> Gaussians:
    """Decode raw network outputs to Gaussians (FaceLift spec section 4).

    Args:
        raw: [B, N, 14] with N = num_global + P; channels xyz(0-2), SH DC(3-5), scale(6-8),
            quaternion w,x,y,z (9-12), opacity (13). Decoded in float32 (or float64) even under AMP.
        origins, directions: [B, P, 3] world ray origin / unit direction of each pixel-aligned
            Gaussian's pixel, in the same order as raw[:, num_global:].
        num_global: number of leading global Gaussians (xyz used raw as world position).
        cfg: ModelConfig (depth_half_range, depth_preact_bias, scale_bias, max_log_scale, opacity_bias).
    Returns:
        Gaussians with means [B,N,3] world, scales = exp(min(s + scale_bias, max_log_scale)),
        unit quats, opacities = sigmoid(o + opacity_bias), sh_dc raw.
    """
    dt = torch.float64 if raw.dtype == torch.float64 else torch.float32
    raw = raw.to(dt)
    g_xyz = raw[:, :num_global, 0:3]
    p = raw[:, num_global:]
    o, d = origins.to(dt), directions.to(dt)
    # depth along the ray, within +-depth_half_range of the ray's point nearest the origin
    t = torch.sigmoid(p[..., 0:3].mean(dim=-1, keepdim=True) + cfg.depth_preact_bias)
    depth = cfg.depth_half_range * (2.0 * t - 1.0) - (o * d).sum(dim=-1, keepdim=True)
    p_xyz = o + depth * d
    means = torch.cat([g_xyz, p_xyz], dim=1)
    scales = torch.exp(torch.clamp_max(raw[..., 6:9] + cfg.scale_bias, cfg.max_log_scale))
    quats = torch.nn.functional.normalize(raw[..., 9:13], dim=-1)
    opacities = torch.sigmoid(raw[..., 13] + cfg.opacity_bias)
    return Gaussians(means=means, scales=scales, quats=quats, opacities=opacities, sh_dc=raw[..., 3:6],
                     num_global=num_global)
