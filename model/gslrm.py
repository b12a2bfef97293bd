"""GS-LRM: a transformer over pixel-aligned ray patches that predicts 3D Gaussians (FaceLift layout).

How to call::

    from model.config import preset
    from model.gslrm import GSLRM, flops_per_sample
    model = GSLRM(preset("tiny"))
    g = model(images, K, c2w)       # images [B,V,3,H,W] in [0,1]; K [B,V,3,3] px; c2w [B,V,4,4]
                                    # (OpenCV camera-to-world) -> Gaussians with N = 2 + V*H*W
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.05), lr=4e-4)

Module and parameter names are exactly those of FaceLift's state dict (spec section 2:
``patch_embedder.1.weight``, ``transformer_layers.{i}.attn.to_qkv.weight``, ...), so a converted
FaceLift checkpoint (model/facelift_checkpoint.py) loads with ``strict=True``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from model.config import GAUSSIAN_CHANNELS, ModelConfig
from model.gaussians import Gaussians, decode_gaussians
from model.rays import input_from_rays, pixel_rays


#: SDPA kernel order for ``attention="cudnn"``: cuDNN's fused attention first; every later entry is a
#: fallback (CPU, unsupported shapes), so the call never fails for lack of a kernel.
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class Patchify(nn.Module):
    """[B, V, C, H, W] -> [B, V*(H/p)*(W/p), p*p*C]; patches row-major, channel fastest in a patch."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.p = patch_size

    def forward(self, x: Tensor) -> Tensor:
        B, V, C, H, W = x.shape
        p = self.p
        x = x.reshape(B, V, C, H // p, p, W // p, p)
        # -> b v hh ww ph pw c  (element index inside a patch = (py*p + px)*C + ch)
        x = x.permute(0, 1, 3, 5, 4, 6, 2)
        return x.reshape(B, V * (H // p) * (W // p), p * p * C)


class SelfAttention(nn.Module):
    """Multi-head self-attention, qkv without bias, heads major in the width dimension."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.backend = cfg.attention
        self.to_qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.fc = nn.Linear(cfg.width, cfg.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, L, W = x.shape
        qkv = self.to_qkv(x).reshape(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, L, head_dim]
        if self.backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)  # flash / mem-efficient kernels on GPU
        elif self.backend == "cudnn":
            with sdpa_kernel(CUDNN_FIRST, set_priority=True):
                out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            out = attn @ v
        return self.fc(out.transpose(1, 2).reshape(B, L, W))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.width * cfg.mlp_ratio
        # names mlp.0 / mlp.2 as FaceLift (index 1 is the exact-erf GELU)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, cfg.width, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class TransformerBlock(nn.Module):
    """Pre-LN block: x += fc(attn(norm1 x)); x += W2 GELU(W1 norm2 x). LayerNorms have no bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps, bias=False)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GlobalGaussianHead(nn.Module):
    """LayerNorm + linear -> 14 raw values per global-Gaussian token."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps, bias=False)
        self.linear = nn.Linear(cfg.width, GAUSSIAN_CHANNELS, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.layernorm(x))


class GSLRM(nn.Module):
    """FaceLift's GS-LRM. See the module docstring for the call; ``cfg`` is a ModelConfig."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        p = cfg.patch_size
        self.gaussian_position_embeddings = nn.Parameter(torch.zeros(cfg.num_global_gaussians, cfg.width))
        self.patch_embedder = nn.Sequential(Patchify(p), nn.Linear(cfg.patch_dim, cfg.width, bias=False))
        self.input_layer_norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps, bias=False)
        self.transformer_layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.gaussian_upsampler = GlobalGaussianHead(cfg)
        self.pixel_gaussian_decoder = nn.Sequential(
            nn.LayerNorm(cfg.width, eps=cfg.ln_eps, bias=False),
            nn.Linear(cfg.width, p * p * GAUSSIAN_CHANNELS, bias=False),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal(std=init_std) linear weights and global tokens; LayerNorm weights 1."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=self.cfg.init_std, a=-2 * self.cfg.init_std, b=2 * self.cfg.init_std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
        nn.init.trunc_normal_(self.gaussian_position_embeddings, std=self.cfg.init_std)

    # ------------------------------------------------------------------ forward
    def forward_raw(self, images: Tensor, K: Tensor, c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Network outputs before decoding.

        Args: images [B,V,3,H,W] in [0,1]; K [B,V,3,3] pixels; c2w [B,V,4,4] OpenCV camera-to-world.
        Returns:
            raw [B, G + V*H*W, 14] in the order [globals, views, patch rows, patch cols, py, px];
            origins, directions [B, V*H*W, 3] world rays of the pixel-aligned Gaussians (same order).
        """
        B, V, C, H, W = images.shape
        p = self.cfg.patch_size
        if C != 3 or H % p or W % p:
            raise ValueError(f"GSLRM: images must be [B,V,3,H,W] with H, W divisible by {p}; got {tuple(images.shape)}")
        if K.shape != (B, V, 3, 3) or c2w.shape != (B, V, 4, 4):
            raise ValueError(f"GSLRM: K must be [B,V,3,3] and c2w [B,V,4,4]; got {tuple(K.shape)}, {tuple(c2w.shape)}")
        dt = torch.float64 if c2w.dtype == torch.float64 else torch.float32
        o, d = pixel_rays(K.to(dt), c2w.to(dt), H, W)  # [B, V, H, W, 3]
        x = input_from_rays(images, o, d)  # [B, V, 9, H, W]
        wdt = self.patch_embedder[1].weight.dtype
        tokens = self.patch_embedder(x.to(wdt))  # [B, V*hp*wp, width]
        G = self.cfg.num_global_gaussians
        glob = self.gaussian_position_embeddings[None].expand(B, G, -1).to(tokens.dtype)
        h = self.input_layer_norm(torch.cat([glob, tokens], dim=1))
        for block in self.transformer_layers:
            if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, use_reentrant=False)
            else:
                h = block(h)
        raw_g = self.gaussian_upsampler(h[:, :G])  # [B, G, 14]
        raw_p = self.pixel_gaussian_decoder(h[:, G:])  # [B, V*hp*wp, p*p*14], ordered (py, px, 14)
        raw = torch.cat([raw_g, raw_p.reshape(B, -1, GAUSSIAN_CHANNELS)], dim=1)
        # rays in the Gaussians' order: views, patch rows, patch cols, py, px
        def to_patch_order(r: Tensor) -> Tensor:
            r = r.reshape(B, V, H // p, p, W // p, p, 3).permute(0, 1, 2, 4, 3, 5, 6)
            return r.reshape(B, V * H * W, 3)

        return raw, to_patch_order(o), to_patch_order(d)

    def forward(self, images: Tensor, K: Tensor, c2w: Tensor) -> Gaussians:
        """images [B,V,3,H,W] in [0,1]; K [B,V,3,3] pixels; c2w [B,V,4,4] OpenCV camera-to-world.

        Returns Gaussians (world frame of c2w) with N = num_global_gaussians + V*H*W, decoded in fp32.
        """
        raw, o, d = self.forward_raw(images, K, c2w)
        return decode_gaussians(raw, o, d, self.cfg.num_global_gaussians, self.cfg)

    # ------------------------------------------------------------------ training helpers
    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on linear weights only; none on norms, biases and embeddings."""
        decay, no_decay = [], []
        for name, prm in self.named_parameters():
            if not prm.requires_grad:
                continue
            is_linear_weight = prm.dim() == 2 and name.endswith(".weight")
            (decay if is_linear_weight else no_decay).append(prm)
        return [{"params": decay, "weight_decay": float(weight_decay)},
                {"params": no_decay, "weight_decay": 0.0}]


def num_tokens(cfg: ModelConfig, num_views: int, image_size: int | None = None) -> int:
    """Sequence length: global tokens + num_views * (image_size / patch_size)^2."""
    s = cfg.image_size if image_size is None else image_size
    return cfg.num_global_gaussians + num_views * (s // cfg.patch_size) ** 2


def flops_per_sample(cfg: ModelConfig, num_views: int, image_size: int | None = None, training: bool = True) -> float:
    """Matmul FLOPs of one sample (2 FLOPs per multiply-add).

    Counts the patch embedding, every transformer block (qkv, QK^T, AV, output projection, MLP)
    and both heads. ``training=True`` returns forward + backward = 3 x forward (the usual MFU
    convention; activation-checkpointing recomputation is not counted).
    """
    s = cfg.image_size if image_size is None else image_size
    L = num_tokens(cfg, num_views, s)
    L_img = L - cfg.num_global_gaussians
    W = cfg.width
    per_block = 2 * L * W * 3 * W + 2 * 2 * L * L * W + 2 * L * W * W + 2 * 2 * L * W * W * cfg.mlp_ratio
    embed = 2 * L_img * cfg.patch_dim * W
    heads = 2 * L_img * W * cfg.patch_size**2 * GAUSSIAN_CHANNELS + 2 * cfg.num_global_gaussians * W * GAUSSIAN_CHANNELS
    fwd = embed + cfg.depth * per_block + heads
    return float(3 * fwd if training else fwd)
