"""Visual hull of the mouse from its masks, and the hull's surface centroid (the 3D centre estimate).

Why: a mask centroid is not the projection of the mouse's 3D centre (perspective, and the body is
not symmetric about the viewing ray), so triangulating 2D centroids lands 2-5 mm away from the
centre of the body surface (demo recording, docs/preprocessing_bars.md). Carving the space that
projects inside every camera's mask recovers the 3D shape to within its concavities, and the
centroid of that shape's surface is an estimate of the body surface centroid
(``body_model.center_of_mass``, the project's definition of the mouse's centre) that uses every
mask pixel, not one point per view.

How: a coarse voxel grid (``coarse`` cells per axis) around the triangulated centre, sized from the
masks' bounding boxes, carved camera by camera (a voxel survives while it has missed at most
``max_misses`` masks); then a fine grid (``fine`` cells along the hull's longest side, isotropic
voxels) over the coarse hull's bounding box, carved again. The centre is the mean of the fine
hull's boundary voxels (occupied voxels with an empty 6-neighbour). A voxel is tested at its
centre: projected with the full camera model (distortion included) to continuous corner-origin
pixels ``(u, v)`` and looked up at mask pixel ``(floor(v), floor(u))``; outside the image counts
as a miss. Cameras: ``R``, ``t`` world-to-camera (OpenCV), world units of the calibration.

The second half of the module fits the MAMMAL body model to the same masks
(:class:`BodyFitter`, :func:`fit_body_track`; ``locate.center: body_model``): the fitted mesh's
surface centroid is 5-8x closer to the true centre than the hull's on the demo recording, because
the hull can neither show the surfaces no camera sees nor weigh thin parts (tail, legs) right. See
the comment that opens that section.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from workflow_scripts.cameras import Camera, distort_normalized


@dataclasses.dataclass(frozen=True)
class Hull:
    """A carved voxel grid.

    occupied: bool [nx, ny, nz], index (i, j, k) <-> world point ``origin + (i, j, k) * voxel``.
    origin: [3] world position of voxel (0, 0, 0)'s centre. voxel: edge length (world units).
    """

    occupied: np.ndarray
    origin: np.ndarray
    voxel: float

    def points(self, which: np.ndarray | None = None) -> np.ndarray:
        """World positions [N, 3] of the voxels selected by bool array ``which`` (default: occupied)."""
        idx = np.argwhere(self.occupied if which is None else which)
        return self.origin + idx * self.voxel

    def boundary(self) -> np.ndarray:
        """bool [nx, ny, nz]: occupied voxels with at least one empty (or out-of-grid) 6-neighbour."""
        p = np.pad(self.occupied, 1)
        interior = (p[2:, 1:-1, 1:-1] & p[:-2, 1:-1, 1:-1] & p[1:-1, 2:, 1:-1] & p[1:-1, :-2, 1:-1]
                    & p[1:-1, 1:-1, 2:] & p[1:-1, 1:-1, :-2])
        return self.occupied & ~interior

    def touches_grid_border(self) -> bool:
        o = self.occupied
        return bool(o[0].any() or o[-1].any() or o[:, 0].any() or o[:, -1].any() or o[:, :, 0].any() or o[:, :, -1].any())

    def surface_centroid(self) -> np.ndarray:
        """[3] mean of the boundary voxels' centres (NaN for an empty hull)."""
        b = self.boundary()
        return self.points(b).mean(axis=0) if b.any() else np.full(3, np.nan)


def project_in_front(camera: Camera, X: np.ndarray) -> np.ndarray:
    """:meth:`Camera.project` of world points X [N, 3] (continuous corner-origin pixels [N, 2],
    distortion and skew included), NaN for points behind the camera."""
    uv = camera.project(X)
    uv[camera.to_camera(X)[:, 2] <= 1e-9] = np.nan
    return uv


def _inside(mask: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """bool [N]: pixel (floor(v), floor(u)) of ``mask`` [H, W] is set; False outside / NaN."""
    H, W = mask.shape
    ok = np.all(np.isfinite(uv), axis=-1)
    u = np.floor(np.where(ok, uv[:, 0], -1)).astype(np.int64)
    v = np.floor(np.where(ok, uv[:, 1], -1)).astype(np.int64)
    ok &= (u >= 0) & (v >= 0) & (u < W) & (v < H)
    out = np.zeros(len(uv), dtype=bool)
    out[ok] = mask[v[ok], u[ok]] > 0
    return out


def carve(cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], origin: np.ndarray, voxel: float,
          shape: tuple[int, int, int], max_misses: int = 0) -> Hull:
    """Carve the grid ``origin + (i, j, k) * voxel`` (``shape`` cells) with every camera whose mask
    is given (None = that camera does not vote). Cameras are applied in turn to the surviving
    voxels only, so each costs less than the one before."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    pts = origin + grid * voxel
    misses = np.zeros(len(pts), dtype=np.int32)
    alive = np.arange(len(pts))
    for cam, m in zip(cameras, masks):
        if m is None:
            continue
        hit = _inside(m, project_in_front(cam, pts[alive]))
        misses[alive[~hit]] += 1
        alive = alive[misses[alive] <= max_misses]
        if len(alive) == 0:
            break
    occ = np.zeros(len(pts), dtype=bool)
    occ[alive] = True
    return Hull(occupied=occ.reshape(shape), origin=np.asarray(origin, dtype=np.float64), voxel=float(voxel))


def initial_half_size(cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], center: np.ndarray, margin: float = 0.65) -> float:
    """Half the edge of a cube around ``center`` that holds the mouse: ``margin`` x the largest
    mask bounding-box side, back-projected to the centre's depth (pixels x z / f), over cameras."""
    sizes = []
    for cam, m in zip(cameras, masks):
        if m is None:
            continue
        _, _, w, h = cv2.boundingRect(np.asarray(m, dtype=np.uint8))  # box of the nonzero pixels
        z = float((cam.R @ center + cam.t)[2])
        f = 0.5 * (cam.K[0, 0] + cam.K[1, 1])
        if w > 0 and z > 0:
            sizes.append(max(w, h) * z / f)
    return margin * max(sizes) if sizes else float("nan")


