"""Model FLOP utilisation of GS-LRM's transformer alone, per attention kernel (issue 5's MFU bar).

GPU (the figures to report)::

    python benchmarks/transformer_mfu.py --presets base facelift --out results/bench/transformer_mfu.json

CPU smoke run::

    python benchmarks/transformer_mfu.py --device cpu --presets tiny --steps 2 --warmup 1 --out /tmp/tm.json

What is timed: forward + backward of the ``depth`` transformer blocks of a preset (the part of
GS-LRM that holds > 99 % of its FLOPs) on random tokens [B, L, width], with the model's weights in
fp32 under bf16 autocast exactly as in training (``model/train.py``), for each attention setting
of ``ModelConfig.attention`` ("sdpa": PyTorch's kernel choice, "cudnn": cuDNN fused attention
first) and optionally ``torch.compile`` (``--compile``). The whole training step (renderer, loss,
AdamW) is ``benchmarks/train_throughput.py``.

FLOPs per step = 3 x forward matmul FLOPs of the blocks (qkv 6LW^2, QK^T + AV 4L^2W, projection
2LW^2, MLP 16LW^2 per block, times batch), the same count as ``model.gslrm.flops_per_sample``
restricted to the blocks. MFU = FLOPs / time / peak, with the peak measured in the same run (best
bf16 8192^2 matmul; fp32 1024^2 on CPU). Attention kernels are also timed alone (fwd + bwd) so
the table shows where the time goes. Prints a markdown table; writes JSON (``--out``, atomic).
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_throughput import matmul_peak, sync  # noqa: E402
from model.config import preset  # noqa: E402
from model.gslrm import TransformerBlock, num_tokens  # noqa: E402
from workflow_scripts.atomic import write_json  # noqa: E402


def block_flops(width: int, mlp_ratio: int, L: int, depth: int, batch: int) -> float:
    """Forward + backward matmul FLOPs of ``depth`` blocks over ``batch`` sequences of L tokens."""
    W = width
    per_block = 2 * L * W * 3 * W + 2 * 2 * L * L * W + 2 * L * W * W + 2 * 2 * L * W * W * mlp_ratio
    return 3.0 * depth * per_block * batch


def time_it(fn, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of ``fn`` (mean over ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t) / steps


def bench_blocks(name: str, attention: str, compiled: bool, device: torch.device, args) -> dict:
    cfg = preset(name, num_input_views=args.views, attention=attention,
                 **({"image_size": args.image_size} if args.image_size else {}))
    L, B = num_tokens(cfg, args.views), args.batch_size
    torch.manual_seed(0)
    blocks = torch.nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.depth)]).to(device)
    run = torch.compile(blocks) if compiled else blocks
    x = torch.randn(B, L, cfg.width, device=device, requires_grad=True)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step() -> None:
        with amp:
            y = run(x)
        y.float().square().mean().backward()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        dt = time_it(step, device, args.warmup, args.steps)
    except Exception as exc:  # e.g. a kernel unavailable on this GPU or torch.compile failing: report, go on
        return {"preset": name, "attention": attention, "compile": compiled, "error": f"{type(exc).__name__}: {exc}"[:300]}
    flops = block_flops(cfg.width, cfg.mlp_ratio, L, cfg.depth, B)
    return {"preset": name, "attention": attention, "compile": compiled, "tokens": L, "batch_size": B,
            "image_size": cfg.image_size, "views": args.views, "step_s": dt, "flops": flops, "flops_per_s": flops / dt,
            "peak_mem_GiB": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def bench_attention_kernels(name: str, device: torch.device, args) -> list[dict]:
    """fwd + bwd of one attention call [B, heads, L, head_dim] in bf16 per SDPA kernel."""
    cfg = preset(name, num_input_views=args.views, **({"image_size": args.image_size} if args.image_size else {}))
    L, B = num_tokens(cfg, args.views), args.batch_size
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(B, cfg.heads, L, cfg.head_dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION} if device.type == "cuda" else {"math": SDPBackend.MATH}
    rows = []
    for kname, backend in kernels.items():
        def step() -> None:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v).sum().backward()
        try:
            dt = time_it(step, device, args.warmup, args.steps)
        except Exception as exc:
            rows.append({"preset": name, "kernel": kname, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        flops = 3.0 * 4 * L * L * cfg.width * B  # QK^T + AV, forward + backward (2 x forward)
        rows.append({"preset": name, "kernel": kname, "tokens": L, "step_s": dt, "flops_per_s": flops / dt})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--presets", "--preset", nargs="+", default=["base", "facelift"])
    ap.add_argument("--attention", nargs="+", default=["sdpa", "cudnn"], help="ModelConfig.attention values to compare")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks (first call compiles)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True, help="JSON output path")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    peak = matmul_peak(device)
    rows, kernels = [], []
    for name in args.presets:
        kernels += bench_attention_kernels(name, device, args)
        for attention in args.attention:
            for compiled in ([False, True] if args.compile else [False]):
                r = bench_blocks(name, attention, compiled, device, args)
                if "flops_per_s" in r:
                    r["mfu"] = r["flops_per_s"] / peak["flops_per_s"]
                rows.append(r)
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {dev_name}; torch {torch.__version__}; measured {peak['dtype']} matmul peak ({peak['n']}^2): "
          f"{peak['flops_per_s'] / 1e12:.1f} TFLOP/s\n")
    print("| preset | px | tokens | batch | attention | compile | fwd+bwd (ms) | TFLOP/s | MFU (transformer) | peak mem (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | | | | {r['attention']} | {r['compile']} | error: {r['error']} | | | |")
            continue
        mem = f"{r['peak_mem_GiB']:.1f}" if r["peak_mem_GiB"] is not None else "-"
        print(f"| {r['preset']} | {r['image_size']} | {r['tokens']} | {r['batch_size']} | {r['attention']} | {r['compile']} | "
              f"{1e3 * r['step_s']:.1f} | {r['flops_per_s'] / 1e12:.1f} | {100 * r['mfu']:.1f}% | {mem} |")
    print("\n| preset | attention kernel alone | tokens | fwd+bwd (ms) | TFLOP/s |\n|---|---|---|---|---|")
    for r in kernels:
        if "error" in r:
            print(f"| {r['preset']} | {r['kernel']} | error: {r['error']} | | |")
        else:
            print(f"| {r['preset']} | {r['kernel']} | {r['tokens']} | {1e3 * r['step_s']:.1f} | {r['flops_per_s'] / 1e12:.1f} |")
    write_json(args.out, {"device": dev_name, "torch": torch.__version__, "matmul_peak": peak, "blocks": rows,
                          "attention_kernels": kernels})
    return 0


if __name__ == "__main__":
    sys.exit(main())
