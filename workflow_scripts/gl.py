"""Headless OpenGL for pyrender: the ONE place that chooses the platform and patches pyrender.

Why this module exists
----------------------
* PyOpenGL picks its platform (GLX, EGL, OSMesa) once, when ``OpenGL.platform`` is first
  imported, from the environment variable ``PYOPENGL_PLATFORM``. pyrender imports PyOpenGL at
  import time, so the variable must be set *before* ``import pyrender``. :func:`setup_headless`
  sets it and refuses (RuntimeError) if PyOpenGL was already loaded with another platform, because
  that mistake otherwise shows up much later as an obscure context-creation failure.
* pyrender 0.1.45 pins ``PyOpenGL==3.1.0``. PyOpenGL 3.1.0 predates current Mesa: its OSMesa
  binding fails against libOSMesa 8 (missing/renamed entry points), so headless CPU rendering
  does not work with it. The project therefore installs pyrender with ``pip install --no-deps``
  beside ``PyOpenGL==3.1.10`` (pinned in pyproject); pyrender works with it unchanged.
* pyrender uses ``np.infty``, which NumPy 2 removed. We restore the alias (``np.infty = np.inf``)
  before pyrender is imported; it changes no NumPy behaviour.
* pyrender caches compiled shader programs under a key that contains
  ``OpenGL.contextdata.getContext()``. With PyOpenGL 3.1.10 + OSMesa that returns a *new*
  ``OSMesaContext_pointer`` object on every call, and those compare unequal, so the cache never
  hits and pyrender recompiles its shaders on every ``render()`` (~7 ms per view, a quarter of the
  render time at 256 px). :func:`import_pyrender` makes pyrender's cache key the context's
  address (an int) instead (:func:`_patch_shader_cache`).
* Masks and depth must come from the pixel centre (docs/conventions.md), on every platform.
  pyrender renders offscreen in two different ways: with EGL into its own framebuffer object
  with **4x multisampling** (``Renderer._configure_main_framebuffer``), resolved by
  ``glBlitFramebuffer`` (colour averaged over the samples, depth ``GL_NEAREST``, which keeps ONE
  sample, not the pixel centre); with OSMesa (``supports_framebuffers() == False``) straight into
  OSMesa's single-sample buffer. Forced through the 4x framebuffer, llvmpipe keeps sample 0, at
  (0.375, 0.875) px from the pixel's top-left corner, and fails exactly the 7 render/synthetic
  tests that failed under EGL on an H100 (mouse mask IoU 0.92 at 256 px, a triangle covering
  only a pixel centre missed, edge colours blended outside the mask, depth 275 compared pixels):
  so masks were shifted by a fraction of a pixel. :func:`_patch_framebuffer` makes both platforms
  render through pyrender's framebuffer object (one code path, testable on CPU) and makes its
  sample count a setting, :data:`FRAMEBUFFER_SAMPLES` = 1 (single-sample: coverage, depth and
  colour all at the pixel centre). RGB is single-sample too: MSAA colour would need a second
  render per view for the pixel-centre truth (the synthetic job must stay >= 0.8 of bare
  pyrender; 4x MSAA alone costs llvmpipe ~3x per view), and single-sample is what the validated
  OSMesa path always produced (same RGB and masks byte for byte, depth within 1.5e-6: float rounding). So colour
  edges are aliased (no partial-coverage blending). :func:`set_framebuffer_samples` changes it
  per renderer, for diagnostics (``benchmarks/egl_diagnose.py``).

Platform choice: ``MOUSE_FACELIFT_GL`` (``egl``/``osmesa``) overrides; otherwise ``egl`` when an
NVIDIA GPU and NVIDIA's EGL library are present (:func:`nvidia_egl_available`), else ``osmesa``
(Mesa's llvmpipe software rasterizer, works everywhere, CPU only).
EGL history (``benchmarks/gpu_render_check.sh``, ``benchmarks/egl_diagnose.py``, figures in
benchmarks/RESULTS.md): on an H100 closing one ``OffscreenRenderer`` terminated the EGL display
shared by the others (fixed by :func:`_patch_egl_teardown`); masks, depth and single-pixel
triangles differed from the reference rasterization because of pyrender's 4x MSAA depth resolve
(fixed by :func:`_patch_framebuffer`: on an H200 mask IoU 0.989-0.998, depth 300/300, 12/12
single-pixel triangles, tests/test_synthetic.py all pass); NVIDIA clears a 0.5 background
channel to 127 where Mesa writes 128, so ``render.MeshRenderer`` sets undrawn pixels itself.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
from types import ModuleType, SimpleNamespace

import numpy as np

ENV_OVERRIDE = "MOUSE_FACELIFT_GL"
# Samples per pixel of pyrender's offscreen framebuffer (module docstring). 1 = single-sample:
# masks, depth and colour at the pixel centre; > 1 = MSAA (colour edges smoothed, but depth and
# mask then come from one sample that is not at the pixel centre).
FRAMEBUFFER_SAMPLES = 1
PLATFORMS = ("egl", "osmesa")
# PyOpenGL platform class name -> PYOPENGL_PLATFORM value.
_PYOPENGL_CLASSES = {"EGLPlatform": "egl", "OSMesaPlatform": "osmesa", "GLXPlatform": "glx",
                     "DarwinPlatform": "darwin", "Win32Platform": "win32"}


def nvidia_egl_available() -> bool:
    """True when an NVIDIA GPU device node and NVIDIA's EGL vendor library are both present.

    This is a cheap check that does not create a context (creating one here would load PyOpenGL
    with a platform before the caller decided); a false positive surfaces as a clear EGL error
    when pyrender creates its context, and ``MOUSE_FACELIFT_GL=osmesa`` forces the CPU path.
    """
    if not glob.glob("/dev/nvidia[0-9]*"):
        return False
    if ctypes.util.find_library("EGL_nvidia"):
        return True
    patterns = ("/usr/lib/x86_64-linux-gnu/libEGL_nvidia.so*", "/usr/lib64/libEGL_nvidia.so*",
                "/usr/lib/libEGL_nvidia.so*", "/usr/local/nvidia/lib64/libEGL_nvidia.so*")
    return any(glob.glob(p) for p in patterns)


def _loaded_platform() -> str | None:
    """The platform PyOpenGL already loaded in this process, or None if it has not chosen yet."""
    mod = sys.modules.get("OpenGL.platform")
    if mod is None or getattr(mod, "PLATFORM", None) is None:
        return None
    name = type(mod.PLATFORM).__name__
    return _PYOPENGL_CLASSES.get(name, name)


def setup_headless(platform: str | None = None) -> str:
    """Choose the headless OpenGL platform and patch NumPy for pyrender; returns the platform.

    Args:
        platform: ``"egl"`` or ``"osmesa"``; None = ``$MOUSE_FACELIFT_GL`` if set, else the
            headless platform PyOpenGL already loaded (if any), else ``egl`` on a machine with
            an NVIDIA GPU and its EGL library, else ``osmesa``.

    Sets ``PYOPENGL_PLATFORM`` (process-wide by nature: PyOpenGL reads it once). Idempotent when
    called again with the same platform. Raises ValueError for an unknown platform name and
    RuntimeError if PyOpenGL was already imported with a different platform.
    """
    loaded = _loaded_platform()
    if platform is None:
        platform = os.environ.get(ENV_OVERRIDE)
        if platform is None and loaded in PLATFORMS:
            platform = loaded  # auto mode: keep the headless platform this process already uses
        elif platform is None:
            platform = "egl" if nvidia_egl_available() else "osmesa"
    platform = platform.strip().lower()
    if platform not in PLATFORMS:
        raise ValueError(f"unknown headless GL platform {platform!r} (from argument or ${ENV_OVERRIDE}); "
                         f"use one of {PLATFORMS}")
    if loaded is not None and loaded != platform:
        raise RuntimeError(
            f"PyOpenGL was already imported with platform {loaded!r}, but {platform!r} was requested. "
            "Fix: call workflow_scripts.gl.setup_headless() before anything imports OpenGL or pyrender "
            f"(or set ${ENV_OVERRIDE}={loaded} to keep the loaded one).")
    os.environ["PYOPENGL_PLATFORM"] = platform
    if not hasattr(np, "infty"):
        np.infty = np.inf  # pyrender 0.1.45 uses np.infty, removed in NumPy 2
    return platform


def import_pyrender(platform: str | None = None) -> ModuleType:
    """The ``pyrender`` module, imported after :func:`setup_headless` (see module docstring)."""
    setup_headless(platform)
    import pyrender  # noqa: PLC0415  (must come after setup_headless)

    _patch_shader_cache(pyrender)
    _patch_egl_teardown(pyrender)
    _patch_framebuffer(pyrender)
    return pyrender


def set_framebuffer_samples(renderer, samples: int) -> None:
    """Samples per pixel of one ``pyrender.OffscreenRenderer``'s framebuffer (1 = single-sample).

    Takes effect at the next render (the framebuffer is rebuilt when the setting changes). Values
    > 1 are diagnostics only: the pipeline's masks and depth need single-sample rendering.
    """
    samples = int(samples)
    if samples < 1:
        raise ValueError(f"samples must be >= 1 (1 = single-sample), got {samples}")
    renderer._renderer.framebuffer_samples = samples


def framebuffer_samples(renderer) -> int | None:
    """Samples per pixel of the colour buffer a ``pyrender.OffscreenRenderer`` draws into, as the
    GL driver reports it (``GL_RENDERBUFFER_SAMPLES``: 0 = single-sample storage, else the count
    the driver allocated); None before its first render."""
    from OpenGL import GL  # noqa: PLC0415

    inner = renderer._renderer
    if inner is None or inner._main_cb_ms is None:
        return None
    renderer._platform.make_current()
    try:
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, int(inner._main_cb_ms))
        return int(GL.glGetRenderbufferParameteriv(GL.GL_RENDERBUFFER, GL.GL_RENDERBUFFER_SAMPLES))
    finally:
        GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, 0)
        renderer._platform.make_uncurrent()


def _patch_framebuffer(pyrender: ModuleType) -> None:
    """Offscreen rendering through pyrender's framebuffer object with a configurable sample count
    on every platform (idempotent; why: module docstring).

    Replaces ``Renderer._configure_main_framebuffer`` (pyrender 0.1.45 hard-codes 4 samples) by
    one that allocates ``self.framebuffer_samples`` samples (class default
    :data:`FRAMEBUFFER_SAMPLES`; 1 allocates plain single-sample storage) and rebuilds the
    buffers when the size or the setting changes. pyrender's ``_read_main_framebuffer`` is kept
    (its blits become plain copies when single-sample), though ``render.MeshRenderer`` reads
    single-sample buffers directly into its arrays (``render._fast_readback_renderer``, tested
    equal to it). OSMesa is told it supports framebuffers so it takes the same path as EGL.
    """
    renderer_cls = pyrender.renderer.Renderer
    if getattr(renderer_cls, "_mouse_facelift_fb_patch", False):
        return
    renderer_cls.framebuffer_samples = FRAMEBUFFER_SAMPLES
    renderer_cls._configure_main_framebuffer = _configure_main_framebuffer
    renderer_cls._mouse_facelift_fb_patch = True
    if os.environ.get("PYOPENGL_PLATFORM") == "osmesa":  # importing it under EGL would load OpenGL.osmesa
        from pyrender.platforms import osmesa  # noqa: PLC0415

        osmesa.OSMesaPlatform.supports_framebuffers = lambda self: True


def _configure_main_framebuffer(self) -> None:
    """(Re)create pyrender's offscreen framebuffers: ``_main_fb_ms`` (drawn into, with
    ``self.framebuffer_samples`` samples) and ``_main_fb`` (single-sample, read back), each with
    an RGBA8 colour and a 24-bit depth renderbuffer. Same names and formats as pyrender's own."""
    from OpenGL import GL  # noqa: PLC0415

    samples = max(int(self.framebuffer_samples), 1)
    key = (self.viewport_width, self.viewport_height, samples)
    if self._main_fb is not None and getattr(self, "_mouse_facelift_fb_key", None) != key:
        self._delete_main_framebuffer()
    if self._main_fb is not None:
        return
    w, h = self.viewport_width, self.viewport_height

    def framebuffer(n_samples: int) -> tuple[int, int, int]:
        color, depth = GL.glGenRenderbuffers(2)
        for rb, fmt in ((color, GL.GL_RGBA), (depth, GL.GL_DEPTH_COMPONENT24)):
            GL.glBindRenderbuffer(GL.GL_RENDERBUFFER, rb)
            if n_samples > 1:
                GL.glRenderbufferStorageMultisample(GL.GL_RENDERBUFFER, n_samples, fmt, w, h)
            else:  # not "multisample with 1 sample": that may still use a non-centre sample position
                GL.glRenderbufferStorage(GL.GL_RENDERBUFFER, fmt, w, h)
        fb = GL.glGenFramebuffers(1)
        GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, fb)
        GL.glFramebufferRenderbuffer(GL.GL_DRAW_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, GL.GL_RENDERBUFFER, color)
        GL.glFramebufferRenderbuffer(GL.GL_DRAW_FRAMEBUFFER, GL.GL_DEPTH_ATTACHMENT, GL.GL_RENDERBUFFER, depth)
        return fb, color, depth

    self._main_fb, self._main_cb, self._main_db = framebuffer(1)
    self._main_fb_ms, self._main_cb_ms, self._main_db_ms = framebuffer(samples)
    self._main_fb_dims = (w, h)
    self._mouse_facelift_fb_key = key


