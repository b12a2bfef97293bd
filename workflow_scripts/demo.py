"""The built-in demo recording: the MAMMAL mouse walking and turning in an arena, filmed by a
calibrated multi-camera rig, written exactly like a user's data.

Outputs (``run_demo_recording``):
- ``videos/cam{i}.mp4``: H.264 videos (PyAV), one per camera, with lens distortion;
- ``calibration/hires_cam{i}_params.mat``: DANNCE per-camera calibration files (MATLAB row
  vectors: K and r stored transposed), read back by the pipeline like any user's calibration;
- ``ground_truth.h5``: kept aside for evaluation only: per-frame posed vertices [T, V, 3] and
  joints [T, J, 3] (raw world, mm), faces, the 3D centre of mass [T, 3]
  (``body_model.center_of_mass``), true masks [C, T, H, W] and the cameras.

World: millimetres, z up, arena floor at z = 0 centred at the origin (the DANNCE convention).
Cameras: a ring around and above the arena looking at its centre, ~1 m away, with radial
distortion. Images are rendered with a pinhole model on a larger canvas and then distorted
exactly with the calibration's OpenCV model (one ``cv2.remap``), so the videos, the
calibration and the ground truth agree to interpolation accuracy.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import trimesh
from tqdm import tqdm

from workflow_scripts.atomic import atomic_path
from workflow_scripts.body_model import center_of_mass, load_npz, pose_mesh
from workflow_scripts.calibration import write_dannce_hires_params
from workflow_scripts.cameras import Camera, look_at_c2w, to_opencv_pixels, undistort_normalized
from workflow_scripts.poses import PoseSampler, PoseSamplerConfig, WalkPath
from workflow_scripts.render import Light, MeshRenderer
from workflow_scripts.synthetic import procedural_colors, texture_look
from workflow_scripts.video import write_video

log = logging.getLogger(__name__)

@dataclasses.dataclass
class DemoConfig:
    """Settings of the demo recording (config.yaml ``demo:``)."""

    num_frames: int = 24
    fps: int = 15
    width: int = 480
    height: int = 400
    num_cameras: int = 6
    camera_distance_mm: float = 1000.0
    camera_height_mm: float = 550.0
    focal_px: float = 1000.0
    distortion_k1: float = -0.08
    arena_radius_mm: float = 200.0
    seed: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DemoConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"demo config: unknown keys {sorted(unknown)}")
        return cls(**d)


def rig_cameras(cfg: DemoConfig, rng: np.random.Generator) -> list[Camera]:
    """A ring of cameras around and above the arena, aimed near its centre (R, t world-to-camera)."""
    cams = []
    horizontal = np.sqrt(cfg.camera_distance_mm**2 - cfg.camera_height_mm**2)
    for i in range(cfg.num_cameras):
        az = 2 * np.pi * i / cfg.num_cameras + rng.uniform(-0.15, 0.15)
        r = horizontal * rng.uniform(0.95, 1.05)
        eye = np.array([r * np.cos(az), r * np.sin(az), cfg.camera_height_mm * rng.uniform(0.9, 1.1)])
        target = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), 20.0])
        c2w = look_at_c2w(eye, target, up=(0.0, 0.0, 1.0))
        f = cfg.focal_px * rng.uniform(0.97, 1.03)
        K = np.array([[f, 0.0, cfg.width / 2 + rng.uniform(-6, 6)], [0.0, f * rng.uniform(0.995, 1.005), cfg.height / 2 + rng.uniform(-6, 6)], [0, 0, 1]])
        dist = np.array([cfg.distortion_k1 * rng.uniform(0.8, 1.2), 0.02 * rng.uniform(-1, 1), 0.0005 * rng.uniform(-1, 1), 0.0005 * rng.uniform(-1, 1), 0.0])
        cams.append(Camera.from_c2w(f"cam{i + 1}", K, c2w, cfg.width, cfg.height, dist=dist))
    return cams


def arena_mesh(radius_mm: float, rng: np.random.Generator) -> trimesh.Trimesh:
    """A textured floor disc (vertex colours: bedding-like low-frequency noise + speckles) so that
    background subtraction sees a realistic, non-uniform background."""
    n_r, n_t = 40, 160
    rr = np.linspace(0, radius_mm, n_r)
    tt = np.linspace(0, 2 * np.pi, n_t, endpoint=False)
    R, T = np.meshgrid(rr, tt, indexing="ij")
    verts = np.stack([R * np.cos(T), R * np.sin(T), np.zeros_like(R)], -1).reshape(-1, 3)
    faces = []
    for i in range(n_r - 1):
        for j in range(n_t):
            a, b = i * n_t + j, i * n_t + (j + 1) % n_t
            c, d = a + n_t, b + n_t
            faces += [[a, c, b], [b, c, d]]
    x, y = verts[:, 0] / radius_mm, verts[:, 1] / radius_mm
    phase = rng.uniform(0, 2 * np.pi, 4)
    noise = 0.5 + 0.25 * np.sin(7 * x + phase[0]) * np.cos(5 * y + phase[1]) + 0.15 * np.sin(17 * x + 13 * y + phase[2])
    noise += 0.1 * rng.standard_normal(len(verts))
    base = np.array([0.14, 0.15, 0.18])  # grey-blue arena floor (the fitted fur is white)
    colors = np.clip(base[None] * (0.75 + 0.35 * noise[:, None]), 0, 1)
    mesh = trimesh.Trimesh(verts, np.array(faces), process=False)
    mesh.visual.vertex_colors = np.concatenate([(colors * 255).astype(np.uint8), np.full((len(verts), 1), 255, np.uint8)], 1)
    return mesh


def distortion_maps(cam: Camera, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps for cv2.remap that turn a pinhole render (canvas enlarged by ``margin`` px on each
    side, principal point shifted accordingly) into the camera's distorted image."""
    u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    uv1 = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(cam.K).T
    xn = undistort_normalized(uv1[..., :2] / uv1[..., 2:3], cam.dist)
    pin = np.concatenate([xn, np.ones_like(xn[..., :1])], -1) @ cam.K.T
    pin = pin[..., :2] / pin[..., 2:3] + margin
    pin = to_opencv_pixels(pin).astype(np.float32)
    return pin[..., 0], pin[..., 1]


