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
import sys
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


@dataclasses.dataclass
class RenderBatch:
    """N rendered views of one scene as three arrays (what :meth:`MeshRenderer.render_batch`
    fills in place, without per-view copies): rgb uint8 [N, H, W, 3], depth float32 [N, H, W],
    mask bool [N, H, W]; view i is ``RenderOutput(rgb[i], depth[i], mask[i])``."""

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, i: int) -> RenderOutput:
        """View i as a RenderOutput (views into the batch's arrays, not copies)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"view {i} of a batch of {len(self)}")
        return RenderOutput(rgb=self.rgb[i], depth=self.depth[i], mask=self.mask[i])

    def views(self) -> list[RenderOutput]:
        """One RenderOutput per view (views into the batch's arrays, not copies)."""
        return [self[i] for i in range(len(self))]


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


def skinny_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [M, k] @ b [k, n] for large M, small k and n, in row blocks that OpenBLAS computes on
    one thread (below its m * n * k = 262144 threading threshold); the same numbers as ``a @ b``.
    One multithreaded call of such a skinny product took 8-10 ms instead of 0.3 ms on a 2-core
    machine, and OpenBLAS's threads then spin for a while, against the renderer's threads."""
    rows = max(1, 200_000 // max(1, b.shape[0] * b.shape[1]))
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    for i in range(0, len(a), rows):
        np.matmul(a[i:i + rows], b, out=out[i:i + rows])
    return out


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
    :meth:`close`. :meth:`render_batch` (and :meth:`render_views`) render many cameras of one
    scene and upload the mesh once (only the camera changes between views), which is what
    synthetic data needs.
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
            inner = self._renderer._renderer
            inner.__class__ = _fast_readback_renderer(type(inner))
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

    def render_views(self, vertices: np.ndarray, faces: np.ndarray, Ks: np.ndarray, c2ws: np.ndarray,
                     **kwargs) -> list[RenderOutput]:
        """Render the mesh from N OpenCV cameras: one :class:`RenderOutput` per camera (views into
        one :class:`RenderBatch`; arguments as :meth:`render_batch`)."""
        return self.render_batch(vertices, faces, Ks, c2ws, **kwargs).views()

    def render_batch(self, vertices: np.ndarray, faces: np.ndarray, Ks: np.ndarray, c2ws: np.ndarray, *,
                     vertex_colors: np.ndarray | None = None, uv: np.ndarray | None = None,
                     faces_uv: np.ndarray | None = None, texture: np.ndarray | None = None,
                     lights: Sequence[Light] = (), ambient: Sequence[float] = (0.3, 0.3, 0.3),
                     background: Sequence[float] = (1.0, 1.0, 1.0),
                     extra_meshes: Sequence[trimesh.Trimesh] = ()) -> RenderBatch:
        """Render the mesh from N OpenCV cameras into one :class:`RenderBatch`.

        Args:
            vertices: [V, 3] world. faces: [F, 3] vertex indices.
            Ks: [N, 3, 3] intrinsics (pixels, corner-origin convention; skew allowed).
            c2ws: [N, 4, 4] OpenCV camera-to-world.
            vertex_colors: [V, 3] float in [0, 1] (ignored when ``texture`` is given).
            uv: [Vt, 2] texture coords (OBJ convention, v up), faces_uv: [F, 3], texture: uint8 [Ht, Wt, 3].
            lights: world lights; ambient: RGB [3]; background: RGB [3] in [0, 1].
            extra_meshes: other geometry (arena floor/walls) that shades, occludes and shows in rgb
                but never counts as mouse in ``mask``/``depth``.

        The mesh is uploaded once (only the camera changes between views), and each view is read
        back from the framebuffer straight into the batch's arrays (``_fast_readback_renderer``).
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
        extra_points = [np.asarray(m.bounds, float) for m in extra_meshes] + \
                       [np.asarray(m.vertices, float) for m in extra_meshes if len(m.vertices) < 100000]
        # Default: draw both sides, robust to inconsistent face winding and open meshes.
        flags = pr.RenderFlags.NONE if self.cull_back_faces else pr.RenderFlags.SKIP_CULL_FACES
        cam = _SkewIntrinsicsCamera(pr, 1.0, 1.0, 0.0, 0.0)
        cam_node = scene.add(cam, pose=np.eye(4))
        n, h, w = len(Ks), self.height, self.width
        rgb = np.empty((n, h, w, 3), np.uint8)
        depth = np.empty((n, h, w), np.float32)
        mouse_depth = np.empty((n, h, w), np.float32) if extra_nodes else None
        near_far = _near_far(v, extra_points, c2ws)
        for i, (K, c2w, (znear, zfar)) in enumerate(zip(Ks, c2ws, near_far)):
            cam.set(K, float(znear), float(zfar))
            scene.set_pose(cam_node, c2w @ CV_TO_GL)
            self._render_into(scene, flags, rgb[i], depth[i])
            if extra_nodes:
                # Mouse-only depth; the mouse is visible where it is the front-most surface.
                for node in extra_nodes:
                    node.mesh.is_visible = False
                self._render_into(scene, flags | pr.RenderFlags.DEPTH_ONLY, None, mouse_depth[i])
                for node in extra_nodes:
                    node.mesh.is_visible = True
        # Pixels where nothing was drawn get the background colour exactly: drivers convert the
        # float clear colour to 8 bits differently (0.5 -> 128 with Mesa, 127 on NVIDIA's EGL).
        bg_rgb = np.round(np.clip(bg, 0.0, 1.0) * 255).astype(np.uint8)
        _fill_background(rgb, depth, bg_rgb, trust_clear=not extra_nodes)
        if extra_nodes:
            mask = (mouse_depth > 0) & (np.abs(depth - mouse_depth) <= 1e-5 * mouse_depth)
        else:
            mask = depth > 0
        if np.count_nonzero(depth) != np.count_nonzero(mask):  # else depth is already 0 wherever mask is False
            np.copyto(depth, np.float32(0.0), where=~mask)
        return RenderBatch(rgb=rgb, depth=depth, mask=mask)

    def _render_into(self, scene, flags, rgb_out: np.ndarray | None, depth_out: np.ndarray) -> None:
        """Render one view into rgb_out (uint8 [H, W, 3]; None with DEPTH_ONLY) and depth_out
        (float32 [H, W], camera z, 0 where nothing was drawn), through ``OffscreenRenderer.render``.
        The fast readback writes into them directly; any other result (a renderer it does not
        apply to) is copied in."""
        inner = getattr(self._renderer, "_renderer", None)
        target = (rgb_out, depth_out)
        if inner is not None:
            inner._mouse_facelift_target = target
        try:
            out = self._renderer.render(scene, flags=flags)
        finally:
            if inner is not None:
                inner._mouse_facelift_target = None
        if rgb_out is None:
            if out is not depth_out:
                np.copyto(depth_out, out)
            return
        got_rgb, got_depth = out
        if got_rgb is not rgb_out:
            np.copyto(rgb_out, got_rgb[..., :3])
        if got_depth is not depth_out:
            np.copyto(depth_out, got_depth)


def _fill_background(rgb: np.ndarray, depth: np.ndarray, bg_rgb: np.ndarray, trust_clear: bool) -> None:
    """rgb[depth <= 0] = bg_rgb, in place (rgb uint8 [..., 3], depth float32 [...]).

    trust_clear: only opaque geometry was drawn, so every pixel with depth <= 0 (nothing drawn)
    still holds the clear colour, one value for all of them: when the driver stored the
    background exactly (Mesa does), there is nothing to do, and one pixel tells (a masked fill
    of a 32 x 256 px sample costs ~20-30 ms)."""
    empty = depth <= 0
    if trust_clear:
        i = int(np.argmax(empty.reshape(-1)))
        if not empty.reshape(-1)[i] or np.array_equal(rgb.reshape(-1, rgb.shape[-1])[i], bg_rgb):
            return
    np.copyto(rgb, bg_rgb, where=empty[..., None])


def _near_far(mouse_points: np.ndarray, extra_points: Sequence[np.ndarray], c2ws: np.ndarray) -> np.ndarray:
    """[N, 2] znear/zfar per OpenCV c2w [N, 4, 4] that bracket the scene (the mouse's points
    [P, 3] and any extra meshes' point sets) tightly (depth precision); one matrix product for
    all views (per-view loops cost ~0.5 ms a view), computed on one thread (``skinny_matmul``)."""
    c2ws = np.asarray(c2ws, dtype=np.float64).reshape(-1, 4, 4)
    axis, C = c2ws[:, :3, 2], c2ws[:, :3, 3]             # optical axes [N, 3], centres [N, 3]
    offset = (C * axis).sum(-1)                           # [N]
    z_mouse = skinny_matmul(mouse_points, axis.T) - offset          # [P, N] camera z of every mouse point
    if len(extra_points):
        z_all = np.concatenate([z_mouse, skinny_matmul(np.concatenate(extra_points), axis.T) - offset])
    else:
        z_all = z_mouse
    zfar = z_all.max(0) * 1.05 + 1e-6
    front_min = np.where(z_all > 0, z_all, np.inf).min(0)
    z_mouse_max = z_mouse.max(0)
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


# --------------------------------------------------------------------------------------------
# Framebuffer readback straight into the caller's arrays
# --------------------------------------------------------------------------------------------
GL_PACK_INVERT_MESA = 0x8758  # GL_MESA_pack_invert: glReadPixels returns rows top to bottom


@functools.lru_cache(maxsize=None)
def _fast_readback_renderer(base: type) -> type:
    """A subclass of pyrender's ``Renderer`` (``base``) whose offscreen readback writes into the
    arrays ``MeshRenderer._render_into`` hands it (``_mouse_facelift_target``), with the same
    numbers as pyrender's ``_read_main_framebuffer`` (tests/test_render.py) at less cost:

    * single-sample framebuffer (gl.FRAMEBUFFER_SAMPLES = 1): it reads the buffer drawn into,
      where pyrender first blits it (colour and depth) into a second one, a plain copy;
    * with GL_MESA_pack_invert (Mesa: OSMesa, llvmpipe) glReadPixels returns the rows top to
      bottom, so there is no flipped copy; elsewhere (NVIDIA EGL) the rows are flipped on copy;
    * RGB and depth are read into the target arrays, and the depth is linearized in place with
      pyrender's float32 formula (whole-image operations instead of boolean-indexed copies).

    Everything else (multisample diagnostics, RGBA or segmentation renders, no target) goes to
    pyrender's own readback."""
    from OpenGL import GL  # noqa: PLC0415  (PyOpenGL is loaded by now: base came from pyrender)

    flags_cls = sys.modules[base.__module__].RenderFlags

    class FastReadbackRenderer(base):
        _mouse_facelift_target = None
        _mouse_facelift_pack_invert = None

        def _read_main_framebuffer(self, scene, flags):
            target = self._mouse_facelift_target
            if (target is None or int(getattr(self, "framebuffer_samples", 1)) != 1 or sys.platform == "darwin"
                    or flags & (flags_cls.RGBA | flags_cls.SEG)):
                return super()._read_main_framebuffer(scene, flags)
            rgb_out, depth_out = target
            w, h = self._main_fb_dims
            depth_only = bool(flags & flags_cls.DEPTH_ONLY)
            if depth_out.shape != (h, w) or depth_out.dtype != np.float32 or not depth_out.flags.c_contiguous or (
                    not depth_only and (rgb_out is None or rgb_out.shape != (h, w, 3) or rgb_out.dtype != np.uint8
                                        or not rgb_out.flags.c_contiguous)):
                return super()._read_main_framebuffer(scene, flags)
            if self._mouse_facelift_pack_invert is None:
                n_ext = int(GL.glGetIntegerv(GL.GL_NUM_EXTENSIONS))
                self._mouse_facelift_pack_invert = any(
                    GL.glGetStringi(GL.GL_EXTENSIONS, i) == b"GL_MESA_pack_invert" for i in range(n_ext))
            invert = self._mouse_facelift_pack_invert
            GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, self._main_fb_ms)  # single-sample: the drawn buffer
            for name, value in ((GL.GL_PACK_ALIGNMENT, 1), (GL.GL_PACK_ROW_LENGTH, 0), (GL.GL_PACK_SKIP_PIXELS, 0),
                                (GL.GL_PACK_SKIP_ROWS, 0)):
                GL.glPixelStorei(name, value)
            if invert:
                GL.glPixelStorei(GL_PACK_INVERT_MESA, 1)
            try:
                _read_pixels(GL, w, h, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT, depth_out, invert)
                if not depth_only:
                    _read_pixels(GL, w, h, GL.GL_RGB, GL.GL_UNSIGNED_BYTE, rgb_out, invert)
            finally:
                if invert:
                    GL.glPixelStorei(GL_PACK_INVERT_MESA, 0)
            cam = scene.main_camera_node.camera
            _linearize_depth(depth_out, cam.znear, cam.zfar)
            return depth_out if depth_only else (rgb_out, depth_out)

    FastReadbackRenderer.__name__ = FastReadbackRenderer.__qualname__ = f"FastReadback{base.__name__}"
    return FastReadbackRenderer


