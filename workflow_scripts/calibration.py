"""Calibration readers and writers -> ``list[Camera]`` (OpenCV convention, see docs/conventions.md).

Every reader returns cameras with ``R``, ``t`` **world-to-camera** (``x_cam = R @ X + t``), ``K``
[3, 3] in the pipeline's pixel convention (continuous, image corner at (0, 0), pixel centres at
+0.5) and ``dist`` = OpenCV ``[k1, k2, p1, p2, k3]``.

Pixel conventions of the source formats (``principal_point_shift`` is added to ``cx``, ``cy``):

* OpenCV FileStorage and aniposelib: OpenCV puts pixel centres at integers, so the default shift
  is +0.5 (a point OpenCV projects to (u, v) lies at (u + 0.5, v + 0.5) in our convention).
* FaceLift ``opencv_cameras.json``: FaceLift's ray code already uses pixel centres at +0.5: 0.
* DANNCE: the labels (``data_2d``) and DANNCE's own code use the calibration's pixel frame as-is,
  so the default is 0 and ``data_2d`` is reproduced exactly. (A strict MATLAB 1-based reading
  would be -0.5; pass it explicitly if your calibration needs it.)

Image size: DANNCE files carry none. Pass ``image_size=(width, height)`` (the pipeline passes the
video size). ``image_size=None`` sets width = height = 0, meaning "unknown"; validation then
checks everything except the size, and any later step that needs the size must fail on 0. The
size is never guessed from the principal point.
"""
from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import scipy.io as sio

from workflow_scripts.atomic import atomic_path, write_json
from workflow_scripts.cameras import Camera, cameras_from_json
from workflow_scripts.errors import InputError

ImageSize = tuple[int, int] | None  # (width, height) or None = unknown

OPENCV_SHIFT = 0.5  # OpenCV centre-at-integer pixels -> corner-origin pixels
_HIRES_RE = re.compile(r"^hires_cam(\d+)_params\.mat$")


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def validate_cameras(cameras: list[Camera], source: str | Path) -> list[Camera]:
    """Validate every camera (``Camera.validate``) and check names are unique and non-empty.

    Cameras with ``width == height == 0`` ("size unknown") are validated without the size check.
    Raises InputError naming ``source``.
    """
    source = str(source)
    if not cameras:
        raise InputError(f"{source}: no cameras found. Fix: check the calibration file.")
    names = [c.name for c in cameras]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{source}: duplicate camera names {dupes}. Fix: give every camera a unique name.")
    for cam in cameras:
        if not cam.name:
            raise InputError(f"{source}: a camera has an empty name. Fix: name every camera.")
        if cam.width == 0 and cam.height == 0:
            # Size unknown: validate the rest with a placeholder size (the camera itself keeps 0).
            dataclasses.replace(cam, width=1, height=1).validate(source)
        else:
            cam.validate(source)
    return cameras


def _apply_size(cam_kwargs: dict[str, Any], image_size: ImageSize, file_size: ImageSize, source: str) -> None:
    """Fill width/height from the caller's ``image_size`` or the file's; error if they disagree."""
    if file_size is not None and tuple(int(v) for v in file_size) == (0, 0):
        file_size = None  # the file itself says "size unknown"
    if image_size is not None:
        w, h = (int(v) for v in image_size)
        if file_size is not None and (int(file_size[0]), int(file_size[1])) != (w, h):
            raise InputError(
                f"{source}: camera {cam_kwargs['name']!r} is calibrated for {file_size[0]}x{file_size[1]} px "
                f"but the video is {w}x{h} px. Fix: use the calibration that matches the videos."
            )
    elif file_size is not None:
        w, h = int(file_size[0]), int(file_size[1])
    else:
        w, h = 0, 0
    cam_kwargs["width"], cam_kwargs["height"] = w, h


def _shift_K(K: np.ndarray, shift: float) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    if K.shape == (3, 3) and shift:
        K[0, 2] += shift * K[2, 2]
        K[1, 2] += shift * K[2, 2]
    return K


