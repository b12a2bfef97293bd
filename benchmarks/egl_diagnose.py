"""Pixel-centre diagnosis of pyrender's offscreen rendering, per framebuffer sample count.

Renders the scenes of the render tests that failed under EGL on an H100 (tests/test_render.py,
tests/test_synthetic.py) through ``MeshRenderer`` with framebuffer samples 4 (pyrender 0.1.45's
own setting) and 1 (the pipeline's, ``workflow_scripts.gl.FRAMEBUFFER_SAMPLES``), and prints per
setting: the GL renderer, the sample count the driver allocated, the MSAA sample positions,
which sample pyrender's depth resolve keeps (a hard edge swept across a pixel), single-pixel
triangles drawn, mask IoU against the reference rasterization (``rasterize_mask_cv2``), depth
against ray casting, exact background outside the mask, and ms per view. Every section catches
its own errors, so one run answers as much as it can. Works on any platform:

    MOUSE_FACELIFT_GL=egl .venv/bin/python benchmarks/egl_diagnose.py     # GPU
    .venv/bin/python benchmarks/egl_diagnose.py                           # OSMesa (llvmpipe)

Pass bars (from the tests): single-pixel triangles 12/12, mouse IoU >= 0.985 at 128 px and
>= 0.99 at 256 px, box IoU >= 0.99, depth >= 0.99 within 1e-3, background exact 1.000.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_render import S, cameras, first_hits  # noqa: E402  (the failing tests' scenes)
from workflow_scripts import gl  # noqa: E402
from workflow_scripts.cameras import look_at_c2w  # noqa: E402
from workflow_scripts.render import MeshRenderer, project_points, rasterize_mask_cv2  # noqa: E402


def say(*args) -> None:
    print(*args, flush=True)


def section(name: str):
    """Decorator: run a diagnostic section, print its traceback instead of stopping the script."""
    def wrap(fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception:  # a diagnostic keeps going: the next section may still answer
                tb = traceback.format_exc().splitlines(True)
                say(f"  [{name}] FAILED:\n" + "".join("    " + line for line in tb))
            say(f"  [{name}] {time.perf_counter() - t0:.1f} s")
        return run
    return wrap


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def mesh_renderer(size: int, samples: int) -> MeshRenderer:
    """A MeshRenderer (the pipeline's renderer) whose framebuffer has ``samples`` samples."""
    r = MeshRenderer(size, size)
    r._ensure()
    gl.set_framebuffer_samples(r._renderer, samples)
    return r


def load_mouse(mammal_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """MAMMAL rest mesh as in tests/test_render.py (centred, 0.31 per model unit)."""
    v = np.loadtxt(mammal_dir / "vertices.txt")
    f = np.loadtxt(mammal_dir / "faces_vert.txt", dtype=np.int64)
    return (v - v.mean(0)) * 0.31, f


# ---------------------------------------------------------------------------------------------
@section("gl info")
def gl_info(pr) -> None:
    from OpenGL import GL

    r = pr.OffscreenRenderer(8, 8)
    r._platform.make_current()
    for name in ("GL_VENDOR", "GL_RENDERER", "GL_VERSION"):
        say(f"  {name}: {GL.glGetString(getattr(GL, name)).decode(errors='replace')}")
    say(f"  GL_MAX_SAMPLES: {int(GL.glGetIntegerv(GL.GL_MAX_SAMPLES))}")
    if os.environ.get("PYOPENGL_PLATFORM") == "egl":
        from OpenGL import EGL

        for name in ("EGL_VENDOR", "EGL_VERSION"):
            val = EGL.eglQueryString(r._platform._egl_display, getattr(EGL, name))
            say(f"  {name}: {val.decode(errors='replace') if val else val}")
    say(f"  default framebuffer samples (gl.FRAMEBUFFER_SAMPLES): {gl.FRAMEBUFFER_SAMPLES}")
    r.delete()


def _flat_scene(pr, quads_px: list, size: int = 32, f: float = 100.0, z: float = 2.0):
    """A scene of white quads given by pixel corners [(u, v) x 4] at depth z, camera at the origin."""
    def P(u, v):
        return [(u - size / 2) / f * z, -(v - size / 2) / f * z, -z]
    verts, faces = [], []
    for q in quads_px:
        base = len(verts)
        verts += [P(*c) for c in q]
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    scene = pr.Scene(bg_color=[0, 0, 0, 1], ambient_light=[1.0, 1.0, 1.0])
    scene.add(pr.Mesh.from_trimesh(trimesh.Trimesh(np.array(verts), np.array(faces), process=False), smooth=False))
    scene.add(pr.IntrinsicsCamera(f, f, size / 2, size / 2, znear=0.5, zfar=10.0), pose=np.eye(4))
    return scene


@section("sample positions / depth resolve")
def sample_positions(pr, samples: int) -> None:
    """Sweep a hard edge across pixel 10 (x, then y; image coordinates, y down, offsets from the
    pixel's top-left corner): colour steps = coverage of the samples, the offset where depth
    switches on = position of the sample the depth resolve keeps (0.5 = pixel centre)."""
    from OpenGL import GL

    r = pr.OffscreenRenderer(32, 32)
    gl.set_framebuffer_samples(r, samples)
    fr = np.round(np.arange(0.025, 1.0, 0.05), 3)
    flags = pr.RenderFlags.SKIP_CULL_FACES | pr.RenderFlags.FLAT
    out = {}
    for axis in ("x", "y"):
        steps, depth_on = [], None
        for a in fr:
            e = 10 + a
            quad = [(-5, -5), (e, -5), (e, 40), (-5, 40)] if axis == "x" else [(-5, -5), (40, -5), (40, e), (-5, e)]
            rgb, d = r.render(_flat_scene(pr, [quad]), flags=flags)
            val, on = (rgb[5, 10, 1], d[5, 10] > 0) if axis == "x" else (rgb[10, 5, 1], d[10, 5] > 0)
            steps.append(int(val))
            if on and depth_on is None:
                depth_on = a
        out[axis] = (steps, depth_on)
        say(f"  {axis}-edge at 10+a, a = {fr[0]}..{fr[-1]} step 0.05: colour {steps}")
        say(f"    depth switches on at a = {depth_on}  => kept depth sample at {axis} offset ~ "
            f"{'never' if depth_on is None else f'{depth_on - 0.05:.3f}..{depth_on:.3f}'} (centre = 0.5)")
    say(f"  GL_RENDERBUFFER_SAMPLES = {gl.framebuffer_samples(r)}")
    if samples > 1:
        r._platform.make_current()
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, int(r._renderer._main_fb_ms))
        n = int(GL.glGetIntegerv(GL.GL_SAMPLES))
        pos = [tuple(round(float(x), 4) for x in GL.glGetMultisamplefv(GL.GL_SAMPLE_POSITION, i)) for i in range(n)]
        say(f"  GL_SAMPLE_POSITION (GL window coords, y UP from the pixel's bottom): {pos}")
    r.delete()


@section("single-pixel triangles (test_pixel_convention_single_vertex)")
def single_pixel(samples: int) -> None:
    rng = np.random.default_rng(0)
    ok = total = 0
    r = mesh_renderer(S, samples)
    try:
        for skew in (0.0, 12.0):
            K = np.array([[300.0, skew, 61.37], [0, 310.0, 66.81], [0, 0, 1]])
            c2w = look_at_c2w([0.4, -2.5, 1.0], [0, 0, 0])
            R, C = c2w[:3, :3], c2w[:3, 3]
            for _ in range(6):
                col, row = rng.integers(20, 100, 2)
                uv = np.array([col + 0.5, row + 0.5]) + rng.choice([-0.1, 0.1], 2)
                z = rng.uniform(2.0, 3.0)
                ang = np.radians([90.0, 210.0, 330.0])
                corners = uv + 0.4 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
                tri = np.array([C + R @ (np.linalg.solve(K, [u, v, 1.0]) * z) for u, v in corners])
                out = r.render(tri, np.array([[0, 1, 2]]), K, c2w)
                rows, cols = np.nonzero(out.mask)
                total += 1
                ok += list(zip(rows.tolist(), cols.tolist())) == [(int(row), int(col))]
    finally:
        r.close()
    say(f"  drawn exactly at their pixel: {ok}/{total}")


@section("mask IoU vs reference rasterization (test_mask_matches_*)")
def mask_iou(samples: int, mouse) -> None:
    box = trimesh.creation.box(extents=(0.3, 0.2, 0.15))
    box.apply_transform(trimesh.transformations.rotation_matrix(0.4, [1, 1, 0]))
    for size, scale in ((S, 1.0), (2 * S, 2.0)):
        r = mesh_renderer(size, samples)
        try:
            meshes = [("mouse", *mouse)] + ([("box", box.vertices, box.faces)] if size == S else [])
            for name, v, f in meshes:
                vals = []
                for K, c2w in cameras():
                    K = np.diag([scale, scale, 1.0]) @ K
                    out = r.render(v, f, K, c2w)
                    vals.append(iou(out.mask, rasterize_mask_cv2(v, f, K, c2w, size, size)))
                say(f"  {name} {size} px, 3 cameras: IoU {' '.join(f'{x:.4f}' for x in vals)}")
        finally:
            r.close()


@section("depth vs ray casting (test_depth_matches_ray_casting)")
def depth_vs_rays(samples: int, mouse) -> None:
    v, f = mouse
    tris = v[f]
    rng = np.random.default_rng(1)
    compared = good = 0
    r = mesh_renderer(S, samples)
    try:
        for K, c2w in cameras():
            out = r.render(v, f, K, c2w)
            rows, cols = np.nonzero(out.mask)
            pick = rng.choice(len(rows), size=min(100, len(rows)), replace=False)
            rr, cc = rows[pick], cols[pick]
            pix = np.stack([cc + 0.5, rr + 0.5, np.ones(len(rr))], axis=1)
            t = first_hits(c2w[:3, 3], (pix @ np.linalg.inv(K).T) @ c2w[:3, :3].T, tris)
            hit = np.isfinite(t)
            compared += int(hit.sum())
            good += int((np.abs(out.depth[rr[hit], cc[hit]] - t[hit]) / t[hit] < 1e-3).sum())
    finally:
        r.close()
    say(f"  depth within 1e-3 of the ray hit at the pixel centre: {good}/{compared} = {good / max(compared, 1):.4f}")


@section("background exact outside the mask (test_colors_background_and_lights)")
def background(samples: int) -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    K = np.array([[300.0, 0, S / 2], [0, 300.0, S / 2], [0, 0, 1]])
    c2w = look_at_c2w([0, -2.7, 0], [0, 0, 0])
    r = mesh_renderer(S, samples)
    try:
        red = np.tile([1.0, 0, 0], (len(sphere.vertices), 1))
        out = r.render(sphere.vertices, sphere.faces, K, c2w, vertex_colors=red, background=(0.0, 0.5, 1.0))
    finally:
        r.close()
    bg = np.all(out.rgb[~out.mask] == np.array([0, 128, 255]), axis=1)
    say(f"  background pixels with the exact background colour: {bg.mean():.4f} ({int((~bg).sum())} blended)")


@section("speed")
def speed(samples: int, mouse, size: int = 256, views: int = 32) -> None:
    v, f = mouse
    K0, c2w = cameras()[0]
    K = np.diag([size / S, size / S, 1.0]) @ K0
    r = mesh_renderer(size, samples)
    try:
        r.render(v, f, K, c2w)  # warm-up (shader compile, buffers)
        t0 = time.perf_counter()
        r.render_views(v, f, np.repeat(K[None], views, 0), np.repeat(c2w[None], views, 0))
        dt = time.perf_counter() - t0
    finally:
        r.close()
    say(f"  MeshRenderer {size} px, {views} views of the mouse: {1000 * dt / views:.2f} ms/view")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--info-only", action="store_true", help="print the GL/EGL vendor and renderer and stop")
    ap.add_argument("--mammal-dir",
                    default=os.environ.get("MAMMAL_MOUSE_DIR", str(REPO.parent / "shared" / "mammal_mouse")))
    args = ap.parse_args()
    pr = gl.import_pyrender()
    say(f"platform: {os.environ.get('PYOPENGL_PLATFORM')}")
    gl_info(pr)
    if args.info_only:
        return
    try:
        mouse = load_mouse(Path(args.mammal_dir))
    except OSError as e:
        mouse = None
        say(f"MAMMAL mouse not found ({e}); set MAMMAL_MOUSE_DIR. Mouse sections skipped.")
    for n in args.samples:
        say(f"\n=== framebuffer samples requested: {n} ===")
        sample_positions(pr, n)
        single_pixel(n)
        background(n)
        if mouse is not None:
            mask_iou(n, mouse)
            depth_vs_rays(n, mouse)
            speed(n, mouse)


if __name__ == "__main__":
    main()
