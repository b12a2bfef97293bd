"""pyrender mesh renderer: RGB, z-depth and mouse mask for OpenCV cameras (headless).

Conventions (docs/conventions.md): cameras are OpenCV (x right, y down, z forward); every
function here takes ``c2w`` = OpenCV **camera-to-world** [4, 4]. Pixel coordinates are
continuous with the image's top-left corner at (0, 0) and pixel (r, c) centred at
(c + 0.5, r + 0.5); pyrender's ``IntrinsicsCamera`` uses the same convention (tested).
pyrender cameras look down -z with y up, so the OpenCV c2w is converted with
``c2w @ diag(1, -1, -1, 1)``.

Headless OpenGL is set up by :mod:`workflow_scripts.gl` (imported lazily, so importing this
module never loads PyOpenGL).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Literal, Sequence

import cv2
import numpy as np
import trimesh

from workflow_scripts import gl

# OpenCV camera axes -> OpenGL camera axes (y up, looking down -z).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclasses.dataclass
class Light:
    """A light in world coordinates.

    kind: ``"directional"`` (uses ``direction``: [3] world direction the light *travels*, i.e.
    from the light towards the scene) or ``"point"`` (uses ``position``: [3] world point).
    color: linear RGB in [0, 1]. intensity: pyrender units (directional: ~1-5; point: W, falls
    off with distance squared, so ~ 5-50 at the normalized camera distance 2.7).
    """

    kind: Literal["directional", "point"] = "directional"
    direction: tuple[float, float, float] | np.ndarray = (0.0, 0.0, -1.0)
    position: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 3.0)
    color: tuple[float, float, float] | np.ndarray = (1.0, 1.0, 1.0)
    intensity: float = 3.0

    def pose(self) -> np.ndarray:
        """[4, 4] light-to-world pose for pyrender (directional lights shine along their -z)."""
        m = np.eye(4)
        if self.kind == "directional":
            d = np.asarray(self.direction, dtype=np.float64)
            d = d / np.linalg.norm(d)
            z = -d
            helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
            x = np.cross(helper, z)
            x /= np.linalg.norm(x)
            m[:3, 0], m[:3, 1], m[:3, 2] = x, np.cross(z, x), z
        elif self.kind == "point":
            m[:3, 3] = np.asarray(self.position, dtype=np.float64)
        else:
            raise ValueError(f"Light.kind must be 'directional' or 'point', got {self.kind!r}")
        return m


@dataclasses.dataclass
class RenderOutput:
    """One rendered view.

    rgb: uint8 [H, W, 3]. depth: float32 [H, W], camera z (OpenCV, world units) of the visible
    mouse surface, 0 where the mouse is not visible. mask: bool [H, W], mouse pixels only
    (pixels where an extra mesh, e.g. an arena wall, hides the mouse are False). All three are
    taken at the pixel centre (single-sample framebuffer, :mod:`workflow_scripts.gl`), so colour
    edges are aliased and mask/depth agree with a pixel-centre rasterization (tests/test_render.py).
    """

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray


# --------------------------------------------------------------------------------------------
# Mesh helpers (pure NumPy)
# --------------------------------------------------------------------------------------------
def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] of a mesh (vertices [V, 3], faces [F, 3])."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    n = np.zeros_like(v)
    idx = f.reshape(-1)
    rep = np.repeat(fn, 3, axis=0)
    for k in range(3):  # bincount is much faster than np.add.at
        n[:, k] = np.bincount(idx, weights=rep[:, k], minlength=len(v))
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


def split_uv_seams(faces: np.ndarray, faces_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split vertices at UV seams so every render vertex has one UV (pyrender needs per-vertex UVs).

    Args: faces [F, 3] vertex indices, faces_uv [F, 3] UV indices (same corners).
    Returns: (vertex_index [Vs], uv_index [Vs], faces_split [F, 3]) with render vertex i =
    (vertices[vertex_index[i]], uv[uv_index[i]]) and faces_split indexing render vertices;
    read-only arrays, cached by content (the synthetic job renders one topology every sample:
    the split costs ~10 ms, the lookup ~0.3 ms), as ``synthetic.face_edges``.
    """
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    faces_uv = np.ascontiguousarray(faces_uv, dtype=np.int64)
    if faces.shape != faces_uv.shape:
        raise ValueError(f"faces {faces.shape} and faces_uv {faces_uv.shape} must have the same shape")
    return _split_uv_seams(faces.tobytes(), faces_uv.tobytes(), faces.shape)


