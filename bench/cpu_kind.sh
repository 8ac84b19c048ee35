#!/usr/bin/env bash
# Issue 16's measurements for the CPU this runs on, one after the other (nothing else may run meanwhile):
#   1. pspnet bench --what headline   the default mode against fp32 eager, alone and alternated (Must 1, 3)
#   2. bench/openvino_compare.py      our modes against OpenVINO f32/bf16/NNCF int8 on our export (Must 1)
#   3. bench/agreement.py x 3         int8 on ONNX Runtime, torch and OpenVINO against fp32, CamVid val,
#                                     the packaged model, on *this* CPU (not recorded into the weights)
#   4. pspnet bench --what train      the bf16 training step as a fraction of the bf16 matmul peak (Must 4)
#   5. pspnet bench --what memory     peak RSS of prediction and of a training step (Must 5)
#   6. bench/kernel_ops.py            each training kernel's time at the training bench's shapes
# Each command and what it printed go to docs/results/cpu_kind_<cpu>_<date>_<HHMM>/<name>.txt (and JSON
# where the command writes one), ready to quote in docs/benchmarks.md; a folder that exists is refused.
#
# OpenVINO and NNCF live in their own environment, never the project's (their numpy/onnx pins):
#   python3 -m venv /work/ovenv && . /work/ovenv/bin/activate
#   pip install torch==2.13.0 && pip install -e ".[dev]" openvino==2026.4.1 nncf==3.4.0
#
# Usage: bench/cpu_kind.sh [OPENVINO_PYTHON]   (default /work/ovenv/bin/python; the rest runs with
#        `python` on PATH, the project's environment). DRY=1 prints the commands without running them.
set -euo pipefail
cd "$(dirname "$0")/.."

ov_python=${1:-/work/ovenv/bin/python}
data_root=${DATA_ROOT:-../shared/data/camvid}
weights=src/pspnet/weights/camvid_pspnet18.safetensors
# the folder names the CPU kind (docs/benchmarks.md has one table per kind); emulated AVX2-only runs
# still read the host's flags here, and their numbers are not timings anyway
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
if [[ $flags == *" amx_bf16"* ]]; then kind=xeon_amx
elif [[ $flags == *" avx512_bf16"* ]] && grep -q AuthenticAMD /proc/cpuinfo; then kind=zen4
elif [[ $flags != *" avx512f"* && $flags == *" avx2"* ]]; then kind=avx2
else kind=cpu; fi
out=docs/results/cpu_kind_${kind}_$(date -u +%Y-%m-%d_%H%M)
if [[ -e $out ]]; then
    echo "$out exists: not overwriting earlier results; run again in a minute" >&2
    exit 1
fi
[[ -n ${DRY:-} ]] || mkdir -p "$out"

run() {  # run NAME COMMAND...: the command line, then its output, into $out/NAME.txt
    local name=$1
    shift
    echo "== $name: $*"
    if [[ -n ${DRY:-} ]]; then return; fi
    { echo "\$ $*"; "$@" 2>&1; } | tee "$out/$name.txt"
}

run headline pspnet bench --what headline --out "$out/headline.json"
run openvino_compare "$ov_python" bench/openvino_compare.py --out "$out/openvino_compare.json"
for backend in onnxruntime torch; do
    run "agreement_int8_$backend" python bench/agreement.py --weights "$weights" --data-root "$data_root" \
        --precision int8 --backend "$backend" --calibration-images 0 --out "$out/agreement_int8_$backend.json"
done
run agreement_int8_openvino "$ov_python" bench/agreement.py --weights "$weights" --data-root "$data_root" \
    --precision int8 --backend openvino --calibration-images 0 --out "$out/agreement_int8_openvino.json"
run train pspnet bench --what train --reps 6 --data-root "$data_root" --out "$out/train.json"
run memory pspnet bench --what memory --out "$out/memory.json"
run kernel_ops python bench/kernel_ops.py
echo "outputs in $out"
