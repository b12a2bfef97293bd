"""Metrics on hand-made cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.ndimage import gaussian_filter

from model import metrics as M
from workflow_scripts.errors import InputError


def _rand_img(seed: int, shape=(2, 3, 24, 20)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _square_mask(H=24, W=20, r0=6, c0=5, size=10) -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[r0:r0 + size, c0:c0 + size] = True
    return m


# ---------------------------------------------------------------------------------- PSNR
def test_psnr_identical_is_capped_and_constant_offset_known():
    x = _rand_img(0) * 0.8
    assert torch.allclose(M.psnr(x, x), torch.full((2,), M.PSNR_CAP_DB))
    # MSE = 0.1^2 -> PSNR = 20 dB exactly.
    assert torch.allclose(M.psnr(x + 0.1, x), torch.full((2,), 20.0), atol=1e-4)
    assert M.psnr(x + 0.1, x).shape == (2,)


def test_foreground_psnr_counts_only_mask_pixels():
    x = _rand_img(1, (3, 24, 20)) * 0.8
    m = _square_mask()
    y = x + 0.1 * m.float()  # error only inside the mask
    assert M.psnr_masked(y, x, m).item() == pytest.approx(20.0, abs=1e-4)
    # Full image: MSE diluted by the background, so PSNR rises by 10 log10(area / mask area).
    full = 20.0 + 10 * math.log10(24 * 20 / 100)
    assert M.psnr(y, x).item() == pytest.approx(full, abs=1e-4)
    assert torch.isnan(M.psnr_masked(y, x, torch.zeros(24, 20))).item()


# ---------------------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one():
    x = _rand_img(2)
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(M.ssim_masked(x, x, _square_mask()), torch.ones(2), atol=1e-6)


def test_ssim_constant_images_closed_form():
    a, b = 0.3, 0.7
    x, y = torch.full((3, 16, 16), a), torch.full((3, 16, 16), b)
    c1 = 0.01**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are 0, structure term = c2/c2
    assert M.ssim(x, y).item() == pytest.approx(want, abs=1e-5)


def test_ssim_map_matches_scipy_reference():
    x, y = _rand_img(3, (3, 24, 20)), _rand_img(4, (3, 24, 20))
    xn, yn = x.double().numpy(), y.double().numpy()
    # scipy Gaussian filter, radius 5 (11 taps), 'nearest' border == replicate padding.
    f = lambda z: np.stack([gaussian_filter(c, 1.5, truncate=5 / 1.5, mode="nearest") for c in z])  # noqa: E731
    mx, my = f(xn), f(yn)
    sxx, syy, sxy = f(xn * xn) - mx**2, f(yn * yn) - my**2, f(xn * yn) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ref = ((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean(0)
    np.testing.assert_allclose(M.ssim_map(x, y).numpy(), ref, atol=1e-5)


def test_ssim_masked_averages_over_dilated_mask():
    x, y = _rand_img(5, (3, 24, 20)), _rand_img(6, (3, 24, 20))
    m = _square_mask()
    smap = M.ssim_map(x, y)
    d = M.dilate_mask(m, 2)[0].bool()
    assert d.sum().item() == 14 * 14  # 10x10 square grown by 2 px each side
    assert M.ssim_masked(x, y, m, dilate=2).item() == pytest.approx(smap[d].mean().item(), abs=1e-6)


# ---------------------------------------------------------------------------------- masks, depth
def test_mask_iou_shifted_square():
    m = _square_mask()
    alpha = torch.roll(m.float(), shifts=2, dims=1) * 0.9  # shifted right by 2 px, alpha above 0.5
    assert M.mask_iou(alpha, m).item() == pytest.approx(80 / 120)
    assert M.mask_iou(m.float(), m).item() == pytest.approx(1.0)
    assert M.mask_iou(alpha * 0.5, m).item() == pytest.approx(0.0)  # alpha 0.45 < threshold
    assert torch.isnan(M.mask_iou(torch.zeros(1, 8, 8), torch.zeros(8, 8))).item()


def test_depth_abs_rel_and_body_lengths():
    gt = torch.zeros(1, 16, 16)
    gt[:, 4:12, 4:12] = torch.linspace(2.0, 3.0, 64).reshape(8, 8)
    pred = gt * 1.1
    pred[:, 0, 0] = 5.0  # predicted depth where gt has none: ignored
    assert M.depth_abs_rel(pred, gt).item() == pytest.approx(0.1, abs=1e-6)
    want = (0.1 * gt[gt > 0]).mean().item() / 0.5
    assert M.depth_abs_error(pred, gt, body_length=0.5).item() == pytest.approx(want, abs=1e-6)
    alpha = torch.zeros(1, 16, 16)
    assert torch.isnan(M.depth_abs_rel(pred, gt, pred_alpha=alpha)).item()


# ---------------------------------------------------------------------------------- LPIPS
def test_lpips_unavailable_is_nan_not_zero():
    lp = M.LPIPS.load(None)
    assert not lp.available
    assert torch.isnan(lp(_rand_img(0), _rand_img(1))).all()


def test_lpips_from_local_file(tmp_path):
    torch.manual_seed(0)
    net = M._LPIPSNet()
    for k in range(5):  # LPIPS linear weights are non-negative
        w = getattr(net, f"lin{k}").model[1].weight
        w.data = w.data.abs()
    path = tmp_path / "lpips_vgg.pth"
    torch.save(net.state_dict(), path)
    lp = M.LPIPS.load(path)
    x, y = _rand_img(7, (2, 3, 32, 32)), _rand_img(8, (2, 3, 32, 32))
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6)
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="bad.pth"):
        M.LPIPS.load(tmp_path / "bad.pth")
    with pytest.raises(InputError, match="missing.pth"):
        M.LPIPS.load(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------- 3D
def test_triangle_proxies_cover_every_triangle():
    tris = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0.1, 0, 1], [0, 0.1, 1]]], float)
    proxies, owner, rho = M._triangle_proxies(tris, rho=0.1)
    assert rho <= 0.1 and set(owner) == {0, 1}
    # Dense random points on each triangle are all within rho of one of that triangle's proxies.
    w = np.random.default_rng(0).dirichlet(np.ones(3), size=2000)
    for j in range(2):
        pts = w @ tris[j]
        dist = np.linalg.norm(pts[:, None] - proxies[owner == j][None], axis=-1).min(axis=1)
        assert dist.max() <= rho + 1e-12


def test_point_to_surface_is_exact_against_brute_force():
    # Mixed triangle sizes (small sphere + large box) exercise the multi-proxy triangles.
    mesh = trimesh.util.concatenate([trimesh.creation.icosphere(subdivisions=2),
                                     trimesh.creation.box(extents=(1, 4, 1)).apply_translation((3, 0, 0))])
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(size=(200, 3)) * 0.7, rng.normal(size=(20, 3)) * 5])  # inside, near, far
    d = M.point_to_surface_distance(pts, mesh.vertices, mesh.faces, k=2)
    tris = mesh.triangles
    brute = np.array([np.linalg.norm(trimesh.triangles.closest_point(tris, np.repeat(p[None], len(tris), 0)) - p, axis=1).min()
                      for p in pts])
    np.testing.assert_allclose(d, brute, atol=1e-12)


def test_mesh_against_own_surface_samples():
    mesh = trimesh.creation.icosphere(subdivisions=3)
    pts = M.sample_surface(mesh.vertices, mesh.faces, 30000, seed=1)
    r = M.gaussian_surface_metrics(pts, np.full(len(pts), 0.8), mesh.vertices, mesh.faces,
                                   M.SurfaceMetricsParams(tau=0.01, num_surface_samples=5000))
    assert r.accuracy < 1e-9
    assert r.chamfer < 0.01
    assert r.fraction_within_tau == 1.0


def test_offset_along_sphere_normals_gives_chamfer_d():
    mesh = trimesh.creation.icosphere(subdivisions=4)
    pts, fi = trimesh.sample.sample_surface(mesh, 60000, seed=2)
    d = 0.05
    shifted = pts + d * mesh.face_normals[fi]  # convex mesh: nearest surface point is the origin point
    p = M.SurfaceMetricsParams(tau=0.04, num_surface_samples=5000)
    r = M.gaussian_surface_metrics(shifted, np.full(len(pts), 0.5), mesh.vertices, mesh.faces, p)
    assert r.accuracy == pytest.approx(d, abs=1e-9)
    assert r.completeness == pytest.approx(d, rel=0.05)
    assert r.chamfer == pytest.approx(d, rel=0.03)
    assert r.fraction_within_tau == 0.0
    p.tau = 0.06
    assert M.gaussian_surface_metrics(shifted, np.full(len(pts), 0.5), mesh.vertices, mesh.faces, p).fraction_within_tau == 1.0


def test_surface_metrics_are_opacity_weighted():
    mesh = trimesh.creation.box(extents=(2, 2, 2))
    # Points above the +z face at heights 0.1 (opacity 0.9) and 0.3 (opacity 0.3); one transparent far point.
    pts = np.array([[0.0, 0.0, 1.1], [0.2, 0.0, 1.3], [0.0, 0.0, 50.0]])
    op = np.array([0.9, 0.3, 0.01])
    p = M.SurfaceMetricsParams(tau=0.2, num_surface_samples=100, min_opacity=0.04)
    r = M.gaussian_surface_metrics(pts, op, mesh.vertices, mesh.faces, p)
    assert r.accuracy == pytest.approx((0.9 * 0.1 + 0.3 * 0.3) / 1.2)
    assert r.fraction_within_tau == pytest.approx(0.9 / 1.2)
    assert r.num_gaussians == 2
    # Deterministic for a seed.
    assert M.gaussian_surface_metrics(pts, op, mesh.vertices, mesh.faces, p) == r


def test_camera_angle_and_nanmean():
    a = np.array([[2.0, 0, 0], [0, 0, 3.0]])
    b = np.array([[0, 5.0, 0], [1.0, 1.0, 0]])
    np.testing.assert_allclose(M.camera_angle_deg(a, b), [[90, 45], [90, 90]], atol=1e-9)
    assert M.nanmean([1.0, float("nan"), 3.0]) == 2.0
    assert M.nanmean([float("nan")]) is None