def _as_array(value: Any, shape: tuple[int, ...], what: str, source: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: {what} is not numeric ({exc}). Fix the calibration file.") from exc
    if arr.size != int(np.prod(shape)):
        raise InputError(f"{source}: {what} has shape {arr.shape}, expected {shape}. Fix the calibration file.")
    return arr.reshape(shape)


def _dist5(value: Any, what: str, source: str) -> np.ndarray:
    """OpenCV distortion of length 4, 5, 8, 12 or 14 -> [5]; extra terms must be zero."""
    d = np.asarray(value, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return np.zeros(5)
    if d.size not in (4, 5, 8, 12, 14):
        raise InputError(f"{source}: {what} has {d.size} values, expected 4 or 5 ([k1,k2,p1,p2(,k3)]). Fix the calibration file.")
    if d.size > 5 and np.any(d[5:] != 0):
        raise InputError(
            f"{source}: {what} uses the rational/thin-prism/tilt model ({d.size} coefficients, nonzero beyond k3), "
            "which this pipeline does not support. Fix: recalibrate with the 5-parameter model."
        )
    return np.concatenate([d[:5], np.zeros(max(0, 5 - d.size))])


# --------------------------------------------------------------------------------------------
# DANNCE
# --------------------------------------------------------------------------------------------
def _mat_field(struct: Any, key: str, source: str, cam: str) -> np.ndarray:
    try:
        return np.asarray(struct[key], dtype=np.float64)
    except (KeyError, ValueError, IndexError) as exc:
        raise InputError(f"{source}: camera {cam!r} has no field {key!r} (DANNCE needs K, RDistort, TDistort, r, t). Fix the calibration file.") from exc


def _dannce_camera(fields: Any, name: str, source: str, image_size: ImageSize, file_size: ImageSize, shift: float) -> Camera:
    """One DANNCE camera (MATLAB row-vector convention) -> Camera.

    DANNCE: x_cam = X r + t (row vectors), pixel ~ x_cam K, so K_opencv = K.T and R = r.T.
    """
    K = _as_array(_mat_field(fields, "K", source, name), (3, 3), f"camera {name!r} K", source).T
    r = _as_array(_mat_field(fields, "r", source, name), (3, 3), f"camera {name!r} r", source)
    t = _as_array(_mat_field(fields, "t", source, name), (3,), f"camera {name!r} t", source)
    rd = _mat_field(fields, "RDistort", source, name).reshape(-1)
    td = _mat_field(fields, "TDistort", source, name).reshape(-1)
    if rd.size not in (2, 3) or td.size != 2:
        raise InputError(f"{source}: camera {name!r} RDistort has {rd.size} values (expected 2 or 3) / TDistort {td.size} (expected 2). Fix the calibration file.")
    k3 = rd[2] if rd.size == 3 else 0.0
    kw: dict[str, Any] = dict(name=name, K=_shift_K(K, shift), dist=[rd[0], rd[1], td[0], td[1], k3], R=r.T, t=t)
    _apply_size(kw, image_size, file_size, source)
    return Camera(**kw)


def _mat_string(x: Any) -> str:
    a = np.asarray(x)
    while a.dtype == object and a.size == 1:
        a = np.asarray(a.reshape(-1)[0])
    return str(a.reshape(-1)[0]) if a.size else ""


def _read_hires_file(path: Path, name: str | None, image_size: ImageSize, shift: float) -> Camera:
    try:
        m = sio.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise InputError(f"{path}: cannot read as a MATLAB .mat file ({exc}). Fix: provide a DANNCE hires_cam*_params.mat file.") from exc
    if name is None:
        name = _mat_string(m["camname"]) if "camname" in m else _default_hires_name(path)
    file_size = None
    if "imageSize" in m:  # written by write_dannce_hires_params: MATLAB's [height, width]
        hw = np.asarray(m["imageSize"]).reshape(-1)
        file_size = (int(hw[1]), int(hw[0]))
    return _dannce_camera(m, name, str(path), image_size, file_size, shift)


def _default_hires_name(path: Path) -> str:
    mt = _HIRES_RE.match(path.name)
    return f"Camera{mt.group(1)}" if mt else path.stem


def read_dannce(path: str | Path, image_size: ImageSize = None, principal_point_shift: float = 0.0) -> list[Camera]:
    """Read a DANNCE calibration.

    Accepts (a) a Label3D/DANNCE ``*.mat`` with a ``params`` cell of structs (K, RDistort, TDistort,
    r, t) and ``camnames``; (b) a directory of ``hires_cam{N}_params.mat`` (cameras named
    ``Camera{N}`` as DANNCE's video folders are, sorted by N); (c) one such file.

    Args:
        path: file or directory.
        image_size: (width, height) of the videos; None -> 0 x 0 ("unknown", see module doc).
            Files written by :func:`write_dannce_hires_params` carry their size and the camera name.
        principal_point_shift: added to cx, cy (see module doc; default 0 reproduces DANNCE labels).

    Returns:
        list[Camera] with R, t world-to-camera, K = K_dannce.T, dist = [k1, k2, p1, p2, k3].
    """
    path = Path(path)
    if path.is_dir():
        files = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := _HIRES_RE.match(p.name)))
        if not files:
            raise InputError(f"{path}: no hires_cam{{N}}_params.mat files in this directory. Fix: point to the DANNCE calibration folder.")
        cams = [_read_hires_file(p, None, image_size, principal_point_shift) for _, p in files]
        return validate_cameras(cams, path)
    if not path.exists():
        raise InputError(f"{path}: file not found. Fix: check the calibration path in the config.")
    try:
        m = sio.loadmat(str(path))
    except Exception as exc:
        raise InputError(f"{path}: cannot read as a MATLAB .mat file ({exc}). Fix: provide a DANNCE calibration.") from exc
    if "params" not in m:
        if "K" in m and "r" in m:
            return validate_cameras([_read_hires_file(path, None, image_size, principal_point_shift)], path)
        raise InputError(f"{path}: neither a DANNCE label3d file (no 'params') nor a hires_cam params file (no 'K', 'r'). Fix: provide a DANNCE calibration.")
    params = np.asarray(m["params"]).reshape(-1)
    if "camnames" in m:
        names = [_mat_string(x) for x in np.asarray(m["camnames"]).reshape(-1)]
    else:
        names = [f"Camera{i + 1}" for i in range(params.size)]
    if len(names) != params.size:
        raise InputError(f"{path}: {params.size} camera params but {len(names)} camnames. Fix the calibration file.")
    cams = []
    for name, p in zip(names, params):
        s = np.asarray(p).reshape(-1)[0]  # cell -> 1x1 struct
        if s.dtype.names is None:
            raise InputError(f"{path}: params for camera {name!r} is not a struct. Fix the calibration file.")
        fields = {k: s[k] for k in s.dtype.names}
        cams.append(_dannce_camera(fields, name, str(path), image_size, None, principal_point_shift))
    return validate_cameras(cams, path)


