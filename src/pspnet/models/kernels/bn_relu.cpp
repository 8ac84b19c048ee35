// Batch norm (training statistics) + optional residual add + ReLU, forward and backward, for
// channels-last CPU tensors viewed as [rows, channels] (rows = N*H*W). See pspnet/models/norm_act.py.
//
// No torch headers: the library is built with plain g++ in about a second and takes raw pointers
// from Python (ctypes). It is linked to libgomp.so.1, which resolves to the OpenMP runtime torch has
// already loaded, so the two share one thread pool.
//
// Reductions are deterministic and do not depend on the thread count: rows are cut into blocks of a
// size fixed by the channel count, each block's partial sums are written to its own slot, and the
// slots are merged in block order in double precision.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16.h"

namespace {

using pspnet_kernels::bf16;
using pspnet_kernels::load;
using pspnet_kernels::store;

// Rows per block: about 64 KB of bf16 per block, so a block read twice stays in cache.
inline int64_t rows_per_block(int64_t channels) { return std::max<int64_t>(8, 32768 / channels); }

// Per-channel mean and biased variance: each block's mean and sum of squared deviations from it
// (its second read hits the cache), merged in block order with Chan et al.'s formula.
template <typename T>
void stats(const T* x, int64_t rows, int64_t channels, int threads, float* mean_out, float* var_out) {
    const int64_t per_block = rows_per_block(channels), blocks = (rows + per_block - 1) / per_block;
    std::vector<float> block_mean(blocks * channels), block_m2(blocks * channels);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t r0 = b * per_block, r1 = std::min(rows, r0 + per_block);
        float* mu = &block_mean[b * channels];
        float* m2 = &block_m2[b * channels];
        std::fill(mu, mu + channels, 0.0f);
        std::fill(m2, m2 + channels, 0.0f);
        for (int64_t r = r0; r < r1; ++r) {
            const T* row = x + r * channels;
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) mu[c] += load(row, c);
        }
        const float inv_n = 1.0f / float(r1 - r0);
        for (int64_t c = 0; c < channels; ++c) mu[c] *= inv_n;
        for (int64_t r = r0; r < r1; ++r) {
            const T* row = x + r * channels;
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) {
                const float d = load(row, c) - mu[c];
                m2[c] += d * d;
            }
        }
    }
    std::vector<double> mean(channels, 0.0), m2(channels, 0.0);
    double n = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {
        const double nb = double(std::min(rows, (b + 1) * per_block) - b * per_block), total = n + nb;
        for (int64_t c = 0; c < channels; ++c) {
            const double delta = double(block_mean[b * channels + c]) - mean[c];
            mean[c] += delta * nb / total;
            m2[c] += double(block_m2[b * channels + c]) + delta * delta * n * nb / total;
        }
        n = total;
    }
    for (int64_t c = 0; c < channels; ++c) {
        mean_out[c] = float(mean[c]);
        var_out[c] = float(m2[c] / double(rows));
    }
}

// y = x * scale + shift (+ residual), then ReLU if asked; one rounding to T at the end.
template <typename T>
void forward(const T* x, const T* residual, T* y, int64_t rows, int64_t channels, const float* scale,
             const float* shift, bool relu, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const T* xr = x + r * channels;
        T* yr = y + r * channels;
        if (residual) {
            const T* rr = residual + r * channels;
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) {
                float v = load(xr, c) * scale[c] + shift[c] + load(rr, c);
                store(yr, c, relu ? std::max(v, 0.0f) : v);
            }
        } else {
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) {
                float v = load(xr, c) * scale[c] + shift[c];
                store(yr, c, relu ? std::max(v, 0.0f) : v);
            }
        }
    }
}

// The gradient reaching batch norm's output: grad_y where the ReLU passed its input (y > 0, or, with
// no y given, x * scale + shift > 0, the same test the forward made), and its per-channel sums
// sum(g) and sum(g * (x - mean)). With grad_pre given, g is also written there: the residual
// branch's gradient, which batch norm's backward then reads instead of grad_y and y.
// One loop body per case (template flags), so that each inner loop is branch-free and vectorises.
template <typename T, bool RELU, bool HAS_Y, bool HAS_PRE>
void backward_reduce_rows(const T* grad_y, const T* x, const T* y, T* grad_pre, int64_t r0, int64_t r1,
                          int64_t channels, const float* scale, const float* shift, const float* mean, float* sg,
                          float* sgx) {
    for (int64_t r = r0; r < r1; ++r) {
        const T* gr = grad_y + r * channels;
        const T* xr = x + r * channels;
        const T* yr = HAS_Y ? y + r * channels : nullptr;
        T* pr = HAS_PRE ? grad_pre + r * channels : nullptr;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
            const float xv = load(xr, c);
            float g = load(gr, c);
            if (RELU) {
                const bool pass = HAS_Y ? load(yr, c) > 0.0f : xv * scale[c] + shift[c] > 0.0f;
                g = pass ? g : 0.0f;
            }
            if (HAS_PRE) {
                store(pr, c, g);
                g = load(pr, c);  // batch norm's backward sees the rounded value, as eager's would
            }
            sg[c] += g;
            sgx[c] += g * (xv - mean[c]);
        }
    }
}

