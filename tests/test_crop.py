"""Exact tests of re-aim + undistort + crop (workflow_scripts.crop)."""
import math

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from workflow_scripts.cameras import Camera, look_at_c2w
from workflow_scripts.crop import (CropParams, crop_view, exact_maps, fast_maps, normalize_c2w, prepare_camera,
                                   project_pinhole, reaim_rotation, split_similarity)
from workflow_scripts.errors import InputError

W, H = 640, 512
S = 256


def make_camera(eye=(300.0, -120.0, 220.0), target=(10.0, 20.0, 30.0), roll_deg=17.0, name="cam") -> Camera:
    """Distorted camera with skew, rolled so that it is NOT up-aligned (raw world z up)."""
    c2w = look_at_c2w(np.array(eye), np.array(target), np.array([0.0, 0.0, 1.0]))
    c2w[:3, :3] = c2w[:3, :3] @ Rotation.from_euler("z", roll_deg, degrees=True).as_matrix()
    K = np.array([[600.0, -4.5, 322.3], [0.0, 590.0, 250.7], [0.0, 0.0, 1.0]])
    return Camera.from_c2w(name, K, c2w, W, H, dist=np.array([-0.21, 0.09, 0.0012, -0.0017, -0.012]))


def make_norm(center, up_raw=(0.0, 0.0, 1.0), scale=2.7 / 380.0, yaw_deg=30.0) -> np.ndarray:
    """Similarity X_norm = s R_up (X - c) whose R_up maps ``up_raw`` to +z (plus a yaw)."""
    up = np.asarray(up_raw, float) / np.linalg.norm(up_raw)
    R_align, _ = Rotation.align_vectors([[0.0, 0.0, 1.0]], [up])
    R_up = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix() @ R_align.as_matrix()
    N = np.eye(4)
    N[:3, :3] = scale * R_up
    N[:3, 3] = -scale * R_up @ np.asarray(center, float)
    return N


def to_norm(N, X):
    return np.asarray(X) @ N[:3, :3].T + N[:3, 3]


def disk_mask(cam, X_c, r=40.0):
    u, v = cam.project(X_c)
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (int(round(u * 16 - 8)), int(round(v * 16 - 8))), int(r * 16), 255, -1, lineType=cv2.LINE_8, shift=4)
    return m


@pytest.fixture(scope="module")
def setup():
    cam = make_camera()
    prep = prepare_camera(cam)
    X_c = np.array([35.0, -10.0, 40.0])  # off the real camera's axis
    return cam, prep, X_c


def test_split_similarity_and_normalized_projection_is_exact(setup):
    cam, prep, X_c = setup
    N = make_norm(X_c, up_raw=(0.2, -0.3, 1.0))
    s, R_up, c = split_similarity(N)
    assert s == pytest.approx(2.7 / 380.0, rel=1e-12)
    np.testing.assert_allclose(c, X_c, atol=1e-9)
    R_v = reaim_rotation(cam, X_c, R_up[2])
    c2w_raw = np.eye(4)
    c2w_raw[:3, :3], c2w_raw[:3, 3] = R_v, cam.center
    c2w_n = normalize_c2w(c2w_raw, N)
    K = np.array([[400.0, 0, 128], [0, 400.0, 128], [0, 0, 1]])
    X = X_c + np.random.default_rng(0).normal(0, 30, (50, 3))
    np.testing.assert_allclose(project_pinhole(K, c2w_n, to_norm(N, X)), project_pinhole(K, c2w_raw, X), atol=1e-9)
    # c2w_norm is a proper rigid transform (scale removed from the rotation).
    np.testing.assert_allclose(c2w_n[:3, :3] @ c2w_n[:3, :3].T, np.eye(3), atol=1e-12)


def test_center_projects_to_crop_centre_and_up_is_up(setup):
    cam, prep, X_c = setup
    for up_raw in [(0.0, 0.0, 1.0), (0.3, -0.2, 1.0)]:
        N = make_norm(X_c + [3.0, -2.0, 1.0], up_raw=up_raw)  # normalization centre != crop centre
        img = np.full((H, W, 3), 90, np.uint8)
        r = crop_view(img, disk_mask(cam, X_c), prep, X_c, N, S=S, size_ratio=0.3, background="white")
        assert r.valid, r.reason
        uv = project_pinhole(r.K, r.c2w, to_norm(N, X_c))
        np.testing.assert_allclose(uv, [S / 2, S / 2], atol=1e-6)
        # (d) world up (normalized +z) is image up: same column, smaller row.
        Xn_up = to_norm(N, X_c) + np.array([0.0, 0.0, 0.05])
        uv_up = project_pinhole(r.K, r.c2w, Xn_up)
        assert abs(uv_up[0] - S / 2) < 1e-9 and uv_up[1] < S / 2 - 1.0