@functools.lru_cache(maxsize=4)
def _split_uv_seams(faces_bytes: bytes, faces_uv_bytes: bytes, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    faces = np.frombuffer(faces_bytes, dtype=np.int64).reshape(shape)
    faces_uv = np.frombuffer(faces_uv_bytes, dtype=np.int64).reshape(shape)
    base = int(faces_uv.max()) + 1
    key = faces.reshape(-1) * base + faces_uv.reshape(-1)
    uniq, inverse = np.unique(key, return_inverse=True)
    out = (uniq // base, uniq % base, inverse.reshape(shape))
    for a in out:
        a.flags.writeable = False
    return out


def textured_trimesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, faces_uv: np.ndarray,
                     texture: np.ndarray) -> trimesh.Trimesh:
    """A trimesh with ``TextureVisuals`` (vertices split at UV seams; uv in OBJ convention, v up)."""
    from PIL import Image

    vi, ti, fs = split_uv_seams(faces, faces_uv)
    visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv)[ti], image=Image.fromarray(np.asarray(texture, np.uint8)))
    return trimesh.Trimesh(np.asarray(vertices)[vi], fs, visual=visual, process=False)


def project_points(points: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> (pixels [N, 2] continuous corner-origin, camera z [N]); c2w is OpenCV camera-to-world."""
    c2w = np.asarray(c2w, dtype=np.float64)
    R, C = c2w[:3, :3], c2w[:3, 3]
    xc = (np.asarray(points, dtype=np.float64) - C) @ R  # = R^T (X - C), world -> camera
    z = xc[:, 2]
    uvw = xc @ np.asarray(K, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[:, :2] / uvw[:, 2:3], z


def rasterize_mask(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                   height: int, width: int) -> np.ndarray:
    """Silhouette bool [H, W] of a mesh: pixels whose centre (c+0.5, r+0.5) lies in a projected face.

    Vectorized NumPy scan conversion (the union of all faces; no depth test is needed for a
    silhouette). ~30x faster than a Python loop of ``cv2.fillConvexPoly`` for the 28,800-face
    mouse, which matters because the pixel-size rule runs it once per synthetic view. Faces
    with a vertex behind the camera are skipped (callers keep the mesh in front of the camera).
    c2w is OpenCV camera-to-world.
    """
    f = np.asarray(faces, dtype=np.int64)
    px, z = project_points(vertices, K, c2w)
    if not np.all(z > 0):
        f = f[np.all(z[f] > 0, axis=1)]
    return rasterize_triangles(px[f], height, width)


def rasterize_triangles(tri_px: np.ndarray, height: int, width: int, layer: np.ndarray | None = None,
                        n_layers: int = 1) -> np.ndarray:
    """Union of 2D triangles: bool [H, W] (or [n_layers, H, W] when ``layer`` [T] assigns each
    triangle to an image), True where a pixel centre (c+0.5, r+0.5) lies in a triangle.

    tri_px: [T, 3, 2] corners in continuous pixel coordinates (corner-origin convention).
    Batching many images in one call (``layer``) saves NumPy's per-call overhead.
    """
    t = np.asarray(tri_px, dtype=np.float64)
    # Corner coordinates as separate [T] arrays: reductions over a trailing axis of length 3 are
    # slow in NumPy, elementwise minimum/maximum are not.
    x0, x1, x2 = t[:, 0, 0], t[:, 1, 0], t[:, 2, 0]
    y0, y1, y2 = t[:, 0, 1], t[:, 1, 1], t[:, 2, 1]
    # Pixel columns/rows whose centres fall within each triangle's bounding box.
    cx_lo = np.maximum(np.ceil(np.minimum(np.minimum(x0, x1), x2) - 0.5), 0).astype(np.int64)
    cx_hi = np.minimum(np.floor(np.maximum(np.maximum(x0, x1), x2) - 0.5), width - 1).astype(np.int64)
    cy_lo = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2) - 0.5), 0).astype(np.int64)
    cy_hi = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2) - 0.5), height - 1).astype(np.int64)
    w = cx_hi - cx_lo + 1
    h = cy_hi - cy_lo + 1
    keep = np.nonzero((w > 0) & (h > 0))[0]
    mask = np.zeros((n_layers, height, width), dtype=bool)
    if keep.size:
        w, h = w[keep], h[keep]
        n = w * h
        tri = np.repeat(keep, n)  # one entry per (triangle, candidate pixel)
        wt = np.repeat(w, n)
        local = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        cx = cx_lo[tri] + local % wt
        cy = cy_lo[tri] + local // wt
        qx, qy = cx + 0.5, cy + 0.5
        ax, ay, bx, by, ccx, ccy = x0[tri], y0[tri], x1[tri], y1[tri], x2[tri], y2[tri]
        e0 = (bx - ax) * (qy - ay) - (by - ay) * (qx - ax)
        e1 = (ccx - bx) * (qy - by) - (ccy - by) * (qx - bx)
        e2 = (ax - ccx) * (qy - ccy) - (ay - ccy) * (qx - ccx)
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        li = 0 if layer is None else np.asarray(layer, dtype=np.int64)[tri[inside]]
        mask[li, cy[inside], cx[inside]] = True
    return mask[0] if layer is None else mask


def rasterize_mask_cv2(vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray,
                       height: int, width: int, supersample: int = 32) -> np.ndarray:
    """Reference silhouette bool [H, W] from ``cv2.fillConvexPoly`` of every face (slow; for tests).

    OpenCV rounds polygon vertices to its integer grid (pixel centres at integers) and fills
    boundary-inclusive, i.e. up to half a pixel too wide. So we rasterize on a grid ``supersample``
    times finer, mapping continuous pixel x to OpenCV coordinate ``supersample * (x - 0.5)``: the
    0.5 shift puts every low-resolution pixel centre exactly on fine-grid point
    (supersample * r, supersample * c), which we then read. The residual rounding is
    1 / (2 * supersample) pixel. c2w is OpenCV camera-to-world.
    """
    s = int(supersample)
    px, z = project_points(vertices, K, c2w)
    f = np.asarray(faces, dtype=np.int64)
    f = f[np.all(z[f] > 0, axis=1)]
    bits = 4
    pts = np.round(s * (px[f] - 0.5) * (1 << bits)).astype(np.int32)
    img = np.zeros((height * s, width * s), np.uint8)
    for tri in pts:
        cv2.fillConvexPoly(img, tri, 255, lineType=cv2.LINE_8, shift=bits)
    return img[::s, ::s] > 0


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3] and faces [F, 3], got {v.shape} and {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces index vertices 0..{f.max()}, but there are only {len(v)} vertices")
    if not np.all(np.isfinite(v)):
        raise ValueError("vertices contain NaN or inf")
    return v, f


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------
class MeshRenderer:
    """Reusable headless renderer of one mesh (plus optional extra meshes) for OpenCV cameras.

    One OpenGL context per instance (created lazily); use as a context manager or call
    :meth:`close`. :meth:`render_views` renders many cameras of one scene and uploads the mesh
    once (only the camera changes between views), which is what synthetic data needs.
    """

    def __init__(self, width: int, height: int, platform: str | None = None, cull_back_faces: bool = False):
        """cull_back_faces: skip triangles facing away from the camera (~25 % faster with llvmpipe).
        Only for closed-looking meshes with consistent outward winding (the MAMMAL mouse: checked in
        tests/test_synthetic.py); otherwise holes would show background through the mesh."""
        self.width, self.height = int(width), int(height)
        self.cull_back_faces = bool(cull_back_faces)
        self._platform = platform
        self._pyrender = None
        self._renderer = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _ensure(self):
        if self._renderer is None:
            self._pyrender = gl.import_pyrender(self._platform)
            self._renderer = self._pyrender.OffscreenRenderer(self.width, self.height)
        return self._pyrender

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None

    def __enter__(self) -> "MeshRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; explicit close() is preferred
        try:
            self.close()
        except Exception:
            pass

    # -- scene -------------------------------------------------------------------------------
    def _mouse_mesh(self, v, f, vertex_colors, uv, faces_uv, texture):
        pr = self._pyrender
        normals = vertex_normals(v, f)
        color_0 = texcoord_0 = tex = None
        if texture is not None:
            if uv is None or faces_uv is None:
                raise ValueError("a texture needs uv [Vt, 2] and faces_uv [F, 3]")
            # Split at UV seams but keep the normals of the unsplit mesh, so seams do not show
            # as shading discontinuities.
            vi, ti, f = split_uv_seams(f, faces_uv)
            v, normals = v[vi], normals[vi]
            texcoord_0 = np.asarray(uv, dtype=np.float64)[ti]
            tex = pr.Texture(source=np.ascontiguousarray(np.asarray(texture, dtype=np.uint8)[..., :3]),
                             source_channels="RGB")
        elif vertex_colors is not None:
            vc = np.asarray(vertex_colors, dtype=np.float64)
            if vc.shape != (len(v), 3):
                raise ValueError(f"vertex_colors must be [V, 3] = {(len(v), 3)}, got {vc.shape}")
            color_0 = np.concatenate([np.clip(vc, 0, 1), np.ones((len(v), 1))], axis=1)
        material = pr.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                                roughnessFactor=0.85, alphaMode="OPAQUE",
                                                baseColorTexture=tex, doubleSided=not self.cull_back_faces)
        prim = pr.Primitive(positions=v.astype(np.float32), normals=normals.astype(np.float32),
                            texcoord_0=texcoord_0, color_0=color_0, indices=f.astype(np.uint32),
                            material=material, mode=4)  # 4 = GL_TRIANGLES
        return pr.Mesh(primitives=[prim])

    def render(self, vertices: np.ndarray, faces: np.ndarray, K: np.ndarray, c2w: np.ndarray, **kwargs) -> RenderOutput:
        """Render one OpenCV camera (K [3, 3] pixels, c2w [4, 4] camera-to-world); kwargs as :meth:`render_views`."""
        return self.render_views(vertices, faces, np.asarray(K)[None], np.asarray(c2w)[None], **kwargs)[0]

    def render_views(self, vertices: np.ndarray, faces: np.ndarray, Ks: np.ndarray, c2ws: np.ndarray, *,
                     vertex_colors: np.ndarray | None = None, uv: np.ndarray | None = None,
                     faces_uv: np.ndarray | None = None, texture: np.ndarray | None = None,
                     lights: Sequence[Light] = (), ambient: Sequence[float] = (0.3, 0.3, 0.3),
                     background: Sequence[float] = (1.0, 1.0, 1.0),
                     extra_meshes: Sequence[trimesh.Trimesh] = ()) -> list[RenderOutput]:
        """Render the mesh from N OpenCV cameras.

        Args:
            vertices: [V, 3] world. faces: [F, 3] vertex indices.
            Ks: [N, 3, 3] intrinsics (pixels, corner-origin convention; skew allowed).
            c2ws: [N, 4, 4] OpenCV camera-to-world.
            vertex_colors: [V, 3] float in [0, 1] (ignored when ``texture`` is given).
            uv: [Vt, 2] texture coords (OBJ convention, v up), faces_uv: [F, 3], texture: uint8 [Ht, Wt, 3].
            lights: world lights; ambient: RGB [3]; background: RGB [3] in [0, 1].
            extra_meshes: other geometry (arena floor/walls) that shades, occludes and shows in rgb
                but never counts as mouse in ``mask``/``depth``.
        Returns: one :class:`RenderOutput` per camera.
        """
        pr = self._ensure()
        v, f = _check_mesh(vertices, faces)
        Ks = np.asarray(Ks, dtype=np.float64).reshape(-1, 3, 3)
        c2ws = np.asarray(c2ws, dtype=np.float64).reshape(-1, 4, 4)
        if len(Ks) != len(c2ws):
            raise ValueError(f"{len(Ks)} intrinsics but {len(c2ws)} poses")
        bg = np.asarray(background, dtype=np.float64)
        scene = pr.Scene(bg_color=np.concatenate([bg, [1.0]]), ambient_light=np.asarray(ambient, dtype=np.float64))
        scene.add(self._mouse_mesh(v, f, vertex_colors, uv, faces_uv, texture))
        extra_nodes = [scene.add(pr.Mesh.from_trimesh(m)) for m in extra_meshes]
        for light in lights:
            if light.kind == "directional":
                node_light = pr.DirectionalLight(color=np.asarray(light.color, float), intensity=float(light.intensity))
            elif light.kind == "point":
                node_light = pr.PointLight(color=np.asarray(light.color, float), intensity=float(light.intensity))
            else:
                raise ValueError(f"Light.kind must be 'directional' or 'point', got {light.kind!r}")
            scene.add(node_light, pose=light.pose())
        all_points = np.concatenate([v] + [np.asarray(m.bounds, float) for m in extra_meshes] +
                                    [np.asarray(m.vertices, float) for m in extra_meshes if len(m.vertices) < 100000])
        # Default: draw both sides, robust to inconsistent face winding and open meshes.
        flags = pr.RenderFlags.NONE if self.cull_back_faces else pr.RenderFlags.SKIP_CULL_FACES
        cam = _SkewIntrinsicsCamera(pr, 1.0, 1.0, 0.0, 0.0)
        cam_node = scene.add(cam, pose=np.eye(4))
        out = []
        # Pixels where nothing was drawn get the background colour exactly: drivers convert the
        # float clear colour to 8 bits differently (0.5 -> 128 with Mesa, 127 on NVIDIA's EGL).
        bg_rgb = np.round(np.clip(bg, 0.0, 1.0) * 255).astype(np.uint8)
        near_far = _near_far(v, all_points, c2ws)
        for K, c2w, (znear, zfar) in zip(Ks, c2ws, near_far):
            cam.set(K, float(znear), float(zfar))
            scene.set_pose(cam_node, c2w @ CV_TO_GL)
            rgb, depth = self._renderer.render(scene, flags=flags)
            rgb = np.array(rgb[..., :3])  # writable copy (pyrender may hand out a read-only buffer)
            rgb[depth <= 0] = bg_rgb
            if extra_nodes:
                # Mouse-only depth; the mouse is visible where it is the front-most surface.
                for n in extra_nodes:
                    n.mesh.is_visible = False
                mouse_depth = self._renderer.render(scene, flags=flags | pr.RenderFlags.DEPTH_ONLY)
                for n in extra_nodes:
                    n.mesh.is_visible = True
                mask = (mouse_depth > 0) & (np.abs(depth - mouse_depth) <= 1e-5 * mouse_depth)
            else:
                mask = depth > 0
            depth = np.where(mask, depth, 0.0).astype(np.float32)
            out.append(RenderOutput(rgb=rgb, depth=depth, mask=mask))
        return out


def _near_far(mouse_points: np.ndarray, all_points: np.ndarray, c2ws: np.ndarray) -> np.ndarray:
    """[N, 2] znear/zfar per OpenCV c2w [N, 4, 4] that bracket the scene tightly (depth
    precision); one matrix product for all views (per-view loops cost ~0.5 ms a view)."""
    c2ws = np.asarray(c2ws, dtype=np.float64).reshape(-1, 4, 4)
    axis, C = c2ws[:, :3, 2], c2ws[:, :3, 3]             # optical axes [N, 3], centres [N, 3]
    offset = (C * axis).sum(-1)                           # [N]
    z_all = all_points @ axis.T - offset                   # [P, N] camera z of every point
    zfar = z_all.max(0) * 1.05 + 1e-6
    front_min = np.where(z_all > 0, z_all, np.inf).min(0)
    z_mouse_max = (mouse_points @ axis.T - offset).max(0)
    znear = np.where(np.isfinite(front_min), 0.5 * front_min, 0.5 * z_mouse_max)
    znear = np.maximum(znear, zfar * 1e-4)  # never let near collapse to 0 (the depth buffer would lose all precision)
    return np.stack([znear, zfar], axis=-1)


class _SkewIntrinsicsCamera:
    """Factory for a pyrender IntrinsicsCamera whose projection also carries K's skew K[0, 1]."""

    def __new__(cls, pr, fx, fy, cx, cy):
        class Cam(pr.IntrinsicsCamera):
            skew = 0.0

            def set(self, K, znear, zfar):
                self.fx, self.fy, self.cx, self.cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
                self.skew = float(K[0, 1])
                self.znear, self.zfar = znear, zfar

            def get_projection_matrix(self, width=None, height=None):
                P = super().get_projection_matrix(width, height)
                # OpenCV u = fx x/z + s y/z + cx with y_cv = -y_gl  =>  clip_x gets -2 s / W * y_gl.
                P[0, 1] = -2.0 * self.skew / width
                return P

        return Cam(fx=fx, fy=fy, cx=cx, cy=cy)