def hull_center(cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], center: np.ndarray,
                coarse: int = 32, fine: int = 64, max_misses: int = 0, max_grow: int = 2) -> tuple[np.ndarray, Hull]:
    """The hull's surface centroid [3] (NaN if the hull is empty) and the fine hull.

    Args:
        cameras: C cameras (R, t world-to-camera).
        masks: C masks [H, W] (nonzero = mouse) or None for cameras without a valid mask this frame.
        center: [3] starting point (e.g. the triangulated mask centroids), world units.
        coarse / fine: cells per axis of the coarse cube / along the longest side of the fine box.
        max_misses: masks a voxel may fall outside of and still count (0 = strict intersection).
        max_grow: times the coarse cube may grow (x1.5) when the hull touches its border.
    """
    center = np.asarray(center, dtype=np.float64)
    half = initial_half_size(cameras, masks, center)
    if not np.isfinite(half) or half <= 0:
        return np.full(3, np.nan), Hull(np.zeros((1, 1, 1), bool), center, 1.0)
    for _ in range(max_grow + 1):
        voxel = 2 * half / coarse
        hull = carve(cameras, masks, center - half + voxel / 2, voxel, (coarse,) * 3, max_misses)
        if not hull.touches_grid_border():
            break
        half *= 1.5
    if not hull.occupied.any():
        return np.full(3, np.nan), hull
    idx = np.argwhere(hull.occupied)
    lo = hull.origin + (idx.min(0) - 1) * hull.voxel - hull.voxel / 2  # one coarse cell of margin
    hi = hull.origin + (idx.max(0) + 1) * hull.voxel + hull.voxel / 2
    fine_voxel = float((hi - lo).max()) / fine
    shape = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / fine_voxel), 1))
    fine_hull = carve(cameras, masks, lo + fine_voxel / 2, fine_voxel, shape, max_misses)
    return fine_hull.surface_centroid(), fine_hull


# ============================================================================================
# The body model fitted to the masks (locate.center = "body_model")
# ============================================================================================
# Why: the project's centre of a mouse is the area-weighted surface centroid of the posed MAMMAL
# mesh (body_model.center_of_mass). Part of that surface can never show in a silhouette (the
# inside of the mouth, ears and eyes, the inner sides of the legs, the belly between them: about
# a fifth of the mesh's area on the demo), and thin parts (tail, legs: ~8 % of the area in the
# tail alone, whose centroid lies ~60 mm behind the body's) are under-represented in any voxel
# hull. The hull's surface centroid is therefore off by a few millimetres in each of several
# directions that partly cancel (1.2-1.8 mm on the demo, and it gets worse, not better, with a
# finer hull). Fitting the body model itself to the masks and taking the fitted mesh's centroid
# puts the hidden surfaces where the model says they are.
#
# How: the pose family is PoseSampler.articulate's (the one the synthetic training data is drawn
# from): global similarity (translation, rotation, log scale) plus 18 articulations in degrees
# (spine bend/pitch/twist, head yaw/pitch/roll, tail curl/lift and a linear tail wiggle, swing and
# flex of each limb), limb abduction and bone lengths at their base values. The cost, in pixels,
# per view: the mean over sampled mesh vertices of a soft-L1 penalty on how far each lies
# outside the mask (signed distance transform of the mask, bilinear), plus the mean over mask
# contour points of a soft-L1 penalty on their distance (along the contour normal) to the nearest
# projected rim vertex of the mesh (a vertex whose normal is nearly perpendicular to the viewing
# ray), so the mesh must stay inside every mask and reach every mask's outline. Articulations
# have a flat prior inside the pose sampler's ranges and quadratic walls outside. Minimized by
# Levenberg-Marquardt (iteratively reweighted, correspondences re-found at every evaluation,
# pose Jacobian by finite differences of a vectorized linear-blend skinning over the joints the
# articulations move, projection Jacobian of the pinhole part). A frame starts from the previous
# frame's fit; a cold start aligns the mean pose to the masks' visual hull (both head-tail
# directions, global parameters first, then trunk/head/tail, then everything).

