#!/usr/bin/env bash
# One GPU session: build gsplat, run the GPU-marked tests (torch vs gsplat parity) and the GPU
# benchmarks (transformer-only MFU per attention kernel, whole training step, inference). Everything lands in $OUT (default benchmarks/out). Usage on a CUDA machine with
# PyTorch installed, from the repository root, with gsplat's wheel in .whl/:
#     OUT=benchmarks/out bash benchmarks/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
{ date -u; nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } > "$OUT/device.txt" 2>&1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$OUT/pip.txt" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

# gsplat compiles its CUDA kernels on first use; build once for this GPU's architecture, in the
# background while the transformer-only benchmark (which needs no renderer) uses the GPU.
export MAX_JOBS=${MAX_JOBS:-12} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
start=$(date +%s)
( timeout "${GSPLAT_BUILD_TIMEOUT:-330}" python3 -c "from gsplat.cuda._backend import _C; print('gsplat CUDA backend:', _C)" > "$OUT/gsplat_build.txt" 2>&1
  echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/gsplat_build.txt" ) &
build_pid=$!

timeout 120 python3 benchmarks/transformer_mfu.py --presets base facelift --attention sdpa cudnn \
  --out "$OUT/transformer_mfu.json" > "$OUT/transformer_mfu.txt" 2>&1
echo "exit $?" >> "$OUT/transformer_mfu.txt"
timeout 150 python3 benchmarks/transformer_mfu.py --presets facelift --attention "${COMPILE_ATTENTION:-cudnn}" --compile \
  --out "$OUT/transformer_mfu_compile.json" > "$OUT/transformer_mfu_compile.txt" 2>&1
echo "exit $?" >> "$OUT/transformer_mfu_compile.txt"

wait $build_pid
if ! grep -q "^exit 0" "$OUT/gsplat_build.txt"; then
  echo "gsplat did not build: benchmarks fall back to the torch renderer" | tee -a "$OUT/gsplat_build.txt"
  rm -rf /tmp/site/gsplat
fi

timeout 120 python3 -m pytest -m gpu -q -rf --tb=short -p no:cacheprovider tests/test_model_render.py tests/test_model_gslrm.py > "$OUT/gpu_tests.txt" 2>&1
echo "exit $?" >> "$OUT/gpu_tests.txt"

for att in sdpa cudnn; do
  timeout "${BENCH_TIMEOUT:-120}" python3 benchmarks/train_throughput.py --presets ${TRAIN_PRESETS:-base facelift} --steps 6 --warmup 2 \
    --attention $att --latency-iters 8 --out "$OUT/train_throughput_$att.json" > "$OUT/train_throughput_$att.txt" 2>&1
  echo "exit $?" >> "$OUT/train_throughput_$att.txt"
done
tail -n 30 "$OUT"/*.txt
