"""Multi-view triangulation: weighted linear (DLT) solve with outlier-camera rejection.

Conventions (docs/conventions.md): cameras are ``workflow_scripts.cameras.Camera`` with ``R``, ``t``
**world-to-camera**; pixel coordinates are continuous with the image corner at (0, 0). The solve
works on undistorted *normalized* coordinates ``x_n = (x_cam / z_cam)`` so lens distortion is
removed exactly (``cameras.undistort_normalized``) before the linear step.

Each camera contributes the two DLT rows ``(x R_3 - R_1) X = t_1 - x t_3`` and
``(y R_3 - R_2) X = t_2 - y t_3``. Their residual equals ``depth * normalized error``, so rows are
rescaled by ``weight * focal / depth`` (depth from the previous solve, two passes) to make the
least-squares weights act on (approximately) pixel errors.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from workflow_scripts.cameras import Camera, distort_normalized, undistort_normalized
from workflow_scripts.errors import InputError


@dataclasses.dataclass(frozen=True)
class CameraRig:
    """The cameras stacked into arrays for vectorized projection (C cameras).

    Attributes: names [C]; K [C, 3, 3]; dist [C, 5]; R [C, 3, 3] and t [C, 3] world-to-camera.
    """

    names: tuple[str, ...]
    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray

    @classmethod
    def from_cameras(cls, cameras: "Sequence[Camera] | CameraRig") -> "CameraRig":
        if isinstance(cameras, CameraRig):
            return cameras
        return cls(
            names=tuple(c.name for c in cameras), K=np.stack([c.K for c in cameras]), dist=np.stack([c.dist for c in cameras]),
            R=np.stack([c.R for c in cameras]), t=np.stack([c.t for c in cameras]),
        )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def focal(self) -> np.ndarray:
        """[C] mean focal length in pixels (to express normalized errors in pixels)."""
        return 0.5 * (self.K[:, 0, 0] + self.K[:, 1, 1])

    def project(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One world point X [3] -> (pixels [C, 2] with distortion, depth [C] = z_cam)."""
        xc = np.einsum("cij,j->ci", self.R, X) + self.t
        z = xc[:, 2]
        xn = xc[:, :2] / z[:, None]
        k1, k2, p1, p2, k3 = self.dist.T
        x, y = xn[:, 0], xn[:, 1]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        uvw = np.einsum("cij,cj->ci", self.K, np.stack([xd, yd, np.ones_like(xd)], axis=-1))
        return uvw[:, :2] / uvw[:, 2:3], z


@dataclasses.dataclass
class TriangulationResult:
    """Outcome of :func:`triangulate_robust`.

    Attributes:
        X: [3] world point (NaN when no solve was possible).
        residuals: [C] reprojection error in pixels of every camera against X (NaN where the
            camera had no observation; rejected cameras keep their residual).
        used_mask: [C] cameras in the final solve.
        reason: "" on success, else ``"<code>: <details>"`` with code ``too_few_cameras`` or
            ``residual``.
    """

    X: np.ndarray
    residuals: np.ndarray
    used_mask: np.ndarray
    reason: str

    @property
    def ok(self) -> bool:
        return self.reason == ""


def normalized_coords(uv: np.ndarray, cameras: "Sequence[Camera] | CameraRig", undistort: bool = True) -> np.ndarray:
    """Pixels [..., C, 2] (continuous, corner origin) -> normalized camera coords [..., C, 2]
    (``x_cam/z_cam``, undistorted when ``undistort``). NaN observations stay NaN."""
    rig = CameraRig.from_cameras(cameras)
    uv = np.asarray(uv, dtype=np.float64)
    if uv.shape[-2:] != (len(rig), 2):
        raise InputError(f"triangulate: observations have shape {uv.shape}, expected [..., {len(rig)}, 2] for {len(rig)} cameras.")
    out = np.full_like(uv, np.nan)
    for c in range(len(rig)):
        obs = uv[..., c, :]
        ok = np.all(np.isfinite(obs), axis=-1)
        if not np.any(ok):
            continue
        p = obs[ok]
        Kinv = np.linalg.inv(rig.K[c])
        h = np.concatenate([p, np.ones_like(p[:, :1])], axis=-1) @ Kinv.T
        xn = h[:, :2] / h[:, 2:3]
        if undistort:
            xn = _undistort(xn, rig.dist[c])
        sub = out[..., c, :]
        sub[ok] = xn
    return out


_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-15)


