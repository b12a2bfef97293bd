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
sqrt(mask area) scales with f. We measure the silhouette area at the reference focal
(``fov_deg``) by rasterizing the projected faces (``render.rasterize_mask``, on a finer
``size_rule_canvas`` grid so a small silhouette is measured precisely) and set
``f = f_ref * size_ratio * S / sqrt(area_ref)``: one render per view.

Texture orientation: MAMMAL's UVs follow the OBJ convention (v up, as the posed-example OBJs
show), but ``texture_final.png`` from the MAMMAL fork is stored with v counted from the *top*
row: sampled with v-up, 46 % of UVs fall on the image's black (unused) background, with
v-down 2.6 % (checked in tests/test_synthetic.py). We therefore pass ``1 - v`` to the renderer.
"""
from __future__ import annotations

import dataclasses
import logging
import resource
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from workflow_scripts.body_model import BodyModel, Pose, center_of_mass, load_npz, pose_mesh
from workflow_scripts.cameras import look_at_c2w
from workflow_scripts.errors import InputError
from workflow_scripts.poses import PoseSampler, PoseSamplerConfig
from workflow_scripts.render import Light, MeshRenderer, rasterize_mask, vertex_normals
from workflow_scripts.shards import ShardWriter

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


def pixel_size_focals(vertices: np.ndarray, faces: np.ndarray, c2ws: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Focal lengths f [V] (pixels of S) that give the mouse the linear size ``cfg.size_ratio``.

    Measures the silhouette area at the reference focal on a ``size_rule_canvas`` grid with the
    same field of view (K scaled by q = canvas / S, so the area in S-pixels is area_canvas / q^2)
    and scales f exactly (module docstring). c2ws: [V, 4, 4] OpenCV camera-to-world.
    """
    S = cfg.image_size
    f_ref = reference_focal(cfg)
    if not cfg.pixel_size_rule:
        return np.full(len(c2ws), f_ref)
    C = int(cfg.size_rule_canvas)
    q = C / S
    v = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    c2ws = np.asarray(c2ws, dtype=np.float64)
    K_canvas = intrinsics([f_ref * q], C)[0]
    # Only faces facing the camera: for the consistently wound MAMMAL mesh their union is the
    # silhouette (the back-face culling test), and it halves the rasterization work. (Batching
    # all views in one rasterization was slower: the gathers of [V * F, 3, 2] corners dominate.)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n_dot_v0 = np.einsum("fk,fk->f", n, v[faces[:, 0]])
    area = np.empty(len(c2ws))
    for i, c2w in enumerate(c2ws):
        front = faces[n_dot_v0 < n @ c2w[:3, 3]]  # (v0 - C) . n < 0
        area[i] = rasterize_mask(v, front, K_canvas, c2w, C, C).sum()
    area /= q**2
    if np.any(area <= 0):
        raise ValueError(f"views {np.nonzero(area <= 0)[0].tolist()}: the mouse is not visible at the reference focal")
    return f_ref * cfg.size_ratio * S / np.sqrt(area)


