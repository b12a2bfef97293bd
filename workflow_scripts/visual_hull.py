"""Visual hull of the mouse from its masks, and the hull's surface centroid (the 3D centre estimate).

Why: a mask centroid is not the projection of the mouse's 3D centre (perspective, and the body is
not symmetric about the viewing ray), so triangulating 2D centroids lands 2-5 mm away from the
centre of the body surface (demo recording, docs/preprocessing_bars.md). Carving the space that
projects inside every camera's mask recovers the 3D shape to within its concavities, and the
centroid of that shape's surface is an estimate of the body surface centroid
(``body_model.center_of_mass``, the project's definition of the mouse's centre) that uses every
mask pixel, not one point per view.

How: a coarse voxel grid (``coarse`` cells per axis) around the triangulated centre, sized from the
masks' bounding boxes, carved camera by camera (a voxel survives while it has missed at most
``max_misses`` masks); then a fine grid (``fine`` cells along the hull's longest side, isotropic
voxels) over the coarse hull's bounding box, carved again. The centre is the mean of the fine
hull's boundary voxels (occupied voxels with an empty 6-neighbour). A voxel is tested at its
centre: projected with the full camera model (distortion included) to continuous corner-origin
pixels ``(u, v)`` and looked up at mask pixel ``(floor(v), floor(u))``; outside the image counts
as a miss. Cameras: ``R``, ``t`` world-to-camera (OpenCV), world units of the calibration.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from workflow_scripts.cameras import Camera


@dataclasses.dataclass(frozen=True)
class Hull:
    """A carved voxel grid.

    occupied: bool [nx, ny, nz], index (i, j, k) <-> world point ``origin + (i, j, k) * voxel``.
    origin: [3] world position of voxel (0, 0, 0)'s centre. voxel: edge length (world units).
    """

    occupied: np.ndarray
    origin: np.ndarray
    voxel: float

    def points(self, which: np.ndarray | None = None) -> np.ndarray:
        """World positions [N, 3] of the voxels selected by bool array ``which`` (default: occupied)."""
        idx = np.argwhere(self.occupied if which is None else which)
        return self.origin + idx * self.voxel

    def boundary(self) -> np.ndarray:
        """bool [nx, ny, nz]: occupied voxels with at least one empty (or out-of-grid) 6-neighbour."""
        p = np.pad(self.occupied, 1)
        interior = (p[2:, 1:-1, 1:-1] & p[:-2, 1:-1, 1:-1] & p[1:-1, 2:, 1:-1] & p[1:-1, :-2, 1:-1]
                    & p[1:-1, 1:-1, 2:] & p[1:-1, 1:-1, :-2])
        return self.occupied & ~interior

    def touches_grid_border(self) -> bool:
        o = self.occupied
        return bool(o[0].any() or o[-1].any() or o[:, 0].any() or o[:, -1].any() or o[:, :, 0].any() or o[:, :, -1].any())

    def surface_centroid(self) -> np.ndarray:
        """[3] mean of the boundary voxels' centres (NaN for an empty hull)."""
        b = self.boundary()
        return self.points(b).mean(axis=0) if b.any() else np.full(3, np.nan)


def project_in_front(camera: Camera, X: np.ndarray) -> np.ndarray:
    """:meth:`Camera.project` of world points X [N, 3] (continuous corner-origin pixels [N, 2],
    distortion and skew included), NaN for points behind the camera."""
    uv = camera.project(X)
    uv[camera.to_camera(X)[:, 2] <= 1e-9] = np.nan
    return uv


