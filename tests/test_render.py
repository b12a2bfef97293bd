"""pyrender mesh renderer: pixel convention, mask vs an independent rasterization, depth vs ray
casting, reprojection, texturing, occluders."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh
from scipy.ndimage import binary_dilation, minimum_filter

from workflow_scripts.cameras import look_at_c2w
from workflow_scripts.render import (Light, MeshRenderer, project_points, rasterize_mask, rasterize_mask_cv2,
                                     split_uv_seams, vertex_normals)

S = 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def renderer():
    with MeshRenderer(S, S) as r:
        yield r


@pytest.fixture(scope="module")
def mouse(mammal_dir):
    """MAMMAL rest mesh, centred, scaled to normalized units (0.31 per model unit)."""
    v = np.loadtxt(mammal_dir / "vertices.txt")
    f = np.loadtxt(mammal_dir / "faces_vert.txt", dtype=np.int64)
    return (v - v.mean(0)) * 0.31, f


def cameras():
    """Three OpenCV cameras (K, c2w) at distance 2.7 with fractional principal points and one with skew."""
    out = []
    for eye, f, cx, cy, skew in [((2.0, 1.0, 1.5), 500.0, 63.3, 64.8, 0.0),
                                 ((-1.5, -2.0, 0.8), 450.0, 60.1, 67.7, 0.0),
                                 ((0.3, 2.5, -0.8), 520.0, 66.5, 61.25, 15.0)]:
        K = np.array([[f, skew, cx], [0, f * 1.02, cy], [0, 0, 1.0]])
        out.append((K, look_at_c2w(np.array(eye) * 2.7 / np.linalg.norm(eye), np.zeros(3))))
    return out


def test_pixel_convention_single_vertex(renderer):
    """A world point projected with K lands in the pixel that renders it (pixel (r, c) covers
    [c, c+1) x [r, r+1), centre (c + 0.5, r + 0.5)); also with skew and fractional principal points.

    We render a small triangle (in-radius 0.2 px) centred on the projection of a point that lies
    0.14 px from a pixel centre: only that pixel's centre is inside it. A half-pixel convention
    error would move it off every pixel centre (empty mask) or into a neighbour.
    """
    rng = np.random.default_rng(0)
    for skew in (0.0, 12.0):
        K = np.array([[300.0, skew, 61.37], [0, 310.0, 66.81], [0, 0, 1]])
        c2w = look_at_c2w([0.4, -2.5, 1.0], [0, 0, 0])
        R, C = c2w[:3, :3], c2w[:3, 3]
        for _ in range(6):
            col, row = rng.integers(20, 100, 2)
            uv = np.array([col + 0.5, row + 0.5]) + rng.choice([-0.1, 0.1], 2)
            z = rng.uniform(2.0, 3.0)
            X = C + R @ (np.linalg.solve(K, [uv[0], uv[1], 1.0]) * z)  # unproject at depth z
            px, _ = project_points(X[None], K, c2w)
            assert np.allclose(px[0], uv)
            ang = np.radians([90.0, 210.0, 330.0])
            corners = uv + 0.4 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
            tri = np.array([C + R @ (np.linalg.solve(K, [u, v, 1.0]) * z) for u, v in corners])
            out = renderer.render(tri, np.array([[0, 1, 2]]), K, c2w)
            rows, cols = np.nonzero(out.mask)
            assert list(zip(rows.tolist(), cols.tolist())) == [(int(row), int(col))]
            assert out.depth[row, col] == pytest.approx(z, rel=1e-4)


@pytest.mark.parametrize("which", ["mouse", "box"])
def test_mask_matches_independent_rasterization(renderer, mouse, which):
    """Rendered mask vs cv2.fillConvexPoly of every projected face (with the 0.5 px shift), IoU >= 0.99."""
    if which == "mouse":
        v, f = mouse
    else:
        box = trimesh.creation.box(extents=(0.3, 0.2, 0.15))
        box.apply_transform(trimesh.transformations.rotation_matrix(0.4, [1, 1, 0]))
        v, f = box.vertices, box.faces
    for K, c2w in cameras():
        out = renderer.render(v, f, K, c2w)
        ref = rasterize_mask_cv2(v, f, K, c2w, S, S)
        assert out.mask.sum() > 200
        assert iou(out.mask, ref) >= 0.985 if which == "mouse" else 0.99
        # The fast NumPy rasterizer used by the pixel-size rule agrees too.
        assert iou(rasterize_mask(v, f, K, c2w, S, S), ref) >= 0.985
        assert out.rgb.dtype == np.uint8 and out.rgb.shape == (S, S, 3)
        assert out.depth.dtype == np.float32 and np.all(out.depth[~out.mask] == 0)


def test_mask_matches_independent_rasterization_mouse_256(mouse):
    """The bar of the brief at a resolution where the mouse is not mostly boundary: IoU >= 0.99."""
    v, f = mouse
    with MeshRenderer(2 * S, 2 * S) as r2:
        for K, c2w in cameras():
            K = np.diag([2.0, 2.0, 1.0]) @ K
            out = r2.render(v, f, K, c2w)
            assert iou(out.mask, rasterize_mask_cv2(v, f, K, c2w, 2 * S, 2 * S)) >= 0.99


def first_hits(origin: np.ndarray, dirs: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Nearest ray parameter t [N] (inf = miss) of rays origin + t dirs against triangles [F, 3, 3]
    (Moeller-Trumbore; trimesh's ray module needs rtree, which is not installed)."""
    a, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    out = np.full(len(dirs), np.inf)
    for i, d in enumerate(dirs):
        p = np.cross(d, e2)
        det = np.einsum("fk,fk->f", e1, p)
        ok = np.abs(det) > 1e-15
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = origin - a
        u = np.einsum("fk,fk->f", s, p) * inv
        q = np.cross(s, e1)
        v = (q @ d) * inv
        t = np.einsum("fk,fk->f", e2, q) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        if hit.any():
            out[i] = t[hit].min()
    return out


