import cv2
import numpy as np
import pytest

from workflow_scripts.cameras import Camera, look_at_c2w, undistort_normalized, distort_normalized, to_opencv_pixels
from workflow_scripts.errors import InputError


def _cam(dist=(0, 0, 0, 0, 0)):
    c2w = look_at_c2w([1000.0, -200.0, 600.0], [0, 0, 50.0])
    K = np.array([[900.0, -3.0, 330.0], [0, 905.0, 250.0], [0, 0, 1]])
    return Camera.from_c2w("cam1", K, c2w, 640, 480, dist=dist)


def test_known_projection_by_hand():
    # Camera at origin looking down +z: x = f X/Z + cx.
    cam = Camera("c", K=[[100, 0, 50], [0, 200, 40], [0, 0, 1]], dist=None, R=np.eye(3), t=[0, 0, 0], width=100, height=80)
    uv = cam.project(np.array([1.0, -2.0, 4.0]))
    np.testing.assert_allclose(uv, [100 * 0.25 + 50, 200 * -0.5 + 40])


def test_c2w_w2c_inverse_and_center():
    cam = _cam()
    np.testing.assert_allclose(cam.c2w @ cam.w2c, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(cam.center, [1000.0, -200.0, 600.0], atol=1e-9)
    # target projects... in front of the camera with positive depth
    assert cam.to_camera(np.array([0, 0, 50.0]))[2] > 0


def test_look_at_keeps_up_up():
    cam = _cam()
    top = cam.project(np.array([0, 0, 150.0]), distort=False)
    bottom = cam.project(np.array([0, 0, -50.0]), distort=False)
    assert top[1] < bottom[1]


def test_projection_matches_opencv_with_distortion():
    dist = np.array([-0.2, 0.05, 0.001, -0.002, 0.01])
    cam = _cam(dist)
    cam.K[0, 1] = 0.0  # projectPoints ignores skew; our model keeps it (DANNCE has skew)
    X = np.random.default_rng(0).normal(size=(50, 3)) * 100 + [0, 0, 50]
    rvec, _ = cv2.Rodrigues(cam.R)
    uv_cv, _ = cv2.projectPoints(X, rvec, cam.t, cam.K, dist)
    # OpenCV's projectPoints is pure math (no pixel-centre convention), so it must agree exactly.
    np.testing.assert_allclose(cam.project(X), uv_cv[:, 0], atol=1e-8)


def test_undistort_round_trip():
    dist = np.array([-0.3, 0.1, 0.002, 0.001, -0.02])
    xn = np.random.default_rng(1).uniform(-0.5, 0.5, size=(200, 2))
    np.testing.assert_allclose(undistort_normalized(distort_normalized(xn, dist), dist), xn, atol=1e-10)


def test_pixel_rays_hit_the_point():
    cam = _cam(np.array([-0.1, 0.02, 0, 0, 0]))
    X = np.array([[30.0, -20.0, 40.0], [-50, 10, 80]])
    d = cam.pixel_rays(cam.project(X))
    expected = (X - cam.center) / np.linalg.norm(X - cam.center, axis=1, keepdims=True)
    np.testing.assert_allclose(d, expected, atol=1e-9)


def test_validate_rejects_non_orthonormal_and_bad_shapes():
    cam = _cam()
    cam.R = cam.R * 1.1
    with pytest.raises(InputError, match="calib.mat.*not orthonormal"):
        cam.validate("calib.mat")
    with pytest.raises(InputError, match="shape"):
        Camera("c", K=np.eye(2), dist=None, R=np.eye(3), t=[0, 0, 0], width=1, height=1).validate("x")


def test_opencv_pixel_shift():
    assert np.allclose(to_opencv_pixels([0.5, 0.5]), [0, 0])
