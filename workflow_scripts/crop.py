"""Re-aim + undistort + crop in one ``cv2.remap``, with exact crop intrinsics and cameras.

For each camera and frame a *virtual camera* is built with the SAME centre as the real one,
its optical axis through the mouse centre ``X_c`` and its roll chosen so that the world up axis
(the normalized world's +z, i.e. ``R_up.T @ e_z`` in the raw world) points up in the image.
Rotating about the camera centre is a homography of the undistorted image, so the crop is

    crop(u, v) = original( distort( R_orig @ R_virt_c2w @ K_new^-1 @ [u, v, 1] ) )

sampled once with bilinear interpolation (pixel centres at +0.5, docs/conventions.md).

Speed: the maps come from ``cv2.initUndistortRectifyMap`` (SIMD, exact to float32) with
``R = R_virt_w2c-relative`` and the crop K; OpenCV ignores skew there, so the skew term
``s * y_d`` is added to map_x afterwards (y_d recovered from map_y). Where OpenCV's map would be
wrong (output rays behind the real camera, or beyond the radius where the polynomial lens model
folds back) the float64 reference :func:`exact_maps` is used instead, which marks those pixels
as outside the image.

Focal length by the pixel-size rule: with the centre fixed, changing f scales the re-aimed image
exactly about the principal point, so the mask's area at focal 1, ``A1``, gives
``f = size_ratio * S / sqrt(A1)``. ``A1`` is the mask's pixel count times the area scale of the
warp over the mask, measured on the mask's outline (undistorted and rotated into the virtual
camera; :func:`_mask_in_crop`). Where that cannot be done (outline rays behind the virtual camera
or past the lens model's fold radius) the mask is remapped at a reference focal ``f_ref`` at a
lower resolution instead, and its area ``A_ref`` gives ``f = f_ref * size_ratio * S / sqrt(A_ref)``.

With a white or black background only the rectangle of the crop around the mask's outline is
remapped; the rest is background.

Outputs per view (:class:`CropResult`): ``K`` [3, 3] = [[f, 0, S/2], [0, f, S/2], [0, 0, 1]] and
``c2w`` [4, 4], the OpenCV camera-to-world of the virtual camera in the **normalized** world
(``X_norm = s R_up (X_raw - c)``; rotation ``R_up @ R_c2w_raw``, centre mapped as a point).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from workflow_scripts.cameras import Camera, distort_normalized
from workflow_scripts.errors import InputError

BACKGROUNDS = ("white", "black", "keep")
MASK_INTERPS = ("linear", "nearest")
# Map value for "no source pixel": far outside any image, so remap returns the border value.
_OUTSIDE = -1.0e6


@dataclass(frozen=True)
class CropParams:
    """Settings of the crop (all go into the shard attrs).

    image_size: S of the S x S output. size_ratio: target sqrt(mask area) / S.
    background: ``white`` / ``black`` (composite with the crop mask) or ``keep``.
    ref_size: S of the low-resolution reference remap that measures the mask area.
    ref_ratio: size ratio aimed at by the first reference guess (leaves room around the mouse).
    mask_interp: ``linear`` (remap the mask bilinearly, threshold at 0.5) or ``nearest``.
    f_min_rel, f_max_rel: clamp range of f relative to ``f_full``, the focal that shows the
        original image's field of view across S pixels (mean of fx, fy * S / max(W, H)).
    """

    image_size: int = 256
    size_ratio: float = 0.3
    background: str = "white"
    ref_size: int = 128
    ref_ratio: float = 0.2
    mask_interp: str = "linear"
    f_min_rel: float = 0.25
    f_max_rel: float = 64.0

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise InputError(f"crop.background is {self.background!r}; use one of {BACKGROUNDS} (fix the config file).")
        if self.mask_interp not in MASK_INTERPS:
            raise InputError(f"crop.mask_interp is {self.mask_interp!r}; use one of {MASK_INTERPS} (fix the config file).")
        if not (self.image_size >= 8 and self.ref_size >= 8):
            raise InputError(f"crop.image_size / ref_size must be >= 8, got {self.image_size} / {self.ref_size} (fix the config file).")
        if not (0 < self.size_ratio < 1 and 0 < self.ref_ratio < 1):
            raise InputError(f"crop.size_ratio / ref_ratio must be in (0, 1), got {self.size_ratio} / {self.ref_ratio} (fix the config file).")
        if not (0 < self.f_min_rel < self.f_max_rel):
            raise InputError(f"crop.f_min_rel < f_max_rel required, got {self.f_min_rel}, {self.f_max_rel} (fix the config file).")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CropParams":
        """Known keys of a config ``crop`` section (``S`` is accepted for ``image_size``); others are ignored."""
        d = dict(d)
        if "S" in d and "image_size" not in d:
            d["image_size"] = d["S"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CropResult:
    """One cropped view.

    image: [S, S, 3] uint8 RGB. mask: [S, S] uint8 (255 mouse / 0).
    K: [3, 3] float64 crop intrinsics (corner-origin pixel convention, no skew).
    c2w: [4, 4] float64 OpenCV camera-to-world of the virtual camera, normalized world.
    c2w_raw: [4, 4] the same camera in the raw world. f: focal length (pixels of S).
    valid: passed QC; reason: why not ('' if valid). size_ratio: sqrt(crop mask area) / S.
    center_offset_px: distance of the crop mask's centroid from the crop centre (S/2, S/2).
    touches_crop_border: the crop mask reaches the crop's outer pixel ring (QC only; usually the tail).
    box: (x0, y0, x1, y1), x1/y1 exclusive, the crop mask's bounding box, outside of which the image
        is the plain background (white / black backgrounds; None with ``keep``); (0, 0, 0, 0) when
        the crop mask is empty.
    """

    image: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    c2w_raw: np.ndarray
    f: float
    valid: bool
    reason: str
    size_ratio: float
    center_offset_px: float
    touches_crop_border: bool
    box: tuple[int, int, int, int] | None = None


@dataclass
class PreparedCamera:
    """Per-camera constants (build once with :func:`prepare_camera`).

    camera: the real camera. A_cv: [3, 3] its K without skew and with the principal point moved
        by -0.5 (OpenCV's centre-at-integer pixels), as ``initUndistortRectifyMap`` wants it.
    skew_over_fy: K[0, 1] / K[1, 1], to add the skew term to map_x afterwards.
    r2_fold: squared normalized radius where the radial model r * radial(r) stops increasing
        (inf if never); rays beyond it have no image (the polynomial folds back).
    f_full_per_px: focal (per output pixel of S) that shows the original field of view
        (mean of fx, fy / max(W, H)); multiply by S.
    """

    camera: Camera
    A_cv: np.ndarray
    skew_over_fy: float
    r2_fold: float
    f_full_per_px: float
    distorted: bool = True
    center: np.ndarray | None = None  # camera.center (raw world), computed once


def radial_fold_r2(dist: np.ndarray) -> float:
    """Smallest rho = r^2 > 0 with d/dr [r (1 + k1 r^2 + k2 r^4 + k3 r^6)] = 0, i.e. a root of
    1 + 3 k1 rho + 5 k2 rho^2 + 7 k3 rho^3; inf if there is none."""
    k1, k2, _, _, k3 = np.asarray(dist, dtype=np.float64)[:5]
    roots = np.roots(np.trim_zeros([7 * k3, 5 * k2, 3 * k1, 1.0], "f"))
    real = roots[(np.abs(roots.imag) < 1e-12) & (roots.real > 0)].real
    return float(real.min()) if real.size else math.inf


def prepare_camera(camera: Camera) -> PreparedCamera:
    """Constants for cropping many frames of one camera (R, t world-to-camera, raw world)."""
    K = camera.K
    A = np.array([[K[0, 0], 0.0, K[0, 2] - 0.5], [0.0, K[1, 1], K[1, 2] - 0.5], [0.0, 0.0, 1.0]])
    # 0.9: margin for the tangential terms, which the radial fold radius ignores.
    return PreparedCamera(camera=camera, A_cv=A, skew_over_fy=float(K[0, 1] / K[1, 1]),
                          r2_fold=0.9 * radial_fold_r2(camera.dist),
                          f_full_per_px=0.5 * (K[0, 0] + K[1, 1]) / max(camera.width, camera.height),
                          distorted=bool(np.any(camera.dist)), center=camera.center)


def _distorted_pixels(cam: Camera, xn: np.ndarray) -> np.ndarray:
    """Undistorted normalized coords [..., 2] -> distorted OpenCV pixels (centre at integer) [..., 2]."""
    xd = distort_normalized(xn, cam.dist)
    K = cam.K
    u = K[0, 0] * xd[..., 0] + K[0, 1] * xd[..., 1] + K[0, 2]
    v = K[1, 1] * xd[..., 1] + K[1, 2]
    return np.stack([u - 0.5, v - 0.5], -1)


# --- geometry -----------------------------------------------------------------------------
def split_similarity(norm_from_raw: np.ndarray, source: str = "norm_from_raw") -> tuple[float, np.ndarray, np.ndarray]:
    """[4, 4] similarity ``X_norm = s R_up (X_raw - c)`` -> (s, R_up [3, 3], c [3])."""
    N = np.asarray(norm_from_raw, dtype=np.float64)
    if N.shape != (4, 4) or not np.all(np.isfinite(N)) or np.abs(N[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise InputError(f"{source}: expected a finite [4, 4] similarity with last row [0, 0, 0, 1]. Fix the normalization JSON.")
    M = N[:3, :3]
    det = np.linalg.det(M)
    if det <= 0:
        raise InputError(f"{source}: similarity has det {det:.3g} <= 0 (reflection or degenerate). Fix the normalization JSON.")
    s = det ** (1.0 / 3.0)
    R = M / s
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-6:
        raise InputError(f"{source}: 3x3 block is not a scaled rotation. Fix the normalization JSON.")
    c = -R.T @ N[:3, 3] / s
    return float(s), R, c


@functools.lru_cache(maxsize=64)
def _rotation_of_bytes(data: bytes) -> np.ndarray:
    R = split_similarity(np.frombuffer(data, np.float64).reshape(4, 4))[1]
    R.setflags(write=False)
    return R


def _rotation_of(norm_from_raw: np.ndarray) -> np.ndarray:
    """R_up of :func:`split_similarity` (validated), remembered for the views of a frame."""
    return _rotation_of_bytes(np.ascontiguousarray(norm_from_raw, dtype=np.float64).tobytes())


def reaim_rotation(camera: Camera, center_raw: np.ndarray, up_raw: np.ndarray) -> np.ndarray:
    """[3, 3] camera-to-world rotation (columns = camera x, y, z axes in the raw world) of the
    virtual camera at ``camera.center`` looking at ``center_raw`` with ``up_raw`` image-up.

    Image y points down, so camera y = -(up projected orthogonally to the axis). When the axis
    is (nearly) parallel to up the roll is undefined; the real camera's x axis is used then.
    """
    return _reaim(camera.center, camera.R, center_raw, up_raw)


def _reaim(cam_center: np.ndarray, R: np.ndarray, center_raw: np.ndarray, up_raw: np.ndarray) -> np.ndarray:
    """:func:`reaim_rotation` for a camera centre and world-to-camera R."""
    # math.sqrt(v.dot(v)) is np.linalg.norm(v) of a 1-D float64 vector (the same dot and sqrt),
    # without its ~4 us of Python per call
    z = np.asarray(center_raw, dtype=np.float64) - cam_center
    z /= math.sqrt(z.dot(z))
    up = np.asarray(up_raw, dtype=np.float64)
    up = up / math.sqrt(up.dot(up))
    x = _cross(z, up)
    if math.sqrt(x.dot(x)) < 1e-3:
        x = R[0] - z * (R[0] @ z)
    x /= math.sqrt(x.dot(x))
    y = _cross(z, x)
    R_c2w = np.empty((3, 3))  # np.stack([x, y, z], axis=1), without its ~5 us of Python
    R_c2w[:, 0], R_c2w[:, 1], R_c2w[:, 2] = x, y, z
    return R_c2w


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.cross of two 3-vectors, the same products and differences (np.cross costs ~20 us)."""
    a0, a1, a2 = a
    b0, b1, b2 = b
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def crop_K(f: float, S: int) -> np.ndarray:
    """[3, 3] crop intrinsics: focal f, principal point at the crop centre (S/2, S/2)."""
    return np.array([[f, 0.0, S / 2.0], [0.0, f, S / 2.0], [0.0, 0.0, 1.0]])


def normalize_c2w(c2w_raw: np.ndarray, norm_from_raw: np.ndarray) -> np.ndarray:
    """[4, 4] raw-world OpenCV c2w -> normalized-world c2w for ``X_norm = s R_up (X_raw - c)``.

    The centre maps as a point; the rotation becomes ``R_up @ R_c2w`` (the scale s is removed:
    camera coordinates of a normalized point are s times the raw ones, which projects the same).
    """
    s, R_up, _ = split_similarity(norm_from_raw)
    N = np.asarray(norm_from_raw, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = R_up @ c2w_raw[:3, :3]
    out[:3, 3] = N[:3, :3] @ c2w_raw[:3, 3] + N[:3, 3]
    return out


def project_pinhole(K: np.ndarray, c2w: np.ndarray, X: np.ndarray) -> np.ndarray:
    """World points [..., 3] -> pixels [..., 2] (corner-origin) through K [3, 3] and OpenCV c2w [4, 4]."""
    R = c2w[:3, :3].T
    xc = (np.asarray(X, dtype=np.float64) - c2w[:3, 3]) @ R.T
    uvw = xc @ np.asarray(K, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]


def _ray_matrix(prep: PreparedCamera, R_virt_c2w: np.ndarray, K_new: np.ndarray) -> np.ndarray:
    """[3, 3] crop pixel (corner-origin, homogeneous) -> ray in the real camera's frame."""
    K = np.asarray(K_new, dtype=np.float64)
    if K[1, 0] == 0 and K[2, 0] == 0 and K[2, 1] == 0 and K[2, 2] == 1:  # upper triangular: invert directly
        (a, b, c), (_, d, e) = K[0], K[1]
        K_inv = np.array([[1 / a, -b / (a * d), (b * e - c * d) / (a * d)], [0.0, 1 / d, -e / d], [0.0, 0.0, 1.0]])
    else:
        K_inv = np.linalg.inv(K)
    return prep.camera.R @ R_virt_c2w @ K_inv


def _rect_K(K_new: np.ndarray, S: int, rect: tuple[int, int, int, int] | None) -> tuple[np.ndarray, int, int]:
    """(K of the rectangle ``rect`` = (x, y, w, h) of the S x S crop as an image of its own, w, h);
    the whole crop for None."""
    if rect is None:
        return np.asarray(K_new, dtype=np.float64), S, S
    x, y, w, h = rect
    K = np.array(K_new, dtype=np.float64)
    K[0, 2] -= x
    K[1, 2] -= y
    return K, int(w), int(h)


def _corner_rays(prep: PreparedCamera, R_virt_c2w: np.ndarray, K_new: np.ndarray, S: int,
                 rect: tuple[int, int, int, int] | None = None) -> tuple[bool, float]:
    """(all crop rays in front of the real camera, largest normalized r^2 over the crop).

    z is linear in (u, v), so checking the 4 corners of the crop square (or of ``rect``, see
    :func:`fast_maps`) decides "in front"; then the square maps to a convex quadrilateral of
    normalized coords and r^2 (convex) peaks at a corner."""
    K, w, h = _rect_K(K_new, S, rect)
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], dtype=np.float64)
    d = corners @ _ray_matrix(prep, R_virt_c2w, K).T
    if not np.all(d[:, 2] > 1e-9):
        return False, math.inf
    return True, float(((d[:, :2] / d[:, 2:3]) ** 2).sum(1).max())