def run_demo_recording(body_model_npz: str, out_dir: str, cfg: DemoConfig) -> None:
    """Render the demo recording into ``out_dir`` (videos/, calibration/, ground_truth.h5)."""
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    model = load_npz(body_model_npz)
    cams = rig_cameras(cfg, rng)
    floor = arena_mesh(cfg.arena_radius_mm, rng)
    # The mouse runs ~3 body lengths during the recording, so every floor pixel is covered by
    # it in only a few frames and a temporal-median background (the built-in masks) sees the
    # empty arena.
    duration_s = cfg.num_frames / cfg.fps
    path = WalkPath(radius=cfg.arena_radius_mm, wall_margin=0.35 * cfg.arena_radius_mm, fps=cfg.fps,
                    speed=3 * 110.0 / duration_s)
    poses = PoseSampler(model, PoseSamplerConfig()).walk_sequence(rng, cfg.num_frames, path=path)
    verts, joints, coms = [], [], []
    for pose in poses:
        v, j = pose_mesh(model, pose)  # world mm, z up, feet on the floor
        verts.append(v)
        joints.append(j)
        coms.append(center_of_mass(v, model.faces))
    verts, joints, coms = np.array(verts), np.array(joints), np.array(coms)

    margin = int(0.15 * max(cfg.width, cfg.height))
    lights = [Light(kind="directional", direction=np.array([0.3, 0.2, -1.0]), color=np.ones(3), intensity=3.0),
              Light(kind="directional", direction=np.array([-0.5, 0.4, -0.6]), color=np.array([1.0, 0.95, 0.9]), intensity=1.5)]
    # The fitted fur texture when the model has one; else a fixed procedural fur (upstream MAMMAL
    # ships no texture image).
    uv_kwargs = texture_look(model) if model.texture is not None else dict(vertex_colors=procedural_colors(model, rng)[0])
    true_masks = np.zeros((len(cams), cfg.num_frames, cfg.height, cfg.width), np.uint8)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    with MeshRenderer(cfg.width + 2 * margin, cfg.height + 2 * margin) as renderer:
        for ci, cam in enumerate(tqdm(cams, desc="demo cameras")):
            K_canvas = cam.K.copy()
            K_canvas[0, 2] += margin
            K_canvas[1, 2] += margin
            mx, my = distortion_maps(cam, margin)
            frames = []
            for t in range(cfg.num_frames):
                r = renderer.render(verts[t], model.faces, K_canvas, cam.c2w, lights=lights, ambient=np.full(3, 0.35),
                                    background=np.array([0.25, 0.25, 0.27]), extra_meshes=[floor], **uv_kwargs)
                frames.append(cv2.remap(r.rgb, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
                m = cv2.remap(r.mask.astype(np.float32), mx, my, cv2.INTER_LINEAR)
                true_masks[ci, t] = (m >= 0.5).astype(np.uint8) * 255
            write_video(out / "videos" / f"{cam.name}.mp4", frames, fps=cfg.fps)
    write_dannce_hires_params(out / "calibration", cams)

    with atomic_path(out / "ground_truth.h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(units="mm", up="+z", num_frames=cfg.num_frames, fps=cfg.fps,
                       description="demo ground truth: evaluation only, never an input of the pipeline")
        f.create_dataset("vertices", data=verts.astype(np.float32), compression="lzf")
        f.create_dataset("joints", data=joints.astype(np.float32))
        f.create_dataset("faces", data=model.faces.astype(np.int32))
        f.create_dataset("com", data=coms)
        f.create_dataset("frame_index", data=np.arange(cfg.num_frames))
        f.create_dataset("masks", data=true_masks, compression="lzf", chunks=(1, 1, cfg.height, cfg.width))
        f.create_dataset("camera_names", data=np.array([c.name for c in cams], dtype="S"))
        f.create_dataset("K", data=np.array([c.K for c in cams]))
        f.create_dataset("dist", data=np.array([c.dist for c in cams]))
        f.create_dataset("w2c", data=np.array([c.w2c for c in cams]))
    log.info("demo: %d cameras x %d frames; mask area per view %.0f px (median)", len(cams), cfg.num_frames,
             np.median((true_masks > 0).sum((2, 3))))
