"""Training losses on rendered views.

How to call::

    from model.losses import LossConfig, compute_losses
    cfg = LossConfig()                                   # or LossConfig(ssim=0.0, depth=0.5, ...)
    losses = compute_losses(render_out, {"images": img, "masks": m, "depth": d}, cfg, step=it)
    losses["total"].backward()                           # every other key is a detached-able term

``render_out`` is a model.renderer.RenderOutput (rgb [B,M,3,H,W], alpha/depth [B,M,1,H,W]);
target: "images" [B,M,3,H,W] in [0,1] (required), "masks" [B,M,1,H,W] in [0,1] (optional),
"depth" [B,M,1,H,W] camera-z depth with 0 = background (optional, synthetic data only).
Terms whose weight is 0 or whose inputs are missing are left out (and absent from the dict).
A non-finite term raises FloatingPointError naming the term and the step / batch, so that the
training loop can decide to skip the batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workflow_scripts.errors import InputError, reject_unknown_keys

from model.renderer import RenderOutput

_EPS = 1e-6


@dataclass
class LossConfig:
    """Weights (0 = off) and options of the training losses.

    mse: plain MSE over all pixels (the background counts too).
    masked_mse: MSE over mouse pixels only, normalized by the mask area (the mouse covers a small
        fraction of each crop, so plain MSE under-weights it).
    ssim: 1 - SSIM (Gaussian window ``ssim_window`` / ``ssim_sigma``).
    silhouette: rendered alpha vs mask, ``silhouette_type`` "bce" or "l1", mean over pixels.
    depth: mean relative L1 |d - d_gt| / d_gt of the expected depth over mask pixels with d_gt > 0.
    temporal: consistency of renders of the predictions from frames t and t+1 of a real session at
        the same cameras (``neighbor_render``): mean |rgb_t - rgb_t+1| + |alpha_t - alpha_t+1|
        weighted by the mouse region max(mask_t, alpha_t+1). Both sides get gradients.
    perceptual: VGG19 feature L1 (weights only from the LOCAL file ``perceptual_weights``; never
        downloaded; 0 = off).
    """

    mse: float = 1.0
    masked_mse: float = 1.0
    ssim: float = 0.2
    silhouette: float = 0.5
    silhouette_type: str = "bce"
    depth: float = 0.1
    temporal: float = 0.1
    perceptual: float = 0.0
    perceptual_weights: str | None = None
    ssim_window: int = 11
    ssim_sigma: float = 1.5

    def __post_init__(self) -> None:
        problems = [f"{f.name}={getattr(self, f.name)} is negative" for f in dataclasses.fields(self)
                    if isinstance(getattr(self, f.name), float) and getattr(self, f.name) < 0]
        if self.silhouette_type not in ("bce", "l1"):
            problems.append(f"silhouette_type must be 'bce' or 'l1' (got {self.silhouette_type!r})")
        if self.ssim_window < 1 or self.ssim_window % 2 == 0:
            problems.append(f"ssim_window must be odd and positive (got {self.ssim_window})")
        if problems:
            raise InputError("loss config: " + "; ".join(problems) + ". Fix: correct the loss settings.")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "loss config") -> "LossConfig":
        reject_unknown_keys(d, cls, source, "loss")
        return cls(**d)


# ----------------------------------------------------------------------------- building blocks


def _flat(x: Tensor) -> Tensor:
    """[B, M, C, H, W] -> [B*M, C, H, W]."""
    return x.reshape(-1, *x.shape[-3:])


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over mask pixels: sum(m (p - t)^2) / (C sum(m)). pred/target [...,C,H,W], mask [...,1,H,W]."""
    C = pred.shape[-3]
    return (mask * (pred - target) ** 2).sum() / (C * mask.sum() + _EPS)


