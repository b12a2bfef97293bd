"""Throughput of synthetic sample generation vs bare pyrender renders of the same meshes.

Full job = ``synthetic.make_sample`` (pose sampling + normalization, cameras, rasterized
pixel-size rule, appearance, lights, rendering RGB/depth/mask). Baseline = the same posed meshes
with the same visuals (texture or vertex colours) and the same cameras rendered by a minimal
pyrender loop (one scene per mesh, camera pose updated per view), in the same process.
Prints samples/s of both, their ratio (target >= 0.8) and peak RSS.

    .venv/bin/python benchmarks/synthetic_throughput.py --samples 4 --views 32 --size 256
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import trimesh

from workflow_scripts.body_model import load_body_model
from workflow_scripts.gl import FRAMEBUFFER_SAMPLES, import_pyrender, set_framebuffer_samples
from workflow_scripts.poses import PoseSampler
from workflow_scripts.render import CV_TO_GL, MeshRenderer, textured_trimesh
from workflow_scripts.synthetic import (TEXTURE_V_FROM_TOP, SyntheticConfig, jitter_texture, make_sample,
                                        procedural_colors)


def bare_pyrender(samples: list[dict], model, size: int) -> float:
    """Seconds to render every sample's views with a minimal pyrender loop (same visuals)."""
    pr = import_pyrender()
    r = pr.OffscreenRenderer(size, size)
    set_framebuffer_samples(r, FRAMEBUFFER_SAMPLES)  # the framebuffer MeshRenderer renders into (fair)
    total = 0.0
    for s in samples:
        v = s["vertices"].astype(np.float64)
        if s["appearance/kind"] == 0.0:
            uv = model.uv.copy()
            if TEXTURE_V_FROM_TOP:
                uv[:, 1] = 1 - uv[:, 1]
            mesh = textured_trimesh(v, model.faces, uv, model.faces_uv, s["texture"])
        else:
            mesh = trimesh.Trimesh(v, model.faces, vertex_colors=s["colors"], process=False)
        t0 = time.perf_counter()
        scene = pr.Scene(bg_color=[1.0, 1.0, 1.0, 1.0], ambient_light=[0.3, 0.3, 0.3])
        scene.add(pr.Mesh.from_trimesh(mesh))
        scene.add(pr.DirectionalLight(intensity=3.0), pose=np.eye(4))
        cam = pr.IntrinsicsCamera(1, 1, size / 2, size / 2, znear=1.0, zfar=5.0)
        node = scene.add(cam)
        for K, c2w in zip(s["K"], s["c2w"]):
            cam.fx, cam.fy = float(K[0, 0]), float(K[1, 1])
            scene.set_pose(node, c2w.astype(np.float64) @ CV_TO_GL)
            r.render(scene)
        total += time.perf_counter() - t0
    r.delete()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--appearance", default="auto", choices=["auto", "texture", "procedural"])
    ap.add_argument("--mammal-dir", default=os.environ.get("MAMMAL_MOUSE_DIR",
                                                           str(Path(__file__).resolve().parents[2] / "shared" / "mammal_mouse")))
    args = ap.parse_args()

    model = load_body_model(args.mammal_dir)
    cfg = SyntheticConfig(samples_per_shard=args.samples, num_views=args.views, image_size=args.size,
                          appearance=args.appearance)
    sampler = PoseSampler(model, cfg.pose_sampler_config())
    rng, vis_rng = np.random.default_rng(0), np.random.default_rng(1)

    def with_visuals(s: dict) -> dict:
        # The baseline gets the same kind of visuals, made outside its timed region.
        if s["appearance/kind"] == 0.0:
            s["texture"] = jitter_texture(model.texture, cfg, vis_rng)[0]
        else:
            s["colors"] = (procedural_colors(model, vis_rng)[0] * 255).astype(np.uint8)
        return s

    samples, t_full, t_bare = [], 0.0, 0.0
    # Culls back faces as write_synthetic_shard does (pyrender's default, as in the baseline).
    with MeshRenderer(args.size, args.size, cull_back_faces=True) as renderer:
        bare_pyrender([with_visuals(make_sample(model, sampler, cfg, rng, renderer))], model, args.size)  # warm-up
        # Interleaved per sample, so that load from other processes hits both alike.
        for _ in range(args.samples):
            t0 = time.perf_counter()
            s = make_sample(model, sampler, cfg, rng, renderer)
            t_full += time.perf_counter() - t0
            t_bare += bare_pyrender([with_visuals(s)], model, args.size)
            samples.append(s)

    n_tex = sum(s["appearance/kind"] == 0.0 for s in samples)
    full_rate, bare_rate = args.samples / t_full, args.samples / t_bare
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"settings: {args.samples} samples x {args.views} views x {args.size} px, appearance={args.appearance} "
          f"({n_tex} textured), GL={os.environ.get('PYOPENGL_PLATFORM')}")
    print(f"full make_sample: {full_rate:.3f} samples/s ({t_full / args.samples:.2f} s/sample, "
          f"{1000 * t_full / (args.samples * args.views):.1f} ms/view)")
    print(f"bare pyrender:    {bare_rate:.3f} samples/s ({t_bare / args.samples:.2f} s/sample, "
          f"{1000 * t_bare / (args.samples * args.views):.1f} ms/view)")
    print(f"ratio full/bare:  {full_rate / bare_rate:.3f} (target >= 0.8)")
    print(f"peak RSS:         {peak:.0f} MiB")


if __name__ == "__main__":
    main()