def _read_pixels(GL, w: int, h: int, fmt: int, dtype: int, out: np.ndarray, top_down: bool) -> None:
    """glReadPixels of the whole w x h read framebuffer into ``out`` (C-contiguous, rows top to
    bottom); top_down: GL_PACK_INVERT_MESA is on, else the bottom-up rows are flipped on copy."""
    if top_down:
        GL.glReadPixels(0, 0, w, h, fmt, dtype, out.ctypes.data)
    else:
        tmp = np.empty_like(out)
        GL.glReadPixels(0, 0, w, h, fmt, dtype, tmp.ctypes.data)
        np.copyto(out, tmp[::-1])


def _linearize_depth(z: np.ndarray, z_near: float, z_far: float | None) -> None:
    """Window depth z in [0, 1] (float32, in place) -> camera z, 0 where z == 1 (nothing drawn):
    pyrender's ``_read_main_framebuffer`` formula in the same float32 operations, so the same
    numbers, on the whole image instead of boolean-indexed copies."""
    empty = z == 1.0
    np.multiply(z, 2.0, out=z)
    np.subtract(z, 1.0, out=z)
    with np.errstate(divide="ignore"):
        if z_far is None:
            np.subtract(1.0, z, out=z)
            np.divide(2 * z_near, z, out=z)
        else:
            np.multiply(z, z_far - z_near, out=z)
            np.subtract(z_far + z_near, z, out=z)
            np.divide(2.0 * z_near * z_far, z, out=z)
    np.copyto(z, np.float32(0.0), where=empty)
