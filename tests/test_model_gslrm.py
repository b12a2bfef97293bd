"""GS-LRM network: config, rays, patch layout, decoding, Gaussians container, training helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.config import ModelConfig, preset
from model.gaussians import SH_C0, Gaussians, decode_gaussians
from model.gslrm import GSLRM, Patchify, flops_per_sample, num_tokens
from model.rays import nearest_points_to_origin, pixel_rays, ray_input
from workflow_scripts.cameras import Camera, look_at_c2w
from workflow_scripts.errors import InputError


def ring_cameras(V, S, dtype=torch.float32, skew=0.0):
    c2w = np.stack([look_at_c2w(np.array([2.7 * math.cos(a), 2.7 * math.sin(a), 0.4]), np.zeros(3))
                    for a in np.linspace(0, 2 * math.pi, V, endpoint=False)])
    f = S / (2 * math.tan(math.radians(25)))
    K = np.array([[f, skew, S / 2 + 1.3], [0, 1.02 * f, S / 2 - 0.7], [0, 0, 1]])
    return (torch.tensor(np.broadcast_to(K, (1, V, 3, 3)).copy(), dtype=dtype),
            torch.tensor(c2w, dtype=dtype)[None])


# ----------------------------------------------------------------------------- config


def test_presets_and_from_dict():
    t = preset("tiny")
    assert (t.width, t.depth, t.heads, t.image_size, t.patch_size) == (128, 4, 4, 64, 8)
    f = preset("facelift")
    assert (f.width, f.depth, f.heads, f.patch_size, f.image_size) == (1024, 24, 16, 8, 512)
    assert preset("base", image_size=128).image_size == 128
    assert ModelConfig.from_dict({"preset": "tiny", "depth": 2}).depth == 2
    assert ModelConfig.from_dict(t.to_dict()) == t
    with pytest.raises(InputError, match="unknown model setting"):
        ModelConfig.from_dict({"widht": 3})
    with pytest.raises(InputError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(InputError, match="divisible"):
        preset("tiny", heads=3)


def test_facelift_parameter_count_matches_spec():
    # spec: 183 tensors / 323,590,208 values including 32 VGG19 tensors (20,024,384 values)
    with torch.device("meta"):
        m = GSLRM(preset("facelift"))
    sd = m.state_dict()
    assert len(sd) == 183 - 32
    assert sum(v.numel() for v in sd.values()) == 323_590_208 - 20_024_384
    assert tuple(sd["patch_embedder.1.weight"].shape) == (1024, 576)
    assert tuple(sd["pixel_gaussian_decoder.1.weight"].shape) == (896, 1024)
    assert tuple(sd["transformer_layers.23.attn.to_qkv.weight"].shape) == (3072, 1024)


# ----------------------------------------------------------------------------- rays


@pytest.mark.parametrize("skew", [0.0, 2.5])
def test_rays_pass_through_projected_points(skew):
    S = 32
    K, c2w = ring_cameras(3, S, torch.float64, skew=skew)
    o, d = pixel_rays(K, c2w, S, S)
    rng = np.random.default_rng(0)
    for v in range(3):
        w2c = np.linalg.inv(c2w[0, v].numpy())
        cam = Camera("c", K[0, v].numpy(), np.zeros(5), w2c[:3, :3], w2c[:3, 3], S, S)
        # pick pixel centres, back-project at a random depth, and check the pixel's ray hits the point
        for _ in range(5):
            r, c = rng.integers(0, S, 2)
            uv = np.array([c + 0.5, r + 0.5])
            X_cam = np.linalg.solve(cam.K, np.r_[uv, 1.0]) * rng.uniform(1.0, 4.0)
            X = c2w[0, v, :3, :3].numpy() @ X_cam + c2w[0, v, :3, 3].numpy()
            np.testing.assert_allclose(cam.project(X[None])[0], uv, atol=1e-9)  # it projects there
            ov, dv = o[0, v, r, c].numpy(), d[0, v, r, c].numpy()
            t = (X - ov) @ dv
            np.testing.assert_allclose(ov + t * dv, X, atol=1e-9)
            assert t > 0 and abs(np.linalg.norm(dv) - 1) < 1e-12


def test_ray_input_channels():
    S = 16
    K, c2w = ring_cameras(2, S)
    img = torch.rand(1, 2, 3, S, S)
    x = ray_input(img, K, c2w)
    assert x.shape == (1, 2, 9, S, S)
    torch.testing.assert_close(x[:, :, :3], img * 2 - 1)
    o, d = pixel_rays(K, c2w, S, S)
    p = x[:, :, 6:].permute(0, 1, 3, 4, 2)
    # the point is on the ray and orthogonal to the direction (closest to the origin)
    torch.testing.assert_close((p * d).sum(-1), torch.zeros(1, 2, S, S), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.cross(p - o, d), torch.zeros_like(p), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- network


def test_patchify_layout_channel_fastest():
    p, C, H, W = 2, 3, 4, 6
    x = torch.arange(1 * 2 * C * H * W, dtype=torch.float32).reshape(1, 2, C, H, W)
    t = Patchify(p)(x)
    assert t.shape == (1, 2 * (H // p) * (W // p), p * p * C)
    v, pr, pc, py, px, ch = 1, 1, 2, 1, 0, 2
    token = v * (H // p) * (W // p) + pr * (W // p) + pc
    assert t[0, token, (py * p + px) * C + ch] == x[0, v, ch, pr * p + py, pc * p + px]


def test_forward_shapes_and_decoding_bounds():
    torch.manual_seed(0)
    cfg = preset("tiny", depth=2, image_size=32)
    m = GSLRM(cfg)
    K, c2w = ring_cameras(2, 32)
    g = m(torch.rand(1, 2, 3, 32, 32), K, c2w)
    N = 2 + 2 * 32 * 32
    assert g.means.shape == (1, N, 3) and g.quats.shape == (1, N, 4) and g.opacities.shape == (1, N)
    assert g.num_global == 2
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(1, N))
    assert torch.all(g.scales <= math.exp(cfg.max_log_scale) + 1e-6) and torch.all(g.scales > 0)
    assert torch.all((g.opacities > 0) & (g.opacities < 1))
    # pixel-aligned means lie on their pixel's ray within +-1.8 of the ray's point nearest the origin
    _, o, d = m.forward_raw(torch.rand(1, 2, 3, 32, 32), K, c2w)
    mid = nearest_points_to_origin(o, d)
    dist = (g.means[:, 2:] - mid).norm(dim=-1)
    assert torch.all(dist <= cfg.depth_half_range + 1e-5)
    # the first pixel-aligned Gaussian belongs to view 0, pixel (0, 0); Gaussian 2 + 1 to pixel (0, 1)
    o_img, d_img = pixel_rays(K, c2w, 32, 32)
    torch.testing.assert_close(d[0, 1], d_img[0, 0, 0, 1])
    torch.testing.assert_close(d[0, 8], d_img[0, 0, 1, 0])  # py=1, px=0 inside the first patch
    torch.testing.assert_close(d[0, 64], d_img[0, 0, 0, 8])  # next patch column


def test_decode_formulas():
    cfg = preset("tiny")
    raw = torch.randn(1, 3, 14, dtype=torch.float64)
    o = torch.tensor([[[0.0, -2.7, 0.0], [2.7, 0.0, 0.3]]], dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.tensor([[[0.1, 1.0, 0.0], [-1.0, 0.05, -0.1]]], dtype=torch.float64), dim=-1)
    g = decode_gaussians(raw, o, d, 1, cfg)
    torch.testing.assert_close(g.means[0, 0], raw[0, 0, :3])  # global: raw world position
    t = torch.sigmoid(raw[0, 1:, :3].mean(-1))
    depth = 1.8 * (2 * t - 1) - (o[0] * d[0]).sum(-1)
    torch.testing.assert_close(g.means[0, 1:], o[0] + depth[:, None] * d[0])
    torch.testing.assert_close(g.scales, torch.exp(torch.clamp(raw[..., 6:9] - 2.3, max=-1.2)))
    torch.testing.assert_close(g.opacities, torch.sigmoid(raw[..., 13] - 2.0))
    torch.testing.assert_close(g.quats, raw[..., 9:13] / raw[..., 9:13].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(g.colors(), torch.clamp(SH_C0 * raw[..., 3:6] + 0.5, min=0))


@pytest.mark.parametrize("attention", ["sdpa", "cudnn"])
def test_sdpa_equals_math_attention_and_checkpointing_same_grads(attention):
    torch.manual_seed(1)
    cfg = preset("tiny", depth=2, image_size=16, attention=attention)
    m1 = GSLRM(cfg)
    m2 = GSLRM(preset("tiny", depth=2, image_size=16, attention="math", activation_checkpointing=True))
    m2.load_state_dict(m1.state_dict())
    K, c2w = ring_cameras(2, 16)
    img = torch.rand(1, 2, 3, 16, 16)
    g1, g2 = m1(img, K, c2w), m2.train()(img, K, c2w)
    torch.testing.assert_close(g1.means, g2.means, atol=1e-5, rtol=1e-5)
    (g1.means.sum() + g1.sh_dc.sum()).backward()
    (g2.means.sum() + g2.sh_dc.sum()).backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_same_seed_same_model():
    torch.manual_seed(3)
    a = GSLRM(preset("tiny", depth=1))
    torch.manual_seed(3)
    b = GSLRM(preset("tiny", depth=1))
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)


def test_param_groups_and_flops():
    m = GSLRM(preset("tiny", depth=1))
    decay, no_decay = m.param_groups(0.05)
    n_all = sum(p.numel() for p in m.parameters())
    assert sum(p.numel() for p in decay["params"]) + sum(p.numel() for p in no_decay["params"]) == n_all
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    assert id(m.gaussian_position_embeddings) in ids and id(m.input_layer_norm.weight) in ids
    assert id(m.patch_embedder[1].weight) not in ids
    cfg = preset("facelift")
    L = num_tokens(cfg, 6)
    assert L == 2 + 6 * 64 * 64
    # dominant terms: 24 blocks x (24 L W^2 + 4 L^2 W) forward
    fwd = flops_per_sample(cfg, 6, training=False)
    approx = 24 * (24 * L * 1024**2 + 4 * L * L * 1024)
    assert 1.0 < fwd / approx < 1.01
    assert flops_per_sample(cfg, 6) == 3 * fwd


def test_bad_input_shapes():
    m = GSLRM(preset("tiny", depth=1))
    K, c2w = ring_cameras(2, 20)
    with pytest.raises(ValueError, match="divisible"):
        m(torch.rand(1, 2, 3, 20, 20), K, c2w)


# ----------------------------------------------------------------------------- Gaussians


def test_gaussians_select_filter_detach():
    B, N = 2, 6
    g = Gaussians(torch.randn(B, N, 3), torch.rand(B, N, 3), torch.randn(B, N, 4), torch.rand(B, N),
                  torch.randn(B, N, 3), num_global=2)
    s = g.select(1)
    assert s.batch_size == 1 and torch.equal(s.means[0], g.means[1])
    keep = torch.tensor([True, False, True, True, False, True])
    f = s.filter(keep)
    assert f.num_gaussians == 4 and f.num_global == 1
    torch.testing.assert_close(f.opacities[0], g.opacities[1, keep])
    assert f.filter(f.opacities > -1).num_gaussians == 4  # [1, N] mask
    with pytest.raises(ValueError):
        g.filter(torch.ones(B, N, dtype=torch.bool))
    assert not g.detach().means.requires_grad


def test_end_to_end_gradients_reach_every_parameter():
    # model -> torch renderer -> losses -> backward: the whole chain is differentiable
    from model.losses import LossConfig, compute_losses  # noqa: PLC0415
    from model.renderer import render  # noqa: PLC0415

    torch.manual_seed(4)
    m = GSLRM(preset("tiny", depth=1, image_size=16))
    K, c2w = ring_cameras(2, 16)
    img = torch.rand(1, 2, 3, 16, 16)
    g = m(img, K, c2w)
    out = render(g, K, c2w, 16, 16, backend="torch")
    losses = compute_losses(out, {"images": img, "masks": (img[:, :, :1] > 0.5).float()}, LossConfig())
    losses["total"].backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attention", ["sdpa", "cudnn"])
def test_gpu_attention_kernels_match_math_in_bf16(attention):
    """The fused kernels (flash / cuDNN) compute the same attention as the explicit math path."""
    torch.manual_seed(2)
    dev = torch.device("cuda")
    m1 = GSLRM(preset("tiny", depth=2, image_size=32, width=128, heads=2, attention=attention)).to(dev)
    m2 = GSLRM(preset("tiny", depth=2, image_size=32, width=128, heads=2, attention="math")).to(dev)
    m2.load_state_dict(m1.state_dict())
    K, c2w = ring_cameras(4, 32)
    img = torch.rand(1, 4, 3, 32, 32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        g1 = m1(img.to(dev), K.to(dev), c2w.to(dev))
        g2 = m2(img.to(dev), K.to(dev), c2w.to(dev))
    torch.testing.assert_close(g1.means.float(), g2.means.float(), atol=2e-2, rtol=2e-2)