template <typename T>
void backward_reduce(const T* grad_y, const T* x, const T* y, T* grad_pre, int64_t rows, int64_t channels,
                     const float* scale, const float* shift, const float* mean, bool relu, int threads,
                     float* sum_g, float* sum_gx) {
    const int64_t per_block = rows_per_block(channels), blocks = (rows + per_block - 1) / per_block;
    std::vector<float> part_g(blocks * channels, 0.0f), part_gx(blocks * channels, 0.0f);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t r0 = b * per_block, r1 = std::min(rows, r0 + per_block);
        float* sg = &part_g[b * channels];
        float* sgx = &part_gx[b * channels];
        if (!relu)
            grad_pre ? backward_reduce_rows<T, false, false, true>(grad_y, x, y, grad_pre, r0, r1, channels, scale,
                                                                   shift, mean, sg, sgx)
                     : backward_reduce_rows<T, false, false, false>(grad_y, x, y, grad_pre, r0, r1, channels, scale,
                                                                    shift, mean, sg, sgx);
        else if (y)
            grad_pre ? backward_reduce_rows<T, true, true, true>(grad_y, x, y, grad_pre, r0, r1, channels, scale,
                                                                 shift, mean, sg, sgx)
                     : backward_reduce_rows<T, true, true, false>(grad_y, x, y, grad_pre, r0, r1, channels, scale,
                                                                  shift, mean, sg, sgx);
        else
            grad_pre ? backward_reduce_rows<T, true, false, true>(grad_y, x, y, grad_pre, r0, r1, channels, scale,
                                                                  shift, mean, sg, sgx)
                     : backward_reduce_rows<T, true, false, false>(grad_y, x, y, grad_pre, r0, r1, channels, scale,
                                                                   shift, mean, sg, sgx);
    }
    std::vector<double> total_g(channels, 0.0), total_gx(channels, 0.0);
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t c = 0; c < channels; ++c) {
            total_g[c] += part_g[b * channels + c];
            total_gx[c] += part_gx[b * channels + c];
        }
    for (int64_t c = 0; c < channels; ++c) {
        sum_g[c] = float(total_g[c]);
        sum_gx[c] = float(total_gx[c]);
    }
}

// grad_x = g * k_g + (x - mean) * k_x + k_0, with g masked as in backward_reduce (relu) or already
// masked (grad_pre passed as grad_y, relu false).
template <typename T>
void backward_apply(const T* grad_y, const T* x, T* grad_x, int64_t rows, int64_t channels, const float* scale,
                    const float* shift, const float* mean, const float* k_g, const float* k_x, const float* k_0,
                    bool relu, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const T* gr = grad_y + r * channels;
        const T* xr = x + r * channels;
        T* dr = grad_x + r * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
            const float xv = load(xr, c);
            float g = load(gr, c);
            if (relu) g = xv * scale[c] + shift[c] > 0.0f ? g : 0.0f;
            store(dr, c, g * k_g[c] + (xv - mean[c]) * k_x[c] + k_0[c]);
        }
    }
}

}  // namespace

// dtype: 0 float32, 1 bfloat16. Pointers that may be null: residual, y, grad_pre.
extern "C" {

int pspnet_bn_stats(int dtype, const void* x, int64_t rows, int64_t channels, int threads, float* mean,
                    float* var) {
    if (dtype == 0) stats(static_cast<const float*>(x), rows, channels, threads, mean, var);
    else if (dtype == 1) stats(static_cast<const bf16*>(x), rows, channels, threads, mean, var);
    else return 1;
    return 0;
}

int pspnet_bn_forward(int dtype, const void* x, const void* residual, void* y, int64_t rows, int64_t channels,
                      const float* scale, const float* shift, int relu, int threads) {
    if (dtype == 0)
        forward(static_cast<const float*>(x), static_cast<const float*>(residual), static_cast<float*>(y), rows,
                channels, scale, shift, relu != 0, threads);
    else if (dtype == 1)
        forward(static_cast<const bf16*>(x), static_cast<const bf16*>(residual), static_cast<bf16*>(y), rows,
                channels, scale, shift, relu != 0, threads);
    else return 1;
    return 0;
}

int pspnet_bn_backward_reduce(int dtype, const void* grad_y, const void* x, const void* y, void* grad_pre,
                              int64_t rows, int64_t channels, const float* scale, const float* shift,
                              const float* mean, int relu, int threads, float* sum_g, float* sum_gx) {
    if (dtype == 0)
        backward_reduce(static_cast<const float*>(grad_y), static_cast<const float*>(x),
                        static_cast<const float*>(y), static_cast<float*>(grad_pre), rows, channels, scale, shift,
                        mean, relu != 0, threads, sum_g, sum_gx);
    else if (dtype == 1)
        backward_reduce(static_cast<const bf16*>(grad_y), static_cast<const bf16*>(x), static_cast<const bf16*>(y),
                        static_cast<bf16*>(grad_pre), rows, channels, scale, shift, mean, relu != 0, threads,
                        sum_g, sum_gx);
    else return 1;
    return 0;
}

int pspnet_bn_backward_apply(int dtype, const void* grad_y, const void* x, void* grad_x, int64_t rows,
                             int64_t channels, const float* scale, const float* shift, const float* mean,
                             const float* k_g, const float* k_x, const float* k_0, int relu, int threads) {
    if (dtype == 0)
        backward_apply(static_cast<const float*>(grad_y), static_cast<const float*>(x), static_cast<float*>(grad_x),
                       rows, channels, scale, shift, mean, k_g, k_x, k_0, relu != 0, threads);
    else if (dtype == 1)
        backward_apply(static_cast<const bf16*>(grad_y), static_cast<const bf16*>(x), static_cast<bf16*>(grad_x),
                       rows, channels, scale, shift, mean, k_g, k_x, k_0, relu != 0, threads);
    else return 1;
    return 0;
}

}  // extern "C"
