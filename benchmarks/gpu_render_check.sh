#!/usr/bin/env bash
# pyrender on a GPU machine through EGL: the render/synthetic tests and the synthetic throughput
# benchmark. Needs the EGL client libraries (.gl/*.deb), wheels (.whl/) and the MAMMAL files in
# $MAMMAL_MOUSE_DIR. Results land in $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > "$OUT/pip_render.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "from workflow_scripts.gl import setup_headless; print('platform chosen:', setup_headless())" > "$OUT/egl.txt" 2>&1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_render.py tests/test_synthetic.py > "$OUT/render_tests_egl.txt" 2>&1
echo "exit $?" >> "$OUT/render_tests_egl.txt"
timeout 150 python3 benchmarks/synthetic_throughput.py --samples 4 --views 32 --size 256 > "$OUT/synthetic_throughput_egl.txt" 2>&1
echo "exit $?" >> "$OUT/synthetic_throughput_egl.txt"
tail -n 25 "$OUT"/egl.txt "$OUT"/render_tests_egl.txt "$OUT"/synthetic_throughput_egl.txt