def write_dannce_hires_params(directory: str | Path, cameras: Sequence[Camera]) -> list[Path]:
    """Write ``hires_cam{i}_params.mat`` (i = 1..C, camera order) in DANNCE's convention.

    Stores K = K_opencv.T, r = R.T (world-to-camera, row-vector form), t [1, 3], RDistort
    [k1 k2 k3], TDistort [p1 p2], plus ``camname`` and ``imageSize`` ([height, width], MATLAB's
    order) so that :func:`read_dannce` round-trips exactly (DANNCE ignores the extra fields).
    Each file is written atomically. Returns the written paths.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, cam in enumerate(cameras, start=1):
        path = directory / f"hires_cam{i}_params.mat"
        d = cam.dist
        data = {
            "K": cam.K.T.copy(), "r": cam.R.T.copy(), "t": cam.t.reshape(1, 3).copy(),
            "RDistort": np.array([[d[0], d[1], d[4]]]), "TDistort": np.array([[d[2], d[3]]]),
            "camname": np.array([cam.name]), "imageSize": np.array([[cam.height, cam.width]], dtype=np.float64),
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # file object: savemat would append ".mat" to a .tmp name
                sio.savemat(fh, data)
        out.append(path)
    return out


# --------------------------------------------------------------------------------------------
# OpenCV FileStorage (YAML / JSON / XML)
# --------------------------------------------------------------------------------------------
_FS_K = ("camera_matrix", "K", "cameraMatrix", "intrinsics")
_FS_DIST = ("dist_coeffs", "distortion_coefficients", "distCoeffs", "D", "dist")
_FS_RVEC = ("rvec", "rotation_vector")
_FS_R = ("R", "rotation_matrix", "rotation")
_FS_T = ("tvec", "T", "t", "translation")


def _fs_value(node: Any) -> Any:
    """A FileNode -> numpy array (matrix or numeric sequence), str, float or None."""
    if node is None or node.empty() or node.isNone():
        return None
    if node.isString():
        return node.string()
    if node.isInt() or node.isReal():
        return node.real()
    if node.isSeq():
        items = [_fs_value(node.at(i)) for i in range(node.size())]
        return items
    if node.isMap():
        mat = node.mat()
        if mat is not None:
            return np.asarray(mat, dtype=np.float64)
        return {k: _fs_value(node.getNode(k)) for k in node.keys()}
    return None


def _first(node: Any, keys: Sequence[str]) -> tuple[str | None, Any]:
    for k in keys:
        v = _fs_value(node.getNode(k))
        if v is not None:
            return k, v
    return None, None


def _fs_camera(node: Any, name: str, source: str, image_size: ImageSize, shift: float) -> Camera:
    where = f"camera {name!r}"
    _, K = _first(node, _FS_K)
    if K is None:
        raise InputError(f"{source}: {where} has no intrinsics (one of {list(_FS_K)}). Fix the calibration file.")
    _, dist = _first(node, _FS_DIST)
    _, rvec = _first(node, _FS_RVEC)
    rkey, R = _first(node, _FS_R)
    if rvec is not None:
        rv = _as_array(rvec, (3,), f"{where} rvec", source)
        R = cv2.Rodrigues(rv.reshape(3, 1))[0]
    elif R is not None:
        R = np.asarray(R, dtype=np.float64)
        if R.size == 3:  # a 3-vector under a rotation key is a Rodrigues vector
            R = cv2.Rodrigues(R.reshape(3, 1))[0]
        else:
            R = _as_array(R, (3, 3), f"{where} {rkey}", source)
    else:
        raise InputError(f"{source}: {where} has no rotation (rvec or R, world-to-camera). Fix the calibration file.")
    _, t = _first(node, _FS_T)
    if t is None:
        raise InputError(f"{source}: {where} has no translation (one of {list(_FS_T)}). Fix the calibration file.")
    file_size = None
    w, h = _fs_value(node.getNode("image_width")), _fs_value(node.getNode("image_height"))
    if w is not None and h is not None:
        file_size = (int(w), int(h))
    elif (sz := _fs_value(node.getNode("image_size"))) is not None:
        sz = np.asarray(sz, dtype=np.float64).reshape(-1)
        file_size = (int(sz[0]), int(sz[1]))
    kw: dict[str, Any] = dict(
        name=name, K=_shift_K(_as_array(K, (3, 3), f"{where} K", source), shift),
        dist=_dist5(dist if dist is not None else [], f"{where} distortion", source),
        R=R, t=_as_array(t, (3,), f"{where} translation", source),
    )
    _apply_size(kw, image_size, file_size, source)
    return Camera(**kw)


def read_opencv_filestorage(path: str | Path, image_size: ImageSize = None, principal_point_shift: float = OPENCV_SHIFT) -> list[Camera]:
    """Read an OpenCV ``cv::FileStorage`` calibration (YAML, JSON or XML).

    Layout (node names accepted, first match wins):
      * multi-camera: a top-level string sequence ``camera_names`` (or ``cameras``); one map per
        name holding that camera's fields;
      * single camera: the fields at top level (camera named after the file stem).
    Per-camera fields: intrinsics ``camera_matrix`` | ``K`` | ``cameraMatrix`` | ``intrinsics``
    (3x3); distortion ``dist_coeffs`` | ``distortion_coefficients`` | ``distCoeffs`` | ``D`` |
    ``dist`` (4 or 5 values, OpenCV order; optional); rotation world-to-camera ``rvec`` |
    ``rotation_vector`` (Rodrigues) or ``R`` | ``rotation_matrix`` | ``rotation`` (3x3);
    translation ``tvec`` | ``T`` | ``t`` | ``translation`` (3); size ``image_width`` +
    ``image_height`` or ``image_size`` [w, h] (optional). Matrices may be ``!!opencv-matrix``
    nodes or plain nested sequences.

    OpenCV's pixel centres are integers, so ``principal_point_shift`` defaults to +0.5.
    Returns list[Camera] (R, t world-to-camera).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found. Fix: check the calibration path in the config.")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        ok = fs.isOpened()
    except cv2.error as exc:
        raise InputError(f"{path}: OpenCV cannot parse this FileStorage file ({exc}). Fix the file's syntax.") from exc
    if not ok:
        raise InputError(f"{path}: OpenCV cannot open this file as FileStorage. Fix the file's syntax.")
    try:
        root = fs.root()
        _, names = _first(root, ("camera_names", "cameras"))
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise InputError(f"{path}: 'camera_names' must be a sequence of strings. Fix the calibration file.")
            cams = []
            for n in names:
                node = root.getNode(n)
                if node.empty() or not node.isMap():
                    raise InputError(f"{path}: camera {n!r} is listed in camera_names but has no map node {n!r}. Fix the calibration file.")
                cams.append(_fs_camera(node, n, str(path), image_size, principal_point_shift))
        else:
            cams = [_fs_camera(root, path.stem, str(path), image_size, principal_point_shift)]
    finally:
        fs.release()
    return validate_cameras(cams, path)


