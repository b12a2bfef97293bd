"""Training throughput, model FLOP utilisation (MFU) and inference latency of GS-LRM.

GPU (the figures to report)::

    python benchmarks/train_throughput.py --presets base facelift --out results/bench/train_throughput.json

CPU smoke run (tiny preset, few steps)::

    python benchmarks/train_throughput.py --device cpu --presets tiny --steps 3 --warmup 1 --out /tmp/tt.json

For each preset one full training step is timed (network forward in bf16 autocast on CUDA, fp32
on CPU; Gaussian rendering of the supervision views; MSE + silhouette loss; backward; AdamW), with
random images and ring cameras (no data loading: this measures the model, not the disk).

FLOPs per sample = ``model.gslrm.flops_per_sample(cfg, num_input_views, image_size, training=True)``:
matmul FLOPs (2 per multiply-add) of the patch embedding, every block (qkv 6LW^2, QK^T and AV 4L^2W,
output projection 2LW^2, MLP 16LW^2 for mlp_ratio 4) and both heads, times 3 for forward + backward;
the renderer is not counted, so MFU is a lower bound on hardware utilisation.
MFU = FLOPs per sample * samples/s / peak, where the peak is measured in the same run: the best
of several ``torch.matmul`` calls on large square matrices (bf16 8192^2 on CUDA, fp32 1024^2 on CPU).
Inference latency: forward (+ render of the input views) for 4 views at 512 px (``facelift``
preset, bf16, ``torch.cuda.synchronize`` around each call), median of ``--latency-iters``;
on CPU the first preset at its own size.
Prints a markdown table and writes JSON (``--out``, atomic).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import preset  # noqa: E402
from model.data import toy_K, toy_views  # noqa: E402
from model.gslrm import GSLRM, flops_per_sample  # noqa: E402
from model.renderer import render  # noqa: E402
from model.schedule import build_optimizer  # noqa: E402
from workflow_scripts.atomic import write_json  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, iters: int = 10) -> dict:
    """Measured dense matmul peak in FLOP/s (bf16 on CUDA, fp32 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_s": 2 * n**3 / best}


def make_batch(B: int, V: int, M: int, S: int, device: torch.device, seed: int = 0) -> dict:
    """Random images; inputs and targets on a 2-ring camera set around the origin (c2w, OpenCV)."""
    g = torch.Generator().manual_seed(seed)
    c2w = torch.from_numpy(toy_views(V + M)).float()
    K = torch.from_numpy(toy_K(S, V + M)).float()
    return {
        "images": torch.rand(B, V, 3, S, S, generator=g).to(device),
        "K": K[:V].expand(B, V, 3, 3).contiguous().to(device),
        "c2w": c2w[:V].expand(B, V, 4, 4).contiguous().to(device),
        "target_images": torch.rand(B, M, 3, S, S, generator=g).to(device),
        "target_masks": (torch.rand(B, M, 1, S, S, generator=g) > 0.5).float().to(device),
        "target_K": K[V:].expand(B, M, 3, 3).contiguous().to(device),
        "target_c2w": c2w[V:].expand(B, M, 4, 4).contiguous().to(device),
    }


def bench_train(name: str, device: torch.device, args) -> dict:
    over = {"num_input_views": args.views, "activation_checkpointing": args.activation_checkpointing,
            "attention": args.attention}
    if args.image_size:
        over["image_size"] = args.image_size
    cfg = preset(name, **over)
    S, B = cfg.image_size, args.batch_size
    torch.manual_seed(0)
    model = GSLRM(cfg).to(device).train()
    opt = build_optimizer(model, lr=1e-4, fused=True if device.type == "cuda" else None)
    batch = make_batch(B, args.views, args.supervision, S, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step() -> float:
        with amp:
            g = model(batch["images"], batch["K"], batch["c2w"])
        out = render(g, batch["target_K"], batch["target_c2w"], S, S, (1.0, 1.0, 1.0))
        loss = torch.mean((out.rgb - batch["target_images"]) ** 2) + torch.mean((out.alpha - batch["target_masks"]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    dt = time.perf_counter() - t
    sps = B * args.steps / dt
    fps = flops_per_sample(cfg, args.views, S, training=True)
    return {"preset": name, "attention": cfg.attention, "image_size": S, "input_views": args.views, "supervision_views": args.supervision,
            "batch_size": B, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": dt / args.steps, "samples_per_s": sps, "flops_per_sample": fps, "model_flops_per_s": fps * sps,
            "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


@torch.no_grad()
def bench_latency(name: str, S: int | None, device: torch.device, args) -> dict:
    over = {"num_input_views": 4, "attention": args.attention}
    if S:
        over["image_size"] = S
    cfg = preset(name, **over)
    S = cfg.image_size
    model = GSLRM(cfg).to(device).eval()
    batch = make_batch(1, 4, 0, S, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    times, times_render = [], []
    for i in range(args.latency_warmup + args.latency_iters):
        sync(device)
        t0 = time.perf_counter()
        with amp:
            g = model(batch["images"], batch["K"], batch["c2w"])
        sync(device)
        t1 = time.perf_counter()
        render(g, batch["K"], batch["c2w"], S, S, (1.0, 1.0, 1.0))
        sync(device)
        t2 = time.perf_counter()
        if i >= args.latency_warmup:
            times.append(t1 - t0)
            times_render.append(t2 - t0)
    return {"preset": name, "image_size": S, "views": 4, "dtype": "bf16" if device.type == "cuda" else "fp32",
            "forward_ms_median": 1e3 * statistics.median(times),
            "forward_render4_ms_median": 1e3 * statistics.median(times_render), "iters": args.latency_iters}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--presets", "--preset", nargs="+", default=["base", "facelift"])
    ap.add_argument("--image-size", type=int, default=None, help="override the presets' image size")
    ap.add_argument("--views", type=int, default=4, help="input views")
    ap.add_argument("--supervision", type=int, default=4, help="rendered supervision views")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--attention", default="sdpa", help="ModelConfig.attention: sdpa | cudnn | math")
    ap.add_argument("--latency-iters", type=int, default=20)
    ap.add_argument("--latency-warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    peak = matmul_peak(device)
    rows = []
    for name in args.presets:
        r = bench_train(name, device, args)
        r["mfu"] = r["model_flops_per_s"] / peak["flops_per_s"]
        rows.append(r)
    if device.type == "cuda":
        lat = bench_latency("facelift", 512, device, args)
    else:
        lat = bench_latency(args.presets[0], None, device, args)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {dev_name}; measured {peak['dtype']} matmul peak ({peak['n']}^2): {peak['flops_per_s'] / 1e12:.2f} TFLOP/s\n")
    print("| preset | px | views in/sup | batch | params (M) | step (s) | samples/s | TFLOP/sample | model TFLOP/s | MFU | peak mem (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mem_GiB']:.1f}" if r["peak_mem_GiB"] is not None else "-"
        print(f"| {r['preset']} | {r['image_size']} | {r['input_views']}/{r['supervision_views']} | {r['batch_size']} | "
              f"{r['params_M']:.1f} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | {r['flops_per_sample'] / 1e12:.3f} | "
              f"{r['model_flops_per_s'] / 1e12:.2f} | {100 * r['mfu']:.1f}% | {mem} |")
    print(f"\ninference ({lat['preset']}, attention {args.attention}, {lat['views']} views, {lat['image_size']} px, {lat['dtype']}): "
          f"forward {lat['forward_ms_median']:.1f} ms, forward + render 4 views {lat['forward_render4_ms_median']:.1f} ms "
          f"(median of {lat['iters']})")
    write_json(args.out, {"device": dev_name, "torch": torch.__version__, "matmul_peak": peak, "train": rows,
                          "inference": lat,
                          "flops_formula": "model.gslrm.flops_per_sample(training=True): 3 x forward matmul FLOPs; renderer not counted"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