def test_depth_matches_ray_casting(renderer, mouse):
    v, f = mouse
    tris = v[f]
    rng = np.random.default_rng(1)
    compared, good = 0, 0
    for K, c2w in cameras():
        out = renderer.render(v, f, K, c2w)
        rows, cols = np.nonzero(out.mask)
        pick = rng.choice(len(rows), size=min(100, len(rows)), replace=False)
        r, c = rows[pick], cols[pick]
        pix = np.stack([c + 0.5, r + 0.5, np.ones(len(r))], axis=1)
        dirs = (pix @ np.linalg.inv(K).T) @ c2w[:3, :3].T  # camera z component of each = 1
        t = first_hits(c2w[:3, 3], dirs, tris)
        hit = np.isfinite(t)
        z_ray = t[hit]  # the direction has unit camera z, so t is the camera z of the hit
        z_gl = out.depth[r[hit], c[hit]]
        compared += int(hit.sum())
        good += int((np.abs(z_gl - z_ray) / z_ray < 1e-3).sum())
    assert compared >= 280
    # A pixel centre within float rounding of a mesh edge may hit the neighbouring surface.
    assert good / compared >= 0.99


def test_vertices_reproject_onto_mask(mouse):
    """Vertices projected with K / c2w land on the rendered mask and never in front of the
    rendered surface. The tail and digits are thinner than a pixel (no pixel centre covered), so
    "on the mask" allows one pixel (8-neighbourhood); at 2x resolution of the other tests."""
    v, f = mouse
    S2 = 2 * S
    with MeshRenderer(S2, S2) as r2:
        for K, c2w in cameras():
            K = np.diag([2.0, 2.0, 1.0]) @ K  # same view at twice the resolution (corner-origin pixels)
            out = r2.render(v, f, K, c2w)
            px, z = project_points(v, K, c2w)
            c, r = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
            assert np.all(z > 0) and c.min() >= 0 and r.min() >= 0 and c.max() < S2 and r.max() < S2
            near = binary_dilation(out.mask, structure=np.ones((3, 3), bool))
            assert near[r, c].mean() >= 0.99
            on = out.mask[r, c]
            assert on.mean() > 0.85
            # The rendered surface is at or in front of every vertex (nearest surface within one
            # pixel, as a vertex on an occluding edge covers only part of its pixel).
            front = minimum_filter(np.where(out.mask, out.depth, np.inf), size=3)
            assert (z[on] >= front[r[on], c[on]] * (1 - 2e-3)).mean() >= 0.99
            # and the visible vertices (the surface at their pixel) are where the depth map says.
            vis = on & (np.abs(z - out.depth[r, c]) < 0.01 * z)
            assert vis.sum() > 0.2 * len(v)