ARTICULATIONS = ("spine_bend", "spine_pitch", "head_yaw", "head_pitch", "tail_curl", "tail_lift",
                 "fore_l_swing", "fore_l_flex", "fore_r_swing", "fore_r_flex", "hind_l_swing", "hind_l_flex",
                 "hind_r_swing", "hind_r_flex", "tail_yaw_ramp", "tail_pitch_ramp", "spine_twist", "head_roll")
N_GLOBAL = 7      # translation (3), rotation vector about the start orientation (3), log scale
N_TRUNK = 6       # the first articulations: spine, head, tail (fitted before the limbs on a cold start)


def _articulate_kwargs(name: str, value: float, n_tail: int) -> dict:
    """PoseSampler.articulate keyword arguments that set articulation ``name`` to ``value`` degrees."""
    if name.endswith(("_swing", "_flex")):
        limb, kind = name.rsplit("_", 1)
        return {"limbs": {limb: (value, 0.0, 0.0) if kind == "swing" else (0.0, value, 0.0)}}
    if name.endswith("_ramp"):
        w = np.zeros((n_tail, 2))
        w[:, 0 if "yaw" in name else 1] = value * np.linspace(-1.0, 1.0, n_tail)
        return {"tail_wiggle": w}
    return {name: value}


def _articulation_prior(cfg) -> tuple[np.ndarray, np.ndarray]:
    """(centre, half width) in degrees of every articulation's range in PoseSamplerConfig ``cfg``."""
    ranges = {"spine_bend": cfg.spine_bend, "spine_pitch": cfg.spine_pitch, "head_yaw": cfg.head_yaw,
              "head_pitch": cfg.head_pitch, "tail_curl": cfg.tail_curl, "tail_lift": cfg.tail_lift,
              "spine_twist": cfg.spine_twist, "head_roll": cfg.head_roll,
              "tail_yaw_ramp": (-cfg.tail_wiggle, cfg.tail_wiggle), "tail_pitch_ramp": (-cfg.tail_wiggle, cfg.tail_wiggle)}
    lo_hi = np.array([ranges.get(n) or (cfg.limb_swing if n.endswith("swing") else cfg.limb_flex) for n in ARTICULATIONS],
                     dtype=np.float64)
    return lo_hi.mean(axis=1), np.maximum(0.5 * (lo_hi[:, 1] - lo_hi[:, 0]), 1.0)


