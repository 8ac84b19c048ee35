// Max pooling (no dilation, floor mode) forward and backward for channels-last CPU tensors, as the
// ResNet stem trains it. See pspnet/models/max_pool.py.
//
// The forward keeps, per output value, which of the k*k window positions won, in one byte (ATen keeps
// an int64 index). The backward gathers rather than scatters: each input pixel sums the gradients of
// the (at most ceil(k/s)^2) windows whose winner it is, so the input gradient is written once, with
// no zero fill before it, and each thread writes its own rows (results do not depend on the thread
// count). The winner is ATen's: the first maximum in row-major window order, or the last NaN; the
// gradient sums run in ATen's order (output rows, then columns), in float32, rounded once.
// No torch headers (built like bn_relu.cpp).

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

template <typename T>
void forward(const T* x, T* y, uint8_t* winner, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
             int64_t k, int64_t s, int64_t p, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> best(C);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n)
            for (int64_t oh = 0; oh < OH; ++oh)
                for (int64_t ow = 0; ow < OW; ++ow) {
                    const int64_t h0 = oh * s - p, w0 = ow * s - p;
                    const int64_t hs = std::max<int64_t>(h0, 0), he = std::min(h0 + k, H);
                    const int64_t ws = std::max<int64_t>(w0, 0), we = std::min(w0 + k, W);
                    const int64_t out = ((n * OH + oh) * OW + ow) * C;
                    uint8_t* win = winner + out;
                    float* m = best.data();
                    const uint8_t first = uint8_t((hs - h0) * k + (ws - w0));
                    for (int64_t c = 0; c < C; ++c) m[c] = -INFINITY, win[c] = first;
                    for (int64_t ih = hs; ih < he; ++ih)
                        for (int64_t iw = ws; iw < we; ++iw) {
                            const T* xr = x + ((n * H + ih) * W + iw) * C;
                            const uint8_t pos = uint8_t((ih - h0) * k + (iw - w0));
#pragma omp simd
                            for (int64_t c = 0; c < C; ++c) {
                                const float v = load(xr, c);
                                const bool take = v > m[c] || v != v;
                                m[c] = take ? v : m[c];
                                win[c] = take ? pos : win[c];
                            }
                        }
                    T* yr = y + out;
#pragma omp simd
                    for (int64_t c = 0; c < C; ++c) store(yr, c, m[c]);
                }
    }
}

template <typename T>
void backward(const T* grad_y, const uint8_t* winner, T* grad_x, int64_t N, int64_t H, int64_t W, int64_t C,
              int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p, int threads) {
#pragma omp parallel num_threads(threads)
    {
        std::vector<float> acc(C);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; ++n)
            for (int64_t ih = 0; ih < H; ++ih) {
                // the output rows whose window holds input row ih: oh * s - p <= ih <= oh * s - p + k - 1
                const int64_t oh0 = ih + p < k ? 0 : (ih + p - k) / s + 1, oh1 = std::min((ih + p) / s, OH - 1);
                for (int64_t iw = 0; iw < W; ++iw) {
                    const int64_t ow0 = iw + p < k ? 0 : (iw + p - k) / s + 1, ow1 = std::min((iw + p) / s, OW - 1);
                    float* a = acc.data();
                    std::fill(a, a + C, 0.0f);
                    for (int64_t oh = oh0; oh <= oh1; ++oh)
                        for (int64_t ow = ow0; ow <= ow1; ++ow) {
                            const uint8_t pos = uint8_t((ih - (oh * s - p)) * k + (iw - (ow * s - p)));
                            const int64_t out = ((n * OH + oh) * OW + ow) * C;
                            const uint8_t* win = winner + out;
                            const T* g = grad_y + out;
#pragma omp simd
                            for (int64_t c = 0; c < C; ++c) a[c] += win[c] == pos ? load(g, c) : 0.0f;
                        }
                    T* gx = grad_x + ((n * H + ih) * W + iw) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; ++c) store(gx, c, a[c]);
                }
            }
    }
}

}  // namespace

// dtype: 0 float32, 1 bfloat16. x, grad_x: [N, H, W, C]; y, grad_y, winner: [N, OH, OW, C].
extern "C" {

int pspnet_max_pool_forward(int dtype, const void* x, void* y, uint8_t* winner, int64_t N, int64_t H, int64_t W,
                            int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p, int threads) {
    if (dtype == 0)
        forward(static_cast<const float*>(x), static_cast<float*>(y), winner, N, H, W, C, OH, OW, k, s, p, threads);
    else if (dtype == 1)
        forward(static_cast<const bf16*>(x), static_cast<bf16*>(y), winner, N, H, W, C, OH, OW, k, s, p, threads);
    else return 1;
    return 0;
}

int pspnet_max_pool_backward(int dtype, const void* grad_y, const uint8_t* winner, void* grad_x, int64_t N,
                             int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s,
                             int64_t p, int threads) {
    if (dtype == 0)
        backward(static_cast<const float*>(grad_y), winner, static_cast<float*>(grad_x), N, H, W, C, OH, OW, k, s,
                 p, threads);
    else if (dtype == 1)
        backward(static_cast<const bf16*>(grad_y), winner, static_cast<bf16*>(grad_x), N, H, W, C, OH, OW, k, s, p,
                 threads);
    else return 1;
    return 0;
}

}  // extern "C"
