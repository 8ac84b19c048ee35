// Per-pixel cross-entropy of bilinearly upsampled logits, forward and backward, without the
// full-resolution logits ever existing. See pspnet/models/loss.py (upsampled_cross_entropy).
//
// logits: float32 [N, h, w, K] (channels last, the network's output stride); target: int64 [N, H, W].
// loss[n, y, x] = weight[t] * (logsumexp_k z_k - z_t), z = bilinear(logits) at (y, x), as
// torch.nn.functional.interpolate(mode="bilinear") computes it (same source index and weights, both
// align_corners conventions), 0 where t is ignore_index. The backward scatters
// grad[n, y, x] * weight[t] * (softmax(z) - onehot(t)) back through the bilinear weights.
//
// Work is split by image, each image's gradient written by one thread only, so results do not depend
// on the thread count. No torch headers (built like bn_relu.cpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

struct Taps {  // one output coordinate's two source indices and weights
    std::vector<int64_t> i0, i1;
    std::vector<float> l0, l1;
};

// As ATen's area_pixel_compute_source_index + guard_index_and_lambda (UpSample.h).
Taps taps(int64_t out_size, int64_t in_size, bool align_corners) {
    Taps t;
    t.i0.resize(out_size), t.i1.resize(out_size), t.l0.resize(out_size), t.l1.resize(out_size);
    const float scale = align_corners ? (out_size > 1 ? float(in_size - 1) / float(out_size - 1) : 0.0f)
                                      : float(in_size) / float(out_size);
    for (int64_t d = 0; d < out_size; ++d) {
        float src = align_corners ? scale * float(d) : scale * (float(d) + 0.5f) - 0.5f;
        if (!align_corners && src < 0.0f) src = 0.0f;
        const int64_t i0 = std::min(int64_t(std::floor(src)), in_size - 1);
        const float lambda = std::min(std::max(src - float(i0), 0.0f), 1.0f);
        t.i0[d] = i0;
        t.i1[d] = i0 + (i0 < in_size - 1 ? 1 : 0);
        t.l0[d] = 1.0f - lambda;
        t.l1[d] = lambda;
    }
    return t;
}