# --------------------------------------------------------------------------------------------
# Appearance and lights
# --------------------------------------------------------------------------------------------
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
    names = list(FUR_PALETTE)
    k = int(rng.integers(len(names)))
    back, belly, skin = (np.asarray(c) for c in FUR_PALETTE[names[k]])
    tint = 1.0 + rng.uniform(-0.08, 0.08, 3)           # per-mouse colour variation
    uv = _vertex_uv(model)
    noise = _smooth_noise(rng, uv, cells=8, sigma=0.12)  # [V, 1], blotches of ~1/8 of the UV map
    grain = rng.normal(0.0, 0.04 if names[k] != "agouti" else 0.10, (model.n_vertices, 1))
    n = vertex_normals(model.vertices, model.faces)
    w_belly = np.clip((-n[:, 2:3] - 0.2) / 0.5, 0.0, 1.0)
    skin_cols = [j for j, nm in enumerate(model.joint_names) if any(p in nm for p in SKIN_JOINT_PATTERNS)]
    w_skin = np.clip(np.asarray(model.weights[:, skin_cols].sum(axis=1)).reshape(-1, 1), 0.0, 1.0)
    fur = back * (1 - w_belly) + belly * w_belly
    col = (fur * (1 + noise + grain)) * (1 - w_skin) + skin * w_skin
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
    hsv[..., 0] = np.mod(hsv[..., 0] + hue, 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 1)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    rgb = (rgb - rgb.mean()) * con + rgb.mean()
    out = np.clip(rgb * bri * 255.0 + 0.5, 0, 255).astype(np.uint8)
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
# Samples and shards
# --------------------------------------------------------------------------------------------
def normalize_pose(model: BodyModel, pose: Pose, cfg: SyntheticConfig) -> tuple[Pose, np.ndarray, np.ndarray]:
    """The pose re-expressed in the normalized world: (pose_n, vertices [V, 3], joints [J, 3]).

    x_norm = k (x - c) with k = units_per_mm * mm_per_model_unit and c = center_of_mass of the
    posed mesh, folded into the pose's scale and translation so pose_mesh(model, pose_n) gives
    the normalized vertices directly.
    """
    v, j = pose_mesh(model, pose)
    c = center_of_mass(v, model.faces)
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
    S = cfg.image_size
    if (renderer.width, renderer.height) != (S, S):
        raise ValueError(f"renderer is {renderer.width}x{renderer.height}, the config needs {S}x{S}")
    pose_n, verts, joints = normalize_pose(model, sampler.sample(rng), cfg)
    c2ws = sample_cameras(cfg, rng)
    Ks = intrinsics(pixel_size_focals(verts, model.faces, c2ws, cfg), S)

    use_texture = model.texture is not None and (
        cfg.appearance == "texture" or (cfg.appearance == "auto" and rng.uniform() < cfg.texture_probability))
    if cfg.appearance == "texture" and model.texture is None:
        raise InputError("synthetic config: appearance = 'texture' but the body model has no texture image. "
                         "Fix: use appearance 'auto'/'procedural' or provide texture_final.png.")
    if use_texture:
        texture, app = jitter_texture(model.texture, cfg, rng)
        look = texture_look(model, texture)
    else:
        colors, app = procedural_colors(model, rng)
        look = dict(vertex_colors=colors)
    lights, ambient = sample_lights(cfg, rng)

    views = renderer.render_views(verts, model.faces, Ks, c2ws, lights=lights, ambient=ambient,
                                  background=cfg.background, **look)
    sample: dict[str, np.ndarray] = {
        "images": np.stack([o.rgb for o in views]),
        "masks": np.stack([o.mask for o in views]).astype(np.uint8) * 255,
        "depth": np.stack([o.depth for o in views]).astype(np.float32),
        "K": Ks.astype(np.float32), "c2w": c2ws.astype(np.float32),
        "vertices": verts.astype(np.float32), "joints": joints.astype(np.float32),
    }
    sample.update({f"pose/{k}": np.asarray(v, np.float32) for k, v in pose_n.to_dict().items()})
    sample.update(light_arrays(lights, ambient, cfg.num_lights[1]))
    sample.update({k: np.asarray(v, np.float32) for k, v in app.items()})
    return sample


# Per-sample keys that ShardWriter.add takes as named arguments; the rest go to ``extras``.
_NAMED = ("images", "masks", "K", "c2w", "depth")


def write_synthetic_shard(body_model_npz: str, out_path: str, shard_index: int, seed: int, cfg: SyntheticConfig) -> None:
    """Write one synthetic shard (HDF5 schema v1, kind "synthetic") atomically to ``out_path``.

    Deterministic per (seed, shard_index): the generator is ``np.random.default_rng([seed,
    shard_index])``. ``frame_index`` = shard_index * samples_per_shard + i. Faces are stored once
    (int32 [F, 3]); params_json = asdict(cfg) + seed + shard_index.
    """
    cfg.validate()
    model = load_npz(body_model_npz)
    if cfg.appearance == "texture" and model.texture is None:
        raise InputError(f"{body_model_npz}: appearance = 'texture' but this body model has no texture image. "
                         "Fix: set synthetic appearance to 'auto' or 'procedural'.")
    sampler = PoseSampler(model, cfg.pose_sampler_config())
    rng = np.random.default_rng([int(seed), int(shard_index)])
    params = {**asdict(cfg), "seed": int(seed), "shard_index": int(shard_index)}
    S, V = cfg.image_size, cfg.num_views
    # Back-face culling (~25 % faster with llvmpipe): the MAMMAL mesh has consistent outward
    # winding and its openings (eyes, mouth) do not change the silhouette (tests/test_synthetic.py).
    # Where posing makes the mesh self-intersect (< 1 % of mask pixels), images and depth show
    # the outward surface rather than the inside of the intruding part, as a real mouse would.
    with MeshRenderer(S, S, cull_back_faces=True) as renderer, ShardWriter(out_path, kind="synthetic", num_views=V, image_size=S, params=params) as w:
        w.set_constant("faces", model.faces.astype(np.int32))
        for i in tqdm(range(cfg.samples_per_shard), desc=f"synthetic shard {shard_index}", unit="sample"):
            s = make_sample(model, sampler, cfg, rng, renderer)
            w.add(images=s["images"], masks=s["masks"], K=s["K"], c2w=s["c2w"], depth=s["depth"],
                  frame_index=int(shard_index) * cfg.samples_per_shard + i, session="synthetic",
                  extras={k: v for k, v in s.items() if k not in _NAMED})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log.info("wrote %s: %d samples x %d views at %d px; peak RSS %.0f MiB, CPU %.1f s", out_path,
             cfg.samples_per_shard, V, S, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)
