"""Calibration readers: exact DANNCE reprojection, hand-written files of every format, round trips,
bad input."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import scipy.io as sio

from workflow_scripts.calibration import (
    detect_format, read_aniposelib_toml, read_calibration, read_dannce, read_facelift_json,
    read_opencv_filestorage, write_dannce_hires_params, write_facelift_json,
)
from workflow_scripts.cameras import Camera, cameras_to_json, look_at_c2w
from workflow_scripts.errors import InputError

# A hand-checkable camera: R = 90 deg about z (x -> y), t, K without skew, k1 only.
RVEC = [0.0, 0.0, math.pi / 2]
R90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
T = [0.1, -0.2, 2.0]
FX, FY, CX, CY, K1 = 800.0, 820.0, 320.0, 240.0, 0.1
X_TEST = np.array([0.1, 0.2, 1.0])


def hand_pixel(shift: float) -> np.ndarray:
    # x_cam = R X + t = (-0.2 + 0.1, 0.1 - 0.2, 1 + 2) = (-0.1, -0.1, 3)
    xn = np.array([-0.1 / 3, -0.1 / 3])
    radial = 1 + K1 * (xn @ xn)
    return np.array([FX * xn[0] * radial + CX + shift, FY * xn[1] * radial + CY + shift])


def _label_points(mat_path, cam_index):
    m = sio.loadmat(str(mat_path))
    ld = m["labelData"][cam_index, 0][0, 0]
    return ld["data_3d"].reshape(-1, 22, 3), ld["data_2d"].reshape(-1, 22, 2)


@pytest.mark.parametrize("session", ["markerless_mouse_1", "markerless_mouse_2"])
def test_dannce_reproduces_labels(dannce_dir, session):
    path = dannce_dir / session / "label3d_dannce.mat"
    cams = read_dannce(path, image_size=(1152, 1024))
    assert [c.name for c in cams] == [f"Camera{i}" for i in range(1, 7)]
    assert abs(cams[0].K[0, 1]) > 1.0  # DANNCE K has skew: K must be transposed, not just read
    for i, cam in enumerate(cams):
        X3, uv = _label_points(path, i)
        err = np.linalg.norm(cam.project(X3) - uv, axis=-1)
        assert np.isfinite(err).sum() > 1000
        assert np.nanmedian(err) < 0.01, (cam.name, np.nanmedian(err))
        assert np.nanmax(err) < 1e-6
        assert (cam.width, cam.height) == (1152, 1024)


def test_dannce_demo_file_and_unknown_size(dannce_dir):
    a = read_dannce(dannce_dir / "markerless_mouse_1" / "label3d_demo.mat")
    b = read_dannce(dannce_dir / "markerless_mouse_1" / "label3d_dannce.mat", image_size=(1152, 1024))
    for ca, cb in zip(a, b):
        assert (ca.width, ca.height) == (0, 0)  # unknown size, never guessed from cx, cy
        np.testing.assert_array_equal(ca.K, cb.K)
        np.testing.assert_array_equal(ca.R, cb.R)
    cams, fmt = read_calibration(dannce_dir / "markerless_mouse_2" / "label3d_dannce.mat", image_size=(1152, 1024))
    assert fmt == "dannce" and len(cams) == 6


def test_dannce_hires_round_trip(dannce_dir, tmp_path):
    cams = read_dannce(dannce_dir / "markerless_mouse_1" / "label3d_dannce.mat", image_size=(1152, 1024))
    paths = write_dannce_hires_params(tmp_path / "calib", cams)
    assert [p.name for p in paths] == [f"hires_cam{i}_params.mat" for i in range(1, 7)]
    # The file is in DANNCE's convention: K transposed, r = R^T, 1x3 vectors.
    m = sio.loadmat(str(paths[0]))
    np.testing.assert_array_equal(m["K"], cams[0].K.T)
    np.testing.assert_array_equal(m["r"], cams[0].R.T)
    assert m["t"].shape == (1, 3) and m["RDistort"].shape == (1, 3) and m["TDistort"].shape == (1, 2)
    back, fmt = read_calibration(tmp_path / "calib")
    assert fmt == "dannce"
    for c, b in zip(cams, back):
        assert (b.name, b.width, b.height) == (c.name, c.width, c.height)
        for f in ("K", "dist", "R", "t"):
            np.testing.assert_array_equal(getattr(b, f), getattr(c, f))
    single = read_dannce(paths[2])
    np.testing.assert_array_equal(single[0].K, cams[2].K)
    assert single[0].name == "Camera3"
    with pytest.raises(InputError, match="1152x1024"):
        read_dannce(tmp_path / "calib", image_size=(640, 480))


def test_opencv_yaml_single_camera_hand_pixel(tmp_path):
    p = tmp_path / "cam.yaml"
    p.write_text(
        "%YAML:1.0\n---\n"
        "image_width: 640\nimage_height: 480\n"
        "camera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n"
        f"   data: [ {FX}, 0., {CX}, 0., {FY}, {CY}, 0., 0., 1. ]\n"
        "distortion_coefficients: !!opencv-matrix\n   rows: 1\n   cols: 5\n   dt: d\n"
        f"   data: [ {K1}, 0., 0., 0., 0. ]\n"
        f"rvec: [ {RVEC[0]}, {RVEC[1]}, {RVEC[2]!r} ]\n"
        f"tvec: [ {T[0]}, {T[1]}, {T[2]} ]\n"
    )
    (cam,) = read_opencv_filestorage(p)
    assert cam.name == "cam" and (cam.width, cam.height) == (640, 480)
    np.testing.assert_allclose(cam.R, R90, atol=1e-12)
    # OpenCV pixel centres are integers: +0.5 in our corner-origin convention.
    np.testing.assert_allclose(cam.project(X_TEST), hand_pixel(0.5), atol=1e-9)
    cv_uv = cv2.projectPoints(X_TEST.reshape(1, 1, 3), np.array(RVEC), np.array(T), np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]]), np.array([K1, 0, 0, 0, 0.0]))[0]
    np.testing.assert_allclose(cam.project(X_TEST), cv_uv.reshape(2) + 0.5, atol=1e-9)
    cams, fmt = read_calibration(p, image_size=(640, 480))
    assert fmt == "opencv"


def test_opencv_json_multi_camera_written_by_cv2(tmp_path):
    p = tmp_path / "rig.json"
    fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_WRITE | cv2.FILE_STORAGE_FORMAT_JSON)
    fs.startWriteStruct("camera_names", cv2.FILE_NODE_SEQ)
    for n in ("left", "right"):
        fs.write("", n)
    fs.endWriteStruct()
    for n, dx in (("left", 0.0), ("right", 0.5)):
        fs.startWriteStruct(n, cv2.FILE_NODE_MAP)
        fs.write("K", np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]]))
        fs.write("dist_coeffs", np.array([[K1, 0, 0, 0]]))  # 4 coefficients: k3 = 0
        fs.write("R", R90)
        fs.write("T", np.array([[T[0] + dx], [T[1]], [T[2]]]))
        fs.write("image_size", np.array([[640, 480]]))
        fs.endWriteStruct()
    fs.release()
    cams, fmt = read_calibration(p)
    assert fmt == "opencv" and [c.name for c in cams] == ["left", "right"]
    np.testing.assert_allclose(cams[0].project(X_TEST), hand_pixel(0.5), atol=1e-9)
    assert cams[1].t[0] == pytest.approx(0.6)
    assert (cams[1].width, cams[1].height) == (640, 480)


ANIPOSE = """
[cam_0]
name = "A"
size = [ 640, 480,]
matrix = [ [ {fx}, 0.0, {cx},], [ 0.0, {fy}, {cy},], [ 0.0, 0.0, 1.0,],]
distortions = [ {k1}, 0.0, 0.0, 0.0, 0.0,]
rotation = [ {r0}, {r1}, {r2},]
translation = [ {t0}, {t1}, {t2},]