def test_colors_background_and_lights(renderer):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    K = np.array([[300.0, 0, S / 2], [0, 300.0, S / 2], [0, 0, 1]])
    c2w = look_at_c2w([0, -2.7, 0], [0, 0, 0])
    red = np.tile([1.0, 0.0, 0.0], (len(sphere.vertices), 1))
    dark = renderer.render(sphere.vertices, sphere.faces, K, c2w, vertex_colors=red, lights=[],
                           ambient=(0.3, 0.3, 0.3), background=(0.0, 0.5, 1.0))
    assert np.all(dark.rgb[~dark.mask] == np.array([0, 128, 255]))  # background colour exactly
    lit = renderer.render(sphere.vertices, sphere.faces, K, c2w, vertex_colors=red,
                          lights=[Light("directional", direction=(0, 1, 0), intensity=4.0)],
                          ambient=(0.3, 0.3, 0.3), background=(0.0, 0.5, 1.0))
    m = lit.mask & dark.mask
    assert m.sum() > 1000
    rgb = lit.rgb[m].astype(float)
    assert rgb[:, 0].mean() > 5 * (rgb[:, 1].mean() + 1) and rgb[:, 0].mean() > 5 * (rgb[:, 2].mean() + 1)
    assert rgb[:, 0].mean() > dark.rgb[m][:, 0].astype(float).mean() + 20  # the light adds brightness
    # A point light right in front of the sphere brightens it like a directional one.
    pt = renderer.render(sphere.vertices, sphere.faces, K, c2w, vertex_colors=red,
                         lights=[Light("point", position=(0, -1.5, 0), intensity=4.0 * 1.2**2)], ambient=(0.3, 0.3, 0.3))
    assert pt.rgb[m][:, 0].astype(float).mean() > dark.rgb[m][:, 0].astype(float).mean() + 20


def test_light_pose_points_along_direction():
    d = np.array([0.3, -0.5, -0.8])
    pose = Light("directional", direction=d).pose()
    assert np.allclose(-pose[:3, 2], d / np.linalg.norm(d))  # pyrender lights shine along -z
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3))
    assert np.allclose(Light("point", position=(1, 2, 3)).pose()[:3, 3], [1, 2, 3])