def test_fast_maps_match_exact(setup):
    cam, prep, X_c = setup
    R_v = reaim_rotation(cam, X_c, np.array([0.0, 0.0, 1.0]))
    K = np.array([[700.0, 0, S / 2], [0, 700.0, S / 2], [0, 0, 1]])
    a, b = fast_maps(prep, R_v, K, S), exact_maps(prep, R_v, K, S)
    inside = (b[..., 0] > -1) & (b[..., 0] < W) & (b[..., 1] > -1) & (b[..., 1] < H)
    assert inside.mean() > 0.9
    assert np.abs(a - b).max() < 1e-3  # OpenCV's map + skew correction is exact (float32)


def test_fold_and_behind_fall_back_to_exact_maps():
    """A wide crop of a strongly barrel-distorted lens reaches past the radius where the
    polynomial folds back: those pixels must map outside the image, not to ghost pixels."""
    cam = make_camera()
    cam.dist = np.array([-0.6, 0.0, 0.0, 0.0, 0.0])  # fold at r^2 = 1 / 1.8
    prep = prepare_camera(cam)
    assert prep.r2_fold == pytest.approx(0.9 / 1.8)
    R_v = reaim_rotation(cam, np.array([35.0, -10.0, 40.0]), np.array([0.0, 0.0, 1.0]))
    K = np.array([[40.0, 0, S / 2], [0, 40.0, S / 2], [0, 0, 1]])  # ~145 degree field of view
    a, b = fast_maps(prep, R_v, K, S), exact_maps(prep, R_v, K, S)
    out_a, out_b = a[..., 0] < -1000, b[..., 0] < -1000
    assert out_b.mean() > 0.2 and (out_a != out_b).mean() < 1e-3  # float32 vs float64 at the fold edge
    np.testing.assert_allclose(a[~out_a & ~out_b], b[~out_a & ~out_b], atol=1e-3)
    uu, vv = np.meshgrid(np.arange(S) + 0.5, np.arange(S) + 0.5)
    d = np.stack([uu, vv, np.ones_like(uu)], -1) @ (cam.R @ R_v @ np.linalg.inv(K)).T
    beyond = (d[..., 2] <= 0) | (((d[..., :2] / d[..., 2:3]) ** 2).sum(-1) >= prep.r2_fold)
    assert beyond.any() and (a[beyond] < -1000).all()


def test_dots_land_where_projected(setup):
    """(b) 3D points drawn as small dots in the distorted original land, through the crop's
    K / normalized c2w, at the crop pixels where remap put them (< 0.1 px)."""
    cam, prep, X_c = setup
    N = make_norm(X_c, up_raw=(0.1, 0.2, 1.0))
    rng = np.random.default_rng(1)
    pts = X_c + rng.uniform(-14, 14, (40, 3))
    uv = cam.project(pts)
    # keep well-separated dots
    keep = []
    for i in range(len(pts)):
        if all(np.linalg.norm(uv[i] - uv[j]) > 14 for j in keep):
            keep.append(i)
    pts, uv = pts[keep], uv[keep]
    assert len(pts) >= 6
    sigma = 1.3
    yy, xx = np.mgrid[0:H, 0:W] + 0.5  # pixel centres, corner-origin convention
    img = np.zeros((H, W), np.float64)
    for u, v in uv:
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma**2))
    img8 = np.repeat(np.clip(img * 255, 0, 255).round().astype(np.uint8)[..., None], 3, -1)
    r = crop_view(img8, disk_mask(cam, X_c, r=45), prep, X_c, N, S=S, size_ratio=0.3, background="keep")
    assert r.valid, r.reason
    q = project_pinhole(r.K, r.c2w, to_norm(N, pts))
    crop = r.image[..., 0].astype(np.float64)
    errs = []
    for u, v in q:
        c0, r0 = int(u), int(v)
        win = crop[r0 - 7:r0 + 8, c0 - 7:c0 + 8]
        ys, xs = np.mgrid[r0 - 7:r0 + 8, c0 - 7:c0 + 8] + 0.5
        assert win.sum() > 1000, "dot missing from the crop"
        errs.append(math.hypot((win * xs).sum() / win.sum() - u, (win * ys).sum() / win.sum() - v))
    assert max(errs) < 0.1, errs


