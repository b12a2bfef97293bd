"""FaceLift checkpoint loading: a state dict in the documented layout (spec section 2) for a tiny
config loads strictly, and our model then equals a reference forward written directly from the spec
(sections 3-4), independent of model/ code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.config import preset
from model.facelift_checkpoint import load_facelift_model, load_facelift_state_dict
from model.gslrm import GSLRM
from workflow_scripts.cameras import look_at_c2w
from workflow_scripts.errors import InputError

W, DEPTH, HEADS, P, G = 32, 2, 4, 8, 2
VGG_OUT = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def facelift_layout_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under FaceLift's key names and shapes (spec section 2), tiny width/depth."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "gaussian_position_embeddings": r(G, W, s=1.0),
        "patch_embedder.1.weight": r(W, P * P * 9, s=0.05),
        "input_layer_norm.weight": 1 + r(W, s=0.1),
        "gaussian_upsampler.layernorm.weight": 1 + r(W, s=0.1),
        "gaussian_upsampler.linear.weight": r(14, W),
        "pixel_gaussian_decoder.0.weight": 1 + r(W, s=0.1),
        "pixel_gaussian_decoder.1.weight": r(P * P * 14, W),
    }
    for i in range(DEPTH):
        sd[f"transformer_layers.{i}.norm1.weight"] = 1 + r(W, s=0.1)
        sd[f"transformer_layers.{i}.attn.to_qkv.weight"] = r(3 * W, W)
        sd[f"transformer_layers.{i}.attn.fc.weight"] = r(W, W)
        sd[f"transformer_layers.{i}.norm2.weight"] = 1 + r(W, s=0.1)
        sd[f"transformer_layers.{i}.mlp.mlp.0.weight"] = r(4 * W, W)
        sd[f"transformer_layers.{i}.mlp.mlp.2.weight"] = r(W, 4 * W, s=0.1)
    c_in = 3
    for k, c in enumerate(VGG_OUT, start=1):  # the frozen perceptual-loss VGG19 (dropped by the loader)
        sd[f"loss_calculator.perceptual_loss_module.net.conv{k}.weight"] = torch.zeros(c, c_in, 3, 3)
        sd[f"loss_calculator.perceptual_loss_module.net.conv{k}.bias"] = torch.zeros(c)
        c_in = c
    return sd


def spec_reference_forward(sd, images, fxfycxcy, c2w):
    """Spec sections 3-4 written out directly (float64). images [V,3,S,S]; fxfycxcy [V,4]; c2w [V,4,4].
    Returns means [N,3], scales, quats, opacities, sh_dc."""
    sd = {k: v.double() for k, v in sd.items()}
    V, _, S, _ = images.shape
    rows = []
    rays_o, rays_d = [], []
    for v in range(V):
        fx, fy, cx, cy = fxfycxcy[v]
        r, c = torch.meshgrid(torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij")
        dcam = torch.stack([(c + 0.5 - cx) / fx, (r + 0.5 - cy) / fy, torch.ones_like(c)], -1)
        dcam = dcam / dcam.norm(dim=-1, keepdim=True)
        d = dcam @ c2w[v, :3, :3].T
        d = d / d.norm(dim=-1, keepdim=True)
        o = c2w[v, :3, 3].expand_as(d)
        near = o + (-(o * d).sum(-1, keepdim=True)) * d
        x = torch.cat([images[v].permute(1, 2, 0) * 2 - 1, d, near], -1)  # [S, S, 9]
        for pr in range(S // P):
            for pc in range(S // P):
                patch = x[pr * P:(pr + 1) * P, pc * P:(pc + 1) * P]  # [py, px, ch] -> (py*8+px)*9+ch
                rows.append(patch.reshape(-1))
                rays_o.append(o[pr * P:(pr + 1) * P, pc * P:(pc + 1) * P].reshape(-1, 3))
                rays_d.append(d[pr * P:(pr + 1) * P, pc * P:(pc + 1) * P].reshape(-1, 3))
    tokens = torch.stack(rows) @ sd["patch_embedder.1.weight"].T
    h = torch.cat([sd["gaussian_position_embeddings"], tokens])

    def ln(t, w):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * w

    h = ln(h, sd["input_layer_norm.weight"])
    hd = W // HEADS
    for i in range(DEPTH):
        pre = f"transformer_layers.{i}."
        y = ln(h, sd[pre + "norm1.weight"])
        qkv = y @ sd[pre + "attn.to_qkv.weight"].T
        q, k, v = qkv[:, :W], qkv[:, W:2 * W], qkv[:, 2 * W:]
        heads = []
        for j in range(HEADS):  # head index is the major part of the width dimension
            sl = slice(j * hd, (j + 1) * hd)
            a = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(hd), dim=-1)
            heads.append(a @ v[:, sl])
        h = h + torch.cat(heads, -1) @ sd[pre + "attn.fc.weight"].T
        y = ln(h, sd[pre + "norm2.weight"])
        u = y @ sd[pre + "mlp.mlp.0.weight"].T
        u = 0.5 * u * (1 + torch.erf(u / math.sqrt(2)))  # exact GELU
        h = h + u @ sd[pre + "mlp.mlp.2.weight"].T
    raw_g = ln(h[:G], sd["gaussian_upsampler.layernorm.weight"]) @ sd["gaussian_upsampler.linear.weight"].T
    raw_p = ln(h[G:], sd["pixel_gaussian_decoder.0.weight"]) @ sd["pixel_gaussian_decoder.1.weight"].T
    raw_p = raw_p.reshape(-1, 14)  # (py, px, 14) per token
    o, d = torch.cat(rays_o), torch.cat(rays_d)
    t = torch.sigmoid(raw_p[:, :3].mean(-1, keepdim=True))
    depth = 1.8 * (2 * t - 1) + (-(o * d).sum(-1, keepdim=True))
    means = torch.cat([raw_g[:, :3], o + depth * d])
    raw = torch.cat([raw_g, raw_p])
    scales = torch.exp(torch.minimum(raw[:, 6:9] - 2.3, torch.tensor(-1.2, dtype=torch.float64)))
    quats = raw[:, 9:13] / raw[:, 9:13].norm(dim=-1, keepdim=True)
    opac = torch.sigmoid(raw[:, 13] - 2.0)
    return means, scales, quats, opac, raw[:, 3:6]


def tiny_cfg():
    return preset("tiny", width=W, depth=DEPTH, heads=HEADS, patch_size=P, image_size=16, num_global_gaussians=G)


def test_loads_documented_layout_and_matches_spec_reference(tmp_path):
    sd = facelift_layout_state_dict()
    path = tmp_path / "ckpt_0000000000021125.pt"
    torch.save({"model": sd, "optimizer": {}, "lr_scheduler": {}, "fwdbwd_pass_step": 21125,
                "param_update_step": 21125}, path)
    cfg = tiny_cfg()
    model = load_facelift_model(path, cfg).double()  # strict load inside
    S, V = 16, 2
    c2w = torch.tensor(np.stack([look_at_c2w(np.array([2.7 * math.cos(a), 2.7 * math.sin(a), 0.0]), np.zeros(3))
                                 for a in (0.3, 1.9)]), dtype=torch.float64)
    fxfycxcy = torch.tensor([[17.2, 17.9, 8.0, 8.3], [16.5, 16.4, 7.6, 8.1]], dtype=torch.float64)
    K = torch.zeros(V, 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = *fxfycxcy.T, 1.0
    images = torch.rand(V, 3, S, S, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        g = model(images[None], K[None], c2w[None])
    ref = spec_reference_forward(sd, images, fxfycxcy, c2w)
    for ours, theirs in zip((g.means, g.scales, g.quats, g.opacities, g.sh_dc), ref):
        torch.testing.assert_close(ours[0], theirs, atol=1e-10, rtol=1e-9)
    assert g.num_gaussians == G + V * S * S


def test_state_dict_forms_and_prefix():
    cfg = tiny_cfg()
    sd = facelift_layout_state_dict()
    a = load_facelift_state_dict(sd, cfg)  # bare state dict
    b = load_facelift_state_dict({"module." + k: v for k, v in sd.items()}, cfg)  # DDP prefix
    assert set(a) == set(b) and not any(k.startswith("loss_calculator") for k in a)
    GSLRM(cfg).load_state_dict(a, strict=True)


def test_mismatch_and_missing_file_raise(tmp_path):
    cfg = tiny_cfg()
    sd = facelift_layout_state_dict()
    with pytest.raises(InputError, match="preset\\('facelift'\\)"):
        load_facelift_state_dict(sd, preset("tiny"))  # width 128 != 32
    del sd["transformer_layers.1.norm2.weight"]
    with pytest.raises(InputError, match="Missing: \\[transformer_layers.1.norm2.weight"):
        load_facelift_state_dict(sd, cfg)
    with pytest.raises(InputError, match="not found"):
        load_facelift_state_dict(tmp_path / "nope.pt", cfg)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="torch.load"):
        load_facelift_state_dict(bad, cfg)