# --------------------------------------------------------------------------------------------
# aniposelib calibration.toml
# --------------------------------------------------------------------------------------------
def read_aniposelib_toml(path: str | Path, image_size: ImageSize = None, principal_point_shift: float = OPENCV_SHIFT) -> list[Camera]:
    """Read an aniposelib ``calibration.toml``.

    Sections ``[cam_N]`` (sorted by N) with ``name``, ``size`` [width, height], ``matrix`` 3x3,
    ``distortions`` (OpenCV order), ``rotation`` (Rodrigues vector, world-to-camera) and
    ``translation``; other sections (``[metadata]``) are ignored. aniposelib projects with
    ``cv2.projectPoints`` (pixel centres at integers), hence the default +0.5 shift.
    Returns list[Camera] (R, t world-to-camera).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found. Fix: check the calibration path in the config.") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc}). Fix the file's syntax.") from exc
    sections = sorted(
        ((int(k.split("_", 1)[1]), v) for k, v in data.items() if re.fullmatch(r"cam_\d+", k) and isinstance(v, dict)),
        key=lambda kv: kv[0],
    )
    if not sections:
        raise InputError(f"{path}: no [cam_N] sections. Fix: provide an aniposelib calibration.toml.")
    cams = []
    for idx, sec in sections:
        name = str(sec.get("name", f"cam_{idx}"))
        missing = [k for k in ("matrix", "rotation", "translation") if k not in sec]
        if missing:
            raise InputError(f"{path}: [cam_{idx}] ({name!r}) lacks {missing}. Fix the calibration file.")
        rv = _as_array(sec["rotation"], (3,), f"[cam_{idx}] rotation", str(path))
        file_size = None
        if "size" in sec:
            sz = _as_array(sec["size"], (2,), f"[cam_{idx}] size", str(path))
            file_size = (int(sz[0]), int(sz[1]))
        kw: dict[str, Any] = dict(
            name=name, K=_shift_K(_as_array(sec["matrix"], (3, 3), f"[cam_{idx}] matrix", str(path)), principal_point_shift),
            dist=_dist5(sec.get("distortions", []), f"[cam_{idx}] distortions", str(path)),
            R=cv2.Rodrigues(rv.reshape(3, 1))[0], t=_as_array(sec["translation"], (3,), f"[cam_{idx}] translation", str(path)),
        )
        _apply_size(kw, image_size, file_size, str(path))
        cams.append(Camera(**kw))
    return validate_cameras(cams, path)


# --------------------------------------------------------------------------------------------
# FaceLift opencv_cameras.json
# --------------------------------------------------------------------------------------------
def read_facelift_json(path: str | Path, image_size: ImageSize = None) -> list[Camera]:
    """Read FaceLift's ``opencv_cameras.json``: ``{"frames": [{"w", "h", "fx", "fy", "cx", "cy",
    "w2c": 4x4 world-to-camera, optional "file_path", "name", "dist"}]}``.

    Names: ``name`` if present, else the stem of ``file_path``, else ``view_{i:03d}``. Pixel
    convention already matches ours (centres at +0.5): no shift. Returns list[Camera].
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: file not found. Fix: check the calibration path in the config.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}). Fix the file's syntax.") from exc
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise InputError(f"{path}: no 'frames' list. Fix: provide a FaceLift opencv_cameras.json.")
    cams = []
    for i, fr in enumerate(frames):
        missing = [k for k in ("w", "h", "fx", "fy", "cx", "cy", "w2c") if k not in fr]
        if missing:
            raise InputError(f"{path}: frames[{i}] lacks {missing}. Fix the calibration file.")
        name = str(fr.get("name") or (Path(fr["file_path"]).stem if fr.get("file_path") else f"view_{i:03d}"))
        w2c = _as_array(fr["w2c"], (4, 4), f"frames[{i}] w2c", str(path))
        K = np.array([[fr["fx"], 0.0, fr["cx"]], [0.0, fr["fy"], fr["cy"]], [0.0, 0.0, 1.0]], dtype=np.float64)
        kw: dict[str, Any] = dict(name=name, K=K, dist=_dist5(fr.get("dist", []), f"frames[{i}] dist", str(path)), R=w2c[:3, :3], t=w2c[:3, 3])
        _apply_size(kw, image_size, (int(fr["w"]), int(fr["h"])), str(path))
        cams.append(Camera(**kw))
    return validate_cameras(cams, path)