@pytest.mark.parametrize("ratio,size", [(0.3, 256), (0.2, 128), (0.45, 256)])
def test_pixel_size_rule(setup, ratio, size):
    """(c) sqrt(crop mask area) / S equals the target ratio within 1 %."""
    cam, prep, _ = setup
    for X_c in ([35.0, -10.0, 40.0], [-40.0, 60.0, 10.0]):
        X_c = np.array(X_c)
        N = make_norm(X_c)
        r = crop_view(np.zeros((H, W, 3), np.uint8), disk_mask(cam, X_c, r=30), prep, X_c, N, S=size, size_ratio=ratio)
        assert r.valid, r.reason
        measured = math.sqrt(cv2.countNonZero(r.mask)) / size
        assert measured == pytest.approx(ratio, rel=0.01)
        assert r.size_ratio == pytest.approx(measured)
        assert r.center_offset_px < 2.0  # a disk around the centre stays centred


def test_background_modes_and_nearest(setup):
    cam, prep, X_c = setup
    N = make_norm(X_c)
    img = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    m = disk_mask(cam, X_c)
    keep = crop_view(img, m, prep, X_c, N, S=S, background="keep")
    white = crop_view(img, m, prep, X_c, N, S=S, background="white")
    black = crop_view(img, m, prep, X_c, N, S=S, background="black")
    out = white.mask == 0
    assert out.mean() > 0.5
    assert (white.image[out] == 255).all() and (black.image[out] == 0).all()
    np.testing.assert_array_equal(white.image[~out], keep.image[~out])
    near = crop_view(img, m, prep, X_c, N, params=CropParams(image_size=S, mask_interp="nearest"))
    inter = (near.mask > 0) & (keep.mask > 0)
    assert inter.sum() / ((near.mask > 0) | (keep.mask > 0)).sum() > 0.97
    # same inputs -> same outputs
    again = crop_view(img, m, prep, X_c, N, S=S, background="keep")
    np.testing.assert_array_equal(again.image, keep.image)
    # out=: the crop lands in the given (dirty) buffers, which become the result's image / mask
    for bg, ref in (("keep", keep), ("white", white), ("black", black)):
        bufs = (np.full((S, S, 3), 7, np.uint8), np.full((S, S), 7, np.uint8))
        r = crop_view(img, m, prep, X_c, N, S=S, background=bg, out=bufs)
        assert r.image is bufs[0] and r.mask is bufs[1]
        np.testing.assert_array_equal(r.image, ref.image)
        np.testing.assert_array_equal(r.mask, ref.mask)
        assert r.box == ref.box and r.f == ref.f and r.touches_crop_border == ref.touches_crop_border


def test_invalid_views_are_flagged(setup):
    cam, prep, X_c = setup
    N = make_norm(X_c)
    img = np.zeros((H, W, 3), np.uint8)
    r = crop_view(img, np.zeros((H, W), np.uint8), prep, X_c, N, S=64)
    assert not r.valid and r.reason == "empty mask" and r.image.shape == (64, 64, 3)
    m = np.zeros((H, W), np.uint8)
    m[200:300, 0:50] = 255
    r = crop_view(img, m, prep, X_c, N, S=64)
    assert not r.valid and "border" in r.reason
    # the same from a part of the frame: touching the frame's left edge counts, the part's own edge does not
    part = np.ascontiguousarray(m[150:350, 0:128])
    assert "border" in crop_view(img[150:350, 0:128], part, prep, X_c, N, S=64, origin=(0, 150)).reason
    inner = np.zeros((200, 128), np.uint8)
    inner[50:150, 0:50] = 255  # touches the part's left edge at x = 64 of the frame
    assert "border" not in crop_view(img[150:350, 64:192], inner, prep, X_c, N, S=64, origin=(64, 150)).reason
    behind = cam.center + 2 * (cam.center - X_c)
    r = crop_view(img, disk_mask(cam, X_c), prep, behind, N, S=64)
    assert not r.valid and "behind" in r.reason


def test_tail_reaching_crop_border_keeps_view_valid(setup):
    cam, prep, X_c = setup
    m = disk_mask(cam, X_c, r=30)
    u, v = cam.project(X_c)
    cv2.line(m, (int(u), int(v)), (int(u) + 150, int(v) + 20), 255, 2)  # a thin 'tail'
    r = crop_view(np.zeros((H, W, 3), np.uint8), m, prep, X_c, make_norm(X_c), S=128)
    assert r.valid and r.touches_crop_border
    assert r.mask[:, -1].any()