// exp for x <= ~0 (Cephes' single-precision polynomial; relative error about 1e-7), branch-free so
// that loops over pixels vectorise (GCC vectorises its floor only with -fno-trapping-math, which
// kernels/__init__.py passes).
inline float exp_neg(float x) {
    x = std::max(x, -87.0f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// z[k * W + x] for one output row: the two source rows blended (a [K, w] table), then the columns.
void row_logits(const float* logits, int64_t h_in, int64_t w_in, int64_t K, int64_t W, const Taps& ty,
                const Taps& tx, int64_t y, float* table, float* z) {
    const float* r0 = logits + ty.i0[y] * w_in * K;
    const float* r1 = logits + ty.i1[y] * w_in * K;
    const float a0 = ty.l0[y], a1 = ty.l1[y];
    for (int64_t xs = 0; xs < w_in; ++xs)
        for (int64_t k = 0; k < K; ++k) table[k * w_in + xs] = a0 * r0[xs * K + k] + a1 * r1[xs * K + k];
    for (int64_t k = 0; k < K; ++k) {
        const float* tk = table + k * w_in;
        float* zk = z + k * W;
#pragma omp simd
        for (int64_t x = 0; x < W; ++x) zk[x] = tx.l0[x] * tk[tx.i0[x]] + tx.l1[x] * tk[tx.i1[x]];
    }
}

}  // namespace

extern "C" {

// loss, lse: float32 [N, H, W]. class_weight: [K] or null. Returns 0, or 1 for a target out of range.
int pspnet_upsampled_ce_forward(const float* logits, const int64_t* target, const float* class_weight,
                                int64_t N, int64_t h_in, int64_t w_in, int64_t K, int64_t H, int64_t W,
                                int64_t ignore_index, int align_corners, int threads, float* loss, float* lse) {
    const Taps ty = taps(H, h_in, align_corners != 0), tx = taps(W, w_in, align_corners != 0);
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
    for (int64_t n = 0; n < N; ++n) {
        std::vector<float> table(K * w_in), z(K * W), m(W), s(W);
        const float* img = logits + n * h_in * w_in * K;
        for (int64_t y = 0; y < H; ++y) {
            row_logits(img, h_in, w_in, K, W, ty, tx, y, table.data(), z.data());
            std::fill(m.begin(), m.end(), -INFINITY);
            std::fill(s.begin(), s.end(), 0.0f);
            for (int64_t k = 0; k < K; ++k) {
                const float* zk = z.data() + k * W;
#pragma omp simd
                for (int64_t x = 0; x < W; ++x) m[x] = std::max(m[x], zk[x]);
            }
            for (int64_t k = 0; k < K; ++k) {
                const float* zk = z.data() + k * W;
#pragma omp simd
                for (int64_t x = 0; x < W; ++x) s[x] += exp_neg(zk[x] - m[x]);
            }
            const int64_t* ty_row = target + (n * H + y) * W;
            float* loss_row = loss + (n * H + y) * W;
            float* lse_row = lse + (n * H + y) * W;
            for (int64_t x = 0; x < W; ++x) {
                const float l = m[x] + std::log(s[x]);
                lse_row[x] = l;
                const int64_t t = ty_row[x];
                if (t == ignore_index) {
                    loss_row[x] = 0.0f;
                } else if (t < 0 || t >= K) {
                    bad = 1;
                    loss_row[x] = 0.0f;
                } else {
                    loss_row[x] = (class_weight ? class_weight[t] : 1.0f) * (l - z[t * W + x]);
                }
            }
        }
    }
    return bad;
}

// grad_logits: float32 [N, h, w, K], overwritten. grad_loss: float32 [N, H, W].
int pspnet_upsampled_ce_backward(const float* logits, const int64_t* target, const float* class_weight,
                                 const float* lse, const float* grad_loss, int64_t N, int64_t h_in, int64_t w_in,
                                 int64_t K, int64_t H, int64_t W, int64_t ignore_index, int align_corners,
                                 int threads, float* grad_logits) {
    const Taps ty = taps(H, h_in, align_corners != 0), tx = taps(W, w_in, align_corners != 0);
    // The output columns that read source column xs through i0 (and through i1) form a contiguous
    // range, so the column scatter is a short dot product per (k, xs).
    std::vector<int64_t> first0(w_in, W), last0(w_in, -1), first1(w_in, W), last1(w_in, -1);
    for (int64_t x = 0; x < W; ++x) {
        first0[tx.i0[x]] = std::min(first0[tx.i0[x]], x), last0[tx.i0[x]] = std::max(last0[tx.i0[x]], x);
        first1[tx.i1[x]] = std::min(first1[tx.i1[x]], x), last1[tx.i1[x]] = std::max(last1[tx.i1[x]], x);
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        std::vector<float> table(K * w_in), z(K * W), g(W), cols(K * w_in);
        const float* img = logits + n * h_in * w_in * K;
        float* grad_img = grad_logits + n * h_in * w_in * K;
        std::fill(grad_img, grad_img + h_in * w_in * K, 0.0f);
        for (int64_t y = 0; y < H; ++y) {
            const int64_t* t_row = target + (n * H + y) * W;
            const float* gl_row = grad_loss + (n * H + y) * W;
            const float* lse_row = lse + (n * H + y) * W;
            bool any = false;
            for (int64_t x = 0; x < W; ++x) {
                const int64_t t = t_row[x];
                const bool valid = t != ignore_index && t >= 0 && t < K;
                g[x] = valid ? gl_row[x] * (class_weight ? class_weight[t] : 1.0f) : 0.0f;
                any = any || g[x] != 0.0f;
            }
            if (!any) continue;
            row_logits(img, h_in, w_in, K, W, ty, tx, y, table.data(), z.data());
            for (int64_t k = 0; k < K; ++k) {  // z becomes d loss / d z = g * (softmax - onehot)
                float* zk = z.data() + k * W;
#pragma omp simd
                for (int64_t x = 0; x < W; ++x) zk[x] = g[x] * (exp_neg(zk[x] - lse_row[x]) - (t_row[x] == k ? 1.0f : 0.0f));
            }
            for (int64_t k = 0; k < K; ++k) {
                const float* dk = z.data() + k * W;
                for (int64_t xs = 0; xs < w_in; ++xs) {
                    float acc = 0.0f;
                    for (int64_t x = first0[xs]; x <= last0[xs]; ++x) acc += tx.l0[x] * dk[x];
                    for (int64_t x = first1[xs]; x <= last1[xs]; ++x) acc += tx.l1[x] * dk[x];
                    cols[k * w_in + xs] = acc;
                }
            }
            float* r0 = grad_img + ty.i0[y] * w_in * K;
            float* r1 = grad_img + ty.i1[y] * w_in * K;
            const float a0 = ty.l0[y], a1 = ty.l1[y];
            for (int64_t xs = 0; xs < w_in; ++xs)
                for (int64_t k = 0; k < K; ++k) {
                    r0[xs * K + k] += a0 * cols[k * w_in + xs];
                    r1[xs * K + k] += a1 * cols[k * w_in + xs];
                }
        }
    }
    return 0;
}

}  // extern "C"
