"""Synthetic mice with exact 3D truth: posed MAMMAL meshes rendered from many cameras.

World: the **normalized world** of docs/conventions.md (z up, the mouse's centre at the
origin, cameras at ``radius`` = 2.7). The mouse's centre is ``body_model.center_of_mass`` (the
area-weighted surface centroid, the project-wide definition for meshes).

Scale. Real data is normalized so the mean camera distance is 2.7; the real rig's cameras sit
about 1 m from the mouse, so normalized units per millimetre = 2.7 / 1000 (``units_per_mm``).
MAMMAL's rest mesh is in "model units" (about a decimetre: 1.37 units nose to tail tip); the
original MAMMAL fitter used a global scale s ~ 115 to map model units to millimetres in the
DANNCE arena (``mm_per_model_unit`` = 115). So 1 model unit = 115 mm = 0.3105 normalized units,
and a rest body length (snout to tail base, 0.62 model units) is ~71 mm = 0.19 normalized units.
The stored pose already includes this normalization (``scale`` and ``translation``), so
``body_model.pose_mesh(model, stored_pose)`` reproduces the stored vertices exactly.

Cameras: OpenCV, ``c2w`` = camera-to-world [4, 4], all looking at the origin with world z up in
the image; ``K = [[f, 0, S/2], [0, f, S/2], [0, 0, 1]]`` (corner-origin pixel convention).
Pixel-size rule: the camera centre is fixed and the principal point is the image centre, so a
focal length change scales the image exactly about the principal point and the linear size
sqrt(mask area) scales with f. We count the pixel centres inside the silhouette at the
reference focal (``fov_deg``) on a finer ``size_rule_canvas`` grid (so a small silhouette is
measured precisely) and set ``f = f_ref * size_ratio * S / sqrt(area_ref)``. The count is the
one ``render.rasterize_mask`` gives, computed from the silhouette's outline instead of its
~14,000 front faces (``silhouette_pixel_counts``), all views at once: 2-2.5x faster (~20 instead
of ~48 ms per 32-view sample on a 2-core machine), with the same focal lengths.

Job layout (``ShardJob``): sample i of a shard is a function of (seed, shard index, i) alone
(its generator is ``np.random.default_rng([seed, shard_index, i])``), so its CPU-side
preparation (posing, cameras, pixel-size rule, appearance, lights: ``prepare_sample``) can run
in worker processes while the main thread renders (it owns the OpenGL context) and a writer
thread compresses and writes finished samples (h5py releases the GIL). Throughput is then that
of the slowest of the three instead of their sum, and the output does not depend on the number
of workers.

Texture orientation: MAMMAL's UVs follow the OBJ convention (v up, as the posed-example OBJs
show), but ``texture_final.png`` from the MAMMAL fork is stored with v counted from the *top*
row: sampled with v-up, 46 % of UVs fall on the image's black (unused) background, with
v-down 2.6 % (checked in tests/test_synthetic.py). We therefore pass ``1 - v`` to the renderer.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import multiprocessing
import os
import queue
import resource
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import cv2
import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from workflow_scripts.body_model import BodyModel, Pose, center_of_mass, load_npz, pose_mesh
from workflow_scripts.cameras import look_at_c2w
from workflow_scripts.errors import InputError
from workflow_scripts.poses import PoseSampler, PoseSamplerConfig
from workflow_scripts.render import Light, MeshRenderer, RenderBatch, vertex_normals
from workflow_scripts.render import skinny_matmul as _skinny_matmul
from workflow_scripts.shards import ShardWriter
from workflow_scripts.workers import ForkedWorkers

log = logging.getLogger(__name__)

TEXTURE_V_FROM_TOP = True  # see module docstring
GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
# Procedural fur: name -> (back colour, belly colour, skin colour for tail/paws/ears), linear RGB.
FUR_PALETTE: dict[str, tuple[tuple[float, float, float], ...]] = {
    "black": ((0.05, 0.045, 0.045), (0.12, 0.11, 0.11), (0.30, 0.24, 0.23)),
    "brown": ((0.33, 0.21, 0.11), (0.62, 0.50, 0.36), (0.80, 0.58, 0.52)),
    "agouti": ((0.40, 0.30, 0.18), (0.80, 0.72, 0.55), (0.82, 0.60, 0.54)),
    "white": ((0.92, 0.90, 0.86), (0.96, 0.94, 0.91), (0.92, 0.68, 0.64)),
    "grey": ((0.45, 0.44, 0.43), (0.70, 0.69, 0.67), (0.78, 0.60, 0.56)),
}
SKIN_JOINT_PATTERNS = ("tail_", "paw", "ear_tip")
LIGHT_KINDS = {"directional": 0.0, "point": 1.0}


@dataclass
class SyntheticConfig:
    """Settings of one synthetic shard job (all of them go into the shard's ``params_json``)."""

    samples_per_shard: int = 64
    num_views: int = 32
    image_size: int = 256
    # Camera layout: "sphere" (cameras on a sphere of `radius` at elevations in `elevation_deg`,
    # azimuths random or Fibonacci-spread) or "rig" (a ring above the mouse like the real rig).
    layout: str = "sphere"
    radius: float = 2.7
    elevation_deg: tuple[float, float] = (-10.0, 60.0)
    azimuth: str = "fibonacci"                      # sphere: "fibonacci" | "random"
    rig_elevation_deg: tuple[float, float] = (30.0, 45.0)
    rig_azimuth_jitter_deg: float = 10.0            # rig: +- jitter of the evenly spaced ring
    rig_radius_jitter: float = 0.05                 # rig: relative +- jitter of the distance
    fov_deg: float = 50.0                           # reference field of view (and focal without the rule)
    size_ratio: float = 0.3                         # target sqrt(mask area) / S
    pixel_size_rule: bool = True
    size_rule_canvas: int = 512                     # grid (px) for measuring the reference area
    # Scale (module docstring): normalized units per mm, and mm per MAMMAL model unit.
    units_per_mm: float = 2.7 / 1000.0
    mm_per_model_unit: float = 115.0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Appearance: "auto" = the UV texture with probability `texture_probability` when the model
    # has a texture image, else procedural fur; "texture" / "procedural" force one.
    appearance: str = "auto"
    texture_probability: float = 0.5
    hue_jitter_deg: float = 10.0
    saturation_jitter: float = 0.2                  # relative, +-
    brightness_jitter: float = 0.2                  # relative, +-
    contrast_jitter: float = 0.2                    # relative, +-
    # Lighting: uniform count in [min, max], directional or point, plus ambient grey level.
    num_lights: tuple[int, int] = (2, 4)
    point_light_probability: float = 0.3
    light_intensity: tuple[float, float] = (1.0, 3.0)
    ambient: tuple[float, float] = (0.15, 0.45)
    # Overrides of poses.PoseSamplerConfig fields (e.g. {"rear_probability": 0.5}).
    pose_sampler: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "synthetic config") -> "SyntheticConfig":
        """Build from a plain dict (config file section); unknown keys raise InputError."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InputError(f"{source}: unknown synthetic setting(s) {unknown}. Fix: remove them or use one of {sorted(names)}.")
        kwargs = {}
        for k, v in d.items():  # JSON/YAML give lists where the dataclass has tuples
            kwargs[k] = tuple(v) if isinstance(v, list) and isinstance(names[k].default, tuple) else v
        cfg = cls(**kwargs)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "synthetic config") -> None:
        """InputError naming ``source`` for any inconsistent setting."""
        def bad(msg: str) -> InputError:
            return InputError(f"{source}: {msg}")

        if self.layout not in ("sphere", "rig"):
            raise bad(f"layout = {self.layout!r}. Fix: use 'sphere' or 'rig'.")
        if self.azimuth not in ("fibonacci", "random"):
            raise bad(f"azimuth = {self.azimuth!r}. Fix: use 'fibonacci' or 'random'.")
        if self.appearance not in ("auto", "texture", "procedural"):
            raise bad(f"appearance = {self.appearance!r}. Fix: use 'auto', 'texture' or 'procedural'.")
        for name in ("samples_per_shard", "num_views", "image_size", "size_rule_canvas"):
            if int(getattr(self, name)) < 1:
                raise bad(f"{name} = {getattr(self, name)} must be >= 1.")
        for name in ("radius", "fov_deg", "size_ratio", "units_per_mm", "mm_per_model_unit"):
            if not float(getattr(self, name)) > 0:
                raise bad(f"{name} = {getattr(self, name)} must be > 0.")
        if self.fov_deg >= 180 or self.size_ratio >= 1:
            raise bad("fov_deg must be < 180 and size_ratio < 1.")
        for name in ("elevation_deg", "rig_elevation_deg", "num_lights", "light_intensity", "ambient"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise bad(f"{name} = {getattr(self, name)} has low > high. Fix: swap the two values.")
        for name in ("elevation_deg", "rig_elevation_deg"):
            if min(getattr(self, name)) < -90 or max(getattr(self, name)) > 90:
                raise bad(f"{name} = {getattr(self, name)} must lie within [-90, 90] degrees.")
        if self.num_lights[0] < 0:
            raise bad("num_lights must be >= 0.")
        if len(self.background) != 3 or not all(0 <= c <= 1 for c in self.background):
            raise bad(f"background = {self.background} must be 3 numbers in [0, 1].")
        for name in ("texture_probability", "point_light_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(f"{name} = {getattr(self, name)} is not a probability in [0, 1].")
        pose_cfg_fields = {f.name for f in dataclasses.fields(PoseSamplerConfig)}
        unknown = sorted(set(self.pose_sampler) - pose_cfg_fields)
        if unknown:
            raise bad(f"pose_sampler has unknown field(s) {unknown}. Fix: use fields of poses.PoseSamplerConfig.")

    def pose_sampler_config(self) -> PoseSamplerConfig:
        """poses.PoseSamplerConfig with this config's overrides (JSON lists become tuples)."""
        over = {k: tuple(v) if isinstance(v, list) else v for k, v in self.pose_sampler.items()}
        cfg = dataclasses.replace(PoseSamplerConfig(), **over)
        cfg.validate("synthetic config: pose_sampler")
        return cfg


