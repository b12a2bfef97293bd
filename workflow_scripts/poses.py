"""Random mouse poses for synthetic data, smooth walking sequences for the demo, and a coverage
check against the posed MAMMAL examples.

Angles follow ``workflow_scripts.body_model``: each joint delta is an axis-angle relative to its
parent, expressed in the rest-pose model axes (x = the mouse's left, y = towards the tail,
z = up), so the anatomical meaning of an axis does not change as parents move:

- yaw   = rotation about +z; positive turns the part ahead of the joint to the mouse's left;
- pitch = we report "nose up" / "forward" angles, i.e. rotation about -x (a rotation about +x
  moves head-ward points, which lie at -y, downwards);
- roll  = rotation about +y (twist about the body axis).

Right-side joints mirror left-side ones through the x = 0 plane: an axial vector (rx, ry, rz)
becomes (rx, -ry, -rz).

The sampler starts from a *base pose* measured from the 5 posed examples of the MAMMAL fork
(by fitting this body model to them, see ``benchmarks/pose_coverage.py --fit``): the MAMMAL rest
mesh is a splayed T-pose (mean vertex distance 0.28 body lengths from a real mouse after
similarity alignment) while the base pose is within ~0.03. Those 5 examples are consecutive
frames of one rearing bout, so they fix a natural limb/neck/tail configuration but say nothing
about ranges; the ranges below are priors from mouse behaviour, documented per field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from workflow_scripts.body_model import BodyModel, Pose, center_of_mass, pose_mesh
from workflow_scripts.errors import InputError

Range = tuple[float, float]

# Joint groups, by MAMMAL joint name (printed and checked against joint_names.txt in the tests).
SPINE = ("lumbar_vertebrae_2", "lumbar_vertebrae_3", "thoracic_vertebrae_0", "thoracic_vertebrae_1",
         "thoracic_vertebrae_2")
NECK_HEAD = ("cervical_vertebrae_0", "cervical_vertebrae_1", "skull")
TAIL = tuple(f"tail_{i}" for i in range(10))
HIND_LIMB = ("femur", "tibia", "hind_paw")     # + _l / _r: hip swing, knee, ankle
FORE_LIMB = ("humerus", "ulna", "fore_paw")    # + _l / _r: shoulder swing, elbow, wrist

# Base pose (degrees, axis-angle in model axes) for midline and LEFT joints; right joints are
# mirrored. Median over the 5 posed examples of a fit with benchmarks/pose_coverage.py --fit
# (symmetrized: left/right averaged after mirroring, midline yaw/roll zeroed). It includes the
# hunched spine (~30 deg front up) and S-shaped neck of the rearing examples; the sampled spine /
# head ranges are relative to it. Left out: lumbar_vertebrae_1 (a whole-body rotation, left to
# the global pose) and the tail (lumbar_vertebrae_0, tail_*: lifted ~60 deg relative to the body
# only because the rearing mouse's tail lies on the floor; covered by tail_lift instead).
MEASURED_BASE_DEG: dict[str, tuple[float, float, float]] = {
    "lumbar_vertebrae_2": (-0.2, 0.0, 0.0),
    "lumbar_vertebrae_3": (-14.1, 0.0, 0.0),
    "thoracic_vertebrae_0": (-16.8, 0.0, 0.0),
    "thoracic_vertebrae_1": (-6.4, 0.0, 0.0),
    "thoracic_vertebrae_2": (5.9, 0.0, 0.0),
    "cervical_vertebrae_0": (21.5, 0.0, 0.0),
    "cervical_vertebrae_1": (28.7, 0.0, 0.0),
    "skull": (-20.3, 0.0, 0.0),
    "perlvis_l": (-6.0, 15.6, 19.2),
    "femur_l": (-4.9, 11.6, 17.6),
    "tibia_l": (-3.8, 31.9, -34.8),
    "hind_paw_l": (-37.3, -3.2, -70.4),
    "scapula_l": (36.4, 17.6, 36.3),
    "humerus_l": (-7.2, 13.9, -25.4),
    "ulna_l": (34.5, 1.8, 17.5),
    "fore_paw_l": (29.4, 14.5, 1.5),
}


@dataclass
class PoseSamplerConfig:
    """Limits (degrees unless stated) of the pose sampler; every range is (low, high), sampled
    uniformly, so (a, a) fixes a value. Totals over a chain are split evenly over its joints."""

    # Base pose: joint name -> axis-angle degrees (midline + left; right mirrored).
    base_pose_deg: dict[str, tuple[float, float, float]] = field(default_factory=lambda: dict(MEASURED_BASE_DEG))
    # Spine (lumbar_vertebrae_2 .. thoracic_vertebrae_2): lateral bend when turning (mice bend
    # their body into a C of up to ~60 deg), dorsal arch / hunch, and a small twist.
    spine_bend: Range = (-45.0, 45.0)          # total yaw, + = front half turned to the left
    spine_pitch: Range = (-35.0, 20.0)         # total, + = front half up; the base is already ~30 up
    spine_twist: Range = (-10.0, 10.0)         # total roll
    # Neck + head (cervical_vertebrae_0, _1, skull).
    head_yaw: Range = (-40.0, 40.0)            # + = nose to the left
    head_pitch: Range = (-30.0, 30.0)          # + = nose up
    head_roll: Range = (-10.0, 10.0)
    # Body pitch (global rotation about the lateral axis, nose up): on four legs, or rearing.
    rear_probability: float = 0.25
    body_pitch: Range = (-5.0, 10.0)
    rear_pitch: Range = (30.0, 70.0)
    # Limbs, per limb independently: swing (+ = paw forward) at hip/shoulder, flex at
    # knee/elbow and ankle/wrist, abduction (roll, + = paw outwards).
    limb_swing: Range = (-30.0, 30.0)
    limb_flex: Range = (-20.0, 20.0)
    limb_abduction: Range = (-10.0, 10.0)
    # Tail (tail_0 .. tail_9): lateral curl and lift over the whole tail, plus per-joint wiggle.
    tail_curl: Range = (-90.0, 90.0)           # total yaw
    tail_lift: Range = (-20.0, 60.0)           # total, + = tail tip up (rearing: ~60)
    tail_wiggle: float = 8.0                   # per joint, uniform +- (yaw and pitch)
    # Global placement.
    heading: Range = (-180.0, 180.0)           # yaw of the whole body about world z
    scale: Range = (0.9, 1.1)                  # body size, multiplies base_scale
    base_scale: float = 1.0                    # model units -> output units (MAMMAL fits: ~108 mm)
    bone_jitter: float = 0.05                  # each bone-length group factor in 1 +- jitter
    place_on_floor: bool = True                # translate: lowest vertex at z = 0, centroid at x = y = 0

    def validate(self, source: str = "pose sampler config") -> None:
        """InputError when a range is reversed or a probability/scale is out of bounds."""
        for name, value in vars(self).items():
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise InputError(f"{source}: {name} = {value} has low > high. Fix: swap the two values.")
        if not 0 <= self.rear_probability <= 1:
            raise InputError(f"{source}: rear_probability = {self.rear_probability} is not in [0, 1]. "
                             "Fix: use a probability.")
        if self.scale[0] <= 0 or self.base_scale <= 0 or not 0 <= self.bone_jitter < 1:
            raise InputError(f"{source}: scale, base_scale must be > 0 and bone_jitter in [0, 1). Fix: correct them.")


def _mirror(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle of the left-right mirrored rotation (reflection x -> -x)."""
    return np.array([rotvec[0], -rotvec[1], -rotvec[2]])