def _inside(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """bool [N]: pixel (floor(v), floor(u)) of ``mask`` [H, W] is set; False outside / NaN."""
    H, W = mask.shape
    ok = np.all(np.isfinite(uv), axis=-1)
    u = np.floor(np.where(ok, uv[:, 0], -1)).astype(np.int64)
    v = np.floor(np.where(ok, uv[:, 1], -1)).astype(np.int64)
    ok &= (u >= 0) & (v >= 0) & (u < W) & (v < H)
    out = np.zeros(len(uv), dtype=bool)
    out[ok] = mask[v[ok], u[ok]] > 0
    return out


def carve(cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], origin: np.ndarray, voxel: float,
          shape: tuple[int, int, int], max_misses: int = 0) -> Hull:
    """Carve the grid ``origin + (i, j, k) * voxel`` (``shape`` cells) with every camera whose mask
    is given (None = that camera does not vote). Cameras are applied in turn to the surviving
    voxels only, so each costs less than the one before."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    pts = origin + grid * voxel
    misses = np.zeros(len(pts), dtype=np.int32)
    alive = np.arange(len(pts))
    for cam, m in zip(cameras, masks):
        if m is None:
            continue
        hit = _inside(m, project_in_front(cam, pts[alive]))
        misses[alive[~hit]] += 1
        alive = alive[misses[alive] <= max_misses]
        if len(alive) == 0:
            break
    occ = np.zeros(len(pts), dtype=bool)
    occ[alive] = True
    return Hull(occupied=occ.reshape(shape), origin=np.asarray(origin, dtype=np.float64), voxel=float(voxel))


def initial_half_size(cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], center: np.ndarray, margin: float = 0.65) -> float:
    """Half the edge of a cube around ``center`` that holds the mouse: ``margin`` x the largest
    mask bounding-box side, back-projected to the centre's depth (pixels x z / f), over cameras."""
    sizes = []
    for cam, m in zip(cameras, masks):
        if m is None:
            continue
        _, _, w, h = cv2.boundingRect(np.asarray(m, dtype=np.uint8))  # box of the nonzero pixels
        z = float((cam.R @ center + cam.t)[2])
        f = 0.5 * (cam.K[0, 0] + cam.K[1, 1])
        if w > 0 and z > 0:
            sizes.append(max(w, h) * z / f)
    return margin * max(sizes) if sizes else float("nan")


def hull_center(cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], center: np.ndarray,
                coarse: int = 32, fine: int = 64, max_misses: int = 0, max_grow: int = 2) -> tuple[np.ndarray, Hull]:
    """The hull's surface centroid [3] (NaN if the hull is empty) and the fine hull.

    Args:
        cameras: C cameras (R, t world-to-camera).
        masks: C masks [H, W] (nonzero = mouse) or None for cameras without a valid mask this frame.
        center: [3] starting point (e.g. the triangulated mask centroids), world units.
        coarse / fine: cells per axis of the coarse cube / along the longest side of the fine box.
        max_misses: masks a voxel may fall outside of and still count (0 = strict intersection).
        max_grow: times the coarse cube may grow (x1.5) when the hull touches its border.
    """
    center = np.asarray(center, dtype=np.float64)
    half = initial_half_size(cameras, masks, center)
    if not np.isfinite(half) or half <= 0:
        return np.full(3, np.nan), Hull(np.zeros((1, 1, 1), bool), center, 1.0)
    for _ in range(max_grow + 1):
        voxel = 2 * half / coarse
        hull = carve(cameras, masks, center - half + voxel / 2, voxel, (coarse,) * 3, max_misses)
        if not hull.touches_grid_border():
            break
        half *= 1.5
    if not hull.occupied.any():
        return np.full(3, np.nan), hull
    idx = np.argwhere(hull.occupied)
    lo = hull.origin + (idx.min(0) - 1) * hull.voxel - hull.voxel / 2  # one coarse cell of margin
    hi = hull.origin + (idx.max(0) + 1) * hull.voxel + hull.voxel / 2
    fine_voxel = float((hi - lo).max()) / fine
    shape = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / fine_voxel), 1))
    fine_hull = carve(cameras, masks, lo + fine_voxel / 2, fine_voxel, shape, max_misses)
    return fine_hull.surface_centroid(), fine_hull
