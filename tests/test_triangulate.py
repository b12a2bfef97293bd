"""Triangulation: exact recovery with distortion and skew, weights, outlier rejection, too few views."""
from __future__ import annotations

import numpy as np
import pytest

from workflow_scripts.cameras import Camera, look_at_c2w
from workflow_scripts.errors import InputError
from workflow_scripts.triangulate import CameraRig, normalized_coords, triangulate_robust, triangulate_weighted


def ring_cameras(n: int = 6, radius: float = 300.0, height: float = 150.0, distort: bool = True) -> list[Camera]:
    """n cameras on a ring above the origin (mm, z up), looking at the origin, distorted lenses."""
    cams = []
    for i, a in enumerate(np.linspace(0, 2 * np.pi, n, endpoint=False)):
        eye = [radius * np.cos(a), radius * np.sin(a), height + 20 * i]
        K = [[1200.0 + 10 * i, -3.0, 576.0 + i], [0.0, 1210.0, 512.0 - i], [0.0, 0.0, 1.0]]  # skew like DANNCE
        dist = [-0.2 + 0.02 * i, 0.5, 0.001, -0.002, -1.0] if distort else None
        cams.append(Camera.from_c2w(f"cam{i + 1}", K, look_at_c2w(eye, [0, 0, 0]), 1152, 1024, dist))
    return cams


def test_exact_recovery_with_distortion():
    cams = ring_cameras()
    rng = np.random.default_rng(0)
    for X in rng.uniform([-80, -80, 0], [80, 80, 60], size=(20, 3)):
        uv = np.array([c.project(X) for c in cams])
        Xh, res = triangulate_weighted(uv, cams, rng.uniform(0.5, 2.0, 6))
        np.testing.assert_allclose(Xh, X, atol=1e-8)
        assert res.shape == (6,) and np.all(res < 1e-8)


def test_distortion_matters():
    cams = ring_cameras()
    X = np.array([60.0, -40.0, 30.0])
    uv = np.array([c.project(X) for c in cams])
    Xh, res = triangulate_weighted(uv, cams, undistort=False)
    assert np.linalg.norm(Xh - X) > 0.1  # ignoring the lens is measurably wrong...
    uv0 = np.array([c.project(X, distort=False) for c in cams])
    Xh0, res0 = triangulate_weighted(uv0, cams, undistort=False)  # ...unless pixels are undistorted
    np.testing.assert_allclose(Xh0, X, atol=1e-8)
    assert np.all(res0 < 1e-8)


def test_unseen_and_zero_weight_cameras_are_ignored():
    cams = ring_cameras()
    X = np.array([10.0, 20.0, 30.0])
    uv = np.array([c.project(X) for c in cams])
    uv[1] = np.nan
    uv[4] += 500.0  # garbage, but weight 0
    w = np.ones(6)
    w[4] = 0.0
    Xh, res = triangulate_weighted(uv, cams, w)
    np.testing.assert_allclose(Xh, X, atol=1e-8)
    assert np.isnan(res[1]) and res[4] == pytest.approx(500 * np.sqrt(2), rel=1e-6)


def test_weights_shift_noisy_solution():
    cams = ring_cameras()
    X = np.array([0.0, 0.0, 30.0])
    uv = np.array([c.project(X) for c in cams])
    uv[0] += [8.0, -5.0]
    X_eq, _ = triangulate_weighted(uv, cams)
    w = np.ones(6)
    w[0] = 1e-3
    X_low, _ = triangulate_weighted(uv, cams, w)
    assert np.linalg.norm(X_low - X) < 0.01 * np.linalg.norm(X_eq - X)


def test_robust_rejects_one_corrupted_camera():
    cams = ring_cameras()
    rig = CameraRig.from_cameras(cams)
    X = np.array([-30.0, 45.0, 20.0])
    uv = np.array([c.project(X) for c in cams])
    uv[3] += [40.0, 25.0]
    r = triangulate_robust(uv, rig, min_cameras=3, max_residual_px=2.0)
    assert r.ok and r.reason == ""
    np.testing.assert_array_equal(r.used_mask, [True, True, True, False, True, True])
    np.testing.assert_allclose(r.X, X, atol=1e-7)
    assert r.residuals[3] == pytest.approx(np.hypot(40, 25), rel=1e-6)
    # precomputed normalized coordinates give the same answer
    r2 = triangulate_robust(uv, rig, min_cameras=3, max_residual_px=2.0, xn=normalized_coords(uv, rig))
    np.testing.assert_array_equal(r2.X, r.X)


def test_robust_fails_with_reasons():
    cams = ring_cameras()
    X = np.array([5.0, 5.0, 5.0])
    uv = np.array([c.project(X) for c in cams])
    uv[2:] = np.nan
    r = triangulate_robust(uv, cams, min_cameras=3)
    assert not r.ok and r.reason.startswith("too_few_cameras") and np.all(np.isnan(r.X))
    uv = np.array([c.project(X) for c in cams])
    uv[3:] = np.nan
    uv[0] += 60.0
    r = triangulate_robust(uv, cams, min_cameras=3, max_residual_px=2.0)
    assert not r.ok and r.reason.startswith("residual") and r.used_mask.sum() == 3
    with pytest.raises(InputError, match="at least 2"):
        triangulate_weighted(np.where(np.arange(6)[:, None] == 0, uv, np.nan), cams)
    with pytest.raises(InputError, match="shape"):
        triangulate_weighted(uv[:4], cams)
