"""How well the pose sampler covers real mouse shapes: the 5 posed MAMMAL examples.

For N sampled poses (global pose removed), after a similarity (Procrustes with scale)
alignment onto each example, prints the mean vertex distance of the nearest sample, the median
sample and the rest mesh, as fractions of the body length (nose to tail base); also for the
sampler without the measured base pose (ablation).

``--fit`` instead fits the body model to each example (Adam over the global similarity and the
spine/neck/tail/limb joint deltas, PyTorch LBS) and prints the fitted deltas and the
symmetrized medians that became ``poses.MEASURED_BASE_DEG``.

    .venv/bin/python benchmarks/pose_coverage.py --model /work/shared/mammal_mouse --samples 1000
    .venv/bin/python benchmarks/pose_coverage.py --model /work/shared/mammal_mouse --fit
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from workflow_scripts.body_model import TorchBodyModel, load_body_model, pose_mesh_torch
from workflow_scripts.poses import (NECK_HEAD, SPINE, TAIL, PoseSampler, PoseSamplerConfig, load_posed_examples,
                                    pose_coverage, similarity_align)

FIT_JOINTS = (SPINE + NECK_HEAD + ("lumbar_vertebrae_0", "lumbar_vertebrae_1") + TAIL
              + tuple(f"{j}_{s}" for j in ("perlvis", "femur", "tibia", "hind_paw", "scapula", "humerus", "ulna",
                                           "fore_paw") for s in "lr"))


def coverage(args) -> None:
    model = load_body_model(args.model)
    ex = load_posed_examples(f"{args.model}/posed_examples", model.n_vertices)
    rows = []
    for name, cfg in (("sampler", PoseSamplerConfig()), ("sampler, no base pose", PoseSamplerConfig(base_pose_deg={}))):
        t0 = time.time()
        cov = pose_coverage(model, PoseSampler(model, cfg), ex, args.samples, np.random.default_rng(args.seed),
                            progress=True)
        rows.append((name, cov, time.time() - t0))
    print(f"\nPose coverage of {len(ex)} posed examples, {args.samples} samples, seed {args.seed}")
    print("distance = mean vertex distance after similarity alignment / body length "
          f"({model.body_length():.3f} model units, nose to tail base)")
    print(f"{'example':>8} | {'rest':>6} | " + " | ".join(f"{n + ' nearest':>28} {'median':>7}" for n, _, _ in rows))
    for e in range(len(ex)):
        print(f"{e:>8} | {rows[0][1]['rest'][e]:6.3f} | "
              + " | ".join(f"{c['nearest'][e]:28.3f} {c['median'][e]:7.3f}" for _, c, _ in rows))
    for name, _, dt in rows:
        print(f"{name}: {dt / args.samples * 1e3:.1f} ms per sample (sample + pose + 5 alignments)")


def fit(args) -> None:
    torch.set_num_threads(args.threads)
    model = load_body_model(args.model)
    ex = load_posed_examples(f"{args.model}/posed_examples", model.n_vertices)
    tm = TorchBodyModel.from_model(model, torch.float32)
    idx = torch.tensor([model.joint_index(n) for n in FIT_JOINTS])
    L = model.body_length()
    fits = []
    for k, Y in enumerate(ex):
        s, R, t = similarity_align(model.vertices, Y)
        sub = torch.zeros(1, len(FIT_JOINTS), 3, requires_grad=True)
        g = torch.tensor(Rotation.from_matrix(R).as_rotvec()[None], dtype=torch.float32, requires_grad=True)
        tt = torch.tensor(t[None], dtype=torch.float32, requires_grad=True)
        ls = torch.tensor([np.log(s)], dtype=torch.float32, requires_grad=True)
        Yt = torch.tensor(Y, dtype=torch.float32)
        opt = torch.optim.Adam([sub, g, tt, ls], lr=0.02)
        t0 = time.time()
        for _ in range(args.iters):
            r = torch.zeros(1, model.n_joints, 3).index_copy(1, idx, sub)
            v, _ = pose_mesh_torch(tm, r, g, tt, ls.exp())
            loss = (v[0] - Yt).norm(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        err = loss.item() / ls.exp().item() / L
        print(f"example {k}: fitted mean vertex distance {err:.4f} body lengths, scale {ls.exp().item():.1f}, "
              f"{time.time() - t0:.1f} s")
        fits.append(np.degrees(sub.detach().numpy()[0]))
    med = np.median(np.stack(fits), 0)
    mirror = lambda r: np.array([r[0], -r[1], -r[2]])  # noqa: E731
    print("\nSymmetrized medians (degrees, axis-angle in model axes):")
    for n, r in zip(FIT_JOINTS, med):
        if n.endswith("_r"):
            continue
        r = (r + mirror(med[FIT_JOINTS.index(n[:-2] + "_r")])) / 2 if n.endswith("_l") else (r + mirror(r)) / 2
        print(f'    "{n}": ({r[0]:.1f}, {r[1]:.1f}, {r[2]:.1f}),')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/shared/mammal_mouse", help="MAMMAL mouse text directory")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit", action="store_true", help="fit the examples instead (measures the base pose)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    fit(args) if args.fit else coverage(args)


if __name__ == "__main__":
    main()