def _u(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


class PoseSampler:
    """Draws random poses: ``sample(rng)``; smooth walks: ``walk_sequence(rng, n_frames)``."""

    def __init__(self, model: BodyModel, cfg: PoseSamplerConfig | None = None):
        self.model = model
        self.cfg = cfg or PoseSamplerConfig()
        self.cfg.validate()
        idx = model.joint_index
        self.spine = [idx(n) for n in SPINE]
        self.neck = [idx(n) for n in NECK_HEAD]
        self.tail = [idx(n) for n in TAIL]
        self.limbs = {f"{limb}_{side}": [idx(f"{j}_{side}") for j in joints]
                      for limb, joints in (("hind", HIND_LIMB), ("fore", FORE_LIMB)) for side in "lr"}
        self.base = np.zeros((model.n_joints, 3))
        for name, deg in self.cfg.base_pose_deg.items():
            r = np.radians(np.asarray(deg, np.float64))
            try:
                self.base[idx(name)] = r
            except KeyError:
                raise InputError(f"pose sampler config: base_pose_deg names unknown joint {name!r}. "
                                 "Fix: use a name from joint_names.txt.") from None
            if name.endswith("_l"):
                self.base[idx(name[:-2] + "_r")] = _mirror(r)

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _spread(d: np.ndarray, joints: list[int], axis: np.ndarray, total_deg: float) -> None:
        """Add a rotation of total_deg about ``axis`` split evenly over ``joints`` (in place)."""
        d[joints] += axis * math.radians(total_deg) / len(joints)

    def articulate(self, *, spine_bend=0.0, spine_pitch=0.0, spine_twist=0.0, head_yaw=0.0, head_pitch=0.0,
                   head_roll=0.0, tail_curl=0.0, tail_lift=0.0, limbs: dict[str, tuple[float, float, float]] | None
                   = None, tail_wiggle: np.ndarray | None = None) -> np.ndarray:
        """Joint deltas [J, 3] (radians) = base pose + the named articulations (degrees).

        limbs: {"hind_l"|"hind_r"|"fore_l"|"fore_r": (swing, flex, abduction)}, + swing = paw
        forward, + abduction = paw outwards. tail_wiggle: [10, 2] degrees (yaw, pitch) per tail joint.
        """
        X, Y, Z = np.eye(3)
        d = self.base.copy()
        self._spread(d, self.spine, Z, spine_bend)
        self._spread(d, self.spine, -X, spine_pitch)
        self._spread(d, self.spine, Y, spine_twist)
        self._spread(d, self.neck, Z, head_yaw)
        self._spread(d, self.neck, -X, head_pitch)
        self._spread(d, self.neck, Y, head_roll)
        # Tail points to +y, so "tip up" is a rotation about +x and "curl left" about -z.
        self._spread(d, self.tail, -Z, tail_curl)
        self._spread(d, self.tail, X, tail_lift)
        if tail_wiggle is not None:
            d[self.tail] += np.radians(np.stack([tail_wiggle[:, 1], np.zeros(len(self.tail)), -tail_wiggle[:, 0]], 1))
        for name, (swing, flex, abd) in (limbs or {}).items():
            hip, knee, ankle = self.limbs[name]
            side = 1.0 if name.endswith("_l") else -1.0
            d[hip] += np.radians([-swing, side * abd, 0.0])  # roll about +y lifts a left paw outwards
            # Knee and ankle bend in opposite senses for a zig-zag (flexed) leg.
            d[knee] += np.radians([flex, 0.0, 0.0])
            d[ankle] += np.radians([-flex, 0.0, 0.0])
        return d

    def _global_rotvec(self, heading_deg: float, pitch_deg: float) -> np.ndarray:
        """World rotation: pitch (nose up, about the body's lateral axis) then heading (about z)."""
        return (Rotation.from_euler("z", heading_deg, degrees=True)
                * Rotation.from_euler("x", -pitch_deg, degrees=True)).as_rotvec()

    def _place(self, pose: Pose, floor_z: float = 0.0, xy: np.ndarray | None = None) -> Pose:
        """Translate so that the lowest vertex touches z = floor_z and the surface centroid is at xy."""
        return self._place_posed(pose, floor_z, xy)[0]

    def _place_posed(self, pose: Pose, floor_z: float = 0.0, xy: np.ndarray | None = None
                     ) -> tuple[Pose, np.ndarray, np.ndarray, np.ndarray]:
        """``_place`` that also returns the placed pose's vertices [V, 3], joints [J, 3] and
        surface centroid [3]. pose_mesh adds the translation last, so v0 + t is exactly (bit for
        bit) pose_mesh of the placed pose: posing once serves both the placement and the caller."""
        v, j = pose_mesh(self.model, replace(pose, translation=np.zeros(3)))
        c = center_of_mass(v, self.model.faces)
        target = np.zeros(2) if xy is None else np.asarray(xy, np.float64)
        pose.translation = np.array([target[0] - c[0], target[1] - c[1], floor_z - v[:, 2].min()])
        return pose, v + pose.translation, j + pose.translation, c + pose.translation

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator) -> Pose:
        """One random pose; the same generator state gives the same pose."""
        pose = self._draw(rng)
        return self._place(pose) if self.cfg.place_on_floor else pose

    def sample_posed(self, rng: np.random.Generator) -> tuple[Pose, np.ndarray, np.ndarray, np.ndarray]:
        """``sample`` plus what posing it gives, computed once: (pose, vertices [V, 3], joints
        [J, 3], surface centroid [3]) with (vertices, joints) = pose_mesh(model, pose) exactly and
        centroid = center_of_mass(vertices) up to rounding (~1e-16). Same draws and pose as ``sample``."""
        pose = self._draw(rng)
        if self.cfg.place_on_floor:
            return self._place_posed(pose)
        v, j = pose_mesh(self.model, pose)
        return pose, v, j, center_of_mass(v, self.model.faces)

    def _draw(self, rng: np.random.Generator) -> Pose:
        """The random part of ``sample``: a pose with zero translation (not yet placed)."""
        c = self.cfg
        limbs = {name: (_u(rng, c.limb_swing), _u(rng, c.limb_flex), _u(rng, c.limb_abduction)) for name in self.limbs}
        wiggle = rng.uniform(-c.tail_wiggle, c.tail_wiggle, (len(self.tail), 2))
        d = self.articulate(spine_bend=_u(rng, c.spine_bend), spine_pitch=_u(rng, c.spine_pitch),
                            spine_twist=_u(rng, c.spine_twist), head_yaw=_u(rng, c.head_yaw),
                            head_pitch=_u(rng, c.head_pitch), head_roll=_u(rng, c.head_roll),
                            tail_curl=_u(rng, c.tail_curl), tail_lift=_u(rng, c.tail_lift), limbs=limbs,
                            tail_wiggle=wiggle)
        rearing = rng.uniform() < c.rear_probability
        pitch = _u(rng, c.rear_pitch if rearing else c.body_pitch)
        heading = _u(rng, c.heading)
        scale = c.base_scale * _u(rng, c.scale)
        bones = 1.0 + rng.uniform(-c.bone_jitter, c.bone_jitter, self.model.n_bone_groups)
        return Pose(d, self._global_rotvec(heading, pitch), np.zeros(3), scale, bones)

    # ------------------------------------------------------------------ walking
    def walk_sequence(self, rng: np.random.Generator, n_frames: int, path: "WalkPath | None" = None,
                      progress: bool = True) -> list[Pose]:
        """A mouse walking and turning in a circular arena: ``n_frames`` smooth poses at path.fps.

        Key poses (no rearing, moderate head/spine/tail ranges) every path.key_seconds are
        interpolated with cubic splines (the deltas are small, so interpolating axis-angle
        components is smooth and close to geodesic); a trot-like gait swings diagonal limb
        pairs in phase at path.stride_hz, with amplitude growing with speed; the spine bends
        into the turn. Global: world x-y trajectory in path units (e.g. mm), z up, floor z = 0,
        body scale path.units_per_model_unit.
        """
        p = path or WalkPath()
        p.validate()
        if n_frames < 2:
            raise ValueError("n_frames must be >= 2")
        t = np.arange(n_frames) / p.fps
        xy, heading, speed, turn_rate = p.trajectory(rng, n_frames)
        n_keys = max(2, int(math.ceil(t[-1] / p.key_seconds)) + 2)
        key_t = np.arange(n_keys) * p.key_seconds
        # Key poses of a walking mouse: on four legs, spine mostly un-hunched (the base pose is
        # ~30 deg front up), limb swing left to the gait below.
        walk_cfg = replace(self.cfg, rear_probability=0.0, spine_bend=(-15.0, 15.0), spine_pitch=(-30.0, -20.0),
                           head_pitch=(-20.0, 15.0),
                           tail_curl=(-40.0, 40.0), limb_swing=(0.0, 0.0), limb_flex=(-10.0, 10.0),
                           limb_abduction=(-5.0, 5.0), place_on_floor=False, heading=(0.0, 0.0),
                           body_pitch=(0.0, 0.0), scale=(1.0, 1.0), bone_jitter=0.0)
        keys = PoseSampler(self.model, walk_cfg)
        key_d = np.stack([keys.sample(rng).joint_rotvecs for _ in range(n_keys)])    # [K, J, 3]
        d_t = CubicSpline(key_t, key_d, axis=0, bc_type="clamped")(t)                 # [T, J, 3]
        scale = p.units_per_model_unit * _u(rng, self.cfg.scale)
        bones = 1.0 + rng.uniform(-self.cfg.bone_jitter, self.cfg.bone_jitter, self.model.n_bone_groups)
        phase0 = rng.uniform(0, 2 * np.pi)
        # Stride phase integrates the step frequency, which follows speed.
        phase = phase0 + 2 * np.pi * np.cumsum(p.stride_hz * speed / p.speed) / p.fps
        amp = p.swing_deg * np.clip(speed / p.speed, 0, 1.5)
        # Spine bends into the turn; smoothed over ~0.1 s because the wall steering changes the
        # turning rate abruptly.
        bend_t = np.clip(p.bend_per_turn * gaussian_filter1d(turn_rate, sigma=0.1 * p.fps, mode="nearest"), -30, 30)
        offsets = {"fore_l": 0.0, "hind_r": 0.0, "fore_r": np.pi, "hind_l": np.pi}  # trot: diagonal pairs
        poses = []
        for k in tqdm(range(n_frames), desc="walk poses", disable=not progress):
            limbs = {name: (amp[k] * math.sin(phase[k] + off), max(0.0, 15.0 * math.sin(phase[k] + off + np.pi / 2)),
                            0.0) for name, off in offsets.items()}
            gait = self.articulate(spine_bend=float(bend_t[k]), limbs=limbs) - self.base
            pose = Pose(d_t[k] + gait, self._global_rotvec(math.degrees(heading[k]) + 90.0, 0.0), np.zeros(3),
                        scale, bones)
            poses.append(self._place(pose, 0.0, xy[k]))
        return poses