def exact_maps(prep: PreparedCamera, R_virt_c2w: np.ndarray, K_new: np.ndarray, S: int,
               rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Reference float64 maps [S, S, 2] (OpenCV pixels of the original image) for crop pixels at
    centres (c + 0.5, r + 0.5); ``_OUTSIDE`` for rays behind the camera or beyond the fold radius.
    ``rect`` = (x, y, w, h): only those crop pixels, maps [h, w, 2]."""
    K, w, h = _rect_K(K_new, S, rect)
    uu, vv = np.meshgrid(np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5)
    p = np.stack([uu, vv, np.ones_like(uu)], -1)
    d = p @ _ray_matrix(prep, R_virt_c2w, K).T
    front = d[..., 2] > 1e-9
    xn = d[..., :2] / np.where(front, d[..., 2], 1.0)[..., None]
    uv = _distorted_pixels(prep.camera, xn)
    uv[~front | ((xn**2).sum(-1) >= prep.r2_fold)] = _OUTSIDE
    return uv


def fast_maps(prep: PreparedCamera, R_virt_c2w: np.ndarray, K_new: np.ndarray, S: int,
              rect: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Maps [S, S, 2] float32 for ``cv2.remap``: crop pixel -> original OpenCV pixel.

    ``initUndistortRectifyMap`` computes, for integer output pixel (j, i), the ray
    ``(newK @ R)^-1 [j, i, 1]``; with ``newK`` = the crop K shifted by -0.5 (pixel centres) and
    ``R = R_virt_w2c @ R_orig_c2w`` that is the crop ray in the real camera, which it distorts
    and projects with the skew-free ``A_cv``; the skew term is added after.

    ``rect`` = (x, y, w, h): maps [h, w, 2] of that rectangle of the crop only (its pixel (j, i)
    is crop pixel (x + j, y + i): the principal point moves by (-x, -y)), the same rays."""
    in_front, r2_max = _corner_rays(prep, R_virt_c2w, K_new, S, rect)
    if not in_front:  # rare (a > 90 degree turn); OpenCV's map has no notion of "behind"
        return exact_maps(prep, R_virt_c2w, K_new, S, rect).astype(np.float32)
    Kn, w, h = _rect_K(K_new, S, rect)
    Kn = Kn.copy()
    Kn[0, 2] -= 0.5
    Kn[1, 2] -= 0.5
    R = R_virt_c2w.T @ prep.camera.R.T
    maps, _ = cv2.initUndistortRectifyMap(prep.A_cv, prep.camera.dist, R, Kn, (w, h), cv2.CV_32FC2)
    if r2_max >= prep.r2_fold:
        # Some rays pass the fold radius: the same call without distortion gives their
        # undistorted normalized coords; send those pixels outside the image.
        pin, _ = cv2.initUndistortRectifyMap(prep.A_cv, None, R, Kn, (w, h), cv2.CV_32FC2)
        A = prep.A_cv
        r2 = ((pin[..., 0] - A[0, 2]) / A[0, 0]) ** 2 + ((pin[..., 1] - A[1, 2]) / A[1, 1]) ** 2
        maps[r2 >= prep.r2_fold] = _OUTSIDE
    if prep.skew_over_fy != 0.0:
        # u = fx x_d + s y_d + cx and y_d = (v - cy) / fy: add the skew term OpenCV left out.
        maps[..., 0] += prep.skew_over_fy * (maps[..., 1] - prep.A_cv[1, 2])
    return maps


def _touches_border(binary: np.ndarray) -> bool:
    return bool(binary[0].any() or binary[-1].any() or binary[:, 0].any() or binary[:, -1].any())


def _touches_image_border(part: np.ndarray, x0: int, y0: int, W: int, H: int) -> bool:
    """Does the mask part at (x0, y0) of a W x H frame touch the frame's border? (Only the
    part's edges that lie on the frame's border can.)"""
    h, w = part.shape
    return bool((y0 == 0 and part[0].any()) or (y0 + h == H and part[-1].any())
                or (x0 == 0 and part[:, 0].any()) or (x0 + w == W and part[:, -1].any()))


def _shifted(maps: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Maps into the frame -> maps into its part at (x0, y0) (in place; _OUTSIDE stays outside)."""
    if x0 or y0:
        cv2.subtract(maps, (float(x0), float(y0), 0.0, 0.0), dst=maps)  # numpy's [..., 2] broadcast is ~5x slower
    return maps


def _remap_mask_float(mask: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Bilinear remap of a 0/255 mask -> coverage in [0, 1] (float32)."""
    return cv2.remap(mask, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32) / 255.0


# Outline of the mask for the pixel-size rule: cv2.approxPolyDP tolerance (source pixels).
_OUTLINE_EPS = 1.0
_EYE3 = np.eye(3)
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT, 20, 0.0)


def _mask_in_crop(prep: PreparedCamera, R_virt_c2w: np.ndarray, mask8: np.ndarray, x0: int, y0: int,
                  area: int) -> tuple[float, np.ndarray] | None:
    """(A1, q): the area the mask covers in the virtual camera's image at focal 1 (principal point
    at 0), and its outline there [n, 2]; None where it cannot be measured so (an outline ray behind
    the virtual camera, beyond the lens model's fold radius, an undistortion that does not
    converge, a degenerate outline): the caller remaps a reference crop instead.

    The mask's outer outlines (cv2.findContours, simplified to ``_OUTLINE_EPS`` px, through pixel
    centres) are undistorted and rotated into the virtual camera; the ratio of their areas there
    and in the original image is the mean area scale over the mask, and the mask's pixel count
    times it is A1 (counting pixels, not polygon area, measures the same thing the final crop
    mask's pixel count does). With the centre fixed, focal f scales this image by f about the
    principal point, so the crop mask area at focal f is f^2 A1.
    """
    cam = prep.camera
    bx, by, bw, bh = cv2.boundingRect(mask8)
    if bw == 0 or bh == 0:
        return None
    cnts, _ = cv2.findContours(mask8[by:by + bh, bx:bx + bw], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                               offset=(x0 + bx, y0 + by))
    polys = [cv2.approxPolyDP(c, _OUTLINE_EPS, True) for c in cnts]
    src_area = sum(cv2.contourArea(q) for q in polys)
    if not src_area > 0.25 * area:  # lines, specks: no outline area to measure the scale with
        return None
    P = np.concatenate(polys).reshape(-1, 2) + 0.5  # pixel centres, corner-origin (float64)
    K = cam.K
    xn = np.empty_like(P)  # [x_d, y_d]; filled column by column (np.stack costs ~5 us)
    yd = xn[:, 1]
    np.divide(P[:, 1] - K[1, 2], K[1, 1], out=yd)
    xn[:, 0] = (P[:, 0] - K[0, 2] - K[0, 1] * yd) / K[0, 0]
    if prep.distorted:
        xu = cv2.undistortPoints(xn.reshape(-1, 1, 2), _EYE3, cam.dist, R=_EYE3, P=_EYE3,
                                 criteria=_UNDISTORT_CRITERIA).reshape(-1, 2)
        if not (np.abs(distort_normalized(xu, cam.dist) - xn).max() < 1e-9
                and (xu * xu).sum(1).max() < prep.r2_fold):
            return None
    else:
        xu = xn
    M = R_virt_c2w.T @ cam.R.T  # real camera ray -> virtual camera ray
    d = xu @ M[:, :2].T + M[:, 2]
    if not np.all(d[:, 2] > 1e-9):
        return None
    q = d[:, :2] / d[:, 2:3]
    q32 = q.astype(np.float32)
    tgt_area, k = 0.0, 0
    for poly in polys:
        tgt_area += cv2.contourArea(q32[k:k + len(poly)])
        k += len(poly)
    if not tgt_area > 0:
        return None
    return area * tgt_area / src_area, q


def _focal_by_reference(prep: PreparedCamera, R_v: np.ndarray, mask8: np.ndarray, x0: int, y0: int, area: int,
                        p: CropParams, S: int) -> tuple[float | None, str]:
    """(f or None, reason): the pixel-size rule by remapping the mask at the reference size
    (where :func:`_mask_in_crop` cannot measure): its area ``A_ref`` at ``f_ref`` gives
    ``f = f_ref * size_ratio * S / sqrt(A_ref)``."""
    cam = prep.camera
    reason = ""
    # First guess: magnification of the original view near its axis -> aim at ref_ratio.
    f_ref = p.ref_ratio * p.ref_size * 0.5 * (cam.K[0, 0] + cam.K[1, 1]) / math.sqrt(area)
    A_ref = 0.0
    for _ in range(4):
        K_ref = crop_K(f_ref, p.ref_size)
        cov = _remap_mask_float(mask8, _shifted(fast_maps(prep, R_v, K_ref, p.ref_size), x0, y0))
        A_ref = float(cov.sum())
        if not _touches_border(cov > 0.02):
            break
        f_ref *= 0.5  # the mouse does not fit the reference view: widen it
    else:
        reason = "mask touches reference crop border"
    if A_ref <= 0:
        return None, reason or "mask empty after re-aim"
    return f_ref * p.size_ratio * S / math.sqrt(A_ref), reason


def _remap_view(image: np.ndarray, mask8: np.ndarray, maps: np.ndarray, p: CropParams) -> tuple[np.ndarray, np.ndarray]:
    """(crop image, crop mask 255/0) of the pixels the maps give, composited on the background."""
    out = cv2.remap(image, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    if p.mask_interp == "linear":
        m = cv2.remap(mask8, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # uint8 linear interpolation rounds, so > 127 is "coverage >= 0.5".
        crop_mask = cv2.threshold(m, 127, 255, cv2.THRESH_BINARY)[1]
    else:
        crop_mask = cv2.remap(mask8, maps, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # Composite with the binary mask (255/0) by bitwise ops: white = OR with the inverted mask,
    # black = AND with the mask (much faster than boolean indexing).
    if p.background == "white":
        out = cv2.bitwise_or(out, cv2.cvtColor(cv2.bitwise_not(crop_mask), cv2.COLOR_GRAY2RGB))
    elif p.background == "black":
        out = cv2.bitwise_and(out, cv2.cvtColor(crop_mask, cv2.COLOR_GRAY2RGB))
    return out, crop_mask


def _box_in_crop(q: np.ndarray, f: float, S: int, scale: float) -> tuple[int, int, int, int]:
    """Rectangle (x, y, w, h) of the S x S crop at focal f that holds every crop pixel the mask
    can reach: its outline ``q`` (focal 1) scaled, plus a margin for the outline's tolerance and
    the bilinear support (1 px beyond the pixel centres it runs through) at ``scale`` crop px per
    source px, doubled against anisotropy, and 1 px for rounding. May be empty (w or h 0)."""
    margin = 2.0 * (_OUTLINE_EPS + 1.0) * scale + 1.0
    lo = q.min(0) * f + S / 2.0 - margin
    hi = q.max(0) * f + S / 2.0 + margin
    x0, y0 = max(0, math.floor(lo[0])), max(0, math.floor(lo[1]))
    x1, y1 = min(S, math.ceil(hi[0])), min(S, math.ceil(hi[1]))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def _inner_edge_touched(mask: np.ndarray, rect: tuple[int, int, int, int], S: int) -> bool:
    """Does the crop mask of ``rect`` reach one of the rectangle's edges inside the crop (so that
    the mask may go on beyond it)?"""
    x, y, w, h = rect
    return bool((y > 0 and mask[0].any()) or (y + h < S and mask[-1].any())
                or (x > 0 and mask[:, 0].any()) or (x + w < S and mask[:, -1].any()))


def crop_view(image: np.ndarray, mask: np.ndarray, camera: Camera | PreparedCamera, center_raw: np.ndarray,
              norm_from_raw: np.ndarray, S: int | None = None, size_ratio: float | None = None,
              background: str | None = None, params: CropParams | None = None,
              origin: tuple[int, int] = (0, 0),
              out: tuple[np.ndarray, np.ndarray] | None = None) -> CropResult:
    """Crop one view around the mouse.

    Args:
        image: [h, w, 3] uint8 RGB original (distorted) frame, or the part of it at `origin`.
        mask: [h, w] uint8 mouse mask (nonzero = mouse) of the same frame (part): every mouse
            pixel of the frame must lie in it, and with a white/black background the image part
            must reach 2 px beyond them (workflow_scripts/masks.py stores exactly that).
        camera: the real camera (R, t world-to-camera, raw world) or its :func:`prepare_camera`
            result (pass that when cropping many frames).
        center_raw: [3] mouse centre, raw world.
        norm_from_raw: [4, 4] similarity raw -> normalized world (its +z is world up).
        S, size_ratio, background: override ``params`` (defaults :class:`CropParams`).
        origin: (x0, y0), the frame pixel at image[0, 0] / mask[0, 0] (default: whole frames).
        out: optional (image [S, S, 3], mask [S, S]) uint8 C-contiguous buffers that receive the crop
            and become CropResult.image / .mask (e.g. the views of a shard sample, filled in place).
    Returns:
        :class:`CropResult` with K [3, 3] and normalized OpenCV c2w [4, 4].

    With a white or black background only the crop's rectangle around the mask is remapped (the
    rest is background: :func:`_box_in_crop`; CropResult.box); if its mask reaches that
    rectangle's inner edge, the whole crop is remapped instead.
    """
    p = params or CropParams()
    over = {k: v for k, v in (("image_size", S), ("size_ratio", size_ratio), ("background", background)) if v is not None}
    if over:
        p = dataclasses.replace(p, **over)
    S = p.image_size
    prep = camera if isinstance(camera, PreparedCamera) else prepare_camera(camera)
    cam = prep.camera
    x0, y0 = (int(v) for v in origin)
    h, w = mask.shape[:2]
    if image.shape[:2] != mask.shape or x0 < 0 or y0 < 0 or x0 + w > cam.width or y0 + h > cam.height:
        raise InputError(f"camera {cam.name!r}: image {image.shape} / mask {mask.shape} at {(x0, y0)} do not fit the "
                         f"calibration size {cam.width}x{cam.height}. Fix: check the video / calibration pairing.")
    center_raw = np.asarray(center_raw, dtype=np.float64)
    Nrm = np.asarray(norm_from_raw, dtype=np.float64)
    R_up = _rotation_of(Nrm)
    up_raw = R_up[2]  # R_up.T @ e_z: the raw-world direction that becomes normalized +z
    cam_center = prep.center if prep.center is not None else cam.center
    R_v = _reaim(cam_center, cam.R, center_raw, up_raw)
    c2w_raw = np.eye(4)
    c2w_raw[:3, :3], c2w_raw[:3, 3] = R_v, cam_center
    c2w = np.eye(4)  # normalize_c2w without validating the similarity a second time
    c2w[:3, :3], c2w[:3, 3] = R_up @ R_v, Nrm[:3, :3] @ cam_center + Nrm[:3, 3]
    f_full = prep.f_full_per_px * S
    # Any nonzero value is mouse; cv2.threshold is ~10x faster than np.where at full resolution.
    mask8 = cv2.threshold(np.asarray(mask, dtype=np.uint8), 0, 255, cv2.THRESH_BINARY)[1]

    reason = ""
    area_orig = cv2.countNonZero(mask8)
    in_front = cam.to_camera(center_raw)[2] > 0
    if not in_front:
        reason = "mouse centre behind camera"
    elif area_orig == 0:
        reason = "empty mask"
    elif _touches_image_border(mask8, x0, y0, cam.width, cam.height):
        reason = "mask touches image border"

    f = f_full
    outline = None
    if in_front and area_orig > 0:
        outline = _mask_in_crop(prep, R_v, mask8, x0, y0, area_orig)
        if outline is not None:
            f = p.size_ratio * S / math.sqrt(outline[0])
        else:
            f_ref, why = _focal_by_reference(prep, R_v, mask8, x0, y0, area_orig, p, S)
            reason = reason or why
            if f_ref is not None:
                f = f_ref
    f_lo, f_hi = p.f_min_rel * f_full, p.f_max_rel * f_full
    if not (f_lo <= f <= f_hi):
        reason = reason or f"focal {f:.1f} clamped to [{f_lo:.1f}, {f_hi:.1f}]"
        f = float(np.clip(f, f_lo, f_hi))

    K = crop_K(f, S)
    rect = (0, 0, S, S)
    if outline is not None and p.background != "keep":
        rect = _box_in_crop(outline[1], f, S, f * math.sqrt(outline[0] / area_orig))
    bx, by, bw, bh = rect
    if bw and bh:
        sub = rect if rect != (0, 0, S, S) else None
        rect_img, crop_mask = _remap_view(image, mask8, _shifted(fast_maps(prep, R_v, K, S, sub), x0, y0), p)
        if sub is not None and _inner_edge_touched(crop_mask, rect, S):  # never seen; just in case
            rect = bx, by, bw, bh = 0, 0, S, S
            rect_img, crop_mask = _remap_view(image, mask8, _shifted(fast_maps(prep, R_v, K, S), x0, y0), p)
    else:  # the mask maps outside the crop
        rect = bx, by, bw, bh = 0, 0, 0, 0
        rect_img, crop_mask = np.empty((0, 0, 3), np.uint8), np.empty((0, 0), np.uint8)
    if rect != (0, 0, S, S):  # paste the rectangle into a background crop
        if out is None:
            full, full_mask = np.empty((S, S, 3), np.uint8), np.empty((S, S), np.uint8)
        else:
            full, full_mask = out
        full.fill(255 if p.background == "white" else 0)
        full[by:by + bh, bx:bx + bw] = rect_img
        full_mask.fill(0)
        full_mask[by:by + bh, bx:bx + bw] = crop_mask
        rect_img, sub_mask, crop_mask = full, crop_mask, full_mask
    else:
        sub_mask = crop_mask
        if out is not None:
            out[0][...] = rect_img
            out[1][...] = crop_mask
            rect_img, crop_mask = out

    area = cv2.countNonZero(sub_mask) if sub_mask.size else 0
    box = None
    if area > 0:
        mx, my, mw, mh = cv2.boundingRect(sub_mask)
        sub_mask = sub_mask[my:my + mh, mx:mx + mw]
        bx, by = bx + mx, by + my
        if p.background != "keep":
            box = (bx, by, bx + mw, by + mh)
        mom = cv2.moments(sub_mask, binaryImage=True)  # of the mask's box: shift to the crop (exact integer sums)
        cx, cy = (mom["m10"] + bx * mom["m00"]) / mom["m00"] + 0.5, (mom["m01"] + by * mom["m00"]) / mom["m00"] + 0.5
        offset = float(math.hypot(cx - S / 2.0, cy - S / 2.0))
        # Not a reason to drop the view: the thin tail often reaches the crop border while the
        # body is well framed (QC field only).
        touches = bx == 0 or by == 0 or bx + mw == S or by + mh == S  # the mask's box reaches the crop border
    else:
        touches = False
        offset = float("nan")
        reason = reason or "crop mask empty"
        if p.background != "keep":
            box = (0, 0, 0, 0)
    return CropResult(image=rect_img, mask=crop_mask, K=K, c2w=c2w, c2w_raw=c2w_raw, f=float(f), valid=not reason,
                      reason=reason, size_ratio=math.sqrt(area) / S, center_offset_px=offset,
                      touches_crop_border=touches, box=box)
