"""Gaussian .ply export/import in the standard 3D Gaussian Splatting layout.

One vertex element, float32, binary little endian, properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

- ``x, y, z``: Gaussian centre, **normalized world** (z up, docs/conventions.md).
- ``nx, ny, nz``: zeros (the layout has them; viewers ignore them).
- ``f_dc_*``: raw degree-0 SH coefficients (colour = max(0, SH_C0 * f_dc + 0.5)); no higher-order
  ``f_rest_*`` (degree 0 only, as FaceLift).
- ``opacity``: pre-sigmoid logit of the opacity.
- ``scale_*``: natural log of the world standard deviations.
- ``rot_*``: unit quaternion w, x, y, z (local -> world).

This is what graphdeco's ``save_ply`` and FaceLift's export write, so common splat viewers
(SuperSplat, antimatter15/splat, gsplat's viewer) open it. A comment line records
``num_global`` so that :func:`load_ply` restores it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from model.gaussians import Gaussians
from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError

PLY_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_OPACITY_EPS = 1e-7  # keeps the logit finite for opacities that rounded to 0 or 1


@dataclasses.dataclass
class PlyFilter:
    """Optional post-filters applied before export; ``None`` switches a rule off.

    FaceLift's inference (``PlyFilter.facelift()``) applies all four, in its normalized world
    (z up, object at the origin, cameras at radius 2.7, which is also ours):

    min_opacity: keep opacity > min_opacity (FaceLift: 0.04) - drops invisible Gaussians.
    max_scale_below: drop Gaussians whose largest scale >= this value AND z <= 0 (FaceLift: 0.1;
        large blobs under a head are background; for a mouse, z <= 0 is the lower body, so this is
        off by default).
    floater_xy_z: (xy, z): drop Gaussians with |x| > xy and |y| > xy and z < z (FaceLift: 0.6, -0.6).
    crop_box: ((xmin, ymin, zmin), (xmax, ymax, zmax)) keep inside (FaceLift: +-0.91 in x, y and
        +-1 in z).
    """

    min_opacity: float | None = 0.04
    max_scale_below: float | None = None
    floater_xy_z: tuple[float, float] | None = None
    crop_box: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    @classmethod
    def facelift(cls) -> "PlyFilter":
        return cls(min_opacity=0.04, max_scale_below=0.1, floater_xy_z=(0.6, -0.6),
                   crop_box=((-0.91, -0.91, -1.0), (0.91, 0.91, 1.0)))

    def keep(self, means: np.ndarray, scales: np.ndarray, opacities: np.ndarray) -> np.ndarray:
        """means [N, 3], scales [N, 3], opacities [N] -> bool [N] of Gaussians to keep."""
        keep = np.ones(len(means), dtype=bool)
        x, y, z = means[:, 0], means[:, 1], means[:, 2]
        if self.min_opacity is not None:
            keep &= opacities > self.min_opacity
        if self.max_scale_below is not None:
            keep &= ~((scales.max(axis=1) >= self.max_scale_below) & (z <= 0))
        if self.floater_xy_z is not None:
            xy, zz = self.floater_xy_z
            keep &= ~((np.abs(x) > xy) & (np.abs(y) > xy) & (z < zz))
        if self.crop_box is not None:
            lo, hi = np.asarray(self.crop_box[0]), np.asarray(self.crop_box[1])
            keep &= np.all((means >= lo) & (means <= hi), axis=1)
        return keep


def _one_sample(gaussians: Gaussians, index: int) -> dict[str, np.ndarray]:
    """Sample ``index`` of a batch as float64 NumPy arrays (means [N,3], ..., opacities [N])."""
    if gaussians.means.dim() != 3:
        raise ValueError(f"Gaussians must be batched [B, N, 3], got means {tuple(gaussians.means.shape)}")
    g = gaussians.select(index).detach().to("cpu", torch.float64)
    return {"means": g.means[0].numpy(), "scales": g.scales[0].numpy(), "quats": g.quats[0].numpy(),
            "opacities": g.opacities[0].numpy(), "sh_dc": g.sh_dc[0].numpy()}


def save_ply(path: str | os.PathLike, gaussians: Gaussians, filter: PlyFilter | None = None, index: int = 0) -> int:
    """Write batch element ``index`` of ``gaussians`` (means etc. [B, N, ...], normalized world) as a 3DGS .ply.

    ``filter`` (default: none, lossless) drops Gaussians first, see :class:`PlyFilter`. Written
    atomically. Returns the number of Gaussians written.
    """
    a = _one_sample(gaussians, index)
    keep = np.ones(len(a["means"]), bool) if filter is None else filter.keep(a["means"], a["scales"], a["opacities"])
    num_global = int(keep[: gaussians.num_global].sum())
    a = {k: v[keep] for k, v in a.items()}
    n = len(a["means"])
    op = np.clip(a["opacities"], _OPACITY_EPS, 1 - _OPACITY_EPS)
    quats = a["quats"] / np.linalg.norm(a["quats"], axis=1, keepdims=True)
    cols = {
        "x": a["means"][:, 0], "y": a["means"][:, 1], "z": a["means"][:, 2],
        "nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n),
        **{f"f_dc_{i}": a["sh_dc"][:, i] for i in range(3)},
        "opacity": np.log(op) - np.log1p(-op),
        **{f"scale_{i}": np.log(a["scales"][:, i]) for i in range(3)},
        **{f"rot_{i}": quats[:, i] for i in range(4)},
    }
    arr = np.empty(n, dtype=[(f, "<f4") for f in PLY_FIELDS])
    for f in PLY_FIELDS:
        arr[f] = cols[f]
    el = PlyElement.describe(arr, "vertex")
    ply = PlyData([el], text=False, byte_order="<",
                  comments=["mouse-facelift 3D Gaussians, normalized world (z up)", f"num_global {num_global}"])
    with atomic_path(path) as tmp:
        ply.write(str(tmp))
    return n


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS .ply (layout above) into a batch of one: means [1, N, 3] (float32), etc.

    Activations are undone: opacities = sigmoid(opacity), scales = exp(scale_*), quats normalized.
    """
    path = Path(path)
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
    except Exception as e:  # noqa: BLE001 - any parse error is a bad input file
        raise InputError(f"{path}: not a readable PLY with a 'vertex' element ({e}). Fix: re-export it with model.ply.save_ply.") from e
    missing = [f for f in PLY_FIELDS if f not in v.dtype.names and f not in ("nx", "ny", "nz")]
    if missing:
        raise InputError(f"{path}: missing 3D Gaussian properties {missing}. Fix: export in the 3DGS layout (model.ply.save_ply).")
    col = lambda *names: torch.from_numpy(np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=-1))  # noqa: E731
    quats = torch.nn.functional.normalize(col("rot_0", "rot_1", "rot_2", "rot_3"), dim=-1)
    num_global = 0
    for c in ply.comments:
        m = re.fullmatch(r"num_global (\d+)", c.strip())
        if m:
            num_global = int(m.group(1))
    return Gaussians(means=col("x", "y", "z")[None], scales=torch.exp(col("scale_0", "scale_1", "scale_2"))[None],
                     quats=quats[None], opacities=torch.sigmoid(col("opacity")[:, 0])[None],
                     sh_dc=col("f_dc_0", "f_dc_1", "f_dc_2")[None], num_global=num_global)
