"""Typed configuration of the GS-LRM network and its presets.

How to call::

    from model.config import preset, ModelConfig
    cfg = preset("tiny")                       # CPU tests / demo (64 px)
    cfg = preset("facelift")                   # FaceLift's released architecture (512 px)
    cfg = preset("base", image_size=128)       # any field can be overridden
    cfg = ModelConfig.from_dict({"width": 256, "depth": 4, "heads": 4})  # unknown keys -> InputError

The defaults of the decoding constants (``depth_half_range``, ``scale_bias``, ``max_log_scale``,
``opacity_bias``) are FaceLift's (see /work/shared/specs/facelift_gslrm_checkpoint.md, section 4), so a
FaceLift state dict loads into ``GSLRM(preset("facelift"))`` and decodes identically.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workflow_scripts.errors import InputError, reject_unknown_keys

#: Channels of the pixel-aligned input: RGB*2-1, ray direction d, ray point nearest the origin.
INPUT_CHANNELS = 9
#: Raw values per Gaussian: xyz(3) + SH DC(3) + log-scale(3) + quaternion wxyz(4) + opacity(1).
GAUSSIAN_CHANNELS = 14

ATTENTION_BACKENDS = ("sdpa", "cudnn", "math")


@dataclass
class ModelConfig:
    """GS-LRM hyper-parameters.

    image_size: nominal square input size in pixels (the forward accepts any H, W divisible by
        ``patch_size``; data code uses this value to size crops).
    patch_size: side of the square patches (FaceLift: 8); every patch token decodes to
        patch_size**2 pixel-aligned Gaussians.
    width / depth / heads / mlp_ratio: transformer size; head_dim = width // heads.
    num_input_views: views fed to the network (used by ``flops_per_sample`` and data code).
    num_global_gaussians: learned tokens decoded to free (not pixel-aligned) Gaussians (FaceLift: 2).
    depth_half_range: pixel-aligned depth lies within +-this of the ray's point nearest the world
        origin (FaceLift: 1.8, normalized world units).
    depth_preact_bias: added to the mean of channels 0-2 before the sigmoid (FaceLift default 0).
    scale_bias / max_log_scale: world scale = exp(min(raw + scale_bias, max_log_scale)).
    opacity_bias: opacity = sigmoid(raw + opacity_bias) (FaceLift: -2.0).
    ln_eps: LayerNorm epsilon (PyTorch default, as FaceLift).
    init_std: std of the truncated-normal init of linear weights and global tokens.
    attention: "sdpa" = torch.nn.functional.scaled_dot_product_attention with PyTorch's own kernel
        choice (flash / memory-efficient on GPU); "cudnn" = the same call with cuDNN's fused attention
        tried first (faster on Hopper, see benchmarks/RESULTS.md), then flash, memory-efficient, math;
        "math" = explicit softmax(QK^T/sqrt(d))V (reference / debugging). All three compute the same
        function (tests/test_model_gslrm.py).
    activation_checkpointing: recompute each transformer block in backward (saves memory).
    """

    image_size: int = 256
    patch_size: int = 8
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    num_input_views: int = 6
    num_global_gaussians: int = 2
    depth_half_range: float = 1.8
    depth_preact_bias: float = 0.0
    scale_bias: float = -2.3
    max_log_scale: float = -1.2
    opacity_bias: float = -2.0
    ln_eps: float = 1e-5
    init_std: float = 0.02
    attention: str = "sdpa"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def patch_dim(self) -> int:
        """Length of one patch vector: patch_size**2 * 9 (channel fastest)."""
        return self.patch_size * self.patch_size * INPUT_CHANNELS

    def validate(self, source: str = "model config") -> None:
        """Raise InputError naming ``source`` when a value cannot work."""
        problems = []
        for name in ("image_size", "patch_size", "width", "depth", "heads", "mlp_ratio", "num_input_views"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.num_global_gaussians < 0:
            problems.append(f"num_global_gaussians must be >= 0 (got {self.num_global_gaussians})")
        if self.heads > 0 and self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if self.patch_size > 0 and self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.depth_half_range <= 0:
            problems.append(f"depth_half_range must be > 0 (got {self.depth_half_range})")
        if self.attention not in ATTENTION_BACKENDS:
            problems.append(f"attention must be one of {ATTENTION_BACKENDS} (got {self.attention!r})")
        if problems:
            raise InputError(f"{source}: " + "; ".join(problems) + ". Fix: correct these model settings.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> "ModelConfig":
        """Build from a plain dict (e.g. a YAML section or a checkpoint); unknown keys -> InputError.

        A key ``preset`` (optional) selects the preset the other keys override.
        """
        d = dict(d)
        base = d.pop("preset", None)
        reject_unknown_keys(d, cls, source, "model")
        if base is not None:
            return preset(str(base), source=source, **d)
        try:
            return cls(**d)
        except TypeError as e:  # wrong types that dataclass construction itself rejects
            raise InputError(f"{source}: {e}. Fix: correct the model settings.") from e


_PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to train for a few hundred steps on 2 CPU cores (tests, demo).
    "tiny": dict(image_size=64, patch_size=8, width=128, depth=4, heads=4, num_input_views=4),
    # A single-GPU model for 256 px mouse crops.
    "base": dict(image_size=256, patch_size=8, width=768, depth=12, heads=12, num_input_views=6),
    # FaceLift's released GS-LRM (323.6 M parameters without the VGG loss network).
    "facelift": dict(image_size=512, patch_size=8, width=1024, depth=24, heads=16, num_input_views=6),
}

PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, source: str = "model config", **overrides: Any) -> ModelConfig:
    """Return the preset ``name`` ("tiny", "base", "facelift") with ``overrides`` applied."""
    if name not in _PRESETS:
        raise InputError(f"{source}: unknown model preset {name!r}. Fix: use one of {list(_PRESETS)}.")
    reject_unknown_keys(overrides, ModelConfig, source, "model")
    return ModelConfig(**{**_PRESETS[name], **overrides})