def gaussian_window(size: int, sigma: float, dtype=torch.float32, device=None) -> Tensor:
    """Normalized 1-D Gaussian [size]."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Mean SSIM (Wang et al. 2004) of images [..., C, H, W] in [0, data_range].

    Local statistics with a separable Gaussian window, zero padding of window//2 ("same" size, as
    the usual pytorch-ssim used by 3DGS), C1 = (0.01 L)^2, C2 = (0.03 L)^2. Identical inputs give 1.
    """
    x, y = _flat(x), _flat(y)
    C = x.shape[1]
    g = gaussian_window(window, sigma, x.dtype, x.device)
    kx = g.view(1, 1, 1, -1).expand(C, 1, 1, window)
    ky = g.view(1, 1, -1, 1).expand(C, 1, window, 1)

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, kx, padding=(0, window // 2), groups=C)
        return F.conv2d(t, ky, padding=(window // 2, 0), groups=C)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def silhouette_loss(alpha: Tensor, mask: Tensor, kind: str = "bce") -> Tensor:
    """Rendered alpha vs mask, mean over pixels. "bce": binary cross-entropy (alpha clamped to
    [1e-6, 1-1e-6]); "l1": mean |alpha - mask|."""
    if kind == "l1":
        return (alpha - mask).abs().mean()
    a = alpha.clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(a, mask.to(a.dtype))


def depth_loss(pred_depth: Tensor, gt_depth: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean relative L1 |d - d_gt| / d_gt over pixels with d_gt > 0 (and mask > 0.5 when given)."""
    valid = gt_depth > 0
    if mask is not None:
        valid = valid & (mask > 0.5)
    n = valid.sum()
    rel = torch.where(valid, (pred_depth - gt_depth).abs() / torch.where(valid, gt_depth, torch.ones_like(gt_depth)),
                      torch.zeros_like(gt_depth))
    return rel.sum() / n.clamp_min(1)


def temporal_loss(render: RenderOutput, neighbor: RenderOutput, mask: Tensor | None) -> Tensor:
    """Mask-weighted L1 between renders of frames t and t+1 at the same cameras (see LossConfig)."""
    region = neighbor.alpha.detach() if mask is None else torch.maximum(mask, neighbor.alpha.detach())
    diff = (render.rgb - neighbor.rgb).abs().mean(dim=-3, keepdim=True) + (render.alpha - neighbor.alpha).abs()
    return (region * diff).sum() / (region.sum() + _EPS)


class VGG19Features(nn.Module):
    """The 16 3x3 convolutions of VGG19 (conv1..conv16, FaceLift's naming), ReLU after each,
    2x2 max-pool between blocks. Returns features after relu1_2, relu2_2, relu3_4, relu4_4, relu5_4.

    Inputs [N,3,H,W] in [0,1], normalized with the ImageNet mean/std inside.
    """

    BLOCKS = (2, 2, 4, 4, 4)
    CHANNELS = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        c_in, k = 3, 1
        for n, c in zip(self.BLOCKS, self.CHANNELS):
            for _ in range(n):
                setattr(self, f"conv{k}", nn.Conv2d(c_in, c, 3, padding=1))
                c_in, k = c, k + 1
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = (x - self.mean) / self.std
        feats, k = [], 1
        for bi, n in enumerate(self.BLOCKS):
            for _ in range(n):
                x = F.relu(getattr(self, f"conv{k}")(x))
                k += 1
            feats.append(x)
            if bi < len(self.BLOCKS) - 1:
                x = F.max_pool2d(x, 2)
        return feats


def load_vgg19(path: str | Path) -> VGG19Features:
    """VGG19Features from a LOCAL file: a state dict with conv{k}.weight/bias (optionally prefixed,
    e.g. FaceLift's ``loss_calculator.perceptual_loss_module.net.``) or torchvision's vgg19
    ``features.{i}.weight/bias``, optionally inside a checkpoint's "model" dict. Frozen, eval mode."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: VGG19 weights file not found. Fix: set loss perceptual_weights to a local file "
                         "(torchvision vgg19 state dict or a FaceLift checkpoint), or set perceptual: 0.")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    net = VGG19Features()
    want = [f"conv{k}" for k in range(1, 17)]
    conv_keys = sorted({k.rsplit(".", 1)[0] for k in sd if k.rsplit(".", 1)[0].split(".")[-1] in want})
    mapped: dict[str, Tensor] = {}
    if conv_keys:
        for k, v in sd.items():
            stem, leaf = k.rsplit(".", 1)
            name = stem.split(".")[-1]
            if name in want and leaf in ("weight", "bias"):
                mapped[f"{name}.{leaf}"] = v
    else:  # torchvision layout: features.{i} conv layers in order
        idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith(".weight")})
        for j, i in enumerate(idx[:16]):
            mapped[f"conv{j + 1}.weight"] = sd[f"features.{i}.weight"]
            mapped[f"conv{j + 1}.bias"] = sd[f"features.{i}.bias"]
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: not a VGG19 state dict ({str(e).splitlines()[0]}). Fix: point perceptual_weights "
                         "to torchvision vgg19 weights or a FaceLift GS-LRM checkpoint.") from e
    net.eval().requires_grad_(False)
    return net


def perceptual_loss(net: VGG19Features, pred: Tensor, target: Tensor) -> Tensor:
    """Mean L1 between VGG19 features of pred and target ([..., 3, H, W] in [0,1]), averaged over levels."""
    fp, ft = net(_flat(pred)), net(_flat(target))
    return sum((a - b).abs().mean() for a, b in zip(fp, ft)) / len(fp)


# ----------------------------------------------------------------------------- total


def compute_losses(render: RenderOutput, target: dict[str, Tensor], cfg: LossConfig,
                   neighbor_render: RenderOutput | None = None, *, step: int | None = None,
                   vgg: VGG19Features | None = None) -> dict[str, Tensor]:
    """Weighted training losses; returns {term: value, ..., "total": sum of weight * term}.

    See the module docstring for shapes. ``vgg``: a VGG19Features (load once with ``load_vgg19``)
    reused across steps; when perceptual > 0 and it is None it is loaded from cfg.perceptual_weights.
    Raises FloatingPointError (naming the term and ``step`` / target["step"]) on a non-finite value.
    """
    pred = render.rgb
    gt = target["images"].to(pred.dtype)
    if gt.shape != pred.shape:
        raise ValueError(f"compute_losses: target images {tuple(gt.shape)} != rendered {tuple(pred.shape)}")
    mask = target.get("masks")
    mask = None if mask is None else mask.to(pred.dtype)
    gt_depth = target.get("depth")
    terms: dict[str, Tensor] = {}
    weights: dict[str, float] = {}

    def add(name: str, weight: float, fn) -> None:
        if weight > 0:
            terms[name] = fn()
            weights[name] = weight

    add("mse", cfg.mse, lambda: F.mse_loss(pred, gt))
    if mask is not None:
        add("masked_mse", cfg.masked_mse, lambda: masked_mse(pred, gt, mask))
        add("silhouette", cfg.silhouette, lambda: silhouette_loss(render.alpha, mask, cfg.silhouette_type))
    add("ssim", cfg.ssim, lambda: 1.0 - ssim(pred, gt, cfg.ssim_window, cfg.ssim_sigma))
    if gt_depth is not None:
        add("depth", cfg.depth, lambda: depth_loss(render.depth, gt_depth.to(pred.dtype), mask))
    if neighbor_render is not None:
        add("temporal", cfg.temporal, lambda: temporal_loss(render, neighbor_render, mask))
    if cfg.perceptual > 0:
        if vgg is None:
            if not cfg.perceptual_weights:
                raise InputError("loss config: perceptual > 0 needs perceptual_weights, a LOCAL VGG19 weights file "
                                 "(weights are never downloaded). Fix: set perceptual_weights or perceptual: 0.")
            vgg = load_vgg19(cfg.perceptual_weights)
        net = vgg.to(device=pred.device, dtype=pred.dtype)
        add("perceptual", cfg.perceptual, lambda: perceptual_loss(net, pred, gt))
    where = step if step is not None else target.get("step")
    for name, v in terms.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError(f"non-finite loss term {name!r} = {v.item()} at step/batch {where}: "
                                     "skip this batch or lower the learning rate")
    total = sum(weights[k] * v for k, v in terms.items()) if terms else pred.sum() * 0.0
    terms["total"] = total
    return terms
