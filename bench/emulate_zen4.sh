#!/usr/bin/env bash
# Run a command (default: the test suite) on an Intel Xeon with AMX as close to the AMD EPYC Zen 4 as
# software allows, for the code paths that branch on the CPU:
#   - pspnet's own decisions (bf16/int8 defaults, `auto`) see a Zen 4 (PSPNET_SIMULATE_CPU=zen4, within what
#     this machine's runtime runs);
#   - PyTorch's oneDNN stops at AVX-512 with bf16 and VNNI, no AMX (ONEDNN_MAX_CPU_ISA), and so does
#     OpenVINO's CPU plugin, whose oneDNN reads the same variable (its runtime graph names
#     brgconv_avx512_bf16 instead of brgconv_avx512_amx_bf16);
#   - the training kernels build for the Zen 4's instruction set: AVX-512 with bf16 and VNNI, no
#     avx512_fp16, no AMX, no AVX-VNNI, tuned for znver3 (GCC 12 does not know znver4)
#     (PSPNET_KERNEL_CXXFLAGS; the kernel cache key includes the flags, so no library is shared).
# Not emulated: ONNX Runtime's own CPU dispatch (MLAS still sees every instruction set this CPU has),
# clock, caches and memory. So this checks correctness on a Zen 4's code paths; its timings are not Zen 4 timings.
#
#   bench/emulate_zen4.sh                      # python -m pytest -q
#   bench/emulate_zen4.sh pspnet bench --what train
set -euo pipefail
cd "$(dirname "$0")/.."

if ! grep -q amx_tile /proc/cpuinfo; then
  echo "emulate_zen4.sh: this CPU has no AMX; run the command directly" >&2
fi
# pspnet.capability's Zen 4 profile: avx512_bf16 and VNNI, no AMX
export PSPNET_SIMULATE_CPU=zen4
export ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16
export PSPNET_KERNEL_CXXFLAGS="-march=znver3 -mtune=znver3 -mavx512f -mavx512dq -mavx512cd -mavx512bw \
-mavx512vl -mavx512ifma -mavx512vbmi -mavx512vbmi2 -mavx512vnni -mavx512bitalg -mavx512vpopcntdq -mavx512bf16 \
-mgfni -mvaes -mvpclmulqdq"
# no pspnet process may pick up an `auto` choice or int8 model cached by the unemulated CPU
export PSPNET_HOME="${PSPNET_HOME:-${TMPDIR:-/tmp}/pspnet_home_zen4_emulation}"

echo "emulating a Zen 4 on: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
echo "PSPNET_SIMULATE_CPU=$PSPNET_SIMULATE_CPU ONEDNN_MAX_CPU_ISA=$ONEDNN_MAX_CPU_ISA PSPNET_HOME=$PSPNET_HOME"
if [ "$#" -eq 0 ]; then set -- python -m pytest -q; fi
exec "$@"
