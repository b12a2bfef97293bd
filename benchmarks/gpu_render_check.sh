#!/usr/bin/env bash
# pyrender on a GPU machine through EGL, in one run (~6 min at most, every step has a timeout and
# the script keeps going when one fails):
#   1. GL/EGL vendor and renderer strings (egl.txt)
#   2. benchmarks/egl_diagnose.py: framebuffer samples 4 vs 1, mask IoU vs the reference
#      rasterization, depth vs ray casting, where the depth resolve samples (egl_diagnose.txt)
#   3. the render/synthetic tests under EGL, short failure reasons (render_tests_egl.txt; not
#      tests/test_gl.py: it checks the OSMesa platform and cannot share a process with EGL)
#   4. the synthetic throughput benchmark, full job vs bare pyrender (synthetic_throughput_egl.txt)
# Needs the EGL client libraries (.gl/*.deb), wheels (.whl/) and the MAMMAL files in
# $MAMMAL_MOUSE_DIR (default: .mammal). From the repository root:
#     MAMMAL_MOUSE_DIR=$PWD/.mammal OUT=benchmarks/out bash benchmarks/gpu_render_check.sh
# Results land in $OUT; the tail of each file is printed at the end.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export MAMMAL_MOUSE_DIR=${MAMMAL_MOUSE_DIR:-$PWD/.mammal}
start=$(date +%s)
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$OUT/pip_render.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD
export MOUSE_FACELIFT_GL=egl

step() {  # step NAME TIMEOUT_S COMMAND...: run with a timeout into $OUT/NAME.txt, note exit status and seconds
  local name=$1 limit=$2 t0
  shift 2
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "exit $? after $(( $(date +%s) - t0 )) s (limit $limit s)" >> "$OUT/$name.txt"
}

step egl 45 python3 benchmarks/egl_diagnose.py --info-only
step egl_diagnose 90 python3 benchmarks/egl_diagnose.py --samples 4 1
step render_tests_egl 150 python3 -m pytest -q -rf --tb=line -p no:cacheprovider tests/test_render.py tests/test_synthetic.py
step synthetic_throughput_egl 75 python3 benchmarks/synthetic_throughput.py --samples 4 --views 32 --size 256

echo "total $(( $(date +%s) - start )) s" >> "$OUT/synthetic_throughput_egl.txt"
tail -n 60 "$OUT"/egl.txt "$OUT"/egl_diagnose.txt
tail -n 25 "$OUT"/render_tests_egl.txt "$OUT"/synthetic_throughput_egl.txt