def write_facelift_json(path: str | Path, cameras: Sequence[Camera]) -> None:
    """Write FaceLift's ``opencv_cameras.json`` (atomically) for pinhole cameras.

    Each frame: ``w``, ``h``, ``fx``, ``fy``, ``cx``, ``cy``, ``w2c`` (4x4 world-to-camera),
    ``file_path`` = ``images/{name}.png`` and ``name``. FaceLift has no skew or distortion: a
    camera with either raises InputError (undistort/crop first, e.g. with workflow_scripts.crop).
    """
    frames = []
    for cam in cameras:
        if np.any(cam.dist != 0) or cam.K[0, 1] != 0:
            raise InputError(f"{path}: camera {cam.name!r} has distortion or skew, which FaceLift's format cannot hold. Fix: write undistorted crops' cameras.")
        frames.append({
            "name": cam.name, "file_path": f"images/{cam.name}.png", "w": cam.width, "h": cam.height,
            "fx": float(cam.K[0, 0]), "fy": float(cam.K[1, 1]), "cx": float(cam.K[0, 2]), "cy": float(cam.K[1, 2]),
            "w2c": cam.w2c.tolist(),
        })
    write_json(path, {"frames": frames})


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------
def detect_format(path: str | Path) -> str:
    """Return one of ``dannce``, ``opencv``, ``aniposelib``, ``facelift``, ``cameras_json`` for
    ``path`` (file or directory), judging by name and contents; InputError if unknown."""
    path = Path(path)
    if path.is_dir():
        if any(_HIRES_RE.match(p.name) for p in path.iterdir()):
            return "dannce"
        for fname, fmt in (("calibration.toml", "aniposelib"), ("opencv_cameras.json", "facelift")):
            if (path / fname).is_file():
                return fmt
        raise InputError(
            f"{path}: directory holds no known calibration (hires_cam*_params.mat, calibration.toml, opencv_cameras.json). "
            "Fix: point the config at the calibration file itself."
        )
    if not path.is_file():
        raise InputError(f"{path}: calibration not found. Fix: check the calibration path in the config.")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "dannce"
    if suffix == ".toml":
        return "aniposelib"
    if suffix in (".yaml", ".yml", ".xml"):
        return "opencv"
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc}). Fix the file's syntax.") from exc
        if isinstance(data, dict) and "frames" in data:
            return "facelift"
        if isinstance(data, dict) and "schema_version" in data and "cameras" in data:
            return "cameras_json"
        return "opencv"  # cv::FileStorage JSON
    raise InputError(
        f"{path}: unknown calibration format (suffix {suffix!r}). Supported: DANNCE .mat or hires_cam folder, "
        "OpenCV FileStorage .yaml/.yml/.xml/.json, aniposelib .toml, FaceLift opencv_cameras.json, pipeline cameras.json."
    )


