"""Losses on hand-made cases with known values."""
from __future__ import annotations

import math

import pytest
import torch

from model.losses import (LossConfig, VGG19Features, compute_losses, depth_loss, load_vgg19, masked_mse,
                          silhouette_loss, ssim, temporal_loss)
from model.renderer import RenderOutput
from workflow_scripts.errors import InputError


def square_mask(S, r0, c0, size):
    m = torch.zeros(1, 1, 1, S, S)
    m[..., r0:r0 + size, c0:c0 + size] = 1.0
    return m


def make_render(rgb, alpha, depth=None):
    depth = torch.ones_like(alpha) if depth is None else depth
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, depth_acc=depth * alpha)


def test_identical_images_zero_mse_and_ssim_one():
    img = torch.rand(2, 3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert torch.isclose(ssim(img, img), torch.tensor(1.0), atol=1e-6)
    mask = square_mask(24, 4, 4, 10).expand(2, 3, 1, 24, 24)
    out = compute_losses(make_render(img, mask), {"images": img, "masks": mask}, LossConfig())
    assert out["mse"] == 0 and out["masked_mse"] == 0
    assert abs(float(out["ssim"])) < 1e-6
    assert set(out) == {"mse", "masked_mse", "ssim", "silhouette", "total"}


def test_ssim_decreases_with_noise_and_is_symmetric():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 1, 3, 32, 32, generator=g)
    noisy = (img + 0.2 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    s = ssim(img, noisy)
    assert 0 < s < 0.95
    assert torch.isclose(s, ssim(noisy, img))
    # constant images: the luminance term alone, (2ab + c1) / (a^2 + b^2 + c1), away from borders
    a, b = torch.full((1, 1, 1, 40, 40), 0.3), torch.full((1, 1, 1, 40, 40), 0.5)
    c1 = 0.01**2
    from model.losses import _flat  # noqa: PLC0415
    centre = ssim(a[..., 10:30, 10:30], b[..., 10:30, 10:30], window=1)
    assert torch.isclose(centre, torch.tensor((2 * 0.3 * 0.5 + c1) / (0.09 + 0.25 + c1)), atol=1e-6)
    assert _flat(a).shape == (1, 1, 40, 40)


def test_masked_mse_equals_mse_over_mask_only():
    g = torch.Generator().manual_seed(2)
    pred, gt = torch.rand(1, 2, 3, 16, 16, generator=g), torch.rand(1, 2, 3, 16, 16, generator=g)
    mask = (torch.rand(1, 2, 1, 16, 16, generator=g) > 0.7).float()
    sel = mask.expand_as(pred).bool()
    expected = ((pred[sel] - gt[sel]) ** 2).mean()
    assert torch.isclose(masked_mse(pred, gt, mask), expected, rtol=1e-5)
    # background errors do not count
    pred2 = torch.where(sel, pred, torch.full_like(pred, 7.0))
    assert torch.isclose(masked_mse(pred2, gt, mask), expected, rtol=1e-5)


def test_shifted_mask_silhouette_known_values():
    S, size, shift = 20, 8, 3
    mask = square_mask(S, 5, 5, size)
    alpha = square_mask(S, 5, 5 + shift, size)  # rendered silhouette shifted 3 px right
    # L1: the symmetric difference is 2 * size * shift pixels
    assert torch.isclose(silhouette_loss(alpha, mask, "l1"), torch.tensor(2 * size * shift / S**2))
    # BCE: each wrong pixel costs -log(1e-6) (alpha clamped to [1e-6, 1 - 1e-6]); right ones -log(1 - 1e-6)
    wrong = 2 * size * shift
    expected = (wrong * -math.log(1e-6) + (S * S - wrong) * -math.log(1 - 1e-6)) / S**2
    # (float64: in float32, 1 - 1e-6 rounds and the two kinds of wrong pixels cost slightly differently)
    assert math.isclose(float(silhouette_loss(alpha.double(), mask.double(), "bce")), expected, rel_tol=1e-9)
    assert float(silhouette_loss(mask, mask, "l1")) == 0.0


def test_depth_loss_relative_over_mask():
    gt = torch.zeros(1, 1, 1, 4, 4)
    gt[..., :2, :] = 2.0  # 8 foreground pixels
    pred = torch.full_like(gt, 2.5)  # 25 % too far everywhere
    assert torch.isclose(depth_loss(pred, gt), torch.tensor(0.25))
    mask = torch.zeros_like(gt)
    mask[..., 0, :] = 1.0
    pred[..., 0, :] = 2.0  # exact where the mask is on
    assert float(depth_loss(pred, gt, mask)) == 0.0


def test_temporal_loss_known_value():
    S = 8
    mask = square_mask(S, 0, 0, 4)  # 16 pixels
    a = make_render(torch.zeros(1, 1, 3, S, S), mask.clone())
    b = make_render(torch.zeros(1, 1, 3, S, S), mask.clone())
    assert float(temporal_loss(a, b, mask)) == 0.0
    b.rgb[..., 0:4, 0:4] = 0.5  # colour changes by 0.5 on the mouse region
    assert torch.isclose(temporal_loss(a, b, mask), torch.tensor(0.5))
    out = compute_losses(a, {"images": a.rgb, "masks": mask}, LossConfig(), neighbor_render=b)
    assert torch.isclose(out["temporal"], torch.tensor(0.5))


def test_total_is_weighted_sum_and_gradients_flow():
    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(1, 2, 3, 16, 16, generator=g, requires_grad=True)
    alpha = torch.rand(1, 2, 1, 16, 16, generator=g).requires_grad_(True)
    depth = 2 + torch.rand(1, 2, 1, 16, 16, generator=g)
    target = {"images": torch.rand(1, 2, 3, 16, 16, generator=g), "masks": (torch.rand(1, 2, 1, 16, 16, generator=g) > 0.5).float(),
              "depth": 2 + torch.rand(1, 2, 1, 16, 16, generator=g)}
    cfg = LossConfig(mse=1.0, masked_mse=0.5, ssim=0.2, silhouette=0.3, depth=0.7, temporal=0.0)
    out = compute_losses(make_render(rgb, alpha, depth), target, cfg)
    expected = out["mse"] + 0.5 * out["masked_mse"] + 0.2 * out["ssim"] + 0.3 * out["silhouette"] + 0.7 * out["depth"]
    assert torch.isclose(out["total"], expected)
    out["total"].backward()
    assert rgb.grad.abs().sum() > 0 and alpha.grad.abs().sum() > 0


def test_non_finite_raises_with_step():
    rgb = torch.rand(1, 1, 3, 8, 8)
    rgb[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step/batch 17"):
        compute_losses(make_render(rgb, torch.ones(1, 1, 1, 8, 8)), {"images": torch.rand(1, 1, 3, 8, 8)}, LossConfig(), step=17)


def test_perceptual_needs_local_file(tmp_path):
    img = torch.rand(1, 1, 3, 32, 32)
    r = make_render(img, torch.ones(1, 1, 1, 32, 32))
    with pytest.raises(InputError, match="perceptual_weights"):
        compute_losses(r, {"images": img}, LossConfig(perceptual=0.5))
    with pytest.raises(InputError, match="not found"):
        compute_losses(r, {"images": img}, LossConfig(perceptual=0.5, perceptual_weights=str(tmp_path / "vgg.pth")))
    # a FaceLift-style file (prefixed conv{k} names inside "model") loads and gives 0 on identical images
    torch.manual_seed(0)
    net = VGG19Features()
    sd = {f"loss_calculator.perceptual_loss_module.net.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "facelift_like.pt"
    torch.save({"model": sd}, path)
    vgg = load_vgg19(path)
    out = compute_losses(r, {"images": img}, LossConfig(perceptual=0.5, perceptual_weights=str(path)), vgg=vgg)
    assert float(out["perceptual"]) == 0.0
    other = compute_losses(make_render(torch.rand(1, 1, 3, 32, 32), r.alpha), {"images": img},
                           LossConfig(perceptual=0.5), vgg=vgg)
    assert float(other["perceptual"]) > 0


def test_config_validation():
    with pytest.raises(InputError, match="silhouette_type"):
        LossConfig(silhouette_type="dice")
    with pytest.raises(InputError, match="negative"):
        LossConfig(mse=-1.0)
    with pytest.raises(InputError, match="unknown loss setting"):
        LossConfig.from_dict({"msee": 1.0})
    assert LossConfig.from_dict({"ssim": 0.0}).ssim == 0.0