def _undistort(xd: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Distorted -> undistorted normalized coords [N, 2].

    OpenCV's iterative solver (K = I because the caller already applied K^-1 including skew,
    which cv2 would ignore) is ~100x faster than the NumPy version; points where it did not
    converge to 1e-10 are redone with ``cameras.undistort_normalized`` (Newton-polished).
    """
    if not np.any(dist):
        return xd.copy()
    x = cv2.undistortPoints(xd.reshape(-1, 1, 2), np.eye(3), dist, None, None, criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
    bad = np.abs(distort_normalized(x, dist) - xd).max(axis=-1) > 1e-10
    if np.any(bad):
        x[bad] = undistort_normalized(xd[bad], dist)
    return x


def _dlt(xn: np.ndarray, rig: CameraRig, w: np.ndarray, used: np.ndarray, passes: int = 3) -> np.ndarray:
    """Weighted linear triangulation from normalized coords xn [C, 2] of the cameras in ``used``."""
    idx = np.flatnonzero(used)
    R, t, x = rig.R[idx], rig.t[idx], xn[idx]
    A = np.concatenate([x[:, 0:1] * R[:, 2] - R[:, 0], x[:, 1:2] * R[:, 2] - R[:, 1]], axis=0)  # [2n, 3]
    b = np.concatenate([t[:, 0] - x[:, 0] * t[:, 2], t[:, 1] - x[:, 1] * t[:, 2]], axis=0)
    base = w[idx] * rig.focal[idx]
    depth = np.ones(len(idx))
    X = np.zeros(3)
    for _ in range(passes):
        s2 = np.tile(base / depth, 2) ** 2
        As = A * s2[:, None]
        # Normal equations of a 3-unknown problem: cheap, and well conditioned because A's
        # rows are unit-scale rotation rows (b carries the world units).
        X = np.linalg.solve(A.T @ As, As.T @ b)
        z = np.einsum("cj,j->c", R[:, 2], X) + t[:, 2]
        # Points behind a camera keep the last usable scale rather than flipping sign.
        depth = np.where(z > 1e-9, z, depth)
    return X


def _residuals(X: np.ndarray, uv: np.ndarray, rig: CameraRig) -> np.ndarray:
    proj, z = rig.project(X)
    res = np.linalg.norm(proj - uv, axis=-1)
    return np.where(z > 0, res, np.inf) * np.where(np.all(np.isfinite(uv), axis=-1), 1.0, np.nan)


def _weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n:
        raise InputError(f"triangulate: {w.size} weights for {n} cameras.")
    return np.where(np.isfinite(w) & (w > 0), w, 0.0)


def triangulate_weighted(
    uv: np.ndarray, cameras: "Sequence[Camera] | CameraRig", weights: np.ndarray | None = None, undistort: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted DLT of one point seen by C cameras.

    Args:
        uv: [C, 2] pixel observations (continuous, corner origin); NaN rows = not seen.
        cameras: C cameras (R, t world-to-camera) or a CameraRig.
        weights: [C] non-negative weights (None = all 1); 0 or NaN excludes a camera.
        undistort: remove lens distortion first (False only for already-undistorted pixels).
    Returns:
        (X [3] world point, residuals_px [C] reprojection error with distortion; NaN for unseen).
    Raises:
        InputError if fewer than 2 cameras have a finite observation and positive weight.
    """
    rig = CameraRig.from_cameras(cameras)
    uv = np.asarray(uv, dtype=np.float64)
    xn = normalized_coords(uv, rig, undistort)
    w = _weights(weights, len(rig))
    used = np.all(np.isfinite(xn), axis=-1) & (w > 0)
    if used.sum() < 2:
        raise InputError(f"triangulate: {int(used.sum())} camera(s) with an observation; at least 2 are needed.")
    X = _dlt(xn, rig, w, used)
    if not undistort:  # residuals are measured against the model the caller asked for
        rig = dataclasses.replace(rig, dist=np.zeros_like(rig.dist))
    return X, _residuals(X, uv, rig)


def triangulate_robust(
    uv: np.ndarray, cameras: "Sequence[Camera] | CameraRig", weights: np.ndarray | None = None,
    min_cameras: int = 2, max_residual_px: float = 10.0, undistort: bool = True, xn: np.ndarray | None = None,
) -> TriangulationResult:
    """Triangulate, then reject outlier cameras one at a time while any residual > threshold.

    The camera to drop is chosen by leave-one-out: the one whose removal leaves the smallest
    maximum residual among the rest (more reliable than dropping the largest residual, because
    a gross outlier pulls the joint solution towards itself).

    Args:
        uv: [C, 2] pixels (NaN = unseen); cameras: C cameras (world-to-camera) or a CameraRig.
        weights: [C] or None; min_cameras: fewest cameras (>= 2) a solution may use.
        max_residual_px: accept when every used camera reprojects within this many pixels.
        xn: optional precomputed :func:`normalized_coords` of ``uv`` (speed for long tracks).
    Returns:
        TriangulationResult (reason "" on success; never raises for too few cameras).
    """
    if min_cameras < 2:
        raise ValueError("min_cameras must be >= 2")
    rig = CameraRig.from_cameras(cameras)
    uv = np.asarray(uv, dtype=np.float64)
    if xn is None:
        xn = normalized_coords(uv, rig, undistort)
    proj_rig = rig if undistort else dataclasses.replace(rig, dist=np.zeros_like(rig.dist))
    w = _weights(weights, len(rig))
    used = np.all(np.isfinite(xn), axis=-1) & (w > 0)
    nan3 = np.full(3, np.nan)
    if used.sum() < min_cameras:
        return TriangulationResult(nan3, np.full(len(rig), np.nan), used, f"too_few_cameras: {int(used.sum())} < {min_cameras}")
    while True:
        X = _dlt(xn, rig, w, used)
        res = _residuals(X, uv, proj_rig)
        worst = float(np.max(res[used]))
        if worst <= max_residual_px:
            return TriangulationResult(X, res, used, "")
        if used.sum() - 1 < min_cameras:
            return TriangulationResult(X, res, used, f"residual: max {worst:.1f} px > {max_residual_px:g} px with {int(used.sum())} cameras")
        best_score, best_c = np.inf, int(np.flatnonzero(used)[0])
        for c in np.flatnonzero(used):
            trial = used.copy()
            trial[c] = False
            r = _residuals(_dlt(xn, rig, w, trial), uv, proj_rig)
            score = float(np.max(r[trial]))
            if score < best_score:
                best_score, best_c = score, c
        used = used.copy()
        used[best_c] = False