# --------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------
def sample_cameras(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Camera poses c2w [V, 4, 4] (OpenCV camera-to-world, normalized world), looking at the origin."""
    V = int(cfg.num_views)
    if cfg.layout == "sphere":
        lo, hi = np.sin(np.radians(cfg.elevation_deg))
        if cfg.azimuth == "fibonacci":
            # Even spread over the band (equal-area in sin(elevation)), random rotation and order.
            sin_el = lo + (hi - lo) * (np.arange(V) + 0.5) / V
            az = rng.uniform(0, 2 * np.pi) + GOLDEN_ANGLE * np.arange(V)
            order = rng.permutation(V)
            sin_el, az = sin_el[order], az[order]
        else:
            sin_el = rng.uniform(lo, hi, V)
            az = rng.uniform(0, 2 * np.pi, V)
        el = np.arcsin(sin_el)
        radius = np.full(V, float(cfg.radius))
    else:  # rig: an evenly spaced ring above the mouse with jitter, like the real 6-camera rig
        az = (rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(V) / V
              + np.radians(rng.uniform(-cfg.rig_azimuth_jitter_deg, cfg.rig_azimuth_jitter_deg, V)))
        el = np.radians(rng.uniform(*cfg.rig_elevation_deg, V))
        radius = cfg.radius * (1 + rng.uniform(-cfg.rig_radius_jitter, cfg.rig_radius_jitter, V))
    eyes = radius[:, None] * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    return look_at_origin(eyes)


def look_at_origin(eyes: np.ndarray) -> np.ndarray:
    """OpenCV c2w [V, 4, 4] of cameras at eyes [V, 3] looking at the origin with world z up in the
    image: ``cameras.look_at_c2w(eye, 0, z)`` vectorized (per-camera calls cost ~3 ms each in
    np.cross overhead, 10 % of a render). Eyes exactly above/below the origin fall back to it."""
    eyes = np.asarray(eyes, dtype=np.float64)
    z = -eyes / np.linalg.norm(eyes, axis=1, keepdims=True)
    x = np.stack([z[:, 1], -z[:, 0], np.zeros(len(z))], axis=1)  # z x (0, 0, 1)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    y = np.stack([z[:, 1] * x[:, 2] - z[:, 2] * x[:, 1], z[:, 2] * x[:, 0] - z[:, 0] * x[:, 2],
                  z[:, 0] * x[:, 1] - z[:, 1] * x[:, 0]], axis=1)  # z x x (unnormalized x)
    out = np.zeros((len(eyes), 4, 4))
    out[:, :3, 0], out[:, :3, 1], out[:, :3, 2], out[:, :3, 3] = x / np.maximum(n, 1e-300), y / np.maximum(n, 1e-300), z, eyes
    out[:, 3, 3] = 1.0
    for i in np.nonzero(n[:, 0] < 1e-9)[0]:
        out[i] = look_at_c2w(eyes[i], np.zeros(3), (0.0, 0.0, 1.0))
    return out


def intrinsics(f: np.ndarray, image_size: int) -> np.ndarray:
    """K [V, 3, 3] for focal lengths f [V] (pixels) with the principal point at the image centre."""
    f = np.asarray(f, dtype=np.float64).reshape(-1)
    K = np.zeros((len(f), 3, 3))
    K[:, 0, 0] = K[:, 1, 1] = f
    K[:, :2, 2] = image_size / 2.0
    K[:, 2, 2] = 1.0
    return K


def reference_focal(cfg: SyntheticConfig) -> float:
    """Focal length (pixels of S) of the reference field of view ``cfg.fov_deg``."""
    return cfg.image_size / 2.0 / np.tan(np.radians(cfg.fov_deg) / 2.0)


def pixel_size_focals(vertices: np.ndarray, faces: np.ndarray, c2ws: np.ndarray, cfg: SyntheticConfig,
                      edges: "FaceEdges | None" = None) -> np.ndarray:
    """Focal lengths f [V] (pixels of S) that give the mouse the linear size ``cfg.size_ratio``.

    Counts the silhouette's pixel centres at the reference focal on a ``size_rule_canvas`` grid
    with the same field of view (K scaled by q = canvas / S, so the area in S-pixels is
    area_canvas / q^2) and scales f exactly (module docstring). c2ws: [V, 4, 4] OpenCV
    camera-to-world. edges: ``face_edges(faces)`` when the caller has it (it is cached anyway).
    """
    S = cfg.image_size
    f_ref = reference_focal(cfg)
    if not cfg.pixel_size_rule:
        return np.full(len(c2ws), f_ref)
    C = int(cfg.size_rule_canvas)
    q = C / S
    area = silhouette_pixel_counts(vertices, c2ws, f_ref * q, C / 2.0, edges or face_edges(faces)) / q**2
    if np.any(area <= 0):
        raise ValueError(f"views {np.nonzero(area <= 0)[0].tolist()}: the mouse is not visible at the reference focal")
    return f_ref * cfg.size_ratio * S / np.sqrt(area)


@dataclass(frozen=True)
class FaceEdges:
    """The undirected edges of a triangle mesh and how its faces run along them.

    faces: int64 [F, 3]. v0, v1: int64 [E] vertex indices (v0 < v1). incidence: float32 CSR
    [E, F], +1 where face f runs along edge e from v0 to v1, -1 where from v1 to v0.
    """

    faces: np.ndarray
    v0: np.ndarray
    v1: np.ndarray
    incidence: sp.csr_matrix


def face_edges(faces: np.ndarray) -> FaceEdges:
    """``FaceEdges`` of faces [F, 3] (cached: the synthetic job asks for the same mesh every sample)."""
    f = np.ascontiguousarray(faces, dtype=np.int64)
    return _face_edges(f.tobytes(), f.shape[0])


@functools.lru_cache(maxsize=4)
def _face_edges(faces_bytes: bytes, n_faces: int) -> FaceEdges:
    faces = np.frombuffer(faces_bytes, dtype=np.int64).reshape(n_faces, 3)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])    # corner order of each face
    lo, hi = directed.min(axis=1), directed.max(axis=1)
    base = int(faces.max()) + 1
    keys, edge = np.unique(lo * base + hi, return_inverse=True)
    sign = np.where(directed[:, 0] < directed[:, 1], 1.0, -1.0).astype(np.float32)
    incidence = sp.csr_matrix((sign, (edge.reshape(-1), np.tile(np.arange(n_faces), 3))), shape=(len(keys), n_faces))
    return FaceEdges(faces, keys // base, keys % base, incidence)


def silhouette_pixel_counts(vertices: np.ndarray, c2ws: np.ndarray, focal: float, center: float,
                            edges: FaceEdges) -> np.ndarray:
    """Pixel centres inside the silhouette of a mesh, per view: int64 [V] (no image border: the
    whole silhouette counts). Camera of view i: K = [[focal, 0, center], [0, focal, center],
    [0, 0, 1]] (corner-origin pixels, docs/conventions.md) and OpenCV camera-to-world c2ws[i].

    Equals ``render.rasterize_mask(...).sum()`` of the front faces (for a consistently wound mesh
    like MAMMAL's, the silhouette; tests/test_synthetic.py) up to pixel centres lying exactly on
    an edge, at a fraction of the cost. How: front faces all project with the same orientation,
    so the number of front faces covering a pixel centre is the winding number of the boundary
    of their union-with-multiplicity, and the silhouette is where that number is non-zero. Edges
    shared by two front faces cancel (they run both ways), so only the outline counts: the
    contour (front/back) and border edges, a few thousand instead of ~14,000 faces x 3 edges.
    Every outline edge adds +-1 at the first pixel centre right of where it crosses each
    pixel-row centre line (half-open in y, so a row never counts a shared vertex twice); the
    running sum along a row is the winding number, and the pixels where it is non-zero are the
    silhouette's.
    """
    v = np.asarray(vertices, dtype=np.float64)
    c2ws = np.asarray(c2ws, dtype=np.float64).reshape(-1, 4, 4)
    n_views = len(c2ws)
    # Contiguous copies: NumPy hands strided operands of matmul to a slow generic loop (10x).
    R, C = np.ascontiguousarray(c2ws[:, :3, :3]), np.ascontiguousarray(c2ws[:, :3, 3])
    # Front faces, all views at once: (v0 - C) . n < 0 (the back-face culling test).
    faces = edges.faces
    a = v[faces[:, 0]]
    n = np.cross(v[faces[:, 1]] - a, v[faces[:, 2]] - a)
    front = (_skinny_matmul(n, C.T) > np.einsum("fk,fk->f", n, a)[:, None]).astype(np.float32)  # [F, V]
    net = edges.incidence @ front                                                        # [E, V], small integers
    flat = np.flatnonzero(net != 0)
    e, view = np.divmod(flat, n_views)
    weight = net.reshape(-1)[flat].astype(np.int64)
    # Camera coordinates of every vertex in every view: one product with the three camera axes
    # of all views side by side (x | y | z blocks of V columns): cam [N, 3V].
    axes = R.transpose(1, 2, 0).reshape(3, 3 * n_views)
    cam = _skinny_matmul(v, axes)
    cam -= np.einsum("vk,vkj->jv", C, R).reshape(1, -1)                                   # (X - C) R
    if not np.all(cam[:, 2 * n_views:] > 0):
        behind = np.nonzero(~np.all(cam[:, 2 * n_views:] > 0, axis=0))[0].tolist()
        raise ValueError(f"views {behind}: part of the mesh is behind the camera")
    # Pixel coordinates of the outline edges' end points only (a tenth of all vertex-views), and
    # x only for the edges that cross a pixel-row centre line at all (~15 % of them).
    cam = cam.reshape(-1)
    ia, ib = edges.v0[e] * (3 * n_views) + view, edges.v1[e] * (3 * n_views) + view     # x of the end points in cam
    za, zb = cam[ia + 2 * n_views], cam[ib + 2 * n_views]
    ya, yb = focal * cam[ia + n_views] / za + center, focal * cam[ib + n_views] / zb + center
    # Pixel rows r whose centre line y = r + 0.5 the edge crosses, half-open: y_low <= r + 0.5 < y_high.
    down = ya < yb
    r_lo = np.ceil(np.minimum(ya, yb) - 0.5).astype(np.int64)
    n_rows = np.ceil(np.maximum(ya, yb) - 0.5).astype(np.int64) - r_lo
    hit = np.nonzero(n_rows > 0)[0]
    if hit.size == 0:
        return np.zeros(n_views, dtype=np.int64)
    ya, yb, r_lo, n_rows, down, weight, view = ya[hit], yb[hit], r_lo[hit], n_rows[hit], down[hit], weight[hit], view[hit]
    xa, xb = focal * cam[ia[hit]] / za[hit] + center, focal * cam[ib[hit]] / zb[hit] + center
    idx = np.repeat(np.arange(len(hit)), n_rows)                                         # one entry per (edge, row) crossing
    row = r_lo[idx] + np.arange(len(idx)) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    x = xa[idx] + (row + 0.5 - ya[idx]) * (xb[idx] - xa[idx]) / (yb[idx] - ya[idx])
    col = np.ceil(x - 0.5).astype(np.int64)                                              # first pixel centre right of the crossing
    delta = np.where(down[idx], weight[idx], -weight[idx])
    vi = view[idx]
    # Sort the crossings by (view, row, column); the running sum is then the winding number.
    row0, col0 = row.min(), col.min()
    n_r, n_c = int(row.max() - row0 + 1), int(col.max() - col0 + 1)
    line = vi * n_r + (row - row0)
    order = np.argsort(line * n_c + (col - col0), kind="stable")
    line, col, delta, vi = line[order], col[order], delta[order], vi[order]
    winding = np.cumsum(delta)
    ends = np.append(np.flatnonzero(np.diff(line)), len(line) - 1)
    if np.any(winding[ends] != 0):  # cannot happen for a closed outline; guards the bookkeeping
        raise RuntimeError("silhouette outline is not closed on some pixel row")
    inside = winding != 0
    span = np.diff(col, append=col[-1])
    return np.bincount(vi[inside], weights=span[inside], minlength=n_views).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Appearance and lights
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AppearanceTables:
    """Per-model constants of ``procedural_colors`` (built once per model, not per sample)."""

    vertex_uv: np.ndarray   # [V, 2]
    w_belly: np.ndarray     # [V, 1]
    w_skin: np.ndarray      # [V, 1]


_APPEARANCE_CACHE: dict[int, tuple[weakref.ref, _AppearanceTables]] = {}


def _appearance_tables(model: BodyModel) -> _AppearanceTables:
    """Cached per model object (weakly: a model that is gone frees its entry)."""
    hit = _APPEARANCE_CACHE.get(id(model))
    if hit is not None and hit[0]() is model:
        return hit[1]
    n = vertex_normals(model.vertices, model.faces)
    skin_cols = [j for j, nm in enumerate(model.joint_names) if any(p in nm for p in SKIN_JOINT_PATTERNS)]
    tables = _AppearanceTables(
        vertex_uv=_vertex_uv(model),
        w_belly=np.clip((-n[:, 2:3] - 0.2) / 0.5, 0.0, 1.0),
        w_skin=np.clip(np.asarray(model.weights[:, skin_cols].sum(axis=1)).reshape(-1, 1), 0.0, 1.0))
    for key in [k for k, (ref, _) in _APPEARANCE_CACHE.items() if ref() is None]:
        del _APPEARANCE_CACHE[key]
    _APPEARANCE_CACHE[id(model)] = (weakref.ref(model), tables)
    return tables


def _vertex_uv(model: BodyModel) -> np.ndarray:
    """One UV [V, 2] per mesh vertex (a seam vertex takes one of its UVs; fine for smooth noise)."""
    idx = np.zeros(model.n_vertices, dtype=np.int64)
    idx[model.faces.reshape(-1)] = model.faces_uv.reshape(-1)
    return model.uv[idx]


def _smooth_noise(rng: np.random.Generator, uv: np.ndarray, cells: int, sigma: float, channels: int = 1) -> np.ndarray:
    """Low-frequency noise [N, channels] at uv [N, 2] in [0, 1]: a random cells x cells grid, bicubic-upsampled."""
    grid = rng.normal(0.0, sigma, (cells, cells, channels)).astype(np.float32)
    res = 128
    img = cv2.resize(grid, (res, res), interpolation=cv2.INTER_CUBIC).reshape(res, res, channels)
    ij = np.clip((np.asarray(uv) * (res - 1)).round().astype(np.int64), 0, res - 1)
    return img[ij[:, 1], ij[:, 0]].astype(np.float64)


def procedural_colors(model: BodyModel, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Procedural fur: per-vertex RGB [V, 3] in [0, 1] and its parameters.

    A coat colour variant (FUR_PALETTE), low-frequency noise in UV space (texture-free, so it
    works without texture_final.png), a lighter belly where the rest-pose normal points down
    (rest pose: z up) and skin colour on the tail, paws and ear tips (by skinning weight).
    """
    t = _appearance_tables(model)
    names = list(FUR_PALETTE)
    k = int(rng.integers(len(names)))
    back, belly, skin = (np.asarray(c) for c in FUR_PALETTE[names[k]])
    tint = 1.0 + rng.uniform(-0.08, 0.08, 3)           # per-mouse colour variation
    noise = _smooth_noise(rng, t.vertex_uv, cells=8, sigma=0.12)  # [V, 1], blotches of ~1/8 of the UV map
    grain = rng.normal(0.0, 0.04 if names[k] != "agouti" else 0.10, (model.n_vertices, 1))
    fur = back * (1 - t.w_belly) + belly * t.w_belly
    col = (fur * (1 + noise + grain)) * (1 - t.w_skin) + skin * t.w_skin
    col = np.clip(col * tint, 0.0, 1.0)
    return col, {"appearance/kind": np.float32(1.0), "appearance/variant": np.float32(k),
                 "appearance/tint": tint.astype(np.float32)}


def jitter_texture(texture: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Colour-jittered copy of a uint8 [H, W, 3] texture (hue shift, saturation, brightness, contrast)."""
    hue = rng.uniform(-cfg.hue_jitter_deg, cfg.hue_jitter_deg)
    sat = 1 + rng.uniform(-cfg.saturation_jitter, cfg.saturation_jitter)
    bri = 1 + rng.uniform(-cfg.brightness_jitter, cfg.brightness_jitter)
    con = 1 + rng.uniform(-cfg.contrast_jitter, cfg.contrast_jitter)
    hsv = cv2.cvtColor(texture.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees
    hsv[..., 0] += hue
    np.mod(hsv[..., 0], 360.0, out=hsv[..., 0])
    hsv[..., 1] *= sat
    np.clip(hsv[..., 1], 0, 1, out=hsv[..., 1])
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    # ((rgb - mean) * con + mean) * bri * 255 + 0.5, in place (the texture is 512 x 512 x 3).
    mean = float(rgb.mean())
    rgb *= con * bri * 255.0
    rgb += mean * (1.0 - con) * bri * 255.0 + 0.5
    out = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)
    return out, {"appearance/kind": np.float32(0.0), "appearance/jitter": np.array([hue, sat, bri, con], np.float32)}


def sample_lights(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[list[Light], np.ndarray]:
    """Random lights (world frame, coming from above) and the ambient RGB [3]."""
    lights = []
    for _ in range(int(rng.integers(cfg.num_lights[0], cfg.num_lights[1] + 1))):
        az = rng.uniform(0, 2 * np.pi)
        el = np.radians(rng.uniform(15.0, 90.0))
        towards_light = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        color = 1.0 - rng.uniform(0.0, 0.25, 3)
        color = color / color.max()
        intensity = rng.uniform(*cfg.light_intensity)
        if rng.uniform() < cfg.point_light_probability:
            dist = rng.uniform(1.5, 3.0)
            # Point lights fall off with distance squared: scale so they match a directional one.
            lights.append(Light(kind="point", position=dist * towards_light, color=color, intensity=intensity * dist**2))
        else:
            lights.append(Light(kind="directional", direction=-towards_light, color=color, intensity=intensity))
    ambient = rng.uniform(*cfg.ambient) * (1.0 - rng.uniform(0.0, 0.15, 3))
    return lights, ambient


def light_arrays(lights: list[Light], ambient: np.ndarray, max_lights: int) -> dict[str, np.ndarray]:
    """Light parameters as fixed-shape float32 arrays (padded to ``max_lights``; kind -1 = unused)."""
    L = int(max_lights)
    out = {"lights/kind": -np.ones(L, np.float32), "lights/direction": np.zeros((L, 3), np.float32),
           "lights/position": np.zeros((L, 3), np.float32), "lights/color": np.zeros((L, 3), np.float32),
           "lights/intensity": np.zeros(L, np.float32), "lights/ambient": np.asarray(ambient, np.float32)}
    for i, light in enumerate(lights):
        out["lights/kind"][i] = LIGHT_KINDS[light.kind]
        out["lights/direction"][i] = light.direction
        out["lights/position"][i] = light.position
        out["lights/color"][i] = light.color
        out["lights/intensity"][i] = light.intensity
    return out


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------
def normalize_pose(model: BodyModel, pose: Pose, cfg: SyntheticConfig,
                   posed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[Pose, np.ndarray, np.ndarray]:
    """The pose re-expressed in the normalized world: (pose_n, vertices [V, 3], joints [J, 3]).

    x_norm = k (x - c) with k = units_per_mm * mm_per_model_unit and c = center_of_mass of the
    posed mesh, folded into the pose's scale and translation so pose_mesh(model, pose_n) gives
    the normalized vertices directly. posed: (vertices, joints, centre) of ``pose`` when the
    caller already has them (``PoseSampler.sample_posed``), else computed here.
    """
    if posed is None:
        v, j = pose_mesh(model, pose)
        c = center_of_mass(v, model.faces)
    else:
        v, j, c = posed
    k = cfg.units_per_mm * cfg.mm_per_model_unit
    pose_n = Pose(np.asarray(pose.joint_rotvecs).copy(), np.asarray(pose.global_rotvec).copy(),
                  k * (np.asarray(pose.translation, np.float64) - c), k * float(pose.scale),
                  np.asarray(pose.bone_scales).copy())
    # pose_mesh is affine in (scale, translation), so this equals pose_mesh(model, pose_n) (tested).
    return pose_n, k * (v - c), k * (j - c)


def texture_look(model: BodyModel, texture: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Renderer arguments that put ``texture`` (default: the model's own) on the mouse, with
    the UVs oriented the way texture_final.png is stored (see TEXTURE_V_FROM_TOP)."""
    uv = model.uv.copy()
    if TEXTURE_V_FROM_TOP:
        uv[:, 1] = 1.0 - uv[:, 1]
    return dict(uv=uv, faces_uv=model.faces_uv, texture=model.texture if texture is None else texture)


# Stages of one sample, in the order the job runs them (seconds per stage in SampleSpec.seconds
# and JobStats): CPU-side preparation, then rendering (main thread), then writing.
PREPARE_STAGES = ("posing", "pixel_size", "appearance")


@dataclass
class SampleSpec:
    """One sample up to its images: everything ``prepare_sample`` draws and computes (picklable,
    so a worker process can make it). World: the normalized world; V views.

    pose: normalized pose; vertices float64 [14522, 3]; joints float64 [140, 3]; c2w [V, 4, 4]
    (OpenCV camera-to-world); K [V, 3, 3]; exactly one of texture (uint8 [Ht, Wt, 3], the
    jittered texture image) and vertex_colors ([14522, 3] in [0, 1]); lights, ambient RGB [3];
    arrays: the ``lights/*`` and ``appearance/*`` float32 arrays stored with the sample;
    seconds: time per stage of PREPARE_STAGES.
    """

    pose: Pose
    vertices: np.ndarray
    joints: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    texture: np.ndarray | None
    vertex_colors: np.ndarray | None
    lights: list[Light]
    ambient: np.ndarray
    arrays: dict[str, np.ndarray]
    seconds: dict[str, float] = field(default_factory=dict)


def sample_rng(seed: int, shard_index: int, i: int) -> np.random.Generator:
    """The generator of sample i of shard ``shard_index`` (samples are independent of each other)."""
    return np.random.default_rng([int(seed), int(shard_index), int(i)])


def prepare_sample(model: BodyModel, sampler: PoseSampler, cfg: SyntheticConfig, rng: np.random.Generator) -> SampleSpec:
    """The CPU side of one sample: a random pose, ``num_views`` cameras with the pixel-size rule,
    appearance and lights (in that order of generator draws)."""
    if cfg.appearance == "texture" and model.texture is None:
        raise InputError("synthetic config: appearance = 'texture' but the body model has no texture image. "
                         "Fix: use appearance 'auto'/'procedural' or provide texture_final.png.")
    t0 = time.perf_counter()
    pose, v, j, c = sampler.sample_posed(rng)
    pose_n, verts, joints = normalize_pose(model, pose, cfg, posed=(v, j, c))
    t1 = time.perf_counter()
    c2ws = sample_cameras(cfg, rng)
    Ks = intrinsics(pixel_size_focals(verts, model.faces, c2ws, cfg), cfg.image_size)
    t2 = time.perf_counter()
    use_texture = model.texture is not None and (
        cfg.appearance == "texture" or (cfg.appearance == "auto" and rng.uniform() < cfg.texture_probability))
    texture = colors = None
    if use_texture:
        texture, app = jitter_texture(model.texture, cfg, rng)
    else:
        colors, app = procedural_colors(model, rng)
    lights, ambient = sample_lights(cfg, rng)
    arrays = {**light_arrays(lights, ambient, cfg.num_lights[1]), **{k: np.asarray(a, np.float32) for k, a in app.items()}}
    t3 = time.perf_counter()
    return SampleSpec(pose=pose_n, vertices=verts, joints=joints, c2w=c2ws, K=Ks, texture=texture, vertex_colors=colors,
                      lights=lights, ambient=ambient, arrays=arrays,
                      seconds={"posing": t1 - t0, "pixel_size": t2 - t1, "appearance": t3 - t2})


def render_spec(model: BodyModel, spec: SampleSpec, cfg: SyntheticConfig, renderer: MeshRenderer) -> RenderBatch:
    """Render a prepared sample from its V cameras (``renderer`` must be S x S, S = image_size)."""
    S = cfg.image_size
    if (renderer.width, renderer.height) != (S, S):
        raise ValueError(f"renderer is {renderer.width}x{renderer.height}, the config needs {S}x{S}")
    look = dict(vertex_colors=spec.vertex_colors) if spec.texture is None else texture_look(model, spec.texture)
    return renderer.render_batch(spec.vertices, model.faces, spec.K, spec.c2w, lights=spec.lights, ambient=spec.ambient,
                                 background=cfg.background, **look)


def assemble_sample(spec: SampleSpec, views: RenderBatch) -> dict[str, np.ndarray]:
    """The sample as stored (see ``make_sample``); views: ``render_spec``'s batch, used as it is
    (no copies)."""
    sample: dict[str, np.ndarray] = {
        "images": views.rgb,
        "masks": views.mask.view(np.uint8) * np.uint8(255),
        "depth": views.depth.astype(np.float32, copy=False),
        "K": spec.K.astype(np.float32), "c2w": spec.c2w.astype(np.float32),
        "vertices": spec.vertices.astype(np.float32), "joints": spec.joints.astype(np.float32),
    }
    sample.update({f"pose/{k}": np.asarray(v, np.float32) for k, v in spec.pose.to_dict().items()})
    sample.update(spec.arrays)
    return sample


def make_sample(model: BodyModel, sampler: PoseSampler, cfg: SyntheticConfig, rng: np.random.Generator,
                renderer: MeshRenderer) -> dict[str, np.ndarray]:
    """One synthetic sample: a random pose, appearance, lights and ``num_views`` cameras.

    Returns (V views, S = image_size, all in the normalized world):
        images uint8 [V, S, S, 3]; masks uint8 [V, S, S] (255 mouse / 0); depth float32 [V, S, S]
        (camera z, normalized units, 0 = background); K float32 [V, 3, 3]; c2w float32 [V, 4, 4]
        (OpenCV camera-to-world); vertices float32 [14522, 3]; joints float32 [140, 3];
        ``pose/<field>`` float32 (body_model.Pose.to_dict of the normalized pose);
        ``lights/<field>`` float32 (``light_arrays``); ``appearance/<field>`` float32.
    ``renderer`` must be an S x S MeshRenderer.
    """
    spec = prepare_sample(model, sampler, cfg, rng)
    return assemble_sample(spec, render_spec(model, spec, cfg, renderer))


# --------------------------------------------------------------------------------------------
# Shards: prepare (worker processes) -> render (main thread) -> write (writer thread)
# --------------------------------------------------------------------------------------------
# Per-sample keys that ShardWriter.add takes as named arguments; the rest go to ``extras``.
_NAMED = ("images", "masks", "K", "c2w", "depth")
@dataclass
class JobStats:
    """Timings of one ``ShardJob.write``: seconds per sample and stage (PREPARE_STAGES measured
    in the workers, then "render" and "write"), the wall time, and the time from the first to the
    last written sample (steady state, without start-up and the first sample's latency)."""

    samples: int = 0
    wall: float = 0.0
    first_to_last: float = 0.0
    seconds: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (*PREPARE_STAGES, "render", "write")})

    def ms_per_sample(self) -> dict[str, float]:
        return {k: 1000.0 * float(np.mean(v)) if v else float("nan") for k, v in self.seconds.items()}


class _BackgroundWriter:
    """Assembles rendered samples and appends them to a ShardWriter on a second thread, so HDF5's
    LZF compression (~50 ms per 32 x 256 px sample on one core; h5py releases the GIL) overlaps
    rendering. At most ``depth`` samples wait (memory: ~17 MB each at 32 x 256 px). An error on
    the thread is raised in the caller at the next ``put`` or at ``close``."""

    def __init__(self, writer: ShardWriter, stats: JobStats, depth: int = 2):
        self._writer, self._stats = writer, stats
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self.last_done = self.first_done = None
        self._thread = threading.Thread(target=self._run, name="synthetic-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # keep draining so that put() never blocks on a dead consumer
            try:
                frame_index, spec, views = item
                t0 = time.perf_counter()
                s = assemble_sample(spec, views)
                self._writer.add(images=s["images"], masks=s["masks"], K=s["K"], c2w=s["c2w"], depth=s["depth"],
                                 frame_index=frame_index, session="synthetic",
                                 extras={k: v for k, v in s.items() if k not in _NAMED})
                self.last_done = time.perf_counter()
                self.first_done = self.first_done or self.last_done
                self._stats.seconds["write"].append(self.last_done - t0)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, frame_index: int, spec: SampleSpec, views: RenderBatch) -> None:
        self._raise()
        self._queue.put((frame_index, spec, views))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()


class ShardJob:
    """Writes synthetic shards of one (seed, shard index): prepares samples in ``workers`` forked
    processes (0: in this thread), renders them here, writes them on a writer thread.

    Use as a context manager; the worker processes are forked on entry, before this process
    creates its OpenGL context (the renderer opens it at the first render). ``write`` may run
    more than once (the benchmark warms up with it). Memory: the model and renderer here, plus
    at most 2 * workers prepared samples (~1.5 MB each) and 2 rendered ones waiting for the
    writer (~17 MB each at 32 x 256 px); each worker holds a copy-on-write model.
    """

    def __init__(self, model: BodyModel, cfg: SyntheticConfig, seed: int, shard_index: int, workers: int = 0):
        cfg.validate()
        if cfg.appearance == "texture" and model.texture is None:
            raise InputError("synthetic config: appearance = 'texture' but the body model has no texture image. "
                             "Fix: use appearance 'auto'/'procedural' or provide texture_final.png.")
        self.model, self.cfg, self.seed, self.shard_index = model, cfg, int(seed), int(shard_index)
        self.sampler = PoseSampler(model, cfg.pose_sampler_config())
        self.workers = max(0, int(workers))
        if self.workers and "fork" not in multiprocessing.get_all_start_methods():
            log.warning("no 'fork' start method on this platform: preparing synthetic samples in the main thread")
            self.workers = 0
        self._pool = None
        # Back-face culling (~25 % faster with llvmpipe): the MAMMAL mesh has consistent outward
        # winding and its openings (eyes, mouth) do not change the silhouette (tests/test_synthetic.py).
        # Where posing makes the mesh self-intersect (< 1 % of mask pixels), images and depth show
        # the outward surface rather than the inside of the intruding part, as a real mouse would.
        self.renderer = MeshRenderer(cfg.image_size, cfg.image_size, cull_back_faces=True)

    def __enter__(self) -> "ShardJob":
        face_edges(self.model.faces)  # build the cached tables once, before forking, so workers share them
        _appearance_tables(self.model)
        if self.workers:
            model, sampler, cfg, seed, shard = self.model, self.sampler, self.cfg, self.seed, self.shard_index
            self._pool = ForkedWorkers(self.workers, lambda i: prepare_sample(model, sampler, cfg, sample_rng(seed, shard, i)),
                                       "synthetic sample")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._pool is not None:
            self._pool.close(abort=exc_type is not None)
            self._pool = None
        self.renderer.close()

    def specs(self, n: int) -> Iterator[SampleSpec]:
        """Prepared samples 0..n-1 in order (a window of 2 * workers samples ahead)."""
        if self._pool is None:
            for i in range(n):
                yield prepare_sample(self.model, self.sampler, self.cfg, sample_rng(self.seed, self.shard_index, i))
            return
        # drained when stopped early (an error), so that a later write starts clean
        yield from self._pool.map(range(n), drain=True)

    def write(self, out_path: str | os.PathLike, n: int | None = None, progress: bool = True) -> JobStats:
        """Write samples 0..n-1 (default samples_per_shard) atomically to ``out_path`` (module docstring)."""
        cfg = self.cfg
        n = cfg.samples_per_shard if n is None else int(n)
        stats = JobStats(samples=n)
        params = {**asdict(cfg), "seed": self.seed, "shard_index": self.shard_index}
        t_start = time.perf_counter()
        # Rendering on a GPU (EGL) leaves the CPU free to compress the shard in parallel; with
        # OSMesa every core renders (benchmarks/synthetic_throughput.py: parallel compression
        # lowered the ratio there).
        compress_threads = 3 if os.environ.get("PYOPENGL_PLATFORM") == "egl" else 0
        with ShardWriter(out_path, kind="synthetic", num_views=cfg.num_views, image_size=cfg.image_size, params=params,
                         compress_threads=compress_threads) as w:
            w.set_constant("faces", self.model.faces.astype(np.int32))
            bg = _BackgroundWriter(w, stats)
            specs = self.specs(n)
            try:
                for i, spec in enumerate(tqdm(specs, total=n, desc=f"synthetic shard {self.shard_index}", unit="sample",
                                              disable=not progress)):
                    for k in PREPARE_STAGES:
                        stats.seconds[k].append(spec.seconds[k])
                    t0 = time.perf_counter()
                    views = render_spec(self.model, spec, cfg, self.renderer)
                    stats.seconds["render"].append(time.perf_counter() - t0)
                    bg.put(self.shard_index * cfg.samples_per_shard + i, spec, views)
            finally:
                specs.close()
                bg.close()
        stats.wall = time.perf_counter() - t_start
        stats.first_to_last = (bg.last_done - bg.first_done) if bg.first_done is not None else 0.0
        return stats


def write_synthetic_shard(body_model_npz: str, out_path: str, shard_index: int, seed: int, cfg: SyntheticConfig,
                          workers: int = 0) -> None:
    """Write one synthetic shard (HDF5 schema v1, kind "synthetic") atomically to ``out_path``.

    Deterministic per (seed, shard_index), whatever ``workers``: sample i uses ``sample_rng(seed,
    shard_index, i)``. ``frame_index`` = shard_index * samples_per_shard + i. Faces are stored once
    (int32 [F, 3]); params_json = asdict(cfg) + seed + shard_index. workers: processes that
    prepare samples while this one renders (the rule's threads - 1).
    """
    cfg.validate()
    model = load_npz(body_model_npz)
    if cfg.appearance == "texture" and model.texture is None:
        raise InputError(f"{body_model_npz}: appearance = 'texture' but this body model has no texture image. "
                         "Fix: set synthetic appearance to 'auto' or 'procedural'.")
    with ShardJob(model, cfg, seed, shard_index, workers=workers) as job:
        stats = job.write(out_path)
    ms = ", ".join(f"{k} {v:.0f}" for k, v in stats.ms_per_sample().items())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.info("wrote %s: %d samples x %d views at %d px in %.1f s with %d worker(s); ms per sample: %s; "
             "peak RSS %.0f MiB (largest worker %.0f MiB), CPU %.1f s", out_path, cfg.samples_per_shard,
             cfg.num_views, cfg.image_size, stats.wall, job.workers, ms, usage.ru_maxrss / 1024,
             children.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime)