@dataclass
class WalkPath:
    """A smooth random walk inside a circular arena (world units, e.g. mm; z up, floor z = 0).

    Heading is the world direction of travel (radians from +x, counter-clockwise seen from +z);
    the turning rate is an Ornstein-Uhlenbeck process, steered back towards the centre when the
    mouse comes within wall_margin of the wall; speed varies slowly between 0.3x and 1.5x.
    """

    center: tuple[float, float] = (0.0, 0.0)
    radius: float = 250.0
    wall_margin: float = 80.0
    speed: float = 120.0                 # mean speed, units per second
    turn_sigma: float = 1.5              # rad/s, std of the turning rate
    turn_tau: float = 0.7                # s, correlation time of the turning rate
    fps: float = 30.0
    key_seconds: float = 0.5             # spacing of the key poses
    stride_hz: float = 4.0               # steps per second at mean speed
    swing_deg: float = 25.0              # limb swing amplitude at mean speed
    bend_per_turn: float = 12.0          # degrees of spine bend per rad/s of turning
    units_per_model_unit: float = 108.0  # body scale (MAMMAL fits of the posed examples: 105..109 mm)

    def validate(self) -> None:
        if self.radius <= self.wall_margin or self.speed <= 0 or self.fps <= 0 or self.key_seconds <= 0:
            raise InputError("walk path: need radius > wall_margin and positive speed, fps, key_seconds. "
                             "Fix: correct the demo settings.")

    def trajectory(self, rng: np.random.Generator, n: int):
        """Positions [n, 2], heading [n] (rad), speed [n], turning rate [n] (rad/s)."""
        dt = 1.0 / self.fps
        c = np.asarray(self.center, np.float64)
        a = math.exp(-dt / self.turn_tau)
        ang = rng.uniform(0, 2 * np.pi)
        pos = c + rng.uniform(0, 0.5) * (self.radius - self.wall_margin) * np.array([math.cos(ang), math.sin(ang)])
        heading, omega = rng.uniform(-np.pi, np.pi), 0.0
        # Slow speed modulation: a sum of a few random sinusoids.
        t = np.arange(n) * dt
        f = rng.uniform(0.05, 0.3, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        speed = self.speed * np.clip(1.0 + 0.3 * np.sin(2 * np.pi * f[:, None] * t + ph[:, None]).sum(0), 0.3, 1.5)
        P, H, W = np.zeros((n, 2)), np.zeros(n), np.zeros(n)
        for k in range(n):
            omega = a * omega + math.sqrt(1 - a * a) * self.turn_sigma * rng.normal()
            r = pos - c
            dist = np.linalg.norm(r)
            if dist > self.radius - self.wall_margin:
                # Steer towards the centre, harder the closer to the wall.
                to_c = math.atan2(-r[1], -r[0])
                err = (to_c - heading + np.pi) % (2 * np.pi) - np.pi
                gain = (dist - (self.radius - self.wall_margin)) / self.wall_margin
                omega = (1 - min(gain, 1)) * omega + min(gain, 1) * 4.0 * err
            heading += omega * dt
            pos = pos + speed[k] * dt * np.array([math.cos(heading), math.sin(heading)])
            P[k], H[k], W[k] = pos, heading, omega
        return P, H, speed, W


# ----------------------------------------------------------------------------- coverage

def read_obj_vertices(path: str | Path) -> np.ndarray:
    """Vertices [N, 3] of an OBJ file (``v`` lines only; faces/UVs ignored, no re-indexing)."""
    path = Path(path)
    try:
        rows = [ln.split()[1:4] for ln in path.read_text().splitlines() if ln.startswith("v ")]
        return np.asarray(rows, dtype=np.float64)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read OBJ vertices ({e}). Fix: provide a valid OBJ file.") from None


def load_posed_examples(directory: str | Path, n_vertices: int) -> list[np.ndarray]:
    """The posed MAMMAL examples ``mouse_frame*.obj`` in ``directory`` (each [n_vertices, 3])."""
    files = sorted(Path(directory).glob("mouse_frame*.obj"))
    if not files:
        raise InputError(f"{directory}: no mouse_frame*.obj posed examples. Fix: point to posed_examples/.")
    out = []
    for f in files:
        v = read_obj_vertices(f)
        if v.shape != (n_vertices, 3):
            raise InputError(f"{f}: {v.shape[0]} vertices, expected {n_vertices} (same topology as the model). "
                             "Fix: use the MAMMAL posed examples.")
        out.append(v)
    return out


def similarity_align(X: np.ndarray, Y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama / Procrustes with scale: (s, R, t) minimizing sum |s R X_i + t - Y_i|^2, X, Y [N, 3]."""
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    U, S, Vt = np.linalg.svd(Yc.T @ Xc)
    D = np.ones(3)
    D[2] = np.sign(np.linalg.det(U @ Vt))
    R = (U * D) @ Vt
    s = float((S * D).sum() / (Xc ** 2).sum())
    return s, R, my - s * R @ mx


def shape_distance(X: np.ndarray, Y: np.ndarray, body_length: float) -> float:
    """Mean vertex distance between X (model units) and Y (any unit/frame) after similarity
    alignment of X onto Y, as a fraction of the body length (body_length in X's units)."""
    s, R, t = similarity_align(X, Y)
    return float(np.linalg.norm(s * X @ R.T + t - Y, axis=1).mean() / (s * body_length))


def pose_coverage(model: BodyModel, sampler: PoseSampler, examples: list[np.ndarray], n_samples: int,
                  rng: np.random.Generator, progress: bool = False) -> dict[str, np.ndarray]:
    """For each example: distance (fraction of body length, see ``shape_distance``) of the rest
    mesh, and of the nearest of ``n_samples`` sampled poses (global pose removed, bone scales
    kept). Returns {"rest": [E], "nearest": [E], "median": [E] (median over samples)}."""
    L = model.body_length()
    rest = np.array([shape_distance(model.vertices, Y, L) for Y in examples])
    dist = np.zeros((n_samples, len(examples)))
    for i in tqdm(range(n_samples), desc="coverage", disable=not progress):
        p = sampler.sample(rng)
        v, _ = pose_mesh(model, Pose(p.joint_rotvecs, np.zeros(3), np.zeros(3), 1.0, p.bone_scales))
        dist[i] = [shape_distance(v, Y, L) for Y in examples]
    return {"rest": rest, "nearest": dist.min(0), "median": np.median(dist, 0)}