def test_uv_seam_split_and_texture(renderer):
    # Two triangles sharing an edge whose vertices have different UVs in each face (a seam).
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    faces_uv = np.array([[0, 1, 2], [4, 5, 3]])
    vi, ti, fs = split_uv_seams(faces, faces_uv)
    assert np.array_equal(vi[fs], faces) and np.array_equal(ti[fs], faces_uv)
    assert len(vi) == 6  # vertices 0 and 2 are split

    # A square facing the camera, uv (OBJ convention: v up) covering the whole texture whose top
    # half is red and bottom half green: the top of the rendered square must be red.
    verts = np.array([[-0.3, 0, -0.3], [0.3, 0, -0.3], [0.3, 0, 0.3], [-0.3, 0, 0.3]])  # z up in world
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32, :, 0] = 255
    tex[32:, :, 1] = 255
    K = np.array([[300.0, 0, S / 2], [0, 300.0, S / 2], [0, 0, 1]])
    c2w = look_at_c2w([0, -2.7, 0], [0, 0, 0])
    out = renderer.render(verts, np.array([[0, 1, 2], [0, 2, 3]]), K, c2w, uv=uv, faces_uv=np.array([[0, 1, 2], [0, 2, 3]]),
                          texture=tex, ambient=(1.0, 1.0, 1.0), background=(0, 0, 0))
    rows = np.nonzero(out.mask.any(axis=1))[0]
    top, bottom = out.rgb[rows[2], S // 2].astype(int), out.rgb[rows[-3], S // 2].astype(int)
    assert top[0] > 100 and top[1] < 30
    assert bottom[1] > 100 and bottom[0] < 30


def test_extra_mesh_occludes_mouse(renderer, mouse):
    v, f = mouse
    K, c2w = cameras()[0]
    alone = renderer.render(v, f, K, c2w)
    # A thin wall between the camera and half of the mouse, plus a floor below it.
    C = c2w[:3, 3]
    wall = trimesh.creation.box(extents=(0.05, 0.05, 0.05))
    wall.apply_translation(0.5 * C + 0.02 * c2w[:3, 0])
    floor = trimesh.creation.box(extents=(3.0, 3.0, 0.01))
    floor.apply_translation([0, 0, v[:, 2].min() - 0.01])
    out = renderer.render(v, f, K, c2w, extra_meshes=[wall, floor])
    wall_sil = rasterize_mask(wall.vertices, wall.faces, K, c2w, S, S)
    assert (alone.mask & wall_sil).sum() > 50  # the wall really hides part of the mouse
    expected = alone.mask & ~wall_sil
    assert iou(out.mask, expected) >= 0.99
    assert np.allclose(out.depth[out.mask], alone.depth[out.mask], rtol=1e-5)
    assert np.all(out.depth[~out.mask] == 0)
    # The floor shows in rgb but never in the mask.
    floor_only = ~alone.mask & ~wall_sil & rasterize_mask(floor.vertices, floor.faces, K, c2w, S, S)
    assert floor_only.sum() > 100 and not out.mask[floor_only].any()
    assert np.any(out.rgb[floor_only] != 255)


def test_vertex_normals_of_sphere():
    s = trimesh.creation.icosphere(subdivisions=4)
    n = vertex_normals(s.vertices, s.faces)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
    assert np.allclose(n, s.vertices / np.linalg.norm(s.vertices, axis=1, keepdims=True), atol=0.01)


def test_bad_input_rejected(renderer):
    K, c2w = cameras()[0]
    with pytest.raises(ValueError, match="only 3 vertices"):
        renderer.render(np.zeros((3, 3)), np.array([[0, 1, 5]]), K, c2w)
    with pytest.raises(ValueError, match="NaN"):
        renderer.render(np.full((3, 3), np.nan), np.array([[0, 1, 2]]), K, c2w)


def test_background_exact_whatever_the_driver_writes_for_the_clear_colour():
    """NVIDIA's EGL clears 0.5 to 127, Mesa to 128 (H200, 2026-11-27): MeshRenderer sets the
    pixels where nothing was drawn itself. Simulated here by a driver that clears one level darker."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    K = np.array([[300.0, 0, S / 2], [0, 300.0, S / 2], [0, 0, 1]])
    c2w = look_at_c2w([0, -2.7, 0], [0, 0, 0])
    with MeshRenderer(S, S) as r:
        r._ensure()
        real = r._renderer.render

        def off_by_one(scene, flags):
            out = real(scene, flags=flags)
            if isinstance(out, tuple):
                rgb, depth = out
                rgb = rgb.copy()
                rgb[depth <= 0] -= 1
                return rgb, depth
            return out

        r._renderer.render = off_by_one
        out = r.render(sphere.vertices, sphere.faces, K, c2w, background=(0.0, 0.5, 1.0))
    assert out.mask.any() and np.all(out.rgb[~out.mask] == np.array([0, 128, 255]))


def test_uv_seam_split_cache_follows_the_topology():
    from workflow_scripts.render import _split_uv_seams, split_uv_seams

    faces = np.array([[0, 1, 2], [2, 1, 3]])
    fuv = np.array([[0, 1, 2], [5, 1, 3]])
    first = split_uv_seams(faces, fuv)
    assert split_uv_seams(faces, fuv) is first  # reused
    fuv[1, 0] = 2  # edited in place: the cache must notice
    got = split_uv_seams(faces, fuv)
    assert got is not first
    uncached = _split_uv_seams.__wrapped__(faces.astype(np.int64).tobytes(), fuv.astype(np.int64).tobytes(), faces.shape)
    for g, want in zip(got, uncached):
        np.testing.assert_array_equal(g, want)
    np.testing.assert_array_equal(got[0][got[2]], faces)  # render vertices map back to the mesh
    np.testing.assert_array_equal(got[1][got[2]], fuv)


def _pyrender_readback(r: MeshRenderer) -> MeshRenderer:
    """r, reading its framebuffer back through pyrender's own ``_read_main_framebuffer`` (blits,
    flipped copies, boolean-indexed depth) instead of MeshRenderer's fast readback."""
    r._ensure()
    inner = r._renderer._renderer
    inner.__class__ = inner.__class__.__mro__[1]  # the pyrender Renderer the fast one derives from
    return r


