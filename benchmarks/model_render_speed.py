"""Speed of the torch Gaussian renderer and the tiny GS-LRM on CPU (prints figures; no assertions).

    .venv/bin/python benchmarks/model_render_speed.py [--size 64] [--views 4] [--repeats 3]

Reports forward and forward+backward time of a 4-view render of the tiny model's output
(4 x size^2 + 2 Gaussians) at initialisation (a dense pile of faint Gaussians: the worst case) and
of a "trained-like" scene (the same Gaussians shrunk to ~1 px and made opaque), plus the network's
forward+backward time and FLOPs.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from model.config import preset
from model.gaussians import Gaussians
from model.gslrm import GSLRM, flops_per_sample
from model.render_torch import render_torch
from workflow_scripts.cameras import look_at_c2w


def cams(V: int, S: int):
    c2w = np.stack([look_at_c2w(np.array([2.7 * math.cos(a), 2.7 * math.sin(a), 0.5]), np.zeros(3))
                    for a in np.linspace(0, 2 * math.pi, V, endpoint=False)])
    f = S / (2 * math.tan(math.radians(25)))  # 50 deg FOV as FaceLift
    K = np.array([[f, 0, S / 2], [0, f, S / 2], [0, 0, 1]])
    return (torch.tensor(np.broadcast_to(K, (1, V, 3, 3)).copy(), dtype=torch.float32),
            torch.tensor(c2w, dtype=torch.float32)[None])


def time_render(g: Gaussians, K, c2w, S: int, repeats: int, tile: int) -> tuple[float, float, float]:
    fwd, tot, cpu = [], [], []
    for _ in range(repeats):
        leaves = [t.detach().clone().requires_grad_(True) for t in (g.means, g.scales, g.quats, g.opacities, g.sh_dc)]
        t0, c0 = time.perf_counter(), time.process_time()
        out = render_torch(Gaussians(*leaves), K, c2w, S, S, tile_size=tile)
        t1 = time.perf_counter()
        (out.rgb.mean() + out.alpha.mean()).backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        tot.append(t2 - t0)
        cpu.append(time.process_time() - c0)
    return min(fwd), min(tot), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = preset("tiny", image_size=a.size)
    model = GSLRM(cfg)
    K, c2w = cams(a.views, a.size)
    images = torch.rand(1, a.views, 3, a.size, a.size)
    with torch.no_grad():
        g = model(images, K, c2w)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {g.num_gaussians} Gaussians, "
          f"{a.views} views at {a.size} px")
    trained = Gaussians(g.means, torch.full_like(g.scales, 0.01), g.quats, torch.full_like(g.opacities, 0.8), g.sh_dc)
    for name, scene in (("init (dense, faint)", g), ("trained-like (small, opaque)", trained)):
        for tile in (4, 8, 16):
            f, t, c = time_render(scene, K, c2w, a.size, a.repeats, tile)
            print(f"render {name:30s} tile {tile:2d}: forward {f:.3f} s, forward+backward {t:.3f} s "
                  f"(process CPU time {c:.3f} s; wall time is inflated on a shared machine)")
    ts = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = model(images, K, c2w)
        (out.means.mean() + out.opacities.mean()).backward()
        ts.append(time.perf_counter() - t0)
    print(f"GS-LRM tiny forward+backward (batch 1): {min(ts):.3f} s, "
          f"{flops_per_sample(cfg, a.views) / 1e9:.2f} GFLOP (fwd+bwd)")


if __name__ == "__main__":
    main()
