"""Evaluation protocols for a trained GS-LRM checkpoint.

How to call::

    from model.evaluate import EvalParams, run_evaluate
    run_evaluate("results/train/exp/checkpoints/step_000010000.pt",
                 synthetic_shards=["results/synthetic/test_000.h5"],
                 real_shards=["results/shards/demo_recording.h5"],
                 out_dir="results/eval/exp", params=EvalParams(ground_truth="results/demo_recording/ground_truth.h5"))

Protocols (all cameras: ``K`` pixels, corner origin; ``c2w`` OpenCV **camera-to-world**, normalized world):

- ``synthetic`` (test shards, poses never seen in training): V input views chosen per sample by a
  fixed rule (:func:`ring_input_views`: the views closest to a ring of V cameras at elevation
  ``input_elevation_deg``, azimuths ``input_azimuth0_deg + 360 k / V``, matched one-to-one by
  angle); targets are ALL valid views. Per target view: PSNR/SSIM full and foreground, mask IoU,
  LPIPS (if configured), depth abs. rel. (and error in body lengths if ``body_length`` is given);
  per sample: Chamfer and fraction within tau against the stored posed mesh (``vertices`` per
  sample, ``faces`` once per file).
- ``real_loo`` (real shards, leave-one-camera-out): for every evaluated frame and every valid
  camera c, the inputs are chosen among the other valid cameras (:func:`loo_input_views`) and c is
  the target; rotated over all cameras.
- ``real_holdout``: the same leave-one-camera-out protocol restricted to the frames in the last
  ``holdout_fraction`` of each session (``model.data.holdout_mask``, the rule that kept them out
  of training), i.e. unseen time and unseen camera.
  With ground truth (``ground_truth``: HDF5 with ``vertices`` [T, V, 3] raw world, ``faces``
  [F, 3]; row = frame_index), the raw vertices are mapped into the normalized world with the
  sample's ``norm_from_raw`` and Chamfer is reported for real reconstructions too.

Every target view records ``angle_to_nearest_input_deg`` (angle between camera-centre directions
seen from the origin), so metrics can be plotted against it. Outputs of ``out_dir`` (layout read
by :mod:`model.report`): ``metrics.json``, ``per_view.csv``, ``per_sample.csv``,
``qualitative/*.png``, ``turntable.gif``, ``ply/*.ply``. Deterministic for a checkpoint and params.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from model import metrics as M
from model.checkpoint import load_checkpoint, model_state_from_file
from model.config import ModelConfig
from model.data import composite, holdout_mask, resize_views
from model.gaussians import Gaussians
from model.gslrm import GSLRM
from model.ply import PlyFilter, save_ply
from model.renderer import render
from workflow_scripts.atomic import atomic_path, write_json
from workflow_scripts.cameras import look_at_c2w
from workflow_scripts.errors import InputError, reject_unknown_keys
from workflow_scripts.shards import open_shard, read_sample

VIEW_METRICS = ("psnr_fg", "ssim_fg", "mask_iou", "psnr", "ssim", "lpips", "depth_abs_rel", "depth_abs_body")
SAMPLE_METRICS = ("chamfer", "accuracy", "completeness", "fraction_within_tau")


@dataclasses.dataclass
class EvalParams:
    """Settings of :func:`run_evaluate`.

    num_input_views / image_size: default to the checkpoint's model config.
    model: optional model config dict (e.g. ``{"preset": "facelift"}``) when the checkpoint has none.
    input_elevation_deg / input_azimuth0_deg: the ring that fixes the synthetic input views.
    holdout_fraction: default = the checkpoint's data config (``data.holdout_fraction``), else 0.
    max_synthetic_samples / max_real_frames: evenly spaced subset per shard (None = all).
    body_length: body length in normalized units for depth error in body lengths (None = skip).
    lpips_weights: local LPIPS-VGG state dict (None = LPIPS unavailable, never downloaded).
    ground_truth: real ground-truth HDF5 (one path for every real shard, or {session: path}).
    surface: Chamfer settings (tau etc.).
    render_chunk: target views rendered per call (bounds memory).
    num_qualitative / num_ply: grids and .ply exports per protocol (first samples).
    ply_min_opacity: export filter (FaceLift's 0.04).
    turntable_frames / turntable_elevation_deg / turntable_size: the turntable GIF.
    device: "auto" (CUDA if available), "cpu", "cuda", ...; backend: renderer backend.
    """

    num_input_views: int | None = None
    image_size: int | None = None
    model: dict[str, Any] | None = None
    input_elevation_deg: float = 35.0
    input_azimuth0_deg: float = 0.0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    holdout_fraction: float | None = None
    max_synthetic_samples: int | None = None
    max_real_frames: int | None = 16
    body_length: float | None = None
    lpips_weights: str | None = None
    ground_truth: str | dict[str, str] | None = None
    surface: M.SurfaceMetricsParams = dataclasses.field(default_factory=M.SurfaceMetricsParams)
    render_chunk: int = 8
    num_qualitative: int = 2
    num_ply: int = 2
    ply_min_opacity: float = 0.04
    turntable_frames: int = 24
    turntable_elevation_deg: float = 20.0
    turntable_size: int = 128
    device: str = "auto"
    backend: str = "auto"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EvalParams":
        d = dict(d or {})
        reject_unknown_keys(d, cls, "evaluate params", "evaluate")
        if isinstance(d.get("surface"), dict):
            d["surface"] = M.SurfaceMetricsParams(**d["surface"])
        if "background" in d:
            d["background"] = tuple(float(x) for x in d["background"])
        return cls(**d)


# ------------------------------------------------------------------------------------ view rules
def ring_input_views(c2w: np.ndarray, valid: np.ndarray, n: int, elevation_deg: float = 35.0,
                     azimuth0_deg: float = 0.0) -> np.ndarray:
    """The ``n`` valid views closest to a rig-like ring (one-to-one, minimum total angle).

    c2w [V, 4, 4] OpenCV camera-to-world (z up); valid bool [V]. The ring has n directions at
    ``elevation_deg`` and azimuths ``azimuth0_deg + 360 k / n``; views are matched to them by the
    Hungarian algorithm on the angle between camera-centre directions. Returns int64 [n] in ring order.
    """
    idx = np.flatnonzero(valid)
    if len(idx) < n:
        raise ValueError(f"only {len(idx)} valid views, need {n} inputs")
    el = math.radians(elevation_deg)
    az = np.radians(azimuth0_deg + 360.0 * np.arange(n) / n)
    ring = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(n, np.sin(el))], axis=1)
    cost = M.camera_angle_deg(ring, c2w[idx, :3, 3])
    rows, cols = linear_sum_assignment(cost)
    return idx[cols[np.argsort(rows)]].astype(np.int64)


def loo_input_views(c2w: np.ndarray, valid: np.ndarray, held_out: int, n: int) -> np.ndarray:
    """Inputs for leave-one-camera-out: ``n`` of the valid views other than ``held_out``.

    Deterministic: starts from the view angularly nearest the held-out camera, then adds views by
    farthest-point sampling in azimuth (best coverage); all others if there are at most n.
    c2w [V, 4, 4] OpenCV camera-to-world. Returns sorted int64 [min(n, #others)].
    """
    others = np.array([v for v in np.flatnonzero(valid) if v != held_out], dtype=np.int64)
    if len(others) <= n:
        return others
    ang = M.camera_angle_deg(c2w[[held_out], :3, 3], c2w[others, :3, 3])[0]
    az = np.arctan2(c2w[others, 1, 3], c2w[others, 0, 3])
    chosen = [int(np.argmin(ang))]
    while len(chosen) < n:
        d = np.abs(az[:, None] - az[chosen][None, :])
        gap = np.minimum(d, 2 * np.pi - d).min(axis=1)
        gap[chosen] = -1.0
        chosen.append(int(np.argmax(gap)))
    return np.sort(others[chosen])


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """k indices evenly spread over range(n) (all if k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


# ------------------------------------------------------------------------------------ model
def load_model(checkpoint: str | os.PathLike, params: EvalParams, device: torch.device) -> tuple[GSLRM, dict[str, Any]]:
    """Build GS-LRM from a checkpoint (its ``config["model"]`` or ``params.model``), eval mode.

    Returns (model, checkpoint config dict).
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.get("config", {}) if isinstance(ckpt, dict) else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    model_dict = params.model if params.model is not None else cfg.get("model")
    if not isinstance(model_dict, dict):
        raise InputError(f"{checkpoint}: holds no model config (config['model']). Fix: set the evaluate "
                         "param 'model' (e.g. {'preset': 'facelift'}) for plain state dicts.")
    mcfg = ModelConfig.from_dict(model_dict, source=f"{checkpoint} model config")
    model = GSLRM(mcfg)
    state = model_state_from_file(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{checkpoint}: weights do not fit the model config {model_dict} ({e}). Fix: give the matching model config.") from e
    return model.eval().to(device), cfg


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class _Views:
    """All views of one sample at the evaluation size (torch, float32).

    images [V, 3, S, S] in [0, 1] composited on the background; masks [V, 1, S, S] in [0, 1];
    K [V, 3, 3]; c2w [V, 4, 4] (camera-to-world); depth [V, 1, S, S] or None; valid bool [V].
    """

    images: torch.Tensor
    masks: torch.Tensor
    K: torch.Tensor
    c2w: torch.Tensor
    depth: torch.Tensor | None
    valid: np.ndarray
    raw: dict[str, Any]


def _load_views(f: h5py.File, i: int, size: int, background: np.ndarray) -> _Views:
    raw = read_sample(f, i)
    img, msk, K, depth = resize_views(raw["images"], raw["masks"], raw["K"], size, raw.get("depth"))
    img = composite(img, msk, background)
    return _Views(images=torch.from_numpy(img).permute(0, 3, 1, 2).contiguous(), masks=torch.from_numpy(msk)[:, None],
                  K=torch.from_numpy(K), c2w=torch.from_numpy(raw["c2w"].astype(np.float32)),
                  depth=None if depth is None else torch.from_numpy(depth)[:, None],
                  valid=np.asarray(raw["view_valid"], bool), raw=raw)


class _GroundTruth:
    """Real-session ground truth meshes (raw world) looked up by (session, frame_index)."""

    def __init__(self, spec: str | dict[str, str] | None):
        self.spec = spec
        self._cache: dict[str, tuple[h5py.File, np.ndarray]] = {}

    def path_for(self, session: str) -> str | None:
        if self.spec is None:
            return None
        if isinstance(self.spec, dict):
            return self.spec.get(session)
        return str(self.spec)

    def mesh(self, session: str, frame_index: int, norm_from_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(vertices [V, 3] normalized world, faces [F, 3]) or None without ground truth."""
        path = self.path_for(session)
        if path is None:
            return None
        if path not in self._cache:
            if not Path(path).is_file():
                raise InputError(f"{path}: ground-truth file not found. Fix: build it (demo recording) or drop params.ground_truth.")
            f = h5py.File(path, "r")
            if "vertices" not in f or "faces" not in f:
                raise InputError(f"{path}: ground truth needs datasets 'vertices' [T, V, 3] and 'faces' [F, 3]. Fix: rebuild it.")
            self._cache[path] = (f, f["faces"][:].astype(np.int64))
        f, faces = self._cache[path]
        if not 0 <= frame_index < f["vertices"].shape[0]:
            raise InputError(f"{path}: no ground truth for frame {frame_index} (has {f['vertices'].shape[0]}). "
                             "Fix: use the ground truth of the same recording as the shard.")
        v_raw = f["vertices"][frame_index].astype(np.float64)
        T = np.asarray(norm_from_raw, np.float64)
        return v_raw @ T[:3, :3].T + T[:3, 3], faces

    def close(self) -> None:
        for f, _ in self._cache.values():
            f.close()
        self._cache = {}


# ------------------------------------------------------------------------------------ core
@dataclasses.dataclass
class _Ctx:
    model: GSLRM
    device: torch.device
    params: EvalParams
    size: int
    n_in: int
    lpips: M.LPIPS
    background: np.ndarray


@torch.no_grad()
def _reconstruct(ctx: _Ctx, views: _Views, inputs: np.ndarray) -> Gaussians:
    dev = ctx.device
    return ctx.model(views.images[inputs][None].to(dev), views.K[inputs][None].to(dev),
                     views.c2w[inputs][None].to(dev)).detach()


@torch.no_grad()
def _render(ctx: _Ctx, g: Gaussians, K: torch.Tensor, c2w: torch.Tensor, size: int):
    """Render g (batch 1) into cameras K [M, 3, 3], c2w [M, 4, 4] (camera-to-world) in chunks.

    Returns rgb [M, 3, S, S] clamped to [0, 1], alpha [M, 1, S, S], depth [M, 1, S, S] (CPU).
    """
    rgb, alpha, depth = [], [], []
    for s in range(0, len(K), ctx.params.render_chunk):
        out = render(g, K[None, s:s + ctx.params.render_chunk].to(ctx.device), c2w[None, s:s + ctx.params.render_chunk].to(ctx.device),
                     size, size, background=tuple(float(x) for x in ctx.background), backend=ctx.params.backend)
        rgb.append(out.rgb[0].float().clamp(0, 1).cpu())
        alpha.append(out.alpha[0].float().cpu())
        depth.append(out.depth[0].float().cpu())
    return torch.cat(rgb), torch.cat(alpha), torch.cat(depth)


def _view_metrics(ctx: _Ctx, pred, alpha, depth, target, mask, gt_depth) -> dict[str, np.ndarray]:
    """Per-view metrics; every array [M] float64 (NaN = undefined/unavailable)."""
    out = {
        "psnr": M.psnr(pred, target), "psnr_fg": M.psnr_masked(pred, target, mask),
        "ssim": M.ssim(pred, target), "ssim_fg": M.ssim_masked(pred, target, mask),
        "mask_iou": M.mask_iou(alpha, mask), "lpips": ctx.lpips(pred, target),
    }
    nan = torch.full((len(pred),), float("nan"))
    out["depth_abs_rel"] = M.depth_abs_rel(depth, gt_depth, alpha) if gt_depth is not None else nan
    if gt_depth is not None and ctx.params.body_length:
        out["depth_abs_body"] = M.depth_abs_error(depth, gt_depth, ctx.params.body_length, alpha)
    else:
        out["depth_abs_body"] = nan
    return {k: v.double().numpy() for k, v in out.items()}


def _grid_png(path: Path, inputs: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, max_rows: int = 4) -> None:
    """Qualitative grid: first row the input views; then per target view target | prediction | error.

    inputs [V, 3, S, S]; target, pred [M, 3, S, S] in [0, 1]. Error = mean |diff| x 4, as grey.
    """
    S = target.shape[-1]
    pad = 2
    rows_idx = evenly_spaced(len(target), max_rows)
    err = ((pred - target).abs().mean(1, keepdim=True) * 4).clamp(0, 1).expand(-1, 3, -1, -1)
    ncol = max(inputs.shape[0], 3)
    H = (1 + len(rows_idx)) * (S + pad) + pad
    W = ncol * (S + pad) + pad
    canvas = np.full((H, W, 3), 255, np.uint8)
    to8 = lambda t: (t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # noqa: E731
    for c in range(inputs.shape[0]):
        canvas[pad:pad + S, pad + c * (S + pad):pad + c * (S + pad) + S] = to8(inputs[c])
    for r, m in enumerate(rows_idx):
        y = pad + (r + 1) * (S + pad)
        for c, img in enumerate((target[m], pred[m], err[m])):
            canvas[y:y + S, pad + c * (S + pad):pad + c * (S + pad) + S] = to8(img)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


def _turntable_gif(ctx: _Ctx, g: Gaussians, input_c2w: torch.Tensor, input_K: torch.Tensor, path: Path) -> None:
    """Render g from ``turntable_frames`` cameras circling the origin (z up) and write a looping GIF.

    Radius = mean distance of the input cameras; K = the first input's, scaled to turntable_size.
    """
    p = ctx.params
    radius = float(input_c2w[:, :3, 3].norm(dim=-1).mean())
    el = math.radians(p.turntable_elevation_deg)
    c2w = []
    for k in range(p.turntable_frames):
        az = 2 * math.pi * k / p.turntable_frames
        eye = radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        c2w.append(look_at_c2w(eye, np.zeros(3)))
    c2w_t = torch.from_numpy(np.stack(c2w).astype(np.float32))
    s = p.turntable_size / ctx.size
    K = (torch.diag(torch.tensor([s, s, 1.0])) @ input_K[0]).expand(len(c2w), 3, 3).contiguous()
    rgb, _, _ = _render(ctx, g, K, c2w_t, p.turntable_size)
    frames = [Image.fromarray((f.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)) for f in rgb]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    df = pd.DataFrame(rows, columns=list(columns))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


class _Recorder:
    """Collects rows and writes the qualitative/ply/turntable side outputs for the first samples."""

    def __init__(self, ctx: _Ctx, out_dir: Path):
        self.ctx, self.out = ctx, out_dir
        self.views: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.turntable_done = False

    def add(self, protocol: str, meta: dict[str, Any], views: _Views, inputs: np.ndarray, targets: np.ndarray,
            g: Gaussians, mesh: tuple[np.ndarray, np.ndarray] | None) -> None:
        ctx = self.ctx
        pred, alpha, depth = _render(ctx, g, views.K[targets], views.c2w[targets], ctx.size)
        tgt_depth = views.depth[targets] if views.depth is not None else None
        vm = _view_metrics(ctx, pred, alpha, depth, views.images[targets], views.masks[targets], tgt_depth)
        centers = views.c2w.numpy()[:, :3, 3]
        angle = M.camera_angle_deg(centers[targets], centers[inputs]).min(axis=1)
        recon = len(self.samples)
        for j, v in enumerate(targets):
            row = {"protocol": protocol, **meta, "reconstruction": recon, "target_view": int(v),
                   "is_input": bool(v in inputs), "angle_to_nearest_input_deg": float(angle[j])}
            row.update({k: float(vm[k][j]) for k in VIEW_METRICS})
            self.views.append(row)
        srow = {"protocol": protocol, **meta, "reconstruction": recon,
                "input_views": " ".join(str(int(v)) for v in inputs), "num_gaussians": int(g.num_gaussians)}
        if mesh is not None:
            sm = M.gaussian_surface_metrics(g.means[0].cpu().numpy(), g.opacities[0].cpu().numpy(), mesh[0], mesh[1],
                                            ctx.params.surface)
            srow.update({k: getattr(sm, k) for k in SAMPLE_METRICS})
        self.samples.append(srow)
        k = self.counts.get(protocol, 0)
        self.counts[protocol] = k + 1
        if k < ctx.params.num_qualitative:
            _grid_png(self.out / "qualitative" / f"{protocol}_{k:03d}.png", views.images[inputs], views.images[targets], pred)
        if k < ctx.params.num_ply:
            save_ply(self.out / "ply" / f"{protocol}_{k:03d}.ply", g.to("cpu"), filter=PlyFilter(min_opacity=ctx.params.ply_min_opacity))
        if not self.turntable_done and ctx.params.turntable_frames > 0:
            _turntable_gif(ctx, g, views.c2w[inputs], views.K[inputs], self.out / "turntable.gif")
            self.turntable_done = True


def _iter_synthetic(ctx: _Ctx, rec: _Recorder, paths: Sequence[Path]) -> None:
    for path in paths:
        with open_shard(path) as f:
            if str(f.attrs.get("kind")) != "synthetic":
                raise InputError(f"{path}: not a synthetic shard (kind={f.attrs.get('kind')!r}). Fix: list it under real shards.")
            faces = f["faces"][:].astype(np.int64) if "faces" in f else None
            has_mesh = faces is not None and "vertices" in f
            for i in tqdm(evenly_spaced(f["images"].shape[0], ctx.params.max_synthetic_samples), desc=f"eval {path.name}", leave=False):
                views = _load_views(f, int(i), ctx.size, ctx.background)
                c2w = views.c2w.numpy()
                inputs = ring_input_views(c2w, views.valid, ctx.n_in, ctx.params.input_elevation_deg, ctx.params.input_azimuth0_deg)
                targets = np.flatnonzero(views.valid)
                g = _reconstruct(ctx, views, inputs)
                mesh = (views.raw["vertices"].astype(np.float64), faces) if has_mesh else None
                meta = {"shard": path.name, "sample": int(i), "session": views.raw["session"], "frame_index": views.raw["frame_index"],
                        "heldout_time": False}
                rec.add("synthetic", meta, views, inputs, targets, g, mesh)


def _iter_real(ctx: _Ctx, rec: _Recorder, paths: Sequence[Path], holdout_fraction: float, gt: _GroundTruth) -> None:
    for path in paths:
        with open_shard(path) as f:
            if str(f.attrs.get("kind")) != "real":
                raise InputError(f"{path}: not a real shard (kind={f.attrs.get('kind')!r}). Fix: list it under synthetic shards.")
            sess = [s.decode() if isinstance(s, bytes) else str(s) for s in f["session"][:]]
            fidx = f["frame_index"][:]
            held = holdout_mask(sess, fidx, holdout_fraction)
            groups = [("real_loo", np.arange(len(sess)))]
            if held.any():
                groups.append(("real_holdout", np.flatnonzero(held)))
            for protocol, pool in groups:
                for i in tqdm(pool[evenly_spaced(len(pool), ctx.params.max_real_frames)], desc=f"{protocol} {path.name}", leave=False):
                    views = _load_views(f, int(i), ctx.size, ctx.background)
                    c2w = views.c2w.numpy()
                    mesh = gt.mesh(views.raw["session"], views.raw["frame_index"], views.raw["norm_from_raw"])
                    meta = {"shard": path.name, "sample": int(i), "session": views.raw["session"],
                            "frame_index": views.raw["frame_index"], "heldout_time": bool(held[i])}
                    geometry_done = False
                    for c in np.flatnonzero(views.valid):
                        inputs = loo_input_views(c2w, views.valid, int(c), ctx.n_in)
                        if len(inputs) == 0:
                            continue
                        g = _reconstruct(ctx, views, inputs)
                        # Surface metrics once per frame (the first fold): each costs ~1 s on a CPU
                        # and the folds of one frame reconstruct nearly the same geometry.
                        rec.add(protocol, meta, views, inputs, np.array([c]), g, None if geometry_done else mesh)
                        geometry_done = geometry_done or mesh is not None


def _summaries(views: pd.DataFrame, samples: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {}
    protos = sorted(set(views["protocol"]) if len(views) else set())
    for p in protos:
        pv = views[views["protocol"] == p]
        ps = samples[samples["protocol"] == p] if len(samples) else samples
        novel = pv[~pv["is_input"].astype(bool)]
        means = {k: M.nanmean(pv[k]) for k in VIEW_METRICS}
        means.update({k: M.nanmean(ps[k]) if k in ps else None for k in SAMPLE_METRICS})
        out[p] = {"num_reconstructions": int(len(ps)), "num_target_views": int(len(pv)),
                  "means": means, "means_novel": {k: M.nanmean(novel[k]) for k in VIEW_METRICS}}
    return out


def run_evaluate(checkpoint: str | os.PathLike, synthetic_shards: Sequence[str | os.PathLike],
                 real_shards: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 params: EvalParams | dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every protocol whose shards are given and write ``out_dir`` (see module docstring).

    Returns the metrics.json content. ``lead`` holds the headline numbers: foreground PSNR on
    held-out cameras (``real_holdout`` if present, else ``real_loo``, else synthetic novel views)
    and Chamfer (synthetic, else real with ground truth).
    """
    p = params if isinstance(params, EvalParams) else EvalParams.from_dict(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(p.device)
    torch.manual_seed(0)
    model, ckpt_cfg = load_model(checkpoint, p, device)
    data_cfg = ckpt_cfg.get("data", {}) if isinstance(ckpt_cfg.get("data"), dict) else {}
    holdout = p.holdout_fraction if p.holdout_fraction is not None else float(data_cfg.get("holdout_fraction", 0.0))
    ctx = _Ctx(model=model, device=device, params=p, size=int(p.image_size or model.cfg.image_size),
               n_in=int(p.num_input_views or model.cfg.num_input_views), lpips=M.LPIPS.load(p.lpips_weights, device),
               background=np.asarray(p.background, np.float32))
    rec = _Recorder(ctx, out)
    gt = _GroundTruth(p.ground_truth)
    try:
        _iter_synthetic(ctx, rec, [Path(s) for s in synthetic_shards])
        _iter_real(ctx, rec, [Path(s) for s in real_shards], holdout, gt)
    finally:
        gt.close()
    view_cols = ["protocol", "shard", "sample", "session", "frame_index", "heldout_time", "reconstruction", "target_view",
                 "is_input", "angle_to_nearest_input_deg", *VIEW_METRICS]
    sample_cols = ["protocol", "shard", "sample", "session", "frame_index", "heldout_time", "reconstruction", "input_views",
                   "num_gaussians", *SAMPLE_METRICS]
    views = pd.DataFrame(rec.views, columns=view_cols)
    samples = pd.DataFrame(rec.samples, columns=sample_cols)
    _write_csv(out / "per_view.csv", rec.views, view_cols)
    _write_csv(out / "per_sample.csv", rec.samples, sample_cols)
    protocols = _summaries(views, samples)

    def pick(*keys: tuple[str, str, str]) -> float | None:
        for proto, group, metric in keys:
            v = protocols.get(proto, {}).get(group, {}).get(metric)
            if v is not None:
                return v
        return None

    lead = {
        "psnr_fg_heldout_camera": pick(("real_holdout", "means", "psnr_fg"), ("real_loo", "means", "psnr_fg"),
                                       ("synthetic", "means_novel", "psnr_fg")),
        "chamfer": pick(("synthetic", "means", "chamfer"), ("real_holdout", "means", "chamfer"), ("real_loo", "means", "chamfer")),
        "ssim_fg_heldout_camera": pick(("real_holdout", "means", "ssim_fg"), ("real_loo", "means", "ssim_fg"),
                                       ("synthetic", "means_novel", "ssim_fg")),
        "fraction_within_tau": pick(("synthetic", "means", "fraction_within_tau")),
    }
    if "synthetic" in protocols and len(samples):
        first = samples[samples["protocol"] == "synthetic"]["input_views"]
        protocols["synthetic"]["input_views_rule"] = {"elevation_deg": p.input_elevation_deg, "azimuth0_deg": p.input_azimuth0_deg,
                                                      "num_input_views": ctx.n_in}
        protocols["synthetic"]["input_views_first_sample"] = [int(x) for x in str(first.iloc[0]).split()] if len(first) else []
    result = _nan_to_none({
        "schema": 1, "checkpoint": str(checkpoint), "lead": lead, "protocols": protocols,
        "lpips": ctx.lpips.source if ctx.lpips.available else "unavailable",
        "holdout_fraction": holdout, "image_size": ctx.size, "num_input_views": ctx.n_in,
        "surface_tau": p.surface.tau, "params": json.loads(json.dumps(dataclasses.asdict(p), default=str)),
        "synthetic_shards": [str(s) for s in synthetic_shards], "real_shards": [str(s) for s in real_shards],
    })
    write_json(out / "metrics.json", result)
    return result


__all__ = ["EvalParams", "run_evaluate", "ring_input_views", "loo_input_views", "load_model", "evenly_spaced"]