def test_top_down_camera_roll_is_defined():
    cam = make_camera(eye=(0.0, 0.0, 400.0), target=(0.0, 0.0, 0.0), roll_deg=40.0)
    R_v = reaim_rotation(cam, np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(R_v.T @ R_v, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(R_v[:, 2], [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(R_v[:, 0], cam.R[0], atol=1e-9)  # keeps the real camera's roll


def test_bad_inputs_raise(setup):
    cam, prep, X_c = setup
    with pytest.raises(InputError, match="norm"):
        split_similarity(np.diag([1.0, 1.0, -1.0, 1.0]))
    big = (cam.height + 2, cam.width)
    with pytest.raises(InputError, match="calibration"):  # larger than the camera's image
        crop_view(np.zeros((*big, 3), np.uint8), np.zeros(big, np.uint8), prep, X_c, np.eye(4))
    with pytest.raises(InputError, match="calibration"):  # a part reaching beyond the image
        crop_view(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), prep, X_c, np.eye(4),
                  origin=(cam.width - 5, 0))
    with pytest.raises(InputError, match="calibration"):  # image and mask of different sizes
        crop_view(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 10), np.uint8), prep, X_c, np.eye(4))
    with pytest.raises(InputError, match="background"):
        CropParams(background="green")


def test_maps_of_a_rectangle_are_that_window_of_the_crop(setup):
    cam, prep, X_c = setup
    R_v = reaim_rotation(cam, X_c, np.array([0.0, 0.0, 1.0]))
    K = np.array([[700.0, 0, S / 2], [0, 700.0, S / 2], [0, 0, 1]])
    full, rect = fast_maps(prep, R_v, K, S), (37, 90, 101, 64)
    x, y, w, h = rect
    np.testing.assert_allclose(fast_maps(prep, R_v, K, S, rect), full[y:y + h, x:x + w], atol=1e-3)
    np.testing.assert_allclose(exact_maps(prep, R_v, K, S, rect), exact_maps(prep, R_v, K, S)[y:y + h, x:x + w], atol=1e-9)


def test_focal_from_outline_matches_reference_remap(setup, monkeypatch):
    """The pixel-size rule measured on the mask's outline (undistorted, rotated) gives the focal
    the reference remap of the mask gives (the fallback), within its sampling error."""
    import workflow_scripts.crop as crop_mod

    cam, prep, _ = setup
    fs = {}
    for X_c in ([35.0, -10.0, 40.0], [-40.0, 60.0, 10.0], [80.0, 30.0, 0.0]):
        X_c = np.array(X_c)
        m = disk_mask(cam, X_c, r=30)
        cv2.ellipse(m, tuple(int(a) for a in cam.project(X_c)), (60, 14), 30, 0, 360, 255, -1)
        fs[tuple(X_c)] = crop_view(np.zeros((H, W, 3), np.uint8), m, prep, X_c, make_norm(X_c)).f
        monkeypatch.setattr(crop_mod, "_mask_in_crop", lambda *a: None)
        ref = crop_view(np.zeros((H, W, 3), np.uint8), m, prep, X_c, make_norm(X_c)).f
        monkeypatch.undo()
        assert fs[tuple(X_c)] == pytest.approx(ref, rel=3e-3)


@pytest.mark.parametrize("background", ["white", "black"])
def test_rectangle_crop_equals_whole_crop(setup, background):
    """Remapping only the rectangle around the mask gives the crop a whole remap at the same K
    gives, bit for bit; outside CropResult.box the crop is plain background."""
    import workflow_scripts.crop as crop_mod

    cam, prep, X_c = setup
    N = make_norm(X_c, up_raw=(0.1, 0.2, 1.0))
    img = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    m = disk_mask(cam, X_c, r=35)
    u, v = cam.project(X_c)
    cv2.line(m, (int(u), int(v)), (int(u) + 70, int(v) - 40), 255, 3)  # a tail
    r = crop_view(img, m, prep, X_c, N, background=background)
    x0, y0, x1, y1 = r.box
    assert 0 < (x1 - x0) * (y1 - y0) < 0.5 * S * S
    maps = fast_maps(prep, r.c2w_raw[:3, :3], r.K, S)
    out, mask = crop_mod._remap_view(img, m, maps, CropParams(background=background))
    np.testing.assert_array_equal(r.image, out)
    np.testing.assert_array_equal(r.mask, mask)
    inside = np.zeros((S, S), bool)
    inside[y0:y1, x0:x1] = True
    assert not r.mask[~inside].any() and (r.image[~inside] == (255 if background == "white" else 0)).all()
