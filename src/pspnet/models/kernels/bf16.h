// float32 <-> bfloat16 for the kernels here: a bf16 is the high half of a float32's bits. Loads and
// stores of float32 are plain, so one loop body serves both dtypes.
#pragma once

#include <cstdint>
#include <cstring>

namespace pspnet_kernels {

using bf16 = uint16_t;

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const bf16* p, int64_t i) {
    uint32_t u = uint32_t(p[i]) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(bf16* p, int64_t i, float v) {
    // Round to nearest even, as torch does; a NaN stays a (quiet) NaN.
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    p[i] = bf16(((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded);
}

}  // namespace pspnet_kernels
