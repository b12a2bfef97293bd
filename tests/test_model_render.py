"""Gaussian renderers: torch backend vs an independent brute-force float64 reference, gradients,
dispatch; gsplat parity on CUDA (``-m gpu``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import model.render_torch as rt
from model.gaussians import SH_C0, Gaussians
from model.renderer import render
from workflow_scripts.cameras import Camera, look_at_c2w

# ----------------------------------------------------------------------------- reference


def reference_render(means, quats, scales, opac, colors, K, c2w, W, H, bg, near=0.01, far=100.0):
    """Every Gaussian against every pixel, float64 NumPy, sequential front-to-back loop.

    means [N,3], quats [N,4] (w,x,y,z), scales [N,3], opac [N], colors [N,3]; K [3,3]; c2w [4,4]
    OpenCV camera-to-world. Rules written from the 3DGS/gsplat definitions: EWA with the Jacobian
    evaluated at x/z, y/z clamped to 1.3x the FOV, +0.3 px^2, alpha = min(0.999, o exp(-sigma)),
    skip alpha < 1/255, stop when T would fall to <= 1e-4. Returns rgb [H,W,3], alpha [H,W], D [H,W].
    """
    w2c = np.linalg.inv(c2w)
    Rw, tw = w2c[:3, :3], w2c[:3, 3]
    fx, fy, cx, cy, sk = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    ys, xs = np.mgrid[0:H, 0:W]
    px, py = xs.ravel() + 0.5, ys.ravel() + 0.5
    items = []
    for i in range(len(means)):
        Rg = Rotation.from_quat(np.r_[quats[i, 1:], quats[i, 0]]).as_matrix()  # scipy is x,y,z,w
        S = np.diag(scales[i] ** 2)
        cov_c = Rw @ (Rg @ S @ Rg.T) @ Rw.T
        x, y, z = Rw @ means[i] + tw
        if not (near < z < far):
            continue
        tanx, tany = W / (2 * fx), H / (2 * fy)
        xr = np.clip(x / z, -(cx / fx + 0.3 * tanx), (W - cx) / fx + 0.3 * tanx)
        yr = np.clip(y / z, -(cy / fy + 0.3 * tany), (H - cy) / fy + 0.3 * tany)
        J = np.array([[fx / z, sk / z, -(fx * xr + sk * yr) / z], [0, fy / z, -fy * yr / z]])
        cov2 = J @ cov_c @ J.T + 0.3 * np.eye(2)
        if np.linalg.det(cov2) <= 0:
            continue
        conic = np.linalg.inv(cov2)
        u = (fx * x + sk * y) / z + cx
        v = fy * y / z + cy
        items.append((z, u, v, conic, opac[i], colors[i]))
    items.sort(key=lambda it: it[0])
    T = np.ones(H * W)
    done = np.zeros(H * W, bool)
    rgb = np.zeros((H * W, 3))
    D = np.zeros(H * W)
    for z, u, v, conic, o, col in items:
        d = np.stack([px - u, py - v])
        sigma = 0.5 * np.einsum("ip,ij,jp->p", d, conic, d)
        alpha = np.minimum(0.999, o * np.exp(-sigma))
        use = (~done) & (sigma >= 0) & (alpha >= 1 / 255)
        nextT = T * (1 - alpha)
        stop = use & (nextT <= 1e-4)
        done |= stop
        use &= ~stop
        wgt = np.where(use, alpha * T, 0.0)
        rgb += wgt[:, None] * col
        D += wgt * z
        T = np.where(use, nextT, T)
    a = 1 - T
    rgb = rgb + (1 - a)[:, None] * bg
    return rgb.reshape(H, W, 3), a.reshape(H, W), D.reshape(H, W)


def random_scene(n, seed, dtype=torch.float64, spread=0.35, scale=(0.02, 0.12)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * 2 * spread
    scales = scale[0] + (scale[1] - scale[0]) * torch.rand(n, 3, generator=g, dtype=dtype)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=dtype), dim=-1)
    opac = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype)
    dc = torch.randn(n, 3, generator=g, dtype=dtype)
    return Gaussians(means[None], scales[None], quats[None], opac[None], dc[None])


def cameras(M, W, H, f=None, skew=0.0, radius=2.0, dtype=torch.float64):
    f = f if f is not None else 1.1 * W
    c2ws, Ks = [], []
    for m in range(M):
        a = 2 * math.pi * m / M + 0.3
        c2ws.append(look_at_c2w(np.array([radius * math.cos(a), radius * math.sin(a), 0.6]), np.zeros(3)))
        Ks.append(np.array([[f, skew, W / 2 + 0.7 * m], [0, f * 1.05, H / 2 - 0.4 * m], [0, 0, 1]]))
    return torch.tensor(np.stack(Ks), dtype=dtype)[None], torch.tensor(np.stack(c2ws), dtype=dtype)[None]


def check_against_reference(g, K, c2w, W, H, bg):
    out = rt.render_torch(g, K, c2w, W, H, background=bg)
    colors = np.clip(SH_C0 * g.sh_dc[0].numpy() + 0.5, 0, None)
    for m in range(K.shape[1]):
        rgb, a, D = reference_render(g.means[0].numpy(), g.quats[0].numpy(), g.scales[0].numpy(), g.opacities[0].numpy(),
                                     colors, K[0, m].numpy(), c2w[0, m].numpy(), W, H, np.asarray(bg))
        np.testing.assert_allclose(out.rgb[0, m].permute(1, 2, 0).numpy(), rgb, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out.alpha[0, m, 0].numpy(), a, atol=1e-6, rtol=0)
        np.testing.assert_allclose(out.depth_acc[0, m, 0].numpy(), D, atol=1e-6, rtol=0)
        expected = D / np.maximum(a, 1e-10)
        np.testing.assert_allclose(out.depth[0, m, 0].numpy(), expected, atol=1e-6, rtol=1e-9)
    return out


# ----------------------------------------------------------------------------- tests


def test_matches_bruteforce_reference_float64():
    W, H = 37, 29  # not multiples of the tile size: partial tiles are cropped
    g = random_scene(60, seed=1)
    K, c2w = cameras(2, W, H)
    out = check_against_reference(g, K, c2w, W, H, bg=(0.2, 0.5, 1.0))
    assert 0.05 < out.alpha.mean() < 0.99  # the scene is neither empty nor saturated


def test_reference_early_termination_and_clamp():
    # a stack of nearly opaque Gaussians: alpha hits the 0.999 clamp and T falls below 1e-4
    W, H = 24, 24
    g = random_scene(12, seed=2, spread=0.05, scale=(0.15, 0.25))
    g.opacities[:] = 0.995
    K, c2w = cameras(1, W, H)
    out = check_against_reference(g, K, c2w, W, H, bg=(1.0, 1.0, 1.0))
    # compositing stops before T <= 1e-4, so alpha stays below 0.9999 even under 12 opaque layers
    assert 0.99 < out.alpha.max() < 1 - 1e-4


def test_reference_with_skew_and_offscreen_and_behind():
    W, H = 20, 16
    g = random_scene(30, seed=3, spread=1.2)  # some project off-screen
    g.means[0, 0] = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
    K, c2w = cameras(1, W, H, skew=3.0)
    # one Gaussian behind the camera, one just in front of the near plane
    cam_center, fwd = c2w[0, 0, :3, 3], c2w[0, 0, :3, 2]
    g.means[0, 1] = cam_center - 0.5 * fwd
    g.means[0, 2] = cam_center + 0.005 * fwd
    check_against_reference(g, K, c2w, W, H, bg=(0.0, 0.0, 0.0))


def test_chunking_does_not_change_result(monkeypatch):
    W, H = 32, 32
    g = random_scene(200, seed=4, spread=0.2)
    K, c2w = cameras(2, W, H)
    ref = rt.render_torch(g, K, c2w, W, H, tile_size=16)
    monkeypatch.setattr(rt, "GROUP_BUDGET", 64)  # forces chunks of 8 Gaussians
    small = rt.render_torch(g, K, c2w, W, H, tile_size=4)
    torch.testing.assert_close(small.rgb, ref.rgb, atol=1e-10, rtol=0)
    torch.testing.assert_close(small.depth, ref.depth, atol=1e-10, rtol=0)


def test_known_projection_peak():
    # a small isotropic Gaussian at a known 3D point peaks at Camera.project of that point
    W, H = 48, 40
    K, c2w = cameras(1, W, H)
    X = np.array([0.05, -0.03, 0.08])
    cam = Camera(name="c", K=K[0, 0].numpy(), dist=np.zeros(5), R=np.linalg.inv(c2w[0, 0].numpy())[:3, :3],
                 t=np.linalg.inv(c2w[0, 0].numpy())[:3, 3], width=W, height=H)
    uv = cam.project(X[None])[0]
    g = Gaussians(torch.tensor(X)[None, None], torch.full((1, 1, 3), 0.01, dtype=torch.float64),
                  torch.tensor([[[1.0, 0, 0, 0]]], dtype=torch.float64), torch.tensor([[0.9]], dtype=torch.float64),
                  torch.zeros(1, 1, 3, dtype=torch.float64))
    out = rt.render_torch(g, K, c2w, W, H, background=(0, 0, 0))
    a = out.alpha[0, 0, 0]
    r, c = divmod(int(torch.argmax(a)), W)
    assert abs((c + 0.5) - uv[0]) <= 0.5 and abs((r + 0.5) - uv[1]) <= 0.5
    # expected depth at the peak is the camera z of X
    z = (cam.R @ X + cam.t)[2]
    assert abs(float(out.depth[0, 0, 0, r, c]) - z) < 1e-9


def test_gradcheck_float64():
    W, H = 8, 8
    g = random_scene(5, seed=5, spread=0.12, scale=(0.05, 0.1))
    g.opacities[:] = torch.tensor([0.3, 0.5, 0.6, 0.4, 0.7], dtype=torch.float64)
    K, c2w = cameras(1, W, H, f=9.0)
    bg = (0.3, 0.6, 0.9)
    # random projections of every output pixel keep the analytic side at a few backward passes
    proj = torch.randn(5 * H * W, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(means, scales, quats, opac, dc):
        out = rt.render_torch(Gaussians(means, scales, quats, opac, dc), K, c2w, W, H, background=bg)
        return torch.cat([out.rgb.flatten(), out.alpha.flatten(), out.depth_acc.flatten()]) @ proj

    inputs = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.quats, g.opacities, g.sh_dc)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_chunks_and_early_termination(monkeypatch):
    # opaque stacked Gaussians (T drops below 1e-4 at the centre) walked in chunks of 8, so the
    # transmittance carried between chunks and the termination mask are both on the gradient path
    monkeypatch.setattr(rt, "GROUP_BUDGET", 1)
    W, H = 8, 8
    g = random_scene(14, seed=8, spread=0.06, scale=(0.08, 0.14))
    g.opacities[:] = torch.linspace(0.75, 0.97, 14, dtype=torch.float64)
    K, c2w = cameras(1, W, H, f=9.0)
    ref = rt.render_torch(g, K, c2w, W, H, tile_size=4)
    monkeypatch.setattr(rt, "MIN_TRANSMITTANCE", 0.0)
    no_stop = rt.render_torch(g, K, c2w, W, H, tile_size=4)
    monkeypatch.setattr(rt, "MIN_TRANSMITTANCE", 1e-4)
    assert (no_stop.alpha - ref.alpha).abs().max() > 1e-5  # some pixels stop early
    proj = torch.randn(5 * H * W, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(means, scales, quats, opac, dc):
        out = rt.render_torch(Gaussians(means, scales, quats, opac, dc), K, c2w, W, H, tile_size=4)
        return torch.cat([out.rgb.flatten(), out.alpha.flatten(), out.depth_acc.flatten()]) @ proj

    inputs = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.quats, g.opacities, g.sh_dc)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_dispatch_and_bad_arguments():
    g = random_scene(10, seed=6, dtype=torch.float32)
    K, c2w = cameras(2, 16, 16, dtype=torch.float32)
    a = render(g, K, c2w, 16, 16, backend="auto")
    b = rt.render_torch(g, K, c2w, 16, 16)
    torch.testing.assert_close(a.rgb, b.rgb)
    assert a.rgb.shape == (1, 2, 3, 16, 16) and a.alpha.shape == (1, 2, 1, 16, 16)
    # a batch of two renders each element with its own Gaussians and cameras
    g2 = random_scene(10, seed=9, dtype=torch.float32)
    K2, c2w2 = cameras(2, 16, 16, dtype=torch.float32, radius=2.5)
    both = Gaussians(*(torch.cat([x, y]) for x, y in zip((g.means, g.scales, g.quats, g.opacities, g.sh_dc),
                                                         (g2.means, g2.scales, g2.quats, g2.opacities, g2.sh_dc))))
    ob = render(both, torch.cat([K, K2]), torch.cat([c2w, c2w2]), 16, 16, background=(0.0, 0.5, 1.0))
    torch.testing.assert_close(ob.rgb[1:], render(g2, K2, c2w2, 16, 16, background=(0.0, 0.5, 1.0)).rgb)
    torch.testing.assert_close(ob.depth[:1], render(g, K, c2w, 16, 16).depth)
    with pytest.raises(ValueError, match="backend"):
        render(g, K, c2w, 16, 16, backend="opengl")
    with pytest.raises(ValueError, match="K must be"):
        render(g, K[0], c2w, 16, 16)
    with pytest.raises(ValueError, match="background"):
        render(g, K, c2w, 16, 16, background=(1.0, 1.0))


def test_empty_view_is_background():
    g = random_scene(5, seed=7, dtype=torch.float32)
    g.means[:] = torch.tensor([100.0, 100.0, 100.0])  # nowhere near the cameras' view
    K, c2w = cameras(1, 16, 16, dtype=torch.float32)
    out = render(g, K, c2w, 16, 16, background=(0.1, 0.2, 0.3))
    assert torch.all(out.alpha == 0)
    torch.testing.assert_close(out.rgb[0, 0, :, 5, 5], torch.tensor([0.1, 0.2, 0.3]))


# ----------------------------------------------------------------------------- CUDA parity


def _cuda_gsplat_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (gsplat parity)")
    pytest.importorskip("gsplat", reason="gsplat 1.5.3 not installed (pip install '.[gpu]')")


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gsplat_matches_torch(seed):
    _cuda_gsplat_or_skip()
    W, H = 64, 64
    g = random_scene(3000, seed=seed, dtype=torch.float32, spread=0.4, scale=(0.005, 0.04)).to("cuda")
    K, c2w = cameras(4, W, H, dtype=torch.float32)
    K, c2w = K.cuda(), c2w.cuda()
    bg = (1.0, 1.0, 1.0)
    leaves_t = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.quats, g.opacities, g.sh_dc)]
    leaves_g = [t.clone().requires_grad_(True) for t in (g.means, g.scales, g.quats, g.opacities, g.sh_dc)]
    ot = render(Gaussians(*leaves_t), K, c2w, W, H, background=bg, backend="torch")
    og = render(Gaussians(*leaves_g), K, c2w, W, H, background=bg, backend="gsplat")
    assert (ot.rgb - og.rgb).abs().mean() < 1e-3
    assert (ot.alpha - og.alpha).abs().mean() < 1e-3
    mask = (ot.alpha > 0.5) & (og.alpha > 0.5)
    assert ((ot.depth - og.depth).abs()[mask]).mean() < 1e-3
    w = torch.randn_like(ot.rgb)
    (ot.rgb * w).sum().add(ot.depth_acc.sum()).backward()
    (og.rgb * w).sum().add(og.depth_acc.sum()).backward()
    for a, b in zip(leaves_t, leaves_g):
        cos = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert cos > 0.99, cos