[cam_1]
name = "B"
size = [ 640, 480,]
matrix = [ [ {fx}, 0.0, {cx},], [ 0.0, {fy}, {cy},], [ 0.0, 0.0, 1.0,],]
distortions = [ 0.0, 0.0, 0.0, 0.0, 0.0,]
rotation = [ 0.0, 0.0, 0.0,]
translation = [ 0.0, 0.0, 1.0,]

[metadata]
adjusted = false
error = 0.3
"""


def _anipose_text(**over):
    kw = dict(fx=FX, fy=FY, cx=CX, cy=CY, k1=K1, r0=RVEC[0], r1=RVEC[1], r2=repr(RVEC[2]), t0=T[0], t1=T[1], t2=T[2])
    kw.update(over)
    return ANIPOSE.format(**kw)


def test_aniposelib_hand_pixel(tmp_path):
    p = tmp_path / "calibration.toml"
    p.write_text(_anipose_text())
    cams = read_aniposelib_toml(p)
    assert [c.name for c in cams] == ["A", "B"] and (cams[0].width, cams[0].height) == (640, 480)
    np.testing.assert_allclose(cams[0].project(X_TEST), hand_pixel(0.5), atol=1e-9)
    # Camera B: identity pose, point (0.1, 0.2, 1) at depth 2 -> (fx*0.05 + cx, fy*0.1 + cy) + 0.5
    np.testing.assert_allclose(cams[1].project(X_TEST), [FX * 0.05 + CX + 0.5, FY * 0.1 + CY + 0.5], atol=1e-9)
    assert read_calibration(tmp_path)[1] == "aniposelib"  # directory detection


def test_facelift_hand_pixel_and_round_trip(tmp_path):
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R90, T
    p = tmp_path / "opencv_cameras.json"
    p.write_text(json.dumps({"frames": [{"w": 512, "h": 512, "fx": FX, "fy": FY, "cx": CX, "cy": CY, "w2c": w2c.tolist(), "file_path": "images/cam_000.png"}]}))
    (cam,) = read_facelift_json(p)
    assert cam.name == "cam_000"
    xn = np.array([-0.1 / 3, -0.1 / 3])
    np.testing.assert_allclose(cam.project(X_TEST), [FX * xn[0] + CX, FY * xn[1] + CY], atol=1e-9)  # no shift
    ring = [Camera.from_c2w(f"v{i}", [[548.9938, 0, 256], [0, 548.9938, 256], [0, 0, 1]],
                            look_at_c2w([2.7 * np.cos(a), 2.7 * np.sin(a), 0.5], [0, 0, 0]), 512, 512)
            for i, a in enumerate(np.linspace(0, 2 * np.pi, 6, endpoint=False))]
    out = tmp_path / "out" / "opencv_cameras.json"
    write_facelift_json(out, ring)
    back, fmt = read_calibration(out)
    assert fmt == "facelift"
    for c, b in zip(ring, back):
        assert b.name == c.name and (b.width, b.height) == (512, 512)
        np.testing.assert_allclose(b.K, c.K, atol=0)
        np.testing.assert_allclose(b.c2w, c.c2w, atol=1e-12)
    distorted = Camera("d", ring[0].K, [0.1, 0, 0, 0, 0], ring[0].R, ring[0].t, 512, 512)
    with pytest.raises(InputError, match="distortion"):
        write_facelift_json(tmp_path / "x.json", [distorted])


def test_cameras_json_is_accepted(tmp_path):
    cam = Camera("c", [[FX, 0, CX], [0, FY, CY], [0, 0, 1]], None, R90, T, 640, 480)
    p = tmp_path / "cameras.json"
    p.write_text(json.dumps(cameras_to_json([cam])))
    cams, fmt = read_calibration(p)
    assert fmt == "cameras_json" and cams[0].name == "c"


# --- bad input ------------------------------------------------------------------------------
def test_bad_shape(tmp_path):
    p = tmp_path / "calibration.toml"
    p.write_text(_anipose_text().replace(f"[ 0.0, 0.0, 1.0,],]\ndistortions = [ {K1}", f"]\ndistortions = [ {K1}", 1))
    with pytest.raises(InputError, match=r"calibration.toml.*matrix"):
        read_calibration(p)


def test_non_orthonormal_rotation(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "%YAML:1.0\n---\nK: [[800., 0., 320.], [0., 800., 240.], [0., 0., 1.]]\n"
        "R: [[1., 0.2, 0.], [0., 1., 0.], [0., 0., 1.]]\nT: [0., 0., 1.]\n"
    )
    with pytest.raises(InputError, match=r"bad.yaml.*orthonormal"):
        read_calibration(p)


def test_missing_key(tmp_path):
    p = tmp_path / "calibration.toml"
    p.write_text(_anipose_text().replace(f"translation = [ {T[0]}, {T[1]}, {T[2]},]\n", ""))
    with pytest.raises(InputError, match=r"calibration.toml.*translation"):
        read_calibration(p)
    q = tmp_path / "nokey.mat"
    sio.savemat(str(q), {"K": np.eye(3), "r": np.eye(3), "RDistort": np.zeros((1, 3)), "TDistort": np.zeros((1, 2))})
    with pytest.raises(InputError, match=r"nokey.mat.*'t'"):
        read_dannce(q)


def test_unknown_format_and_duplicates(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text("hello")
    with pytest.raises(InputError, match=r"calib.txt.*unknown calibration format"):
        read_calibration(p)
    with pytest.raises(InputError, match="no known calibration"):
        detect_format(tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_calibration(tmp_path / "missing.yaml")
    d = tmp_path / "dup.toml"
    d.write_text(_anipose_text().replace('name = "B"', 'name = "A"'))
    with pytest.raises(InputError, match="duplicate camera names"):
        read_calibration(d)
    ok = tmp_path / "ok.toml"
    ok.write_text(_anipose_text())
    with pytest.raises(InputError, match="video is 320x240"):
        read_aniposelib_toml(ok, image_size=(320, 240))