class ArticulatedMesh:
    """The MAMMAL mesh posed by :data:`ARTICULATIONS`, vectorized over many parameter vectors.

    Only the "key" joints (the root and those an articulation rotates) are chained explicitly;
    every other joint moves rigidly with its nearest key ancestor (its local rotation is the
    fixed base pose), so linear blend skinning collapses to a sparse [V, 4K] matrix times the K
    key transforms. Same result as ``body_model.pose_mesh`` of :meth:`pose` (to rounding).

    Parameters q [7 + 18]: translation (world units), rotation vector applied after the start
    orientation ``R0`` (x_world = s R0 exp(w) v + t), log scale, articulations (degrees).
    """

    def __init__(self, model):
        import scipy.sparse as sp  # noqa: PLC0415

        from workflow_scripts.body_model import (  # noqa: PLC0415  (torch import: only when fitting)
            Pose, _depths, center_of_mass, forward_kinematics, topological_order,
        )
        from workflow_scripts.poses import TAIL, PoseSampler  # noqa: PLC0415

        self.model = model
        sampler = PoseSampler(model)
        self.base = sampler.articulate()                                    # [J, 3] radians
        G = np.zeros((model.n_joints, 3, len(ARTICULATIONS)))
        for p, name in enumerate(ARTICULATIONS):                            # articulate is linear
            G[:, :, p] = sampler.articulate(**_articulate_kwargs(name, 1.0, len(TAIL))) - self.base
        self.G = G
        self.prior_mean, self.prior_half = _articulation_prior(sampler.cfg)
        parents = model.parents
        depth = _depths(parents)
        moving = set(np.flatnonzero(np.abs(G).sum(axis=(1, 2)) > 0).tolist()) | set(np.flatnonzero(parents < 0).tolist())
        keys = np.array(sorted(moving, key=lambda j: (depth[j], j)))
        K = len(keys)
        kpos = np.full(model.n_joints, -1)
        kpos[keys] = np.arange(K)
        owner = np.empty(model.n_joints, dtype=np.int64)                    # nearest key ancestor-or-self
        for j in topological_order(parents):
            owner[j] = j if kpos[j] >= 0 else owner[parents[j]]
        A0, J0 = forward_kinematics(model, Pose(self.base, np.zeros(3), np.zeros(3), 1.0, np.ones(model.n_bone_groups)))
        C = np.einsum("jba,jbc->jac", A0[owner], A0)                        # joint rotation in its key's frame
        D = np.einsum("jba,jb->ja", A0[owner], J0 - J0[owner])              # joint offset in its key's frame
        Jr = model.joints_rest
        self._chain = [None if parents[k] < 0 else (int(kpos[owner[parents[k]]]), C[parents[k]], D[parents[k]],
                                                     Jr[k] - Jr[parents[k]]) for k in keys]
        self._root_joint = Jr[keys[0]]
        self.K, self.keys = K, keys
        self._G_keys, self._base_keys = G[keys], self.base[keys]
        W = model.weights.tocoo()
        r, c, w = W.row, W.col, W.data
        x = model.vertices
        L = np.zeros((model.n_vertices, K, 3))
        Om = np.zeros((model.n_vertices, K))
        np.add.at(L, (r, kpos[owner[c]]), w[:, None] * (np.einsum("nab,nb->na", C[c], x[r] - Jr[c]) + D[c]))
        np.add.at(Om, (r, kpos[owner[c]]), w)
        self.blend = sp.csr_matrix(np.concatenate([L.reshape(-1, 3 * K), Om], axis=1))       # [V, 4K]
        f = model.faces
        fn = np.cross(x[f[:, 1]] - x[f[:, 0]], x[f[:, 2]] - x[f[:, 0]])
        vn = np.zeros_like(x)
        for i in range(3):
            np.add.at(vn, f[:, i], fn)
        vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
        Nk = np.zeros((model.n_vertices, K, 3))
        np.add.at(Nk, (r, kpos[owner[c]]), w[:, None] * np.einsum("nab,nb->na", C[c], vn[r]))
        self.blend_normals = sp.csr_matrix(Nk.reshape(-1, 3 * K))                           # [V, 3K]
        self.faces = model.faces
        self._center_of_mass = center_of_mass
        self._Pose = Pose
        v0 = self.model_vertices(self.prior_mean[None])[0]
        self.mean_center = center_of_mass(v0, f)           # model frame, mean pose
        self.mean_length = float(np.ptp(v0[:, 1]))         # along the body axis (model y), tail included

    def key_transforms(self, art: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Articulations [B, 18] (degrees) -> key rotations A [B, K, 3, 3] and positions [B, K, 3] (model frame)."""
        from scipy.spatial.transform import Rotation  # noqa: PLC0415

        B = art.shape[0]
        d = self._base_keys[None] + (art @ self._G_keys.reshape(3 * self.K, -1).T).reshape(B, self.K, 3)
        R = Rotation.from_rotvec(d.reshape(-1, 3)).as_matrix().reshape(B, self.K, 3, 3)
        A = np.empty((B, self.K, 3, 3))
        J = np.empty((B, self.K, 3))
        for i, link in enumerate(self._chain):
            if link is None:
                A[:, i], J[:, i] = R[:, i], self._root_joint
                continue
            up, Cp, Dp, stick = link
            Ap = A[:, up] @ Cp
            A[:, i] = Ap @ R[:, i]
            J[:, i] = J[:, up] + A[:, up] @ Dp + Ap @ stick
        return A, J

    def model_vertices(self, art: np.ndarray, rows=None) -> np.ndarray:
        """[B, n, 3] model-frame vertices (``rows``: a row subset of :attr:`blend`, default all)."""
        A, J = self.key_transforms(art)
        B = art.shape[0]
        M = np.concatenate([A.transpose(0, 1, 3, 2).reshape(B, 3 * self.K, 3), J], axis=1)      # [B, 4K, 3]
        out = (self.blend if rows is None else rows) @ M.transpose(1, 0, 2).reshape(4 * self.K, 3 * B)
        return out.reshape(-1, B, 3).transpose(1, 0, 2)

    @staticmethod
    def global_rotation(R0: np.ndarray, w: np.ndarray) -> np.ndarray:
        from scipy.spatial.transform import Rotation  # noqa: PLC0415

        return R0 @ Rotation.from_rotvec(np.atleast_2d(w)).as_matrix()

    def world(self, q: np.ndarray, R0: np.ndarray, rows=None) -> np.ndarray:
        """Parameters q [B, 25] -> world vertices [B, n, 3]."""
        q = np.atleast_2d(q)
        v = self.model_vertices(q[:, N_GLOBAL:], rows)
        Rg = self.global_rotation(R0, q[:, 3:6])
        return np.exp(q[:, 6])[:, None, None] * np.matmul(v, Rg.transpose(0, 2, 1)) + q[:, None, :3]

    def normals(self, q: np.ndarray, R0: np.ndarray, rows) -> np.ndarray:
        """Unit world normals [n, 3] (one q) of the vertices whose rows of :attr:`blend_normals` are ``rows``."""
        A, _ = self.key_transforms(q[None, N_GLOBAL:])
        n = (rows @ A[0].transpose(0, 2, 1).reshape(3 * self.K, 3)) @ self.global_rotation(R0, q[3:6])[0].T
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)

    def pose(self, q: np.ndarray, R0: np.ndarray):
        """The ``body_model.Pose`` of parameters q."""
        from scipy.spatial.transform import Rotation  # noqa: PLC0415

        return self._Pose(self.base + self.G @ q[N_GLOBAL:], Rotation.from_matrix(self.global_rotation(R0, q[3:6])[0]).as_rotvec(),
                          np.array(q[:3], dtype=np.float64), float(np.exp(q[6])), np.ones(self.model.n_bone_groups))

    def center(self, q: np.ndarray, R0: np.ndarray) -> np.ndarray:
        """[3] area-weighted surface centroid of the whole posed mesh (body_model.center_of_mass)."""
        return self._center_of_mass(self.world(q, R0)[0], self.faces)


class MaskViews:
    """The cameras' masks prepared for the fit, stacked so that every view is handled at once.

    Per view: the signed distance to the mask edge (pixels, positive inside; pixel centres at
    +-0.5 from the edge) over the mask's bounding box plus a margin (outside the box: the box
    edge's value minus the distance to the box), and up to ``max_contour`` outline points moved
    half a pixel outwards (from the centres of the edge pixels onto the edge) with their outward
    normals. Beyond the image the mask continues as its border pixels do (a mouse cut by the
    image border is not cut there), and outline points on the image border are left out. Views
    without any mask pixel are left out (``len`` counts the rest).
    """

    def __init__(self, cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], max_contour: int = 200):
        sdfs, boxes, contours, used = [], [], [], []
        for cam, mask in zip(cameras, masks):
            if mask is None:
                continue
            m = (np.asarray(mask) > 0).astype(np.uint8)
            x, y, w, h = cv2.boundingRect(m)
            if w == 0:
                continue
            H, W = m.shape
            cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            pts = np.concatenate([c.reshape(-1, 2) for c in cs])
            pts = pts[(pts[:, 0] > 0) & (pts[:, 1] > 0) & (pts[:, 0] < W - 1) & (pts[:, 1] < H - 1)].astype(np.float64) + 0.5
            if len(pts) == 0:
                continue
            contours.append(pts[::max(1, -(-len(pts) // max_contour))])
            pad = int(0.25 * max(w, h)) + 8
            x0, y0 = x - pad, y - pad
            rows = np.clip(np.arange(y0, y + h + pad), 0, H - 1)
            cols = np.clip(np.arange(x0, x + w + pad), 0, W - 1)
            sub = m[rows[:, None], cols[None, :]]                            # the box, border pixels replicated beyond the image
            din = cv2.distanceTransform(sub, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            dout = cv2.distanceTransform(1 - sub, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            sdfs.append(np.where(sub > 0, din - 0.5, 0.5 - dout))
            boxes.append((x0, y0, sub.shape[1], sub.shape[0]))
            used.append(cam)
        self.cameras = used
        C = len(used)
        if C == 0:
            return
        self.R = np.stack([c.R for c in used])
        self.t = np.stack([c.t for c in used])
        self.K = np.stack([c.K for c in used])
        self.dist = np.stack([c.dist for c in used])
        self.eye = np.stack([c.center for c in used])
        Hm, Wm = max(b[3] for b in boxes), max(b[2] for b in boxes)
        stack = np.zeros((C, Hm, Wm))
        for i, (sdf, (_, _, w, h)) in enumerate(zip(sdfs, boxes)):
            stack[i, :h, :w] = sdf
        self._sdf = stack.ravel()
        self._shape = (Hm, Wm)
        box = np.array(boxes, dtype=np.float64)
        self._x0, self._y0, self._w, self._h = box[:, 0, None], box[:, 1, None], box[:, 2, None], box[:, 3, None]
        self.contour_view = np.concatenate([np.full(len(p), i) for i, p in enumerate(contours)])
        pts = np.concatenate(contours)
        _, g = self.sample_at(self.contour_view, pts, gradient=True)
        n = np.linalg.norm(g, axis=1, keepdims=True)
        inward = np.where(n > 1e-9, g / np.maximum(n, 1e-9), 0.0)
        self.contour = pts - 0.5 * inward
        self.normal = -inward
        self.contour_count = np.bincount(self.contour_view, minlength=C).astype(np.float64)

    def __len__(self) -> int:
        return len(self.cameras)

    def project(self, X: np.ndarray) -> np.ndarray:
        """Pixels [C, n, 2] of world points X [n, 3] in every view (as ``Camera.project``; NaN behind a camera)."""
        xc = np.matmul(X[None], self.R.transpose(0, 2, 1)) + self.t[:, None]
        z = xc[..., 2]
        xdyd = distort_normalized(np.stack([xc[..., 0] / z, xc[..., 1] / z], axis=-1), self.dist)  # one lens per view
        xd, yd = xdyd[..., 0], xdyd[..., 1]
        K = self.K
        uv = np.stack([K[:, 0, 0, None] * xd + K[:, 0, 1, None] * yd + K[:, 0, 2, None],
                       K[:, 1, 1, None] * yd + K[:, 1, 2, None]], axis=-1)
        uv[z <= 1e-9] = np.nan
        return uv

    def sample_at(self, view: np.ndarray, uv: np.ndarray, gradient: bool = False):
        """Signed distance [n] (and its gradient [n, 2], the bilinear interpolant's) of view
        ``view[k]`` at pixel ``uv[k]`` [n, 2]."""
        Hm, Wm = self._shape
        ok = np.all(np.isfinite(uv), axis=1)
        u = np.where(ok, uv[:, 0], -1e6) - 0.5 - self._x0[view, 0]
        v = np.where(ok, uv[:, 1], -1e6) - 0.5 - self._y0[view, 0]
        uc = np.clip(u, 0.0, self._w[view, 0] - 1.000001)
        vc = np.clip(v, 0.0, self._h[view, 0] - 1.000001)
        i, j = uc.astype(np.int64), vc.astype(np.int64)
        fu, fv = uc - i, vc - j
        base = (view * Hm + j) * Wm + i
        s00, s01 = self._sdf[base], self._sdf[base + 1]
        s10, s11 = self._sdf[base + Wm], self._sdf[base + Wm + 1]
        top, bottom = s00 + fu * (s01 - s00), s10 + fu * (s11 - s10)
        s = top + fv * (bottom - top) - np.hypot(u - uc, v - vc)
        if not gradient:
            return s
        return s, np.stack([(s01 - s00) * (1 - fv) + (s11 - s10) * fv, bottom - top], axis=1)

    def pinhole_jacobian(self, view: np.ndarray, X: np.ndarray) -> np.ndarray:
        """d(pixel)/d(world point) [n, 2, 3] of view ``view[k]`` at X[k], lens distortion left
        out (it only rescales a Gauss-Newton step slightly)."""
        R, K = self.R[view], self.K[view]
        xc = np.matmul(R, X[:, :, None])[:, :, 0] + self.t[view]
        z = xc[:, 2]
        J = np.zeros((len(X), 2, 3))
        J[:, 0, 0] = K[:, 0, 0] / z
        J[:, 0, 1] = K[:, 0, 1] / z
        J[:, 0, 2] = -(K[:, 0, 0] * xc[:, 0] + K[:, 0, 1] * xc[:, 1]) / z ** 2
        J[:, 1, 1] = K[:, 1, 1] / z
        J[:, 1, 2] = -K[:, 1, 1] * xc[:, 1] / z ** 2
        return J @ R


@dataclasses.dataclass(frozen=True)
class BodyFit:
    """One frame's fit: ``center`` [3] (surface centroid of the fitted mesh), parameters ``q``
    [25] about orientation ``R0`` [3, 3] (see :class:`ArticulatedMesh`), the final ``cost``
    (pixels-based, comparable between frames of one session) and Levenberg-Marquardt iterations."""

    center: np.ndarray
    q: np.ndarray
    R0: np.ndarray
    cost: float
    iterations: int


class BodyFitter:
    """Fits :class:`ArticulatedMesh` to one frame's masks (see the section comment above).

    vertex_step: every n-th mesh vertex is sampled (MAMMAL has 14522).
    max_contour: outline points per view.
    robust_px: soft-L1 scale (pixels): mask edges are right to about a pixel.
    rim_cos: a vertex is on the rim of a view when |cos(normal, viewing ray)| is below this.
    prior_weight / wall_weight: cost per (half range)^2 of an articulation's distance from its
        range's centre / of how far it lies outside its range.
    """

    def __init__(self, mesh: ArticulatedMesh, vertex_step: int = 3, max_contour: int = 200, robust_px: float = 1.0,
                 rim_cos: float = 0.3, prior_weight: float = 1e-4, wall_weight: float = 1.0, max_iterations: int = 40,
                 max_rejections: int = 2, rtol: float = 1e-4):
        self.mesh = mesh
        self.rows = mesh.blend[::vertex_step]
        self.normal_rows = mesh.blend_normals[::vertex_step]
        self.max_contour, self.robust, self.rim_cos = int(max_contour), float(robust_px), float(rim_cos)
        self.prior_weight, self.wall_weight, self.max_iterations = float(prior_weight), float(wall_weight), int(max_iterations)
        self.max_rejections, self.rtol = int(max_rejections), float(rtol)

    # ---------------------------------------------------------------- cost and its linearization
    def _prior(self, q: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Prior cost, its gradient and diagonal Gauss-Newton Hessian over the articulations."""
        sd = self.mesh.prior_half
        z = (q[N_GLOBAL:] - self.mesh.prior_mean) / sd
        out = np.maximum(np.abs(z) - 1.0, 0.0)
        cost = float(np.sum(self.prior_weight * z ** 2 + self.wall_weight * out ** 2))
        grad = (self.prior_weight * z + self.wall_weight * np.sign(z) * out) / sd
        hess = (self.prior_weight + self.wall_weight * (out > 0)) / sd ** 2
        return cost, grad, hess

    def _evaluate(self, q: np.ndarray, R0: np.ndarray, views: MaskViews, c: float):
        """Cost at q and what the normal equations need: (view, vertex) pairs outside the mask
        with their residuals, weights and pixels; the matched vertex, residual and weight per
        contour point."""
        from scipy.spatial import cKDTree  # noqa: PLC0415

        X = self.mesh.world(q[None], R0, self.rows)[0]
        nrm = self.mesh.normals(q, R0, self.normal_rows)
        C, n = len(views), len(X)
        uv = views.project(X)                                          # [C, n, 2]
        view_of = np.repeat(np.arange(C), n)
        s = views.sample_at(view_of, uv.reshape(-1, 2)).reshape(C, n)
        ray = X[None] - views.eye[:, None]                             # [C, n, 3]
        dot = ray[..., 0] * nrm[:, 0] + ray[..., 1] * nrm[:, 1] + ray[..., 2] * nrm[:, 2]
        rim = dot * dot < self.rim_cos ** 2 * (ray[..., 0] ** 2 + ray[..., 1] ** 2 + ray[..., 2] ** 2)
        cand = np.flatnonzero((np.all(np.isfinite(uv), axis=2) & (rim | (s < 0))).ravel())
        if len(np.unique(cand // n)) < C:
            return np.inf, None
        # one tree over every view: the view index, scaled beyond any pixel distance, keeps matches in their view
        far = 1e7
        pts = np.column_stack([uv.reshape(-1, 2)[cand], (cand // n) * far])
        nn = cand[cKDTree(pts).query(np.column_stack([views.contour, views.contour_view * far]))[1]]
        diff = uv.reshape(-1, 2)[nn] - views.contour
        r_c = diff[:, 0] * views.normal[:, 0] + diff[:, 1] * views.normal[:, 1]
        out = np.flatnonzero(s.ravel() < 0)
        r_in = -s.ravel()[out]
        c2 = c * c
        root_in, root_c = np.sqrt(1 + r_in ** 2 / c2), np.sqrt(1 + r_c ** 2 / c2)
        cost = 2 * c2 * (np.sum(root_in - 1) / n + np.sum((root_c - 1) / views.contour_count[views.contour_view]))
        terms = (out, r_in, 1 / (root_in * n), uv.reshape(-1, 2)[out], nn, r_c,
                 1 / (root_c * views.contour_count[views.contour_view]))
        return cost + self._prior(q)[0], terms

    def _normal_equations(self, q: np.ndarray, R0: np.ndarray, views: MaskViews, terms, n_free: int):
        out, r_in, w_in, uv_out, nn, r_c, w_c = terms
        n = self.rows.shape[0]
        need, inv = np.unique(np.concatenate([out % n, nn % n]), return_inverse=True)
        h = np.full(n_free, 0.01)                                       # articulations: 0.01 degree
        h[:3] = 1e-4 * np.exp(q[6]) * self.mesh.mean_length
        h[3:7] = 1e-4
        Q = np.repeat(q[None], n_free + 1, axis=0)
        Q[1:, :n_free] += np.diag(h)
        Xs = self.mesh.world(Q, R0, self.rows[need])                    # [n_free + 1, m, 3]
        dX = ((Xs[1:] - Xs[0]) / h[:, None, None]).transpose(1, 2, 0)   # [m, 3, n_free]
        k = len(out)
        view = np.concatenate([out // n, views.contour_view])
        P = views.pinhole_jacobian(view, Xs[0, inv])                    # [k + p, 2, 3]
        _, grad = views.sample_at(out // n, uv_out, gradient=True)
        a = np.concatenate([-grad, views.normal])
        d = a[:, 0, None] * P[:, 0] + a[:, 1, None] * P[:, 1]                # [k + p, 3]
        J = np.matmul(d[:, None, :], dX[inv])[:, 0]                          # [k + p, n_free]
        w = np.concatenate([w_in, w_c])
        H = J.T @ (w[:, None] * J)
        g = J.T @ (w * np.concatenate([r_in, r_c]))
        if n_free > N_GLOBAL:
            _, gp, hp = self._prior(q)
            m = n_free - N_GLOBAL
            H[N_GLOBAL:, N_GLOBAL:] += np.diag(hp[:m])
            g[N_GLOBAL:] += gp[:m]
        return H, g

    def solve(self, q: np.ndarray, R0: np.ndarray, views: MaskViews, n_free: int, c: float | None = None,
              max_iterations: int | None = None) -> tuple[np.ndarray, float, int]:
        """Levenberg-Marquardt over the first ``n_free`` parameters from q: (q, cost, iterations)."""
        c = self.robust if c is None else c
        max_iterations = self.max_iterations if max_iterations is None else max_iterations
        q = np.array(q, dtype=np.float64)
        cost, terms = self._evaluate(q, R0, views, c)
        if not np.isfinite(cost):
            return q, cost, 0
        mu, it = 1e-3, 0
        for it in range(1, max_iterations + 1):
            H, g = self._normal_equations(q, R0, views, terms, n_free)
            for _ in range(self.max_rejections + 1):
                try:
                    step = np.linalg.solve(H + mu * np.diag(np.diag(H) + 1e-12), -g)
                except np.linalg.LinAlgError:
                    mu *= 10
                    continue
                q_new = q.copy()
                q_new[:n_free] += step
                cost_new, terms_new = self._evaluate(q_new, R0, views, c)
                if cost_new < cost:
                    break
                mu *= 4
            else:
                return q, cost, it
            gain = (cost - cost_new) / max(cost, 1e-300)
            q, cost, terms, mu = q_new, cost_new, terms_new, max(mu / 3, 1e-7)
            if gain < self.rtol:
                break
        return q, cost, it

    # ---------------------------------------------------------------- one frame
    def cold_starts(self, cameras, masks, center: np.ndarray, up: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Mean pose placed on the masks' visual hull: its surface centroid at the hull's, its
        length along the hull's longest horizontal axis, head either way: [(q, R0)] (empty when
        the hull is)."""
        X_hull, hull = hull_center(cameras, masks, center, fine=32)
        if not np.all(np.isfinite(X_hull)):
            return []
        P = hull.points()
        Q = P - P.mean(axis=0)
        Q -= np.outer(Q @ up, up)
        axis = np.linalg.eigh(Q.T @ Q)[1][:, -1]
        s = max(float(np.ptp(P @ axis)), hull.voxel) / self.mesh.mean_length
        starts = []
        for sign in (1.0, -1.0):
            fwd = sign * axis                                     # model: x left, -y forward, z up
            R0 = np.stack([np.cross(up, fwd), -fwd, up], axis=1)
            q = np.concatenate([X_hull - s * R0 @ self.mesh.mean_center, np.zeros(3), [np.log(s)], self.mesh.prior_mean])
            starts.append((q, R0))
        return starts

    def fit(self, cameras: Sequence[Camera], masks: Sequence[np.ndarray | None], center: np.ndarray, up: np.ndarray,
            warm: tuple[np.ndarray, np.ndarray] | None = None) -> BodyFit | None:
        """Fit one frame: from ``warm`` = (q, R0) when given, else from :meth:`cold_starts`
        (centre: a start point such as the triangulated mask centroids; up: the world's up
        direction, only for the cold start). None when fewer than two views have a mask."""
        views = MaskViews(cameras, masks, self.max_contour)
        if len(views) < 2:
            return None
        n_all = N_GLOBAL + len(ARTICULATIONS)
        total = 0
        if warm is not None:
            q, cost, it = self.solve(warm[0], warm[1], views, n_all)
            return BodyFit(self.mesh.center(q, warm[1]), q, warm[1], cost, it)
        best = None
        for q, R0 in self.cold_starts(cameras, masks, center, up):
            q, cost, it = self.solve(q, R0, views, N_GLOBAL, c=4 * self.robust, max_iterations=15)
            total += it
            if best is None or cost < best[1]:
                best = (q, cost, R0)
        if best is None:
            return None
        q, _, R0 = best
        q, _, it1 = self.solve(q, R0, views, N_GLOBAL + N_TRUNK, c=2 * self.robust)
        q, cost, it2 = self.solve(q, R0, views, n_all)
        return BodyFit(self.mesh.center(q, R0), q, R0, cost, total + it1 + it2)


def fit_body_track(fitter: BodyFitter, cameras: Sequence[Camera], masks_of, centers: np.ndarray, up: np.ndarray,
                   runs: Sequence[Sequence[int]], retry_ratio: float = 2.0, log=None, progress=None) -> dict[int, BodyFit]:
    """Fit the frames of ``runs`` (lists of consecutive frame rows), each from the previous
    frame's fit (translation moved by the change of ``centers`` [T, 3]), the first of a run from
    a cold start. ``masks_of(i)`` gives frame row i's masks (None per camera left out).

    A fit whose cost exceeds ``retry_ratio`` x the median cost so far is redone from a cold start
    (the lower cost wins); after all frames, fits still above ``retry_ratio`` x the session's
    median are redone from each neighbour's fit. Returns {row: fit} for the frames that could be
    fitted (at least two views with a mask)."""
    fits: dict[int, BodyFit] = {}
    costs: list[float] = []

    def shifted(j: int, i: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Frame j's fit as a start for frame i: translated by the change of ``centers``; with
        the fit of the frame ``before`` j, its rotation, scale, spine, head and tail also carry on
        at the speed they had between those two frames (the limbs, which swing back and forth
        within a few frames, do not)."""
        q = fits[j].q.copy()
        q[:3] += centers[i] - centers[j]
        if before is not None and before in fits and np.array_equal(fits[before].R0, fits[j].R0):
            moving = slice(3, N_GLOBAL + N_TRUNK)
            q[moving] += (fits[j].q[moving] - fits[before].q[moving]) * (i - j) / (j - before)
        return q, fits[j].R0

    for run in runs:
        prev = prev2 = None
        for i in run:
            masks = masks_of(i)
            fit = fitter.fit(cameras, masks, centers[i], up, warm=shifted(prev, i, prev2) if prev is not None else None)
            if prev is not None and (fit is None or (len(costs) >= 3 and fit.cost > retry_ratio * np.median(costs))):
                cold = fitter.fit(cameras, masks, centers[i], up)
                if log is not None:
                    log(i, fit, cold)
                if fit is None or (cold is not None and cold.cost < fit.cost):
                    fit = cold
            if progress is not None:
                progress(1)
            if fit is not None and np.isfinite(fit.cost):
                fits[i] = fit
                costs.append(fit.cost)
                prev, prev2 = i, prev
            else:
                prev = prev2 = None
    if not costs:
        return fits
    limit = retry_ratio * float(np.median(costs))
    for run in runs:
        run = list(run)
        for k, i in enumerate(run):
            if i not in fits or fits[i].cost <= limit:
                continue
            masks = None
            for j in (run[k - 1] if k > 0 else None, run[k + 1] if k + 1 < len(run) else None):
                if j is None or j not in fits or fits[j].cost > limit:
                    continue
                masks = masks_of(i) if masks is None else masks
                fit = fitter.fit(cameras, masks, centers[i], up, warm=shifted(j, i))
                if log is not None:
                    log(i, fits[i], fit)
                if fit is not None and fit.cost < fits[i].cost:
                    fits[i] = fit
    return fits
