"""Headless OpenGL setup (workflow_scripts.gl). Platform choice is process-wide (PyOpenGL reads it
once), so the platform tests run in fresh subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from workflow_scripts import gl


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYOPENGL_PLATFORM", gl.ENV_OVERRIDE)}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_patch_applied_and_platform_set():
    assert gl.setup_headless("osmesa") == "osmesa"
    assert os.environ["PYOPENGL_PLATFORM"] == "osmesa"
    assert np.infty == np.inf  # NumPy 2 removed it; pyrender needs it
    pr = gl.import_pyrender("osmesa")
    assert hasattr(pr, "OffscreenRenderer")


def test_unknown_platform_rejected():
    with pytest.raises(ValueError, match="unknown headless GL platform"):
        gl.setup_headless("vulkan")


def test_small_render_under_osmesa():
    r = _run("""
        import numpy as np, trimesh
        from workflow_scripts.gl import import_pyrender
        pr = import_pyrender("osmesa")
        import OpenGL.platform
        scene = pr.Scene(bg_color=[0, 0, 0, 1])
        scene.add(pr.Mesh.from_trimesh(trimesh.creation.icosphere(radius=0.5)))
        pose = np.eye(4); pose[2, 3] = 3.0
        scene.add(pr.IntrinsicsCamera(60, 60, 32, 32), pose=pose)
        rgb, depth = pr.OffscreenRenderer(64, 64).render(scene)
        print(type(OpenGL.platform.PLATFORM).__name__, int((depth > 0).sum()), float(depth[32, 32]))
    """)
    assert r.returncode == 0, r.stderr
    name, count, centre = r.stdout.split()
    assert name == "OSMesaPlatform"
    # Sphere of radius 0.5 at distance 3, f = 60: projected radius ~ 60 * 0.5 / sqrt(9 - 0.25) px.
    expected = np.pi * (60 * 0.5 / np.sqrt(9 - 0.25)) ** 2
    assert abs(int(count) - expected) / expected < 0.05
    assert abs(float(centre) - 2.5) < 0.01  # z of the sphere's front point


def test_env_override_respected():
    code = "from workflow_scripts.gl import setup_headless; print(setup_headless())"
    r = _run(code, MOUSE_FACELIFT_GL="osmesa")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "osmesa"
    r = _run(code, MOUSE_FACELIFT_GL="nonsense")
    assert r.returncode != 0 and "MOUSE_FACELIFT_GL" in r.stderr


def test_conflicting_platform_after_import_raises():
    r = _run("""
        from workflow_scripts.gl import setup_headless, import_pyrender
        import_pyrender("osmesa")
        assert setup_headless() == "osmesa"      # auto mode keeps the loaded headless platform
        try:
            setup_headless("egl")
        except RuntimeError as e:
            print("RAISED", e)
    """)
    assert r.returncode == 0, r.stderr
    assert "RAISED" in r.stdout and "already imported" in r.stdout


def test_egl_detection_needs_a_device(monkeypatch):
    monkeypatch.setattr(gl.glob, "glob", lambda pattern: [])
    assert gl.nvidia_egl_available() is False
    monkeypatch.delenv(gl.ENV_OVERRIDE, raising=False)
    # With no NVIDIA device and nothing loaded yet (or osmesa loaded), auto picks osmesa.
    assert gl.setup_headless() == "osmesa"


def test_auto_mode_picks_egl_on_an_nvidia_machine():
    r = _run("""
        from workflow_scripts import gl
        gl.nvidia_egl_available = lambda: True  # as on a GPU node (nothing imported PyOpenGL yet)
        import os
        os.environ.pop(gl.ENV_OVERRIDE, None)
        print("PICKED", gl.setup_headless(), os.environ["PYOPENGL_PLATFORM"])
    """)
    assert r.returncode == 0, r.stderr
    assert "PICKED egl egl" in r.stdout


def test_shader_programs_are_cached_between_renders():
    """pyrender compiles its shaders once per context, not on every render (patched cache key)."""
    r = _run("""
        import numpy as np, trimesh
        from workflow_scripts.gl import import_pyrender
        pr = import_pyrender("osmesa")
        scene = pr.Scene()
        scene.add(pr.Mesh.from_trimesh(trimesh.creation.icosphere()))
        pose = np.eye(4); pose[2, 3] = 3.0
        scene.add(pr.IntrinsicsCamera(60, 60, 32, 32), pose=pose)
        renderer = pr.OffscreenRenderer(64, 64)
        for _ in range(5):
            renderer.render(scene)
        print(len(renderer._renderer._program_cache._program_cache))
    """)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 1


def test_framebuffer_is_single_sample_with_pixel_centre_coverage():
    """gl._patch_framebuffer: OSMesa renders through pyrender's framebuffer object too, single-sample
    by default, so coverage and depth are taken at the pixel centre (docs/conventions.md).

    A triangle centred on pixel (20, 20)'s centre with circumradius 0.3 px covers that centre but
    none of the 4x-MSAA sample positions (0.395 px from it): drawn single-sample, missed with
    4 samples (pyrender's own setting, what EGL used), which shows that the setting reaches the
    buffer the driver draws into. A vertical edge at x = 10.45 leaves pixel 10's centre (10.5)
    uncovered, but not MSAA sample 0 (x = 10.375), which pyrender's depth resolve keeps.
    Without the patch OSMesa draws into its own buffer (``framebuffer_samples`` is None).
    """
    r = _run("""
        import numpy as np, trimesh
        from workflow_scripts import gl
        pr = gl.import_pyrender("osmesa")
        f, z = 100.0, 2.0
        def P(u, v):  # pixel (u, v) at depth z -> pyrender camera coordinates (y up, looking down -z)
            return [(u - 16) / f * z, -(v - 16) / f * z, -z]
        ang = np.radians([90.0, 210.0, 330.0])
        tri = [P(20.5 + 0.3 * np.cos(a), 20.5 + 0.3 * np.sin(a)) for a in ang]
        edge = [P(-5, -5), P(10.45, -5), P(10.45, 40), P(-5, 40)]
        mesh = trimesh.Trimesh(np.array(tri + edge), [[0, 1, 2], [3, 4, 5], [3, 5, 6]], process=False)
        scene = pr.Scene(bg_color=[0, 0, 0, 1])
        scene.add(pr.Mesh.from_trimesh(mesh))
        scene.add(pr.IntrinsicsCamera(f, f, 16, 16, znear=0.5, zfar=10.0), pose=np.eye(4))
        renderer = pr.OffscreenRenderer(32, 32)
        print("before", gl.framebuffer_samples(renderer))
        for n in (None, 4, 1):  # None = the default; then switch the same renderer back and forth
            if n is not None:
                gl.set_framebuffer_samples(renderer, n)
            rgb, depth = renderer.render(scene, flags=pr.RenderFlags.SKIP_CULL_FACES)
            print(n, gl.framebuffer_samples(renderer), int(depth[20, 20] > 0), int((depth[12:30, 12:30] > 0).sum()),
                  int(depth[5, 10] > 0), int(depth[5, 9] > 0))
        try:
            gl.set_framebuffer_samples(renderer, 0)
        except ValueError:
            print("rejected 0")
        gl.import_pyrender("osmesa")  # idempotent
        print("patched", pr.renderer.Renderer._configure_main_framebuffer is gl._configure_main_framebuffer)
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "before None"  # no framebuffer before the first render
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:4]}
    # columns: GL samples (0 = single-sample storage; None = pyrender's framebuffer not used),
    # triangle at its pixel, triangle pixels in its neighbourhood, edge pixel 10 (centre
    # uncovered), edge pixel 9 (fully covered)
    assert rows["None"] == ["0", "1", "1", "0", "1"]
    assert rows["1"] == ["0", "1", "1", "0", "1"]
    assert rows["4"] == ["4", "0", "0", "1", "1"]
    assert lines[4:] == ["rejected 0", "patched True"]
