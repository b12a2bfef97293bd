"""Pure-PyTorch differentiable 3D Gaussian splatting (CPU or GPU), numerically gsplat's "classic" mode.

How to call (usually through ``model.renderer.render(..., backend="torch")``)::

    out = render_torch(gaussians, K, c2w, width, height, background=(1, 1, 1))

Algorithm (gsplat 1.5 conventions so that both backends agree):

1. Projection (EWA): camera covariance R Sigma R^T from scale + quaternion (R of w2c), Jacobian of the
   pinhole projection at the mean (x/z, y/z clamped to 1.3x the field of view as gsplat), 2D
   covariance + 0.3 px^2 low-pass on the diagonal, conic = its inverse. Gaussians with camera depth
   outside (near, far) or a non-positive 2D determinant are dropped.
2. Culling (no gradient): opacity-aware per-axis extents ceil(sqrt(2 ln(255 o)) sigma_x) like gsplat;
   that box contains every pixel where alpha >= 1/255, so culling never changes the image.
3. Tiles of TILE_SIZE^2 pixels; each tile's list is the Gaussians whose box touches it, in ascending
   camera depth. All tiles walk their lists together in depth chunks (chunk length chosen so a
   chunk's [tiles, chunk, pixels] tensors stay under GROUP_BUDGET elements), carrying the
   per-pixel transmittance; a tile leaves the loop once its list ends or all its pixels have
   T <= 1e-4 (gsplat's early stop, the main saving for dense scenes). Compositing has an analytic
   backward (``_Blend``, the reverse accumulation of 3DGS/gsplat) that recomputes alpha and T from
   the saved per-chunk coefficients, so memory does not grow with the number of intersections.
4. Per pixel centre (c+0.5, r+0.5): alpha = min(0.999, o exp(-sigma)); contributions with
   alpha < 1/255 are skipped (sigma >= 0 holds since the conic is positive definite); front-to-back compositing stops before the Gaussian that
   would bring the transmittance to <= 1e-4. rgb = sum w c + (1 - sum w) background.

Camera conventions: ``K`` [B,M,3,3] pixels (skew supported); ``c2w`` [B,M,4,4] OpenCV camera-to-world
(assumed rigid: the world-to-camera matrix is [R^T, -R^T t]).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from model.gaussians import Gaussians
from model.renderer import RenderOutput, background_tensor

TILE_SIZE = 4  # gsplat uses 16; on CPU small tiles waste fewer pixel evaluations (culling is exact, images do not change)
EPS2D = 0.3  # px^2 added to the 2D covariance diagonal (3DGS / gsplat low-pass)
MAX_ALPHA = 0.999  # gsplat's clamp (graphdeco's rasteriser uses 0.99)
ALPHA_THRESHOLD = 1.0 / 255.0
MIN_TRANSMITTANCE = 1e-4
GAUSSIAN_EXTEND = 3.33  # gsplat's cap of the extent in standard deviations
#: Elements of one group's [tiles, list length, pixels] tensors (bounds peak memory; ~16 MB each in fp32).
GROUP_BUDGET = 1 << 22


def c2w_to_w2c(c2w: Tensor) -> Tensor:
    """Rigid inverse of OpenCV camera-to-world [..., 4, 4] -> world-to-camera [..., 4, 4]."""
    R = c2w[..., :3, :3].transpose(-1, -2)
    t = -(R @ c2w[..., :3, 3:4])
    bottom = torch.zeros_like(c2w[..., 3:4, :])
    bottom[..., 3] = 1.0
    return torch.cat([torch.cat([R, t], dim=-1), bottom], dim=-2)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] quaternions (w, x, y, z), normalised here -> [..., 3, 3] rotation matrices."""
    q = torch.nn.functional.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariance R S S R^T: quats [N,4] (w,x,y,z), scales [N,3] linear -> [N,3,3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(means: Tensor, covars: Tensor, w2c: Tensor, K: Tensor, width: int, height: int,
                      near: float, far: float, eps2d: float = EPS2D) -> dict[str, Tensor]:
    """EWA projection of N world Gaussians into M cameras.

    Args: means [N,3] world; covars [N,3,3] world; w2c [M,4,4] world-to-camera (OpenCV);
        K [M,3,3] pixels.
    Returns dict: means2d [M,N,2] pixels (corner-origin convention); conics [M,N,3] (a, b, c of the
        inverse 2D covariance, sigma = 0.5(a dx^2 + c dy^2) + b dx dy); cov2d [M,N,3] (xx, xy, yy,
        after the low-pass); depths [M,N] camera z; valid [M,N] bool.
    """
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    mc = torch.einsum("mij,nj->mni", R, means) + t[:, None, :]  # [M, N, 3]
    cc = torch.einsum("mij,njk,mlk->mnil", R, covars, R)  # [M, N, 3, 3]
    x, y, z = mc.unbind(-1)
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]
    cx, cy, s = K[:, 0, 2, None], K[:, 1, 2, None], K[:, 0, 1, None]
    valid = (z > near) & (z < far)
    zs = torch.where(valid, z, torch.ones_like(z))  # keeps invalid entries finite (and their grads 0)
    # clamp the Jacobian's evaluation point to 1.3x the field of view (gsplat / 3DGS)
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    xr = torch.clamp(x / zs, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    yr = torch.clamp(y / zs, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, s / zs, -(fx * xr + s * yr) / zs, zero, fy / zs, -fy * yr / zs], dim=-1)
    J = J.reshape(*zs.shape, 2, 3)
    cov = J @ cc @ J.transpose(-1, -2)
    a = cov[..., 0, 0] + eps2d
    b = 0.5 * (cov[..., 0, 1] + cov[..., 1, 0])
    c = cov[..., 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    u = (fx * x + s * y) / zs + cx
    v = fy * y / zs + cy
    return {"means2d": torch.stack([u, v], dim=-1), "conics": conics,
            "cov2d": torch.stack([a, b, c], dim=-1), "depths": z, "valid": valid}


@torch.no_grad()
def _tile_lists(proj: dict[str, Tensor], opacities: Tensor, width: int, height: int, tile_size: int):
    """Intersections of Gaussian boxes with tiles, sorted by (camera, tile, depth).

    Returns (flat_ids [I] indices m*N+n, tile_keys [I] = m*T+tile, tiles_x, tiles_y).
    """
    M, N = proj["depths"].shape
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    op = opacities[None].expand(M, N)
    ok = proj["valid"] & (op >= ALPHA_THRESHOLD)
    extend = torch.sqrt(2.0 * torch.log(torch.clamp_min(op, ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
    extend = torch.clamp_max(extend, GAUSSIAN_EXTEND)
    cov = proj["cov2d"]
    rx = torch.ceil(extend * torch.sqrt(torch.clamp_min(cov[..., 0], 0.0)))
    ry = torch.ceil(extend * torch.sqrt(torch.clamp_min(cov[..., 2], 0.0)))
    mx, my = proj["means2d"].unbind(-1)
    ok = ok & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
    tx0 = torch.clamp(torch.floor((mx - rx) / tile_size), 0, tw)
    tx1 = torch.clamp(torch.ceil((mx + rx) / tile_size), 0, tw)
    ty0 = torch.clamp(torch.floor((my - ry) / tile_size), 0, th)
    ty1 = torch.clamp(torch.ceil((my + ry) / tile_size), 0, th)
    count = ((tx1 - tx0) * (ty1 - ty0)).long() * ok
    # visit Gaussians camera by camera in ascending depth, so that a stable sort by tile keeps depth order
    depth = torch.where(ok, proj["depths"], torch.full_like(proj["depths"], float("inf")))
    order = torch.argsort(depth, dim=1, stable=True)  # [M, N]
    flat = (order + torch.arange(M, device=order.device)[:, None] * N).reshape(-1)
    cnt = count.reshape(-1)[flat]
    keep = cnt > 0
    flat, cnt = flat[keep], cnt[keep]
    rep = torch.repeat_interleave(torch.arange(flat.numel(), device=flat.device), cnt)
    start = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(rep.numel(), device=flat.device) - start[rep]
    wdt = (tx1 - tx0).reshape(-1).long()[flat][rep]
    tx = tx0.reshape(-1).long()[flat][rep] + k % wdt
    ty = ty0.reshape(-1).long()[flat][rep] + k // wdt
    cam = flat[rep] // N
    keys = cam * (tw * th) + ty * tw + tx
    keys, perm = torch.sort(keys, stable=True)
    return flat[rep][perm], keys, tw, th


LOG_MAX_ALPHA = math.log(MAX_ALPHA)


def _blend(coef: Tensor, f: Tensor, t_in: Tensor, basis: Tensor):
    """Shared by forward and backward of _Blend. Returns out [A,P,F], t_out [A,P] and intermediates."""
    la = torch.matmul(coef, basis)  # [A, C, P] log alpha
    alpha = torch.exp(torch.clamp_max(la, LOG_MAX_ALPHA))
    alpha = alpha * (alpha >= ALPHA_THRESHOLD)  # gsplat skips contributions below 1/255
    cp = torch.cumprod(1.0 - alpha, dim=1)  # transmittance after each Gaussian, relative to t_in
    cp_excl = torch.cat([torch.ones_like(cp[:, :1]), cp[:, :-1]], dim=1)
    # stop before the Gaussian that would bring T to <= 1e-4 (gsplat); T only decreases, so a mask works.
    # Past that point T stays <= 1e-4, so later chunks contribute nothing either.
    tm = cp_excl * ((t_in[:, None] * cp) > MIN_TRANSMITTANCE)  # T_i / t_in, 0 once stopped
    w = alpha * tm * t_in[:, None]
    out = torch.matmul(w.transpose(1, 2), f)  # [A, P, F]
    return out, t_in * cp[:, -1], (la, alpha, cp, tm, w)


def _coefficients(row: Tensor, pad: Tensor, origin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Log-alpha polynomial coefficients [A,C,6] (and ux, uy [A,C]) from gathered table rows.

    log alpha(q) = log o - sigma(q), sigma = 0.5 a dx^2 + 0.5 c dy^2 + b dx dy with d = (u - q) and
    u the mean relative to the tile origin; expanded in the basis (qx^2, qy^2, qx qy, qx, qy, 1).
    """
    ux = row[..., 0] - origin[:, None, 0]
    uy = row[..., 1] - origin[:, None, 1]
    a, b, c = row[..., 2], row[..., 3], row[..., 4]
    const = row[..., 5] - (0.5 * a * ux * ux + 0.5 * c * uy * uy + b * ux * uy)
    const = torch.where(pad, torch.full_like(const, -1e4), const)  # padding: alpha = 0
    coef = torch.stack([-0.5 * a, -0.5 * c, -b, a * ux + b * uy, c * uy + b * ux, const], dim=-1)
    return coef, ux, uy


class _Blend(torch.autograd.Function):
    """Front-to-back alpha compositing of one depth chunk with an analytic backward (as gsplat).

    Inputs: row [A,C,11] gathered table rows (means2d, conic a b c, log opacity, 5 features) per
    (tile, list entry), pad [A,C] bool, origin [A,2] tile corners, t_in [A,P] transmittance before
    the chunk, basis [6,P]. Outputs out [A,P,5] = sum_i w_i f_i and t_out [A,P]. Only the inputs
    are saved; the backward recomputes alpha and T, so no [A,C,P] tensor is kept between forward
    and backward and memory does not grow with the number of intersections. The [A,C]-sized
    coefficient algebra is differentiated by hand too (autograd's bookkeeping of ~30 small ops
    per chunk cost as much as the compositing itself).
    """

    @staticmethod
    def forward(ctx, row, pad, origin, t_in, basis):
        coef, _, _ = _coefficients(row, pad, origin)
        out, t_out, _ = _blend(coef, row[..., 6:], t_in, basis)
        ctx.save_for_backward(row, pad, origin, t_in, basis)
        return out, t_out

    @staticmethod
    def backward(ctx, g_out, g_t):
        row, pad, origin, t_in, basis = ctx.saved_tensors
        coef, ux, uy = _coefficients(row, pad, origin)
        f = row[..., 6:]
        _, t_out, (la, alpha, cp, tm, w) = _blend(coef, f, t_in, basis)
        if g_out is None:
            g_out = torch.zeros(*t_in.shape, f.shape[-1], dtype=f.dtype, device=f.device)
        if g_t is None:
            g_t = torch.zeros_like(t_in)
        g_f = torch.matmul(w, g_out)  # [A, C, F]
        c = torch.matmul(f, g_out.transpose(1, 2))  # [A, C, P]: dL/d(out) . f_i per pixel
        wc = w * c
        after = wc.sum(dim=1, keepdim=True) - torch.cumsum(wc, dim=1)  # sum over later Gaussians j > i
        # d out / d alpha_i = T_i f_i - sum_{j>i} w_j f_j / (1 - alpha_i);  d t_out / d alpha_i = -t_out / (1 - alpha_i)
        g_alpha = tm * t_in[:, None] * c - (after + (g_t * t_out)[:, None]) / (1.0 - alpha)
        g_la = g_alpha * alpha * (la < LOG_MAX_ALPHA)  # alpha = exp(la) below the clamp, constant above
        g0, g1, g2, g3, g4, g5 = torch.matmul(g_la, basis.transpose(0, 1)).unbind(-1)  # d/d coef, [A, C] each
        g5 = g5 * ~pad
        a, b, cc = row[..., 2], row[..., 3], row[..., 4]
        # chain rule through _coefficients (const = lo - 0.5 a ux^2 - 0.5 c uy^2 - b ux uy)
        g_ux = g3 * a + g4 * b - g5 * (a * ux + b * uy)
        g_uy = g3 * b + g4 * cc - g5 * (cc * uy + b * ux)
        g_a = -0.5 * g0 + g3 * ux - 0.5 * g5 * ux * ux
        g_b = -g2 + g3 * uy + g4 * ux - g5 * ux * uy
        g_c = -0.5 * g1 + g4 * uy - 0.5 * g5 * uy * uy
        g_row = torch.cat([torch.stack([g_ux, g_uy, g_a, g_b, g_c, g5], dim=-1), g_f], dim=-1)
        g_row = g_row * ~pad[..., None]  # padding rows gathered entry 0: they must not receive gradient
        # out and t_out are linear in t_in (the termination mask is piecewise constant)
        g_tin = (alpha * tm * c).sum(dim=1) + g_t * cp[:, -1]
        return g_row, None, None, g_tin, None


def _composite_chunk(ids: Tensor, origin: Tensor, basis: Tensor, t_in: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back compositing of one depth chunk of a set of tiles.

    ids [A,C] flat Gaussian ids (-1 = padding) in ascending depth; origin [A,2] top-left pixel
    corner of each tile; basis [6,P] = (qx^2, qy^2, qx qy, qx, qy, 1) of the tile-local pixel centres
    q; t_in [A,P] transmittance before this chunk; table [MN, 11] per projected Gaussian: means2d (2),
    conic a, b, c (3), log opacity (1), features (5: rgb, depth, 1 -- the last column makes the
    weights' sum come out of the same matmul). Returns ([A,P,5] = sum_i w_i f_i, t_out [A,P]).

    log alpha = log o - sigma is a quadratic polynomial in q, so one batched matmul evaluates it for
    all (Gaussian, pixel) pairs; tile-local coordinates keep the expansion well conditioned.
    """
    pad = ids < 0
    row = table[torch.clamp_min(ids, 0)]  # [A, C, 11], one gather
    return _Blend.apply(row, pad, origin, t_in, basis)


def _render_one(g_means, g_quats, g_scales, g_opac, g_colors, w2c, K, width, height, near, far,
                tile_size: int):
    """Gaussians of one batch element ([N,...]) into M cameras. Returns [M, H, W, 5] (rgb, D, alpha)."""
    M, N = w2c.shape[0], g_means.shape[0]
    dt, dev = g_means.dtype, g_means.device
    covars = covariance_3d(g_quats, g_scales)
    proj = project_gaussians(g_means, covars, w2c, K, width, height, near, far)
    flat_ids, keys, tw, th = _tile_lists(proj, g_opac, width, height, tile_size)
    T = tw * th
    P = tile_size * tile_size
    means2d = proj["means2d"].reshape(M * N, 2)
    conics = proj["conics"].reshape(M * N, 3)
    log_opac = torch.log(g_opac)[None].expand(M, N).reshape(M * N)
    ones = torch.ones(M, N, 1, dtype=dt, device=dev)
    feats = torch.cat([g_colors[None].expand(M, N, 3), proj["depths"][..., None], ones], dim=-1).reshape(M * N, 5)
    table = torch.cat([means2d, conics, log_opac[:, None], feats], dim=-1)  # [M*N, 11]
    out = torch.zeros(M * T, P, 5, dtype=dt, device=dev)
    if flat_ids.numel():
        tiles, counts = torch.unique_consecutive(keys, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        ly, lx = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
        qx, qy = lx.reshape(-1).to(dt) + 0.5, ly.reshape(-1).to(dt) + 0.5  # tile-local pixel centres
        basis = torch.stack([qx * qx, qy * qy, qx * qy, qx, qy, torch.ones_like(qx)])  # [6, P]
        t_cam = tiles % T
        origin = torch.stack([(t_cam % tw) * tile_size, (t_cam // tw) * tile_size], dim=-1).to(dt)  # [n, 2]
        n = tiles.numel()
        acc = torch.zeros(n, P, 5, dtype=dt, device=dev)
        trans = torch.ones(n, P, dtype=dt, device=dev)
        active = torch.arange(n, device=dev)
        pos = 0
        # walk all tiles' depth-sorted lists chunk by chunk, dropping finished tiles (all T <= 1e-4)
        while active.numel():
            longest = int(counts[active].max()) - pos
            ch = min(longest, max(8, GROUP_BUDGET // (active.numel() * P)))
            ar = torch.arange(pos, pos + ch, device=dev)[None]
            idx = starts[active, None] + ar
            ids = torch.where(ar < counts[active, None], flat_ids[torch.clamp_max(idx, flat_ids.numel() - 1)],
                              torch.full_like(idx, -1))
            res, t_out = _composite_chunk(ids, origin[active], basis, trans[active], table)
            acc = acc.index_add(0, active, res)
            trans = trans.index_copy(0, active, t_out)
            pos += ch
            alive = (counts[active] > pos) & (t_out.detach().amax(dim=1) > MIN_TRANSMITTANCE)
            active = active[alive]
        out = out.index_copy(0, tiles, acc)
    img = out.reshape(M, th, tw, tile_size, tile_size, 5).permute(0, 1, 3, 2, 4, 5)
    return img.reshape(M, th * tile_size, tw * tile_size, 5)[:, :height, :width]


def render_torch(gaussians: Gaussians, K: Tensor, c2w: Tensor, width: int, height: int,
                 background: Sequence[float] | Tensor = (1.0, 1.0, 1.0), near: float = 0.01, far: float = 100.0,
                 tile_size: int = TILE_SIZE) -> RenderOutput:
    """Render ``gaussians`` (batch B) into cameras K [B,M,3,3], c2w [B,M,4,4] (OpenCV camera-to-world).

    Returns RenderOutput with rgb [B,M,3,H,W], alpha / depth / depth_acc [B,M,1,H,W] (depth is
    camera z, expected = depth_acc / max(alpha, 1e-10) as gsplat's "ED"). Computation dtype is the
    Gaussians' dtype. ``tile_size`` only changes speed (culling is exact), never the image.
    """
    B, M = K.shape[:2]
    dt, dev = gaussians.means.dtype, gaussians.means.device
    bg = background_tensor(background, B, M, dt, dev)
    w2c = c2w_to_w2c(c2w.to(dt))
    colors = gaussians.colors()
    outs = []
    for b in range(B):
        outs.append(_render_one(gaussians.means[b], gaussians.quats[b], gaussians.scales[b], gaussians.opacities[b],
                                colors[b], w2c[b], K[b].to(dt), width, height, near, far, tile_size))
    o = torch.stack(outs).permute(0, 1, 4, 2, 3)  # [B, M, 5, H, W]
    alpha = o[:, :, 4:5]
    rgb = o[:, :, :3] + (1.0 - alpha) * bg[..., None, None]
    depth_acc = o[:, :, 3:4]
    depth = depth_acc / torch.clamp_min(alpha, 1e-10)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, depth_acc=depth_acc)
