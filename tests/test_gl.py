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