def _patch_egl_teardown(pyrender: ModuleType) -> None:
    """Closing one EGL renderer must not break the others (idempotent).

    pyrender's ``EGLPlatform.delete_context`` calls ``eglTerminate`` on its display, but
    ``eglGetDisplay`` returns ONE display per device and process, shared by every renderer: the
    first renderer closed terminates it for all the others (``EGL_NOT_INITIALIZED``, seen on an
    H100). We destroy only the renderer's own context; the display lives until the process ends.
    """
    if os.environ.get("PYOPENGL_PLATFORM") != "egl":
        return  # importing pyrender's EGL module loads OpenGL.EGL, which would switch PyOpenGL's platform
    from pyrender.platforms import egl  # noqa: PLC0415

    if getattr(egl.EGLPlatform, "_mouse_facelift_patch", False):
        return

    def delete_context(self) -> None:
        from OpenGL.EGL import eglDestroyContext  # noqa: PLC0415

        if self._egl_display is not None and self._egl_context is not None:
            eglDestroyContext(self._egl_display, self._egl_context)
        self._egl_context = None

    egl.EGLPlatform.delete_context = delete_context
    egl.EGLPlatform._mouse_facelift_patch = True


def _context_address() -> object:
    """The current GL context as a hashable, comparable key (its address when it is a pointer)."""
    import OpenGL.contextdata  # noqa: PLC0415

    ctx = OpenGL.contextdata.getContext()
    try:
        return ctypes.cast(ctx, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return ctx


def _patch_shader_cache(pyrender: ModuleType) -> None:
    """Make pyrender's shader cache key use :func:`_context_address` (idempotent; see module doc).

    ``pyrender.shader_program`` uses its ``OpenGL`` name only for ``OpenGL.contextdata.getContext``,
    so we give that module a stand-in namespace with the fixed function.
    """
    sp = pyrender.shader_program
    if getattr(sp.OpenGL, "_mouse_facelift_patch", False):
        return
    sp.OpenGL = SimpleNamespace(contextdata=SimpleNamespace(getContext=_context_address), _mouse_facelift_patch=True)