@pytest.mark.parametrize("pack_invert", [True, False])
def test_fast_readback_equals_pyrender_readback(mouse, pack_invert):
    """The fast readback (no blit, rows read top-down or flipped on copy, depth linearized in
    place) gives pyrender's numbers exactly: rgb, depth and mask, textured and vertex-coloured,
    culled, with extra meshes, at a size whose RGB rows are not a multiple of 4 bytes."""
    v, f = mouse
    W, H = 101, 67
    Ks = np.array([np.array([[160.0, s, 50.3], [0, 150.0, 33.8], [0, 0, 1]]) for s in (0.0, 9.0)] * 2)
    c2ws = np.array([K_c2w[1] for K_c2w in cameras()] + [look_at_c2w([0.2, -2.6, 0.9], [0, 0, 0])])
    rng = np.random.default_rng(3)
    tex = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    uv = rng.uniform(0, 1, (len(v), 2))
    floor = trimesh.creation.box(extents=(3.0, 3.0, 0.01))
    floor.apply_translation([0, 0, v[:, 2].min() + 0.02])
    lights = [Light("directional", direction=(0.3, 0.2, -1.0), intensity=2.0), Light("point", position=(1, -1, 2), intensity=9.0)]
    looks = [dict(vertex_colors=rng.uniform(0, 1, (len(v), 3))), dict(uv=uv, faces_uv=f, texture=tex),
             dict(extra_meshes=[floor], background=(0.5, 0.25, 0.0))]
    with MeshRenderer(W, H, cull_back_faces=True) as fast, _pyrender_readback(MeshRenderer(W, H, cull_back_faces=True)) as ref:
        fast._ensure()
        fast._renderer._renderer._mouse_facelift_pack_invert = pack_invert or None
        for look in looks:
            a = fast.render_batch(v, f, Ks, c2ws, lights=lights, **look)
            b = ref.render_batch(v, f, Ks, c2ws, lights=lights, **look)
            assert a.mask.any() and not a.mask.all()
            for name in ("rgb", "depth", "mask"):
                x, y = getattr(a, name), getattr(b, name)
                assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (name, look.keys())
        assert type(fast._renderer._renderer).__name__.startswith("FastReadback")


def test_render_views_are_views_of_one_batch(renderer, mouse):
    v, f = mouse
    (K0, c0), (K1, c1), _ = cameras()
    views = renderer.render_views(v, f, np.stack([K0, K1]), np.stack([c0, c1]))
    batch = renderer.render_batch(v, f, np.stack([K0, K1]), np.stack([c0, c1]))
    assert len(views) == len(batch) == 2
    for i, o in enumerate(views):
        assert o.rgb.shape == (S, S, 3) and o.depth.dtype == np.float32 and o.mask.dtype == bool
        assert np.array_equal(o.rgb, batch.rgb[i]) and np.array_equal(o.depth, batch.depth[i])
        assert np.array_equal(o.mask, batch.mask[i])
    assert np.shares_memory(views[0].rgb, views[1].rgb.base if views[1].rgb.base is not None else views[1].rgb)


def test_skinny_matmul_is_matmul():
    from workflow_scripts.render import skinny_matmul

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(14522, 3)), rng.normal(size=(32, 3))
    assert np.array_equal(skinny_matmul(a, b.T), a @ b.T)  # bit for bit, on one BLAS thread
