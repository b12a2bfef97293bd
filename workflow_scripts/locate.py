"""locate_mouse: the mouse's 3D centre per frame, its QC table, and the session's world normalization.

Per frame, the mask centroids of the cameras whose mask passed QC are triangulated
(:mod:`workflow_scripts.triangulate`, weight ``sqrt(area)``, times ``border_weight`` when the mask
touches the image border), outlier cameras are rejected, and frames seen by fewer than
``min_cameras`` cameras or with a residual above ``max_residual_px`` are dropped with a reason.
With ``center = "body_model"`` (default; needs the masks and the MAMMAL body model) the kept
frames' centre is then the surface centroid of the body model fitted to the masks of the cameras
the triangulation used (:class:`workflow_scripts.visual_hull.BodyFitter`, each frame starting
from the previous one's fit, in pieces of :data:`BODY_PIECE` frames fitted in parallel
processes): 0.15-0.3 mm from the true centre on the demo recording, because the model also
places the surfaces no silhouette shows (mouth, inner legs, belly) and the thin tail at their
true weight. Frames the model cannot be fitted to (cost above ``BODY_FALLBACK_RATIO`` x the
session's median) take the visual hull's centre. With ``center = "visual_hull"`` every kept
frame's centre is the surface centroid of the visual hull carved from those masks
(:mod:`workflow_scripts.visual_hull`), about 1.2 mm from the truth; a mask centroid is not the
projection of the 3D centre, so triangulated centroids (``"triangulation"``) sit 2-5 mm away
(docs/preprocessing_bars.md).
The kept track is smoothed (Savitzky-Golay, over ``smooth_ms`` of sampled frames) within runs
of consecutive kept frames only, so nothing is interpolated across dropped frames.

Normalization (docs/conventions.md): ``X_norm = s * R_up @ (X_raw - c)`` with ``c`` the frame's
(smoothed) centre, ``R_up`` turning the raw world's up direction into +z and one scale ``s`` per
session (so the mouse keeps its size across frames) making the mean camera distance
``camera_distance`` (default 2.7, FaceLift's). Cameras: ``R``, ``t`` world-to-camera throughout.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.signal import savgol_filter
from tqdm import tqdm

from workflow_scripts.atomic import atomic_path, write_json
from workflow_scripts.cameras import Camera, cameras_from_json
from workflow_scripts.errors import InputError, reject_unknown_keys
from workflow_scripts.triangulate import CameraRig, normalized_coords, triangulate_robust
from workflow_scripts.visual_hull import ArticulatedMesh, BodyFitter, fit_body_track, hull_center
from workflow_scripts.workers import ForkedWorkers, blas_threads

log = logging.getLogger(__name__)

QC_COLUMNS = ("frame_index", "area", "centroid_x", "centroid_y", "touches_border", "valid")
OUT_COLUMNS = (
    "frame_index", "x", "y", "z", "x_raw", "y_raw", "z_raw", "tri_x", "tri_y", "tri_z", "center_method", "n_cameras",
    "residual_px_median", "residual_px_max", "valid", "reason", "rejected_cameras",
)
CENTER_METHODS = ("visual_hull", "triangulation", "body_model")
#: a body-model fit whose cost exceeds this many times the session's median cost is not trusted
#: (its frame takes the visual hull's centre instead).
BODY_FALLBACK_RATIO = 3.0
#: frames per piece of a run of consecutive kept frames that the body model is fitted to on its own
#: (the first from a cold start): pieces run in parallel processes, and since the pieces do not depend
#: on the number of processes, neither do the centres.
BODY_PIECE = 64
#: camera name, frame index -> that camera's mask [H, W] (nonzero = mouse) for the frame.
MaskSource = Callable[[str, int], np.ndarray]
_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


@dataclasses.dataclass(frozen=True)
class LocateParams:
    """Settings of locate_mouse (config section ``locate``).

    min_cameras: fewest cameras with a valid mask for a frame to count (>= 2).
    max_residual_px: largest accepted centroid reprojection residual after outlier rejection.
        A mask centroid is not the projection of the 3D centre, so expect several pixels.
    smooth_ms: Savitzky-Golay window in milliseconds: the largest odd number of (sampled)
        frames within it, so the same motion is smoothed alike at any frame rate and stride
        (:func:`smooth_window_frames`; 0, or under 3 frames, disables smoothing).
    smooth_polyorder: Savitzky-Golay polynomial order.
    border_weight: weight factor for masks touching the image border (their centroid is biased).
    up: "auto" or a signed axis ("z", "-y", ...) of the raw world that points up.
    camera_distance: mean camera-to-centre distance in normalized units.
    metric_scale: normalized units per raw unit; overrides camera_distance when set.
    up_snap_deg: "auto" snaps to the nearest signed axis when within this angle (0 = never).
    center: "visual_hull" (refine each kept frame's centre to the masks' visual-hull surface
        centroid), "body_model" (the surface centroid of the body model fitted to the masks) or
        "triangulation" (the triangulated mask centroids).
    hull_resolution: fine hull cells along its longest side (voxel = mouse length / this).
    hull_max_misses: masks a hull voxel may fall outside of (0 = strict intersection).
    """

    min_cameras: int = 3
    max_residual_px: float = 15.0
    smooth_ms: float = 50.0
    smooth_polyorder: int = 2
    border_weight: float = 0.25
    up: str = "auto"
    camera_distance: float = 2.7
    metric_scale: float | None = None
    up_snap_deg: float = 10.0
    center: str = "body_model"
    hull_resolution: int = 64
    hull_max_misses: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "config locate") -> "LocateParams":
        d = dict(d or {})
        reject_unknown_keys(d, cls, source, "locate")
        p = cls(**d)
        if int(p.min_cameras) < 2:
            raise InputError(f"{source}: min_cameras = {p.min_cameras}, must be >= 2. Fix the config.")
        if not p.max_residual_px > 0 or not p.camera_distance > 0 or (p.metric_scale is not None and not p.metric_scale > 0):
            raise InputError(f"{source}: max_residual_px, camera_distance and metric_scale must be positive. Fix the config.")
        if p.up != "auto":
            _up_vector_from_name(p.up, source)
        if p.center not in CENTER_METHODS:
            raise InputError(f"{source}: center = {p.center!r}; expected one of {CENTER_METHODS}. Fix the config.")
        if not p.smooth_ms >= 0:
            raise InputError(f"{source}: smooth_ms = {p.smooth_ms}, must be >= 0 (0 = no smoothing). Fix the config.")
        if int(p.hull_resolution) < 8 or int(p.hull_max_misses) < 0:
            raise InputError(f"{source}: hull_resolution must be >= 8 and hull_max_misses >= 0. Fix the config.")
        return p


# --------------------------------------------------------------------------------------------
# normalization
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Normalization:
    """Raw world -> normalized world, without the per-frame centre.

    Attributes:
        R_up: [3, 3] rotation taking the raw world's up direction to +z.
        scale: normalized units per raw unit (one constant per session).
        up_raw: [3] the up direction in raw world coordinates that was used.
    """

    R_up: np.ndarray
    scale: float
    up_raw: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"R_up": np.asarray(self.R_up).tolist(), "scale": float(self.scale), "up_raw": np.asarray(self.up_raw).tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Normalization":
        return cls(R_up=np.asarray(d["R_up"], dtype=np.float64), scale=float(d["scale"]), up_raw=np.asarray(d["up_raw"], dtype=np.float64))


def _up_vector_from_name(up: str, source: str = "up") -> np.ndarray:
    name = up.strip().lower()
    sign = -1.0 if name.startswith("-") else 1.0
    axis = name.lstrip("+-")
    if axis not in _AXES:
        raise InputError(f"{source}: up = {up!r}; expected 'auto' or one of x, y, z, -x, -y, -z. Fix the config.")
    return sign * np.array(_AXES[axis])


def rotation_to_z(u: np.ndarray) -> np.ndarray:
    """[3, 3] the smallest rotation taking unit vector ``u`` to +z (180 deg about x for u = -z)."""
    u = np.asarray(u, dtype=np.float64)
    u = u / np.linalg.norm(u)
    z = np.array([0.0, 0.0, 1.0])
    c = float(u @ z)
    if c < -1 + 1e-12:
        return np.diag([1.0, -1.0, -1.0])
    v = np.cross(u, z)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)  # Rodrigues' formula for aligning two unit vectors


def estimate_up(cameras: Sequence[Camera], snap_deg: float = 10.0) -> np.ndarray:
    """Raw-world up direction [3] from the cameras' image-up directions.

    Image up is camera -y, i.e. ``-R[1, :]`` in world coordinates (R world-to-camera). Averaged
    over a ring of cameras looking at an arena, the tilts cancel and the mean points up. Snapped
    to the nearest signed world axis when within ``snap_deg`` degrees (the usual case: the
    calibration's world is axis-aligned with the floor).
    """
    u = np.mean([-c.R[1, :] for c in cameras], axis=0)
    n = np.linalg.norm(u)
    if n < 1e-6:
        raise InputError("cameras: image-up directions cancel out; cannot estimate 'up'. Fix: set locate.up explicitly (e.g. 'z').")
    u = u / n
    k = int(np.argmax(np.abs(u)))
    axis = np.zeros(3)
    axis[k] = np.sign(u[k])
    if snap_deg > 0 and np.degrees(np.arccos(np.clip(u @ axis, -1, 1))) <= snap_deg:
        return axis
    return u


def compute_normalization(
    cameras: Sequence[Camera], centers: np.ndarray, up: str = "auto", camera_distance: float = 2.7,
    metric_scale: float | None = None, up_snap_deg: float = 10.0,
) -> Normalization:
    """The session's normalization.

    Args:
        cameras: C cameras (R, t world-to-camera).
        centers: [T, 3] raw-world mouse centres; rows with NaN (dropped frames) are ignored.
        up: "auto" (see :func:`estimate_up`) or a signed raw-world axis name.
        camera_distance: target mean distance camera -> centre, normalized units.
        metric_scale: if set, the scale (normalized units per raw unit) to use instead.
    Returns:
        Normalization(R_up [3, 3], scale, up_raw [3]).
    """
    up_raw = estimate_up(cameras, up_snap_deg) if up == "auto" else _up_vector_from_name(up)
    R_up = rotation_to_z(up_raw)
    if metric_scale is not None:
        scale = float(metric_scale)
    else:
        c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
        c = c[np.all(np.isfinite(c), axis=1)]
        if len(c) == 0:
            raise InputError("locate: no valid mouse centre in any frame, so the scale is undefined. Fix: check the masks / calibration, or set locate.metric_scale.")
        eyes = np.stack([cam.center for cam in cameras])  # [C, 3]
        mean_dist = float(np.linalg.norm(eyes[None, :, :] - c[:, None, :], axis=-1).mean())
        scale = camera_distance / mean_dist
    return Normalization(R_up=R_up, scale=scale, up_raw=up_raw)


def norm_from_raw(normalization: Normalization, center_raw: np.ndarray) -> np.ndarray:
    """[4, 4] similarity raw world -> normalized world: ``X_norm = s R_up (X_raw - c)``."""
    s, R = normalization.scale, normalization.R_up
    m = np.eye(4)
    m[:3, :3] = s * R
    m[:3, 3] = -s * R @ np.asarray(center_raw, dtype=np.float64)
    return m


def load_normalization(path: str | Path) -> Normalization:
    """Read the JSON written by :func:`run_locate_mouse`."""
    try:
        return Normalization.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: cannot read normalization ({exc}). Fix: rerun locate_mouse.") from exc


# --------------------------------------------------------------------------------------------
# per-frame centres
# --------------------------------------------------------------------------------------------
def read_mask_qc(path: str | Path) -> pd.DataFrame:
    """Read one camera's mask QC CSV and check its columns (see :data:`QC_COLUMNS`)."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot read mask QC table ({exc}). Fix: rerun the masks rule.") from exc
    return _check_qc(df, str(path))


def _check_qc(df: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in QC_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{source}: mask QC table lacks columns {missing}. Fix: rerun the masks rule.")
    if df["frame_index"].duplicated().any():
        raise InputError(f"{source}: duplicate frame_index values in mask QC table. Fix: rerun the masks rule.")
    return df


def _as_bool(s: pd.Series) -> np.ndarray:
    if s.dtype == bool:
        return s.to_numpy()
    return s.astype(str).str.strip().str.lower().isin(("true", "1", "1.0", "yes")).to_numpy()


def _segments(keep: np.ndarray, frames: np.ndarray) -> list[np.ndarray]:
    """Runs of consecutive kept rows (index arrays); a run also breaks where the frame step
    exceeds the table's usual step (frames missing from the QC tables)."""
    step = np.median(np.diff(frames)) if len(frames) > 1 else 1
    runs, cur = [], []
    for i in range(len(keep)):
        if keep[i] and cur and frames[i] - frames[cur[-1]] > step:
            runs.append(np.array(cur))
            cur = []
        if keep[i]:
            cur.append(i)
        elif cur:
            runs.append(np.array(cur))
            cur = []
    if cur:
        runs.append(np.array(cur))
    return runs


def smooth_window_frames(smooth_ms: float, frame_rate: float | None) -> int:
    """Savitzky-Golay window (odd, frames) for ``smooth_ms`` at ``frame_rate`` sampled frames per
    second: the largest odd count of frames spanning at most smooth_ms (1 = none). E.g. 50 ms: 5
    frames at 100 fps, 1 (no smoothing) at 30 fps or below."""
    if smooth_ms <= 0:
        return 1
    if frame_rate is None or not frame_rate > 0:
        raise InputError(f"locate: smoothing over {smooth_ms} ms needs the frame rate of the sampled frames. Fix: pass "
                         "the masks files (their attrs hold fps and stride) or set locate.smooth_ms: 0.")
    n = int(math.floor(smooth_ms / 1000.0 * frame_rate + 1e-9))
    return max(1, n if n % 2 else n - 1)


def smooth_track(X: np.ndarray, keep: np.ndarray, frames: np.ndarray, window: int, polyorder: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing of a track X [T, 3] within runs of kept frames.

    Dropped rows stay NaN; no value is carried across a dropped frame. Runs shorter than
    ``polyorder + 2`` are kept unsmoothed; the window shrinks (odd) for short runs.
    """
    out = np.full_like(X, np.nan)
    for run in _segments(keep, frames):
        seg = X[run]
        w = min(int(window), len(run) if len(run) % 2 else len(run) - 1)
        if w % 2 == 0:
            w -= 1
        if w <= polyorder or w < 3:
            out[run] = seg
        else:
            out[run] = savgol_filter(seg, w, polyorder, axis=0, mode="interp")
    return out


def locate_track(cameras: Sequence[Camera], qc: Mapping[str, pd.DataFrame], params: LocateParams,
                 masks: MaskSource | None = None, threads: int = 1, body_model: Any = None,
                 frame_rate: float | None = None) -> pd.DataFrame:
    """Per-frame 3D centre from mask centroids, refined by the visual hull (or the fitted body
    model) when masks are given.

    Args:
        cameras: C cameras (R, t world-to-camera) in raw world units.
        qc: camera name -> mask QC DataFrame (columns :data:`QC_COLUMNS`; centroids in continuous
            corner-origin pixels). Cameras without a table never count as seeing the mouse.
        params: settings; ``params.center == "visual_hull"`` needs ``masks``.
        masks: (camera name, frame index) -> mask [H, W]; None = triangulation only.
        threads: frames carved in parallel (NumPy releases the GIL in the carving's array work);
            body-model pieces (:data:`BODY_PIECE` frames, each frame from the previous one's
            fit) fitted in that many processes when ``masks`` is a :class:`H5Masks` (other
            sources: one after another).
        body_model: the ``body_model.BodyModel``; needed for ``params.center == "body_model"``.
        frame_rate: sampled frames per second (video fps / stride); needed when ``params.smooth_ms`` > 0.
    Returns:
        DataFrame with :data:`OUT_COLUMNS`, one row per frame in any QC table (sorted); x, y, z
        smoothed raw-world centre (NaN when dropped), x_raw.. the per-frame centre before
        smoothing, tri_x.. the triangulated mask centroids, center_method how x_raw was found
        ("body_model", "visual_hull", or "triangulation" also when the hull came out empty).
    """
    names = [c.name for c in cameras]
    unknown = sorted(set(qc) - set(names))
    if unknown:
        raise InputError(f"mask QC given for cameras {unknown} that are not in the calibration {names}. Fix: check camera names in the config.")
    for n in names:
        if n not in qc:
            log.warning("camera %s has no mask QC table; it never counts as seeing the mouse", n)
    frames = np.unique(np.concatenate([np.asarray(qc[n]["frame_index"], dtype=np.int64) for n in qc])) if qc else np.zeros(0, np.int64)
    T, C = len(frames), len(cameras)
    uv = np.full((T, C, 2), np.nan)
    w = np.zeros((T, C))
    for c, n in enumerate(names):
        if n not in qc:
            continue
        df = qc[n]
        rows = np.searchsorted(frames, df["frame_index"].to_numpy(dtype=np.int64))
        valid = _as_bool(df["valid"]) & (df["area"].to_numpy(dtype=np.float64) > 0)
        cxy = df[["centroid_x", "centroid_y"]].to_numpy(dtype=np.float64)
        valid &= np.all(np.isfinite(cxy), axis=1)
        border = _as_bool(df["touches_border"])
        uv[rows[valid], c] = cxy[valid]
        w[rows[valid], c] = np.sqrt(df["area"].to_numpy(dtype=np.float64)[valid]) * np.where(border[valid], params.border_weight, 1.0)

    rig = CameraRig.from_cameras(cameras)
    xn = normalized_coords(uv, rig)  # undistort every centroid once, vectorized over frames
    X_raw = np.full((T, 3), np.nan)
    n_cams = np.zeros(T, dtype=np.int64)
    res_med = np.full(T, np.nan)
    res_max = np.full(T, np.nan)
    reasons = [""] * T
    rejected = [""] * T
    used_cams = np.zeros((T, C), dtype=bool)
    for i in tqdm(range(T), desc="locate_mouse", unit="frame", mininterval=2.0):
        r = triangulate_robust(uv[i], rig, w[i], params.min_cameras, params.max_residual_px, xn=xn[i])
        reasons[i] = r.reason
        X_raw[i] = r.X
        n_cams[i] = int(r.used_mask.sum())
        used_cams[i] = r.used_mask
        seen = np.all(np.isfinite(uv[i]), axis=-1) & (w[i] > 0)
        rejected[i] = ";".join(names[c] for c in np.flatnonzero(seen & ~r.used_mask)) if r.reason == "" or r.reason.startswith("residual") else ""
        if r.used_mask.any() and np.all(np.isfinite(r.X)):
            used_res = r.residuals[r.used_mask]
            res_med[i], res_max[i] = float(np.median(used_res)), float(np.max(used_res))
    keep = np.array([s == "" for s in reasons], dtype=bool)
    X_tri = X_raw.copy()
    method = np.full(T, "triangulation", dtype=object)
    if params.center == "body_model" and masks is not None:
        if body_model is None:
            raise InputError("locate: center = 'body_model' needs the MAMMAL body model. Fix: pass the body model "
                             "(results/body_model/mammal_mouse.npz) to locate_mouse, or set locate.center: visual_hull.")
        method = _fit_body_model(cameras, names, frames, keep, used_cams, X_tri, X_raw, params, masks, body_model, threads)
    if params.center in ("visual_hull", "body_model") and masks is not None:
        def centre(i: int, votes: list) -> np.ndarray:
            return hull_center(cameras, votes, X_tri[i], fine=params.hull_resolution, max_misses=params.hull_max_misses)[0]

        kept = np.flatnonzero(keep & (method != "body_model"))
        batch = 8 * max(1, threads)  # masks of a bounded number of frames in memory at once
        with ThreadPoolExecutor(max(1, threads)) as pool, tqdm(total=len(kept), desc="locate_mouse: visual hull", unit="frame", mininterval=2.0,
                                                               disable=len(kept) == 0) as bar:
            for start in range(0, len(kept), batch):
                idx = kept[start:start + batch]
                # masks are read here, in one thread (h5py serializes reads anyway); carving runs in the pool
                jobs = [pool.submit(centre, i, [masks(n, int(frames[i])) if used_cams[i, c] else None for c, n in enumerate(names)])
                        for i in idx]
                for i, job in zip(idx, jobs):
                    X_hull = job.result()
                    if np.all(np.isfinite(X_hull)):
                        X_raw[i], method[i] = X_hull, "visual_hull"
                bar.update(len(idx))
        n_empty = int(np.sum(keep & (method == "triangulation")))
        if n_empty:
            log.warning("locate_mouse: visual hull empty in %d kept frames (masks disagree); their centre stays triangulated", n_empty)
    window = smooth_window_frames(params.smooth_ms, frame_rate)
    X_s = smooth_track(np.where(keep[:, None], X_raw, np.nan), keep, frames, window, params.smooth_polyorder)
    return pd.DataFrame({
        "frame_index": frames, "x": X_s[:, 0], "y": X_s[:, 1], "z": X_s[:, 2],
        "x_raw": X_raw[:, 0], "y_raw": X_raw[:, 1], "z_raw": X_raw[:, 2],
        "tri_x": X_tri[:, 0], "tri_y": X_tri[:, 1], "tri_z": X_tri[:, 2], "center_method": method, "n_cameras": n_cams,
        "residual_px_median": res_med, "residual_px_max": res_max, "valid": keep, "reason": reasons,
        "rejected_cameras": rejected,
    }, columns=list(OUT_COLUMNS))


def _fit_body_model(cameras: Sequence[Camera], names: list[str], frames: np.ndarray, keep: np.ndarray, used_cams: np.ndarray,
                    X_tri: np.ndarray, X_raw: np.ndarray, params: LocateParams, masks: MaskSource, body_model: Any,
                    threads: int = 1) -> np.ndarray:
    """Fit the body model to the kept frames' masks (pieces of at most :data:`BODY_PIECE`
    consecutive kept frames, each frame from the previous fit; pieces in ``threads`` processes
    when the masks come from the masks files); writes the fitted centres into X_raw and returns
    the per-frame center_method ("body_model" where the fit is trusted, else "triangulation" for
    the hull to refine)."""
    method = np.full(len(frames), "triangulation", dtype=object)
    up = estimate_up(cameras, params.up_snap_deg) if params.up == "auto" else _up_vector_from_name(params.up)
    job = _BodyPieceJob(BodyFitter(ArticulatedMesh(body_model)), list(cameras), names, frames, used_cams, X_tri, up, masks)
    pieces = [run[k:k + BODY_PIECE] for run in (list(r) for r in _segments(keep, frames)) for k in range(0, len(run), BODY_PIECE)]
    workers = min(max(1, threads), len(pieces)) if isinstance(masks, H5Masks) else 1
    fits: dict = {}
    with tqdm(total=int(keep.sum()), desc="locate_mouse: body model", unit="frame", mininterval=2.0) as bar:
        if workers > 1:
            # forked processes (workers.ForkedWorkers); each opens the masks files itself (H5Masks)
            with ForkedWorkers(workers, job, "body-model piece starting at frame row") as pool:
                for piece_fits, piece in zip(pool.map(pieces, label=lambda piece: piece[0]), pieces):
                    fits.update(piece_fits)
                    bar.update(len(piece))
        else:
            with blas_threads(1):  # many small products: more BLAS threads only spin
                for piece in pieces:
                    fits.update(job(piece, progress=bar.update))
    if not fits:
        log.warning("locate_mouse: the body model could not be fitted to any frame; the visual hull gives the centres")
        return method
    costs = np.array([f.cost for f in fits.values()])
    limit = BODY_FALLBACK_RATIO * float(np.median(costs))
    for i, fit in fits.items():
        if fit.cost <= limit and np.all(np.isfinite(fit.center)):
            X_raw[i], method[i] = fit.center, "body_model"
    n_bad = int(keep.sum()) - int((method == "body_model").sum())
    log.info("locate_mouse: body model fitted to %d of %d kept frames (median cost %.3g)", int((method == "body_model").sum()),
             int(keep.sum()), float(np.median(costs)))
    if n_bad:
        log.warning("locate_mouse: %d kept frames have no trusted body-model fit (cost > %.1f x the median); the visual "
                    "hull gives their centre", n_bad, BODY_FALLBACK_RATIO)
    return method


_TEXT_COLUMNS = ("reason", "rejected_cameras", "center_method")


def read_locate_table(path: str | Path) -> pd.DataFrame:
    """Read the CSV written by :func:`run_locate_mouse` (empty reason strings stay "")."""
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values={c: ["", "nan", "NaN"] for c in OUT_COLUMNS if c not in _TEXT_COLUMNS})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot read locate table ({exc}). Fix: rerun locate_mouse.") from exc
    missing = [c for c in OUT_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: locate table lacks columns {missing}. Fix: rerun locate_mouse.")
    df["valid"] = _as_bool(df["valid"])
    return df


def summarize(table: pd.DataFrame) -> dict[str, int]:
    """Counts: ``kept`` and one entry per drop-reason code (text before ':')."""
    counts = Counter("kept" if r == "" or (isinstance(r, float) and np.isnan(r)) else str(r).split(":", 1)[0] for r in table["reason"])
    return dict(sorted(counts.items()))


def sampled_frame_rate(masks_h5: Mapping[str, str]) -> float | None:
    """Frames per second of the frames the masks rule kept (its files' attrs ``fps / stride``),
    the same for every camera; None when no file knows its fps (image folders)."""
    import h5py  # noqa: PLC0415

    rates = {}
    for name, path in masks_h5.items():
        try:
            with h5py.File(path, "r") as f:
                rates[name] = float(f.attrs["fps"]) / int(f.attrs["stride"])
        except (OSError, KeyError) as exc:
            raise InputError(f"{path}: cannot read the masks file's fps / stride attrs ({exc}). Fix: rerun the masks rule.") from exc
    lo, hi = min(rates.values()), max(rates.values())
    if hi == 0:
        return None
    if not lo > 0 or hi - lo > 1e-6 * hi:
        raise InputError(f"masks files disagree on (or lack) the sampled frame rate: {rates}. Fix: give every camera the "
                         "same fps and stride (check_sync should have caught this).")
    return lo


class H5Masks:
    """(camera name, frame index) -> mask [H, W] from the masks rule's HDF5 files: a :data:`MaskSource`
    that can be sent to worker processes (each opens the files itself on first use)."""

    def __init__(self, masks_h5: Mapping[str, str], cams: Sequence[Camera]) -> None:
        from workflow_scripts.real_shards import open_per_camera  # noqa: PLC0415  (real_shards imports this module)

        files = open_per_camera(dict(masks_h5), list(cams), "masks", "masks")  # checks presence, datasets, sizes
        self.paths = {name: str(f.filename) for name, f in files.items()}
        self.rows = {name: {int(v): i for i, v in enumerate(f["frame_index"][:])} for name, f in files.items()}
        self._files, self._pid = files, os.getpid()

    def __getstate__(self) -> dict:
        return {"paths": self.paths, "rows": self.rows}

    def __setstate__(self, state: dict) -> None:
        self.paths, self.rows, self._files, self._pid = state["paths"], state["rows"], {}, None

    def __call__(self, name: str, frame_index: int) -> np.ndarray:
        row = self.rows[name].get(int(frame_index))
        if row is None:
            raise InputError(f"{self.paths[name]}: no mask for frame {frame_index} although its QC table lists it. "
                             "Fix: rerun the masks rule.")
        if self._pid != os.getpid():  # another process: never share HDF5 handles across processes
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(name)
        if f is None:
            import h5py  # noqa: PLC0415

            f = self._files[name] = h5py.File(self.paths[name], "r")
        return f["masks"][row]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


@dataclasses.dataclass
class _BodyPieceJob:
    """Fits the body model to one piece (frame rows) of a run: picklable, so that pieces can run
    in worker processes. Centres X_tri [T, 3] start the fits; used_cams [T, C] picks the masks."""

    fitter: BodyFitter
    cameras: list
    names: list
    frames: np.ndarray
    used_cams: np.ndarray
    X_tri: np.ndarray
    up: np.ndarray
    masks: Any

    def __call__(self, piece: Sequence[int], progress=None) -> dict:
        def masks_of(i: int) -> list:
            return [self.masks(n, int(self.frames[i])) if self.used_cams[i, c] else None for c, n in enumerate(self.names)]

        return fit_body_track(self.fitter, self.cameras, masks_of, self.X_tri, self.up, [list(piece)], progress=progress)


def run_locate_mouse(
    cameras_json: str, mask_qc_csvs: Mapping[str, str], out_csv: str, out_normalization_json: str, params: Mapping[str, Any] | None,
    masks_h5: Mapping[str, str] | None = None, threads: int = 1, body_model_npz: str | None = None,
    frame_rate: float | None = None,
) -> pd.DataFrame:
    """The locate_mouse job: cameras JSON + per-camera mask QC CSVs (+ masks) -> QC table CSV + normalization JSON.

    Args:
        cameras_json: canonical cameras JSON (docs/conventions.md; R, t world-to-camera).
        mask_qc_csvs: camera name -> mask QC CSV path.
        masks_h5: camera name -> masks HDF5 of the masks rule; needed for ``center: visual_hull``
            and ``body_model`` (without it the centre is the triangulated mask centroids).
        body_model_npz: the body_model rule's npz; needed for ``center: body_model``.
        frame_rate: sampled frames per second, for the smoothing window; default: the masks
            files' ``fps / stride`` (which must agree between cameras).
        threads: frames carved in parallel; body-model pieces fitted in parallel processes.
        out_csv: per-frame table (:data:`OUT_COLUMNS`), written atomically.
        out_normalization_json: ``{"R_up", "scale", "up_raw", "params", "summary"}`` written atomically;
            the per-frame ``norm_from_raw`` is ``norm_from_raw(norm, (x, y, z) of that frame)``.
        params: :class:`LocateParams` fields (min_cameras, max_residual_px, smooth_ms, up,
            camera_distance, metric_scale, ...).
    Returns:
        The per-frame table.
    """
    p = LocateParams.from_dict(params)
    try:
        cams = cameras_from_json(json.loads(Path(cameras_json).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{cameras_json}: cannot read cameras JSON ({exc}). Fix: rerun the calibration rule.") from exc
    for cam in cams:
        cam.validate(cameras_json)
    qc = {name: read_mask_qc(path) for name, path in mask_qc_csvs.items()}
    log.info("locate_mouse: %d cameras, %d mask QC tables", len(cams), len(qc))
    blind = [name for name, df in qc.items() if not _as_bool(df["valid"]).any()]
    for name in blind:
        # Not fatal: the other cameras still locate the mouse; counted in the summary.
        log.warning("%s: camera %s never sees the mouse (no valid mask in %d frames); it is left out. "
                    "Fix: check that camera's video, masks and frame offset.", mask_qc_csvs[name], name, len(qc[name]))
    with ExitStack() as stack:
        masks = H5Masks(masks_h5, cams) if masks_h5 and p.center != "triangulation" else None
        if masks is not None:
            stack.callback(masks.close)
        model = None
        if p.center == "body_model" and masks is not None:
            if not body_model_npz:
                raise InputError("locate: center = 'body_model' needs the body model npz. Fix: give locate_mouse the "
                                 "body_model rule's output, or set locate.center: visual_hull.")
            from workflow_scripts.body_model import load_npz  # noqa: PLC0415  (imports torch)

            model = load_npz(body_model_npz)
        if frame_rate is None and masks_h5:
            frame_rate = sampled_frame_rate(masks_h5)
        if frame_rate is None and p.smooth_ms > 0:
            log.warning("locate_mouse: the frames have no frame rate (image folders?), so the %g ms smoothing cannot be "
                        "sized: the track is not smoothed (set locate.smooth_ms: 0 to say so)", p.smooth_ms)
            p = dataclasses.replace(p, smooth_ms=0.0)
        table = locate_track(cams, qc, p, masks, threads, body_model=model, frame_rate=frame_rate)
    summary = summarize(table)
    summary["centre_from_visual_hull"] = int((table["center_method"] == "visual_hull").sum())
    if p.center == "body_model":
        summary["centre_from_body_model"] = int((table["center_method"] == "body_model").sum())
    summary["cameras_never_seeing_the_mouse"] = len(blind)
    log.info("locate_mouse: %d frames; %s", len(table), ", ".join(f"{k}={v}" for k, v in summary.items()))
    if summary.get("kept", 0) == 0:
        raise InputError(
            f"{cameras_json}: no frame has a valid 3D centre ({summary}). Fix: check the masks (QC tables "
            f"{sorted(mask_qc_csvs.values())}), the calibration, or lower locate.min_cameras / raise max_residual_px."
        )
    norm = compute_normalization(cams, table[["x", "y", "z"]].to_numpy(), p.up, p.camera_distance, p.metric_scale, p.up_snap_deg)
    log.info("locate_mouse: up (raw) = %s, scale = %.6g normalized units per raw unit", np.round(norm.up_raw, 4).tolist(), norm.scale)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.9g")
    write_json(out_normalization_json, {**norm.to_dict(), "params": dataclasses.asdict(p), "summary": summary})
    return table
