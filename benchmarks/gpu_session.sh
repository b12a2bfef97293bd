#!/usr/bin/env bash
# One GPU session: build gsplat, run the GPU-marked tests (torch vs gsplat parity) and the GPU
# benchmarks. Everything lands in $OUT (default benchmarks/out). Usage on a CUDA machine with
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

# gsplat compiles its CUDA kernels on first use; build once for this GPU's architecture.
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
start=$(date +%s)
timeout "${GSPLAT_BUILD_TIMEOUT:-330}" python3 -c "from gsplat.cuda._backend import _C; print('gsplat CUDA backend:', _C)" > "$OUT/gsplat_build.txt" 2>&1
build=$?
echo "exit $build after $(( $(date +%s) - start )) s" >> "$OUT/gsplat_build.txt"
if [ $build -ne 0 ]; then
  echo "gsplat did not build: benchmarks fall back to the torch renderer" | tee -a "$OUT/gsplat_build.txt"
  rm -rf /tmp/site/gsplat
fi

timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_model_render.py > "$OUT/gpu_tests.txt" 2>&1
echo "exit $?" >> "$OUT/gpu_tests.txt"

timeout "${BENCH_TIMEOUT:-180}" python3 benchmarks/train_throughput.py --presets base facelift --steps 8 --warmup 3 \
  --latency-iters 10 --out "$OUT/train_throughput.json" > "$OUT/train_throughput.txt" 2>&1
echo "exit $?" >> "$OUT/train_throughput.txt"
tail -n 30 "$OUT"/*.txt
