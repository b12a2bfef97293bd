"""Throughput of the synthetic shard job vs bare pyrender renders of the same meshes.

Full job = ``synthetic.ShardJob.write``, what the ``synthetic_shards`` rule runs: samples
prepared (pose sampling + normalization, cameras, the pixel-size rule, appearance, lights) in
``--workers`` processes, rendered (RGB/depth/mask) in the main thread, assembled and written
(LZF-compressed HDF5) on a writer thread, into a temporary shard. Baseline = the same posed
meshes with the same kind of visuals (texture or vertex colours) and the same cameras rendered by
a minimal pyrender loop (one scene per mesh, camera pose updated per view) in the same process.
Both are warmed up first (GL context, shaders, worker processes); the full job and the baseline
alternate ``--repeats`` times so that load from other processes hits both alike.

Prints, per worker count: samples/s of the whole job (including filling and draining the
pipeline) and in steady state (between the first and the last written sample), the baseline's
samples/s, their ratio (target >= 0.8), the ratio of each repeat's adjacent job/baseline pair and
their median (the machine's load drifts less within a pair than across the run), the time per
sample of each stage (preparation stages run in the workers, so with workers they overlap
rendering and writing) and peak RSS. On a shared machine the ratio is noisy: compare medians of
several runs, alternating the versions compared.

    .venv/bin/python benchmarks/synthetic_throughput.py --samples 4 --views 32 --size 256
    .venv/bin/python benchmarks/synthetic_throughput.py --samples 16 --workers 0 1 3   # on a GPU machine
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

from workflow_scripts.body_model import load_body_model
from workflow_scripts.gl import FRAMEBUFFER_SAMPLES, import_pyrender, set_framebuffer_samples
from workflow_scripts.render import CV_TO_GL, textured_trimesh
from workflow_scripts.shards import open_shard
from workflow_scripts.synthetic import (TEXTURE_V_FROM_TOP, ShardJob, SyntheticConfig, jitter_texture,
                                        procedural_colors)


def bare_pyrender(samples: list[dict], model, size: int, renderer=None) -> float:
    """Seconds to render every sample's views with a minimal pyrender loop (same visuals).
    renderer: a warm pyrender OffscreenRenderer to reuse (else one is made, and its first
    render compiles the shaders inside the timed region)."""
    pr = import_pyrender()
    r = renderer or pr.OffscreenRenderer(size, size)
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
    if renderer is None:
        r.delete()
    return total


def shard_samples(path: Path) -> list[dict]:
    """What the baseline needs of every sample of a written shard."""
    with open_shard(path) as f:
        return [{"vertices": f["vertices"][i], "K": f["K"][i], "c2w": f["c2w"][i],
                 "appearance/kind": float(f["appearance/kind"][i])} for i in range(f["images"].shape[0])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4, help="samples per shard (job)")
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--appearance", default="auto", choices=["auto", "texture", "procedural"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="worker processes preparing samples (the rule uses its threads - 1); several values: one run each")
    ap.add_argument("--repeats", type=int, default=2, help="alternations of full job and baseline per worker count")
    ap.add_argument("--mammal-dir", default=os.environ.get("MAMMAL_MOUSE_DIR",
                                                           str(Path(__file__).resolve().parents[2] / "shared" / "mammal_mouse")))
    args = ap.parse_args()

    model = load_body_model(args.mammal_dir)
    cfg = SyntheticConfig(samples_per_shard=args.samples, num_views=args.views, image_size=args.size,
                          appearance=args.appearance)
    vis_rng = np.random.default_rng(1)

    def with_visuals(s: dict) -> dict:
        # The baseline gets the same kind of visuals, made outside its timed region.
        if s["appearance/kind"] == 0.0:
            s["texture"] = jitter_texture(model.texture, cfg, vis_rng)[0]
        else:
            s["colors"] = (procedural_colors(model, vis_rng)[0] * 255).astype(np.uint8)
        return s

    pr = import_pyrender()
    bare_renderer = pr.OffscreenRenderer(args.size, args.size)
    print(f"settings: {args.samples} samples x {args.views} views x {args.size} px, appearance={args.appearance}, "
          f"GL={os.environ.get('PYOPENGL_PLATFORM')}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for workers in args.workers:
            with ShardJob(model, cfg, seed=0, shard_index=0, workers=workers) as job:
                job.write(Path(tmp) / "warm.h5", n=min(2, args.samples), progress=False)  # GL context, shaders, workers
                bare_pyrender([with_visuals(s) for s in shard_samples(Path(tmp) / "warm.h5")], model, args.size,
                              bare_renderer)
                t_full = t_steady = t_bare = 0.0
                stages: dict[str, list[float]] = {}
                n_tex = 0
                pair_ratios = []  # full/bare of each repeat: the two runs of a pair see about the same machine load
                for _ in range(args.repeats):
                    stats = job.write(Path(tmp) / "shard.h5", progress=False)
                    t_full += stats.wall
                    t_steady += stats.first_to_last
                    for k, v in stats.seconds.items():
                        stages.setdefault(k, []).extend(v)
                    samples = [with_visuals(s) for s in shard_samples(Path(tmp) / "shard.h5")]
                    n_tex = sum(s["appearance/kind"] == 0.0 for s in samples)
                    t = bare_pyrender(samples, model, args.size, bare_renderer)
                    t_bare += t
                    pair_ratios.append(t / stats.wall)
            n = args.samples * args.repeats
            full_rate, bare_rate = n / t_full, n / t_bare
            steady_rate = (args.samples - 1) * args.repeats / t_steady if t_steady > 0 else float("nan")
            ms = {k: 1000.0 * float(np.mean(v)) for k, v in stages.items()}
            print(f"\nworkers={workers} ({n_tex} of {args.samples} samples textured; {args.repeats} repeats)")
            print(f"  full job:      {full_rate:.3f} samples/s ({1000 * t_full / n:.0f} ms/sample incl. pipeline fill/drain)")
            print(f"  steady state:  {steady_rate:.3f} samples/s (first to last written sample)")
            print(f"  bare pyrender: {bare_rate:.3f} samples/s ({1000 * t_bare / n:.0f} ms/sample, "
                  f"{1000 * t_bare / (n * args.views):.1f} ms/view)")
            print(f"  ratio full/bare: {full_rate / bare_rate:.3f} (steady state {steady_rate / bare_rate:.3f}; target >= 0.8)")
            print(f"  ratio per repeat: median {np.median(pair_ratios):.3f} of " + " ".join(f"{r:.2f}" for r in pair_ratios))
            print("  ms per sample by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                  + (" (posing..appearance in the workers, overlapping render and write)" if workers else ""))
    bare_renderer.delete()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak RSS: {own:.0f} MiB this process (model, renderers, <= 2 rendered samples queued for the writer), "
          f"{child:.0f} MiB the largest worker")


if __name__ == "__main__":
    main()