def read_calibration(path: str | Path, image_size: ImageSize = None) -> tuple[list[Camera], str]:
    """Read any supported calibration with each format's default pixel convention.

    Args:
        path: file or directory (see :func:`detect_format`).
        image_size: (width, height) of the videos. Required for DANNCE to get a usable size
            (None -> 0 x 0 = unknown); for formats that carry a size it must agree with it.
    Returns:
        (cameras, format_name); cameras with R, t world-to-camera, validated, unique names.
    """
    fmt = detect_format(path)
    if fmt == "dannce":
        cams = read_dannce(path, image_size)
    elif fmt == "opencv":
        cams = read_opencv_filestorage(path, image_size)
    elif fmt == "aniposelib":
        p = Path(path)
        cams = read_aniposelib_toml(p / "calibration.toml" if p.is_dir() else p, image_size)
    elif fmt == "facelift":
        p = Path(path)
        cams = read_facelift_json(p / "opencv_cameras.json" if p.is_dir() else p, image_size)
    else:  # cameras_json: the pipeline's own canonical file
        try:
            cams = cameras_from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: malformed cameras JSON (missing {exc}). Fix: rerun the calibration rule.") from exc
        for c in cams:
            kw: dict[str, Any] = {"name": c.name}
            _apply_size(kw, image_size, (c.width, c.height), str(path))
            c.width, c.height = kw["width"], kw["height"]
        validate_cameras(cams, path)
    return cams, fmt
