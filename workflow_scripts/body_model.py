"""The MAMMAL mouse body model: loader/validator, npz cache and linear blend skinning.

Data: the text files of anl13/MAMMAL_mouse (``mouse_model/mouse_txt``), see
``/work/shared/mammal_mouse/README.md``. Facts verified by ``tests/test_body_model.py``:

- indices are 0-based; skinning rows are ``joint vertex weight`` and name joints 1..138;
- per-vertex weight sums lie in 0.996..1.002 (3-decimal rounding), we renormalize to 1;
- forward kinematics of ``init_joint_rot_mat`` / ``init_joint_trans`` (local 4x4 transforms,
  ``G_i = G_parent @ [R_i | t_i]``) reproduces ``t_pose_joints`` exactly, and
  ``init_joint_rotvec`` is the axis-angle of ``init_joint_rot_mat``;
- the mesh is not watertight (trimesh), so the body centre is the area-weighted surface
  centroid (``center_of_mass``).

Model frame (the rest mesh): x = the mouse's left, y = towards the tail (the head points to -y),
z = up, floor at z = 0. Unit: "model units" (about a decimetre; MAMMAL's fitter used a global
scale of about 115 to get millimetres).

Pose parametrization (``Pose``). ``joint_rotvecs[i]`` (axis-angle, radians) is the rotation of
joint i *relative to its parent, expressed in the rest-pose model axes*, composed on top of the
rest pose, so all zeros = the rest mesh (MAMMAL's rest pose is its ``init_joint_rotvec``, not
zero). Writing ``A_i`` for the world rotation that joint i applies to its rest-pose
neighbourhood (column vectors, model frame)::

    A_root = exp(joint_rotvecs[root]);      A_i = A_parent(i) @ exp(joint_rotvecs[i])
    J'_root = J_root;  J'_i = J'_parent + b_group(i) * A_parent @ (J_i - J_parent)
    v' = sum_i w_vi (A_i @ (v - J_i) + J'_i)                       (linear blend skinning)
    x_world = scale * R(global_rotvec) @ v' + translation

This is MAMMAL's ``ArticulationTorch`` posing (``compute_rots``: A_i = G_pose_i G_rest_i^-1,
bone-length factors multiply the parent-to-child stick, skinning uses the unscaled rest joints)
re-expressed so that the rest rotations cancel: MAMMAL's absolute local rotation is
``R_i = Rrest_global_parent^T exp(d_i) Rrest_global_parent @ R_init_i``
(``to_mammal_params`` converts). MAMMAL applies its global transform to row vectors,
``V_row @ R_row * s + T``; in column-vector math that is ``s * R_row^T @ v + T``, so our
column rotation ``R(global_rotvec) = R_row^T``, i.e. MAMMAL's global axis-angle is
``-global_rotvec``. Two MAMMAL details we deliberately drop: its articulation model zeroes the
root-to-lumbar stick ("center bone length = 0"), which only shifts the whole body by
``-A_root @ J_1`` (``to_mammal_params`` folds that into T), and its optional chest deformer
(a non-rigid scale of joint 119) is not modelled.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial.transform import Rotation

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError

N_VERTICES = 14522
N_FACES = 28800
N_JOINTS = 140
N_UV = 15399
NPZ_VERSION = 1
WEIGHT_SUM_TOL = 0.01
# Fix hint for errors in the text directory.
_TXT_FIX = ("Fix: download the MAMMAL mouse model again (anl13/MAMMAL_mouse, mouse_model/mouse_txt) "
            "and check it against SHA256SUMS.")
_NPZ_FIX = "Fix: delete it and re-run the body_model rule to rebuild it from the MAMMAL text files."


@dataclass
class BodyModel:
    """The MAMMAL mouse, rest pose, model frame (x left, y tail-ward, z up; see module doc).

    vertices [V=14522, 3] float64 rest vertices; faces [F=28800, 3] int64 vertex indices;
    joints_rest [J=140, 3] float64 rest joint positions; parents [J] int64 (-1 for the root);
    weights scipy.sparse CSR [V, J] float64, rows sum to 1; uv [15399, 2] float64 texture
    coordinates; faces_uv [F, 3] int64 uv indices; texture uint8 [H, W, 3] or None (upstream has
    no texture image); joint_names [J]; rest_rotvecs [J, 3] MAMMAL's init_joint_rotvec (local
    rest rotations, axis-angle); rest_translations [J, 3] init_joint_trans (local rest sticks in
    the parent's frame); bone_groups [J] int64 bone-length group of the stick parent->joint
    (0 = not scaled, 1..n_bone_groups, from bone_length_mapper.txt; ``Pose.bone_scales[g-1]``);
    bone_group_names [n_bone_groups].
    """

    vertices: np.ndarray
    faces: np.ndarray
    joints_rest: np.ndarray
    parents: np.ndarray
    weights: sp.csr_matrix
    uv: np.ndarray
    faces_uv: np.ndarray
    texture: np.ndarray | None
    joint_names: list[str]
    rest_rotvecs: np.ndarray
    rest_translations: np.ndarray
    bone_groups: np.ndarray
    bone_group_names: list[str] = field(default_factory=list)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_joints(self) -> int:
        return int(self.joints_rest.shape[0])

    @property
    def n_bone_groups(self) -> int:
        return len(self.bone_group_names)

    def joint_index(self, name: str) -> int:
        """Index of a joint by name (KeyError if absent)."""
        try:
            return self.joint_names.index(name)
        except ValueError:
            raise KeyError(f"no joint named {name!r}") from None

    def body_length(self) -> float:
        """Rest-pose nose-to-tail-base distance (snout_end to tail_0), model units (~0.62)."""
        return float(np.linalg.norm(self.joints_rest[self.joint_index("snout_end")]
                                    - self.joints_rest[self.joint_index("tail_0")]))

    def rest_global_rotations(self) -> np.ndarray:
        """[J, 3, 3] MAMMAL rest-pose joint frames (products of init rotations down the tree)."""
        local = Rotation.from_rotvec(self.rest_rotvecs).as_matrix()
        out = np.empty_like(local)
        for i in topological_order(self.parents):
            p = self.parents[i]
            out[i] = local[i] if p < 0 else out[p] @ local[i]
        return out


@dataclass
class Pose:
    """One mouse pose. Zeros / ones everywhere = the rest mesh at the origin of the model frame.

    joint_rotvecs [J, 3]: axis-angle (radians) of each joint relative to its parent, expressed in
    the rest-pose model axes, applied on top of the rest pose (see module doc).
    global_rotvec [3], translation [3], scale: x_world = scale * R(global_rotvec) @ v + translation
    (column vectors; MAMMAL's row-vector global rotation is R_row = R(global_rotvec)^T).
    bone_scales [n_bone_groups]: factor on the rest length of every stick of a group (1 = rest).
    """

    joint_rotvecs: np.ndarray
    global_rotvec: np.ndarray
    translation: np.ndarray
    scale: float
    bone_scales: np.ndarray

    @classmethod
    def rest(cls, model: BodyModel) -> "Pose":
        return cls(np.zeros((model.n_joints, 3)), np.zeros(3), np.zeros(3), 1.0, np.ones(model.n_bone_groups))

    def copy(self) -> "Pose":
        return Pose(self.joint_rotvecs.copy(), self.global_rotvec.copy(), self.translation.copy(),
                    float(self.scale), self.bone_scales.copy())

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays for storage (e.g. shard datasets ``pose/<key>``); float64, ``scale`` is shape []."""
        return {"joint_rotvecs": np.asarray(self.joint_rotvecs, np.float64),
                "global_rotvec": np.asarray(self.global_rotvec, np.float64),
                "translation": np.asarray(self.translation, np.float64),
                "scale": np.asarray(self.scale, np.float64),
                "bone_scales": np.asarray(self.bone_scales, np.float64)}

    @classmethod
    def from_dict(cls, d: dict) -> "Pose":
        return cls(np.asarray(d["joint_rotvecs"], np.float64), np.asarray(d["global_rotvec"], np.float64),
                   np.asarray(d["translation"], np.float64), float(np.asarray(d["scale"])),
                   np.asarray(d["bone_scales"], np.float64))


# ----------------------------------------------------------------------------- loading

def topological_order(parents: np.ndarray) -> list[int]:
    """Joint indices ordered so that every parent comes before its children (parents: [J], -1 root)."""
    depth = _depths(parents)
    return [int(i) for i in np.argsort(depth, kind="stable")]


def _depths(parents: np.ndarray, source: str = "parents") -> np.ndarray:
    """Depth of every joint in the tree; InputError on cycles / bad indices."""
    n = len(parents)
    depth = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        chain = []
        j = i
        while j >= 0 and depth[j] < 0:
            if j in chain or len(chain) > n:
                raise InputError(f"{source}: the joint parents contain a cycle through joint {j}. {_TXT_FIX}")
            chain.append(j)
            j = int(parents[j])
        base = -1 if j < 0 else depth[j]
        for k, jj in enumerate(reversed(chain)):
            depth[jj] = base + 1 + k
    return depth


def _depth_levels(parents: np.ndarray) -> list[np.ndarray]:
    """Joint indices grouped by depth (level 0 = root); used to batch forward kinematics."""
    depth = _depths(parents)
    return [np.nonzero(depth == d)[0] for d in range(int(depth.max()) + 1)]


def _load_txt(path: Path, dtype=np.float64, ncols: int | None = None, nrows: int | None = None) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{path}: missing MAMMAL mouse model file. {_TXT_FIX}")
    try:
        a = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise InputError(f"{path}: cannot parse as whitespace-separated numbers ({e}). {_TXT_FIX}") from None
    if ncols is not None and a.shape[1] != ncols:
        raise InputError(f"{path}: expected {ncols} columns per row, found {a.shape[1]}. {_TXT_FIX}")
    if nrows is not None and a.shape[0] != nrows:
        raise InputError(f"{path}: expected {nrows} rows, found {a.shape[0]} (truncated or wrong file?). {_TXT_FIX}")
    if not np.isfinite(a).all():
        raise InputError(f"{path}: contains NaN or infinite values. {_TXT_FIX}")
    if np.issubdtype(dtype, np.integer):
        if not np.array_equal(a, np.round(a)):
            raise InputError(f"{path}: expected integer indices, found fractional values. {_TXT_FIX}")
        a = a.astype(dtype)
    return a


def _check_index_range(a: np.ndarray, hi: int, path: Path, what: str) -> None:
    if a.size and (a.min() < 0 or a.max() >= hi):
        raise InputError(f"{path}: {what} out of range [0, {hi}) (found {a.min()}..{a.max()}; indices are 0-based). "
                         f"{_TXT_FIX}")


def load_body_model(directory: str | os.PathLike) -> BodyModel:
    """Read and validate the MAMMAL mouse text files in ``directory`` (layout of the README).

    Raises InputError naming the offending file for wrong counts, out-of-range indices, NaNs,
    weights that do not sum to 1 within 0.01, parents that are not a single-rooted tree, or rest
    rotations/translations whose forward kinematics disagree with t_pose_joints.
    """
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: MAMMAL mouse model directory not found. {_TXT_FIX}")
    vertices = _load_txt(d / "vertices.txt", ncols=3, nrows=N_VERTICES)
    faces = _load_txt(d / "faces_vert.txt", np.int64, ncols=3, nrows=N_FACES)
    _check_index_range(faces, N_VERTICES, d / "faces_vert.txt", "vertex index")
    uv = _load_txt(d / "textures.txt", ncols=2, nrows=N_UV)
    faces_uv = _load_txt(d / "faces_tex.txt", np.int64, ncols=3, nrows=N_FACES)
    _check_index_range(faces_uv, N_UV, d / "faces_tex.txt", "uv index")
    joints = _load_txt(d / "t_pose_joints.txt", ncols=3, nrows=N_JOINTS)
    parents = _load_txt(d / "parents.txt", np.int64, ncols=1, nrows=N_JOINTS)[:, 0]
    _validate_parents(parents, d / "parents.txt")
    rotvecs = _load_txt(d / "init_joint_rotvec.txt", ncols=3, nrows=N_JOINTS)
    trans = _load_txt(d / "init_joint_trans.txt", ncols=3, nrows=N_JOINTS)
    groups = _load_txt(d / "bone_length_mapper.txt", np.int64, ncols=1, nrows=N_JOINTS)[:, 0]
    groups = np.where(groups < 0, 0, groups)  # -1 upstream = stick not scaled; we use 0
    names_path = d / "joint_names.txt"
    if not names_path.exists():
        raise InputError(f"{names_path}: missing MAMMAL mouse model file. {_TXT_FIX}")
    names = names_path.read_text().split()
    if len(names) != N_JOINTS or len(set(names)) != N_JOINTS:
        raise InputError(f"{names_path}: expected {N_JOINTS} distinct joint names, found {len(names)}. {_TXT_FIX}")
    group_names = _read_bone_group_names(d / "bone_length_name.txt", int(groups.max()))
    weights = _read_weights(d / "skinning_weights.txt")
    texture = None
    tex_path = d / "texture_final.png"
    if tex_path.exists():
        from PIL import Image
        try:
            texture = np.asarray(Image.open(tex_path).convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise InputError(f"{tex_path}: unreadable texture image ({e}). Fix: delete it (optional) or "
                             "download it again.") from None
    model = BodyModel(vertices=vertices, faces=faces, joints_rest=joints, parents=parents, weights=weights,
                      uv=uv, faces_uv=faces_uv, texture=texture, joint_names=names, rest_rotvecs=rotvecs,
                      rest_translations=trans, bone_groups=groups, bone_group_names=group_names)
    fk = _rest_fk_joints(model)
    err = np.abs(fk - joints).max()
    if err > 1e-6:
        raise InputError(f"{d / 't_pose_joints.txt'}: differs by {err:.3g} from the forward kinematics of "
                         f"init_joint_rotvec.txt / init_joint_trans.txt; the files do not belong together. {_TXT_FIX}")
    return model


def _validate_parents(parents: np.ndarray, path: Path) -> None:
    roots = np.nonzero(parents < 0)[0]
    if len(roots) != 1 or parents[roots[0]] != -1:
        raise InputError(f"{path}: expected exactly one root (parent -1), found {len(roots)} "
                         f"negative entries. {_TXT_FIX}")
    _check_index_range(parents[parents >= 0], len(parents), path, "parent index")
    _depths(parents, str(path))  # raises on cycles


def _read_bone_group_names(path: Path, n_groups: int) -> list[str]:
    if not path.exists():
        raise InputError(f"{path}: missing MAMMAL mouse model file. {_TXT_FIX}")
    # First line is a header ("Scale bone's father stick."); then one name per group, some
    # prefixed with "<n>:".
    lines = [ln.strip() for ln in path.read_text().splitlines()[1:] if ln.strip()]
    names = [ln.split(":", 1)[-1].strip() for ln in lines]
    if len(names) != n_groups:
        raise InputError(f"{path}: expected {n_groups} bone-length group names (one per line after the "
                         f"header), found {len(names)}. {_TXT_FIX}")
    return names


def _read_weights(path: Path) -> sp.csr_matrix:
    w = _load_txt(path, ncols=3)
    j, v, val = w[:, 0], w[:, 1], w[:, 2]
    if not (np.array_equal(j, np.round(j)) and np.array_equal(v, np.round(v))):
        raise InputError(f"{path}: joint and vertex columns must be integers. {_TXT_FIX}")
    j, v = j.astype(np.int64), v.astype(np.int64)
    _check_index_range(j, N_JOINTS, path, "joint index (column 1)")
    _check_index_range(v, N_VERTICES, path, "vertex index (column 2)")
    if (val < 0).any():
        raise InputError(f"{path}: negative skinning weights. {_TXT_FIX}")
    W = sp.csr_matrix((val, (v, j)), shape=(N_VERTICES, N_JOINTS))  # duplicates are summed
    sums = np.asarray(W.sum(axis=1)).ravel()
    bad = np.nonzero(np.abs(sums - 1.0) > WEIGHT_SUM_TOL)[0]
    if len(bad):
        raise InputError(f"{path}: skinning weights of {len(bad)} vertices do not sum to 1 within "
                         f"{WEIGHT_SUM_TOL} (e.g. vertex {bad[0]}: {sums[bad[0]]:.4f}). {_TXT_FIX}")
    # Upstream rounds weights to 3 decimals; renormalize so that rigid motions stay exact.
    return sp.csr_matrix(sp.diags(1.0 / sums) @ W)


def _rest_fk_joints(model: BodyModel) -> np.ndarray:
    """[J, 3] joints from MAMMAL's local rest transforms (G_i = G_parent @ [R_init_i | t_init_i])."""
    local = Rotation.from_rotvec(model.rest_rotvecs).as_matrix()
    G = np.zeros((model.n_joints, 3, 3))
    out = np.zeros((model.n_joints, 3))
    for i in topological_order(model.parents):
        p = model.parents[i]
        if p < 0:
            G[i], out[i] = local[i], model.rest_translations[i]
        else:
            G[i], out[i] = G[p] @ local[i], out[p] + G[p] @ model.rest_translations[i]
    return out


# ----------------------------------------------------------------------------- npz cache

_NPZ_SHAPES = {"vertices": (N_VERTICES, 3), "faces": (N_FACES, 3), "joints_rest": (N_JOINTS, 3),
               "parents": (N_JOINTS,), "uv": (N_UV, 2), "faces_uv": (N_FACES, 3),
               "rest_rotvecs": (N_JOINTS, 3), "rest_translations": (N_JOINTS, 3), "bone_groups": (N_JOINTS,),
               "joint_names": (N_JOINTS,)}


def save_npz(model: BodyModel, path: str | os.PathLike) -> None:
    """Write ``model`` as one compressed npz (atomically). Read it back with ``load_npz``."""
    W = model.weights.tocsr()
    arrays = {name: getattr(model, name) for name in _NPZ_SHAPES}
    arrays["joint_names"] = np.asarray(model.joint_names, dtype=str)
    arrays.update(
        npz_version=np.asarray(NPZ_VERSION),
        weights_data=W.data, weights_indices=W.indices.astype(np.int64), weights_indptr=W.indptr.astype(np.int64),
        texture=model.texture if model.texture is not None else np.zeros((0, 0, 3), np.uint8),
        bone_group_names=np.asarray(model.bone_group_names, dtype=str))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_npz(path: str | os.PathLike) -> BodyModel:
    """Read a model written by ``save_npz``; InputError (naming the file) when it is not one."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: body model npz not found. {_NPZ_FIX}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable npz ({e}). {_NPZ_FIX}") from None
    needed = set(_NPZ_SHAPES) | {"npz_version", "weights_data", "weights_indices", "weights_indptr", "texture",
                                 "bone_group_names"}
    missing = sorted(needed - set(data))
    if missing:
        raise InputError(f"{path}: missing arrays {missing}. {_NPZ_FIX}")
    if int(data["npz_version"]) != NPZ_VERSION:
        raise InputError(f"{path}: body model npz version {int(data['npz_version'])}, expected {NPZ_VERSION}. "
                         f"{_NPZ_FIX}")
    for name, shape in _NPZ_SHAPES.items():
        if data[name].shape != shape:
            raise InputError(f"{path}: {name} has shape {data[name].shape}, expected {shape}. {_NPZ_FIX}")
    for name in ("vertices", "joints_rest", "uv", "rest_rotvecs", "rest_translations", "weights_data"):
        if not np.isfinite(data[name]).all():
            raise InputError(f"{path}: {name} contains NaN or infinite values. {_NPZ_FIX}")
    try:
        W = sp.csr_matrix((data["weights_data"], data["weights_indices"], data["weights_indptr"]),
                          shape=(N_VERTICES, N_JOINTS))
    except ValueError as e:
        raise InputError(f"{path}: inconsistent skinning weights ({e}). {_NPZ_FIX}") from None
    sums = np.asarray(W.sum(axis=1)).ravel()
    if np.abs(sums - 1).max() > 1e-9:
        raise InputError(f"{path}: skinning weights are not normalized. {_NPZ_FIX}")
    _check_index_range(data["faces"], N_VERTICES, path, "faces")
    _check_index_range(data["faces_uv"], N_UV, path, "faces_uv")
    _validate_parents(data["parents"], path)
    tex = data["texture"]
    return BodyModel(vertices=data["vertices"].astype(np.float64), faces=data["faces"].astype(np.int64),
                     joints_rest=data["joints_rest"].astype(np.float64), parents=data["parents"].astype(np.int64),
                     weights=W, uv=data["uv"].astype(np.float64), faces_uv=data["faces_uv"].astype(np.int64),
                     texture=tex if tex.size else None, joint_names=[str(s) for s in data["joint_names"]],
                     rest_rotvecs=data["rest_rotvecs"].astype(np.float64),
                     rest_translations=data["rest_translations"].astype(np.float64),
                     bone_groups=data["bone_groups"].astype(np.int64),
                     bone_group_names=[str(s) for s in data["bone_group_names"]])


# ----------------------------------------------------------------------------- posing (NumPy)

def _bone_factors(model: BodyModel, bone_scales: np.ndarray) -> np.ndarray:
    """[J] factor on the stick parent->joint (1 for group 0)."""
    bs = np.concatenate([[1.0], np.asarray(bone_scales, np.float64)])
    if len(bs) != model.n_bone_groups + 1:
        raise ValueError(f"bone_scales has {len(bs) - 1} entries, the model has {model.n_bone_groups} groups")
    return bs[model.bone_groups]


def forward_kinematics(model: BodyModel, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Joint world rotations A [J, 3, 3] and posed joints [J, 3], both in the model frame (before
    the global similarity). A_i maps rest-pose directions near joint i to posed ones."""
    d = np.asarray(pose.joint_rotvecs, np.float64)
    if d.shape != (model.n_joints, 3):
        raise ValueError(f"joint_rotvecs must be [{model.n_joints}, 3], got {d.shape}")
    R = Rotation.from_rotvec(d).as_matrix()
    f = _bone_factors(model, pose.bone_scales)
    A = np.empty((model.n_joints, 3, 3))
    J = np.empty((model.n_joints, 3))
    Jr = model.joints_rest
    for i in topological_order(model.parents):
        p = model.parents[i]
        if p < 0:
            A[i], J[i] = R[i], Jr[i]
        else:
            A[i] = A[p] @ R[i]
            J[i] = J[p] + f[i] * (A[p] @ (Jr[i] - Jr[p]))
    return A, J


def pose_mesh(model: BodyModel, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Posed vertices [V, 3] and joints [J, 3] (float64) in the world frame of ``pose``:
    x_world = scale * R(global_rotvec) @ x_model + translation (column vectors)."""
    A, J = forward_kinematics(model, pose)
    t = J - np.einsum("jab,jb->ja", A, model.joints_rest)            # [J, 3]: x' = A x + t per joint
    M = model.weights @ A.reshape(model.n_joints, 9)                  # blended matrices [V, 9]
    T = model.weights @ t                                             # blended offsets [V, 3]
    v = np.einsum("vab,vb->va", M.reshape(-1, 3, 3), model.vertices) + T
    Rg = Rotation.from_rotvec(np.asarray(pose.global_rotvec, np.float64)).as_matrix()
    s, tr = float(pose.scale), np.asarray(pose.translation, np.float64)
    return s * v @ Rg.T + tr, s * J @ Rg.T + tr


def to_mammal_params(model: BodyModel, pose: Pose) -> dict[str, np.ndarray]:
    """Parameters for MAMMAL's ``ArticulationTorch.forward`` (bone lengths aside) reproducing
    ``pose_mesh``: thetas [J, 3] absolute local axis-angle, R [3] its (row-vector) global
    axis-angle, T [3], s []. Includes the shift of MAMMAL's zeroed root-to-lumbar stick."""
    Gr = model.rest_global_rotations()
    Rinit = Rotation.from_rotvec(model.rest_rotvecs).as_matrix()
    D = Rotation.from_rotvec(pose.joint_rotvecs).as_matrix()
    thetas = np.empty((model.n_joints, 3))
    for i in range(model.n_joints):
        p = model.parents[i]
        Gp = np.eye(3) if p < 0 else Gr[p]
        thetas[i] = Rotation.from_matrix(Gp.T @ D[i] @ Gp @ Rinit[i]).as_rotvec()
    A, J = forward_kinematics(model, pose)
    root = int(np.nonzero(model.parents < 0)[0][0])
    lumbar = int(np.nonzero(model.parents == root)[0][0])
    Rg = Rotation.from_rotvec(pose.global_rotvec).as_matrix()
    s = float(pose.scale)
    stick = model.joints_rest[lumbar] - model.joints_rest[root]
    T = np.asarray(pose.translation, np.float64) + s * Rg @ (A[root] @ stick)
    return {"thetas": thetas, "R": -np.asarray(pose.global_rotvec, np.float64), "T": T, "s": np.asarray(s)}


def center_of_mass(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted surface centroid [3] of a triangle mesh (vertices [V, 3], faces [F, 3]).

    The MAMMAL mesh is not watertight (trimesh: is_watertight False), so
    a volume centroid is ill-defined; the surface centroid is well defined, cheap, tessellation
    independent and moves rigidly with the mesh. The whole project uses this as "the mouse's 3D
    centre" of a synthetic mesh.
    """
    v, f = np.asarray(vertices, np.float64), np.asarray(faces)
    # Three [F, 3] corner gathers instead of one [F, 3, 3]: trailing-axis reductions of length 3
    # are slow in NumPy, and this runs for every synthetic sample.
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = np.sqrt(np.square(np.cross(b - a, c - a)).sum(axis=1))  # twice the area; the factor cancels
    return area @ (a + b + c) / (3.0 * area.sum())


# ----------------------------------------------------------------------------- posing (PyTorch)

@dataclass
class TorchBodyModel:
    """Tensors of a BodyModel for ``pose_mesh_torch`` (build once, reuse: weights are dense
    [V, J]). levels/parents_per_level: joint indices per tree depth for batched kinematics."""

    vertices: torch.Tensor        # [V, 3]
    joints_rest: torch.Tensor     # [J, 3]
    weights: torch.Tensor         # [V, J] dense
    bone_groups: torch.Tensor     # [J] int64
    levels: list[torch.Tensor]
    level_parents: list[torch.Tensor]
    n_bone_groups: int

    @classmethod
    def from_model(cls, model: BodyModel, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> "TorchBodyModel":
        lv = _depth_levels(model.parents)
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        return cls(vertices=t(model.vertices), joints_rest=t(model.joints_rest), weights=t(model.weights.toarray()),
                   bone_groups=torch.as_tensor(model.bone_groups, device=device),
                   levels=[torch.as_tensor(x, device=device) for x in lv],
                   level_parents=[torch.as_tensor(model.parents[x], device=device) for x in lv],
                   n_bone_groups=model.n_bone_groups)


def rotvec_to_matrix_torch(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle [..., 3] -> rotation matrices [..., 3, 3]; smooth (finite gradients)
    at zero angle thanks to Taylor expansions of sin(t)/t and (1-cos t)/t^2."""
    t2 = (r * r).sum(-1, keepdim=True)[..., None]                     # [..., 1, 1]
    small = t2 < 1e-8
    t2s = torch.where(small, torch.ones_like(t2), t2)
    ts = torch.sqrt(t2s)
    a = torch.where(small, 1 - t2 / 6, torch.sin(ts) / ts)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(ts)) / t2s)
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*r.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def pose_mesh_torch(model: BodyModel | TorchBodyModel, joint_rotvecs: torch.Tensor, global_rotvec: torch.Tensor,
                    translation: torch.Tensor, scale: torch.Tensor,
                    bone_scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched, differentiable ``pose_mesh``: joint_rotvecs [B, J, 3], global_rotvec [B, 3],
    translation [B, 3], scale [B], bone_scales [B, n_bone_groups] or None (= rest lengths).
    Returns vertices [B, V, 3] and joints [B, J, 3] in the world frame of the poses
    (x_world = scale * R(global_rotvec) @ x_model + translation), dtype of ``joint_rotvecs``."""
    dtype, device = joint_rotvecs.dtype, joint_rotvecs.device
    m = model if isinstance(model, TorchBodyModel) else TorchBodyModel.from_model(model, dtype, device)
    B, nJ = joint_rotvecs.shape[:2]
    R = rotvec_to_matrix_torch(joint_rotvecs)                         # [B, J, 3, 3]
    Jr = m.joints_rest.to(dtype)
    if bone_scales is None:
        f = torch.ones(B, nJ, dtype=dtype, device=device)
    else:
        bs = torch.cat([torch.ones(B, 1, dtype=dtype, device=device), bone_scales.to(dtype)], 1)
        f = bs[:, m.bone_groups]                                      # [B, J]
    A = torch.zeros(B, nJ, 3, 3, dtype=dtype, device=device)
    J = torch.zeros(B, nJ, 3, dtype=dtype, device=device)
    root = m.levels[0]
    A = A.index_copy(1, root, R[:, root])
    J = J.index_copy(1, root, Jr[root].expand(B, -1, -1))
    for idx, par in zip(m.levels[1:], m.level_parents[1:]):
        Ap = A[:, par]                                                # [B, n, 3, 3]
        bone = (Ap @ (Jr[idx] - Jr[par])[None, :, :, None])[..., 0]   # [B, n, 3]
        J = J.index_copy(1, idx, J[:, par] + f[:, idx, None] * bone)
        A = A.index_copy(1, idx, Ap @ R[:, idx])
    t = J - (A @ Jr[None, :, :, None])[..., 0]                        # [B, J, 3]
    W = m.weights.to(dtype)
    M = torch.einsum("vj,bjk->bvk", W, A.reshape(B, nJ, 9)).reshape(B, -1, 3, 3)
    v = (M @ m.vertices.to(dtype)[None, :, :, None])[..., 0] + torch.einsum("vj,bjk->bvk", W, t)
    Rg = rotvec_to_matrix_torch(global_rotvec)                        # [B, 3, 3]
    s = scale.reshape(B, 1, 1).to(dtype)
    tr = translation[:, None, :].to(dtype)
    return s * v @ Rg.transpose(1, 2) + tr, s * J @ Rg.transpose(1, 2) + tr


def poses_to_torch(poses: list[Pose], dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Stack poses into the keyword arguments of ``pose_mesh_torch`` ([B, ...] tensors)."""
    t = lambda xs: torch.as_tensor(np.stack(xs), dtype=dtype, device=device)  # noqa: E731
    return {"joint_rotvecs": t([p.joint_rotvecs for p in poses]), "global_rotvec": t([p.global_rotvec for p in poses]),
            "translation": t([p.translation for p in poses]), "scale": t([float(p.scale) for p in poses]),
            "bone_scales": t([p.bone_scales for p in poses])}
