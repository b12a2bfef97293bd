"""One typed camera model for the whole pipeline (OpenCV convention).

Conventions (docs/conventions.md): x right, y down, z forward; ``R``, ``t`` are
**world-to-camera** (``x_cam = R @ X + t``); pixel coordinates are continuous with the image's
top-left corner at (0, 0), so pixel (r, c) has its centre at (c + 0.5, r + 0.5). OpenCV's
image functions put pixel centres at integers: convert with :func:`to_opencv_pixels` /
:func:`from_opencv_pixels`. Distortion is OpenCV's ``[k1, k2, p1, p2, k3]``.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from workflow_scripts.errors import InputError

ORTHONORMAL_TOL = 1e-4


def to_opencv_pixels(uv: np.ndarray) -> np.ndarray:
    """Continuous corner-origin pixel coords -> OpenCV's centre-at-integer coords."""
    return np.asarray(uv, dtype=np.float64) - 0.5


def from_opencv_pixels(uv: np.ndarray) -> np.ndarray:
    """OpenCV's centre-at-integer pixel coords -> continuous corner-origin coords."""
    return np.asarray(uv, dtype=np.float64) + 0.5


@dataclasses.dataclass
class Camera:
    """A calibrated pinhole camera with OpenCV lens distortion.

    Attributes:
        name: camera identifier (e.g. ``cam1``).
        K: [3, 3] intrinsics in pixels (skew allowed).
        dist: [5] distortion ``[k1, k2, p1, p2, k3]``.
        R: [3, 3] rotation, world-to-camera.
        t: [3] translation, world-to-camera (world units).
        width, height: image size in pixels.
    """

    name: str
    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.dist = np.zeros(5) if self.dist is None else np.asarray(self.dist, dtype=np.float64).reshape(-1)
        if self.dist.size < 5:
            self.dist = np.concatenate([self.dist, np.zeros(5 - self.dist.size)])
        self.R = np.asarray(self.R, dtype=np.float64)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(-1)
        self.width = int(self.width)
        self.height = int(self.height)

    # --- validation -------------------------------------------------------------------------
    def validate(self, source: str = "<camera>") -> "Camera":
        """Check shapes, finiteness and orthonormality; raise InputError naming ``source``."""
        where = f"{source} (camera {self.name!r})"
        for name, arr, shape in (("K", self.K, (3, 3)), ("R", self.R, (3, 3)), ("t", self.t, (3,)), ("dist", self.dist, (5,))):
            if arr.shape != shape:
                raise InputError(f"{where}: {name} has shape {arr.shape}, expected {shape}. Fix the calibration file.")
            if not np.all(np.isfinite(arr)):
                raise InputError(f"{where}: {name} contains NaN or inf. Fix the calibration file.")
        err = np.abs(self.R @ self.R.T - np.eye(3)).max()
        if err > ORTHONORMAL_TOL or np.linalg.det(self.R) < 0:
            raise InputError(
                f"{where}: rotation is not orthonormal with det +1 (|R R^T - I| = {err:.2e}, det = {np.linalg.det(self.R):.4f}). "
                "Fix: check whether the file stores R transposed or a different convention (see docs/conventions.md)."
            )
        if self.K[2, 2] == 0 or self.K[0, 0] <= 0 or self.K[1, 1] <= 0 or np.any(self.K[2, :2] != 0):
            raise InputError(f"{where}: K is not an upper-triangular intrinsics matrix with positive focal lengths: {self.K.tolist()}. Fix the calibration file.")
        if self.width <= 0 or self.height <= 0:
            raise InputError(f"{where}: image size {self.width}x{self.height} is not positive. Fix the calibration file.")
        return self

    # --- extrinsics -------------------------------------------------------------------------
    @property
    def w2c(self) -> np.ndarray:
        """[4, 4] world-to-camera."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    @property
    def c2w(self) -> np.ndarray:
        """[4, 4] camera-to-world (OpenCV axes)."""
        m = np.eye(4)
        m[:3, :3] = self.R.T
        m[:3, 3] = -self.R.T @ self.t
        return m

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return -self.R.T @ self.t

    @classmethod
    def from_c2w(cls, name: str, K: np.ndarray, c2w: np.ndarray, width: int, height: int, dist: np.ndarray | None = None) -> "Camera":
        c2w = np.asarray(c2w, dtype=np.float64)
        R = c2w[:3, :3].T
        return cls(name=name, K=K, dist=dist, R=R, t=-R @ c2w[:3, 3], width=width, height=height)

    # --- projection -------------------------------------------------------------------------
    def to_camera(self, X: np.ndarray) -> np.ndarray:
        """World points [..., 3] -> camera coordinates [..., 3]."""
        return np.asarray(X, dtype=np.float64) @ self.R.T + self.t

    def project(self, X: np.ndarray, distort: bool = True) -> np.ndarray:
        """World points [..., 3] -> pixel coordinates [..., 2] (continuous, corner origin).

        Points behind the camera give meaningless pixels; check ``to_camera(X)[..., 2] > 0``.
        """
        xc = self.to_camera(X)
        xn = xc[..., :2] / xc[..., 2:3]
        if distort:
            xn = distort_normalized(xn, self.dist)
        uvw = np.concatenate([xn, np.ones_like(xn[..., :1])], axis=-1) @ self.K.T
        return uvw[..., :2] / uvw[..., 2:3]

    def pixel_rays(self, uv: np.ndarray, undistort: bool = True) -> np.ndarray:
        """Pixels [..., 2] -> unit ray directions [..., 3] in world coordinates."""
        uv = np.asarray(uv, dtype=np.float64)
        xn = np.concatenate([uv, np.ones_like(uv[..., :1])], axis=-1) @ np.linalg.inv(self.K).T
        xn = xn[..., :2] / xn[..., 2:3]
        if undistort:
            xn = undistort_normalized(xn, self.dist)
        d = np.concatenate([xn, np.ones_like(xn[..., :1])], axis=-1) @ self.R  # R^T applied to rows
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "width": self.width, "height": self.height,
            "K": self.K.tolist(), "dist": self.dist.tolist(), "R": self.R.tolist(), "t": self.t.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        return cls(name=d["name"], K=d["K"], dist=d.get("dist"), R=d["R"], t=d["t"], width=d["width"], height=d["height"])


def distort_normalized(xn: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Apply OpenCV's radial/tangential model to normalized coords [..., 2].

    dist: [5+] coefficients, or [B..., 5+] per leading batch of points (e.g. one lens per view
    for points [C, n, 2] and dist [C, 5])."""
    d = np.asarray(dist, dtype=np.float64)[..., :5]
    lead = (1,) * (xn.ndim - d.ndim)  # the points' own axes beyond dist's batch axes
    k1, k2, p1, p2, k3 = (d[..., i].reshape(d.shape[:-1] + lead) for i in range(5))
    x, y = xn[..., 0], xn[..., 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def undistort_normalized(xd: np.ndarray, dist: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Invert :func:`distort_normalized` by fixed-point iteration (as OpenCV does), then polish
    with Newton steps so round trips are exact to ~1e-12 for realistic lenses."""
    xd = np.asarray(xd, dtype=np.float64)
    if not np.any(dist):
        return xd.copy()
    x = xd.copy()
    k1, k2, p1, p2, k3 = np.asarray(dist, dtype=np.float64)[:5]
    for _ in range(iterations):
        xx, yy = x[..., 0], x[..., 1]
        r2 = xx * xx + yy * yy
        radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
        dx = 2 * p1 * xx * yy + p2 * (r2 + 2 * xx * xx)
        dy = p1 * (r2 + 2 * yy * yy) + 2 * p2 * xx * yy
        x = np.stack([(xd[..., 0] - dx) / radial, (xd[..., 1] - dy) / radial], axis=-1)
    # Newton polish with a numeric Jacobian.
    for _ in range(3):
        f = distort_normalized(x, dist) - xd
        eps = 1e-7
        jx = (distort_normalized(x + [eps, 0], dist) - distort_normalized(x - [eps, 0], dist)) / (2 * eps)
        jy = (distort_normalized(x + [0, eps], dist) - distort_normalized(x - [0, eps], dist)) / (2 * eps)
        J = np.stack([jx, jy], axis=-1)  # [..., 2(out), 2(in)]
        x = x - np.linalg.solve(J, f[..., None])[..., 0]
    return x


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """[4, 4] OpenCV camera-to-world looking from ``eye`` at ``target`` with world ``up``
    appearing upwards in the image (image y points down, so camera y = -up projected)."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    up = np.asarray(up, dtype=np.float64)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking straight along up: pick any perpendicular
        x = np.cross(z, [0.0, 1.0, 0.0] if abs(z[1]) < 0.9 else [1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def cameras_to_json(cameras: list[Camera], source: str = "", fmt: str = "") -> dict[str, Any]:
    return {"schema_version": 1, "source": str(source), "format": fmt, "cameras": [c.to_dict() for c in cameras]}


def cameras_from_json(d: dict[str, Any]) -> list[Camera]:
    if d.get("schema_version") != 1:
        raise InputError(f"cameras JSON has schema_version {d.get('schema_version')!r}, expected 1. Fix: rerun the calibration rule.")
    return [Camera.from_dict(c) for c in d["cameras"]]
