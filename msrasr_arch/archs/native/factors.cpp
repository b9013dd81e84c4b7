// Q' and K' of an inheriting layer (docs/architecture.md section 8), forward and backward, per window and head:
//   Q'[i, a] = q[i + a - r],   K'[j, a] = sum_b w[a, b] k[j + b - r]
// (blocks a = 0..size-1 of e channels each, r = size / 2, rows outside 0..N-1 zero; channels past size * e zero up
// to `width`), so that Q' K'^T is F(q k^T) for F the size x size depth-wise conv with kernel w. In PyTorch they
// took a dozen operators a layer forward and backward, which at LR patch 16 cost several times their arithmetic.
//
// q, k (W, H, N, E) read through (window, head, token) strides with E contiguous (the computing layer's qkv
// output in place); taps (H, size, size); Q', K' and their gradients (W, H, N, width) contiguous; dq, dk
// (W, H, N, E) contiguous. Built with window_attention.cpp into one library (see __init__.py).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#include "common.h"

namespace {

using namespace msrasr;

// y[0..n) += c * x[0..n)
inline void axpy(int64_t n, float c, const float* x, float* y) {
    const v8 cv = splat(c);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store(y + i, load(y + i) + cv * load(x + i));
    for (; i < n; ++i) y[i] += c * x[i];
}

// Four independent sums: a float reduction is not reassociated for the compiler to vectorise.
inline float dot(int64_t n, const float* x, const float* y) {
    v8 s[4] = {};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int u = 0; u < 4; ++u) s[u] += load(x + i + 8 * u) * load(y + i + 8 * u);
    for (; i + 8 <= n; i += 8) s[0] += load(x + i) * load(y + i);
    const v8 t = (s[0] + s[1]) + (s[2] + s[3]);
    float total = 0.0f;
    for (int u = 0; u < 8; ++u) total += t[u];
    for (; i < n; ++i) total += x[i] * y[i];
    return total;
}

// A block's n rows of e channels as one span of (n + 2r) rows, r zero rows either side: a shift by s rows of
// the whole block is then the span from row r + s, and the sums over shifts are long vector loops.
struct Padded {
    int64_t n, e, r;
    std::vector<float> buf;
    Padded(int64_t n_, int64_t e_, int64_t r_) : n(n_), e(e_), r(r_), buf((n_ + 2 * r_) * e_, 0.0f) {}
    float* rows() { return buf.data() + r * e; }  // row 0 of the block
    // Row t of the block from src[t * stride .. + e).
    void fill(const float* src, int64_t stride) {
        for (int64_t t = 0; t < n; ++t) std::memcpy(rows() + t * e, src + t * stride, e * sizeof(float));
    }
};

}  // namespace

extern "C" {

// strides: (window, head, token) of q, then of k.
void msrasr_factors_forward(const float* q, const float* k, const int64_t* strides, const float* taps, float* qf,
                            float* kf, int64_t windows, int64_t heads, int64_t n, int64_t e, int64_t size,
                            int64_t width, int threads) {
    const View qr = view(q, strides), kr = view(k, strides + 3);
    const int64_t r = size / 2;
#pragma omp parallel num_threads(threads)
    {
        Padded qp(n, e, r), kp(n, e, r);
        std::vector<float> block(n * e);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < windows * heads; ++b) {
            const int64_t w = b / heads, h = b % heads;
            const float* wh = taps + h * size * size;
            qp.fill(qr.row(w, h, 0), qr.st);
            kp.fill(kr.row(w, h, 0), kr.st);
            float* qb = qf + b * n * width;
            float* kb = kf + b * n * width;
            for (int64_t i = 0; i < n; ++i) {
                std::fill(qb + i * width + size * e, qb + (i + 1) * width, 0.0f);
                std::fill(kb + i * width + size * e, kb + (i + 1) * width, 0.0f);
            }
            for (int64_t a = 0; a < size; ++a) {
                // Block a of Q' is q shifted by a - r rows; of K', the w[a, c]-weighted sum of k shifted by c - r.
                const float* qa = qp.rows() + (a - r) * e;
                std::fill(block.begin(), block.end(), 0.0f);
                for (int64_t c = 0; c < size; ++c) axpy(n * e, wh[a * size + c], kp.rows() + (c - r) * e, block.data());
                for (int64_t i = 0; i < n; ++i) {
                    std::memcpy(qb + i * width + a * e, qa + i * e, e * sizeof(float));
                    std::memcpy(kb + i * width + a * e, block.data() + i * e, e * sizeof(float));
                }
            }
        }
    }
}

// Gradients of the forward above from dqf, dkf: dq and dk written (each may be null: not computed), dtaps (H,
// size, size) written when not null (summed over the windows). Threads split the heads, whose taps are theirs.
void msrasr_factors_backward(const float* k, const int64_t* kstrides, const float* taps, const float* dqf,
                             const float* dkf, float* dq, float* dk, float* dtaps, int64_t windows, int64_t heads,
                             int64_t n, int64_t e, int64_t size, int64_t width, int threads) {
    const View kr = view(k, kstrides);
    const int64_t r = size / 2;
#pragma omp parallel num_threads(threads)
    {
        Padded kp(n, e, r);
        std::vector<Padded> dqa(size, Padded(n, e, r)), dka(size, Padded(n, e, r));
#pragma omp for schedule(static)
        for (int64_t h = 0; h < heads; ++h) {
            const float* wh = taps + h * size * size;
            std::vector<float> acc(size * size, 0.0f);
            for (int64_t w = 0; w < windows; ++w) {
                const int64_t b = w * heads + h;
                for (int64_t a = 0; a < size; ++a) {
                    if (dq) dqa[a].fill(dqf + b * n * width + a * e, width);
                    dka[a].fill(dkf + b * n * width + a * e, width);
                }
                // dq[m] = sum_a dQ'[m - a + r]_a: block a shifted back by a - r rows.
                if (dq) {
                    float* dqb = dq + b * n * e;
                    std::fill(dqb, dqb + n * e, 0.0f);
                    for (int64_t a = 0; a < size; ++a) axpy(n * e, 1.0f, dqa[a].rows() + (r - a) * e, dqb);
                }
                // dk[m] = sum_{a, c} w[a, c] dK'[m - c + r]_a.
                if (dk) {
                    float* dkb = dk + b * n * e;
                    std::fill(dkb, dkb + n * e, 0.0f);
                    for (int64_t a = 0; a < size; ++a)
                        for (int64_t c = 0; c < size; ++c)
                            axpy(n * e, wh[a * size + c], dka[a].rows() + (r - c) * e, dkb);
                }
                // dw[a, c] = sum_j dK'[j]_a . k[j + c - r], over the window's whole block at once.
                if (dtaps) {
                    kp.fill(kr.row(w, h, 0), kr.st);
                    for (int64_t a = 0; a < size; ++a)
                        for (int64_t c = 0; c < size; ++c)
                            acc[a * size + c] += dot(n * e, dka[a].rows(), kp.rows() + (c - r) * e);
                }
            }
            if (dtaps) std::copy(acc.begin(), acc.end(), dtaps + h * size * size);
        }
    }
}

}  // extern "C"
