// Depth-wise k x k convolution ('same' zero padding, stride 1) over channels-last images, and its weight
// gradient: the FFN's MS-DWC. Vectorised over channels (8 floats, common.h); the input
// gradient is the forward with the flipped kernel. oneDNN's depth-wise calls on these small maps cost
// about 0.6 ms each at LR patch 16 on 2 cores, mostly fixed cost, three a layer (docs/speed.md).
//
// x, out, grad (B, H, W, C) contiguous; weights (k, k, C), tap-major, so that a tap's channels are a vector.
// Built with window_attention.cpp into one library (see __init__.py).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "common.h"

namespace {

using namespace msrasr;

struct Image {
    int64_t b, h, w, c, k;
    int64_t p() const { return k / 2; }
    int64_t cp() const { return (c + 7) / 8 * 8; }  // channels padded to whole vectors in the buffers
    int64_t wp() const { return w + 2 * p(); }
};

// The k input rows around an output row, zero-padded by p columns on each side and to cp channels, in a ring
// a thread moves down its rows with (one new row copied per output row; no padded copy of the image).
struct Ring {
    const Image& d;
    const float* x;
    int64_t stride;  // floats per slot: W + 2p pixels
    std::vector<float> buf;
    int64_t image = -1, next = 0;  // rows loaded for `image`: padded rows < next

    Ring(const Image& d_, const float* x_)
        : d(d_), x(x_), stride(d_.wp() * d_.cp()), buf(d_.k * stride, 0.0f) {}

    const float* row(int64_t padded_row) const { return buf.data() + (padded_row % d.k) * stride; }

    // Make padded rows y .. y + 2p of image b (input rows y - p .. y + p) available.
    void at(int64_t b, int64_t y) {
        if (b != image || y + 2 * d.p() >= next + d.k) {
            image = b;
            next = y;
        }
        for (; next <= y + 2 * d.p(); ++next) {
            float* slot = buf.data() + (next % d.k) * stride;
            const int64_t yy = next - d.p();
            if (yy < 0 || yy >= d.h) {
                std::fill(slot, slot + stride, 0.0f);
                continue;
            }
            std::fill(slot, slot + d.p() * d.cp(), 0.0f);
            std::fill(slot + (d.p() + d.w) * d.cp(), slot + stride, 0.0f);
            const float* src = x + (b * d.h + yy) * d.w * d.c;
            if (d.c == d.cp()) {
                std::memcpy(slot + d.p() * d.cp(), src, d.w * d.c * sizeof(float));
            } else {
                for (int64_t i = 0; i < d.w; ++i) {
                    float* px = slot + (d.p() + i) * d.cp();
                    std::memcpy(px, src + i * d.c, d.c * sizeof(float));
                    std::fill(px + d.c, px + d.cp(), 0.0f);
                }
            }
        }
    }
};

// Weights (k, k, C) padded to (k, k, cp).
std::vector<float> padded_weights(const Image& d, const float* w) {
    std::vector<float> buf(d.k * d.k * d.cp(), 0.0f);
    for (int64_t t = 0; t < d.k * d.k; ++t) std::memcpy(buf.data() + t * d.cp(), w + t * d.c, d.c * sizeof(float));
    return buf;
}

// One output row of the forward: out[x] (cp floats per pixel) = bias + sum over the k input rows and taps.
// A tap row's K weight vectors stay in registers while the row's pixels go by; the sums live in `line`.
template <int K>
void forward_row(const Image& d, const Ring& ring, int64_t y, const float* wp, const float* bias, float* line) {
    const int64_t cp = d.cp();
    for (int64_t v = 0; v < cp; v += 8) {
        for (int64_t x0 = 0; x0 < d.w; ++x0) store(line + x0 * cp + v, load(bias + v));
        for (int64_t a = 0; a < K; ++a) {
            v8 wv[K];
            for (int b = 0; b < K; ++b) wv[b] = load(wp + (a * K + b) * cp + v);
            const float* xr = ring.row(y + a) + v;
            for (int64_t x0 = 0; x0 < d.w; ++x0) {
                v8 acc = load(line + x0 * cp + v);
                for (int b = 0; b < K; ++b) acc += load(xr + (x0 + b) * cp) * wv[b];
                store(line + x0 * cp + v, acc);
            }
        }
    }
}

// One row's share of the weight gradient: acc[a][b] += sum over the row's pixels of x[a][x0 + b] * g[x0]. For a
// tap row, the K sums and the K input vectors under the taps stay in registers while the pixels go by: one
// new input vector per pixel.
template <int K>
void weight_grad_row(const Image& d, const Ring& ring, int64_t y, const float* g, float* acc) {
    const int64_t cp = d.cp();
    for (int64_t a = 0; a < K; ++a) {
        const float* xr = ring.row(y + a);
        for (int64_t v = 0; v < cp; v += 8) {
            v8 s[K] = {};
            v8 in[K];
            for (int b = 0; b + 1 < K; ++b) in[b] = load(xr + b * cp + v);
            for (int64_t x0 = 0; x0 < d.w; ++x0) {
                in[K - 1] = load(xr + (x0 + K - 1) * cp + v);
                const v8 gv = load(g + x0 * cp + v);
                for (int b = 0; b < K; ++b) s[b] += in[b] * gv;
                for (int b = 0; b + 1 < K; ++b) in[b] = in[b + 1];
            }
            for (int b = 0; b < K; ++b) store(acc + (a * K + b) * cp + v, load(acc + (a * K + b) * cp + v) + s[b]);
        }
    }
}

template <int K>
void forward_rows(const Image& d, const float* x, const float* wp, const float* bias, float* out) {
    Ring ring(d, x);
    std::vector<float> line(d.w * d.cp());
#pragma omp for schedule(static)
    for (int64_t r = 0; r < d.b * d.h; ++r) {
        const int64_t y = r % d.h;
        ring.at(r / d.h, y);
        forward_row<K>(d, ring, y, wp, bias, line.data());
        float* o = out + r * d.w * d.c;
        for (int64_t x0 = 0; x0 < d.w; ++x0) std::memcpy(o + x0 * d.c, line.data() + x0 * d.cp(), d.c * sizeof(float));
    }
}

template <int K>
void weight_grad_rows(const Image& d, const float* x, const float* grad, float* acc) {
    Ring ring(d, x);
    std::vector<float> g(d.w * d.cp(), 0.0f);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < d.b * d.h; ++r) {
        const int64_t y = r % d.h;
        ring.at(r / d.h, y);
        for (int64_t x0 = 0; x0 < d.w; ++x0)
            std::memcpy(g.data() + x0 * d.cp(), grad + (r * d.w + x0) * d.c, d.c * sizeof(float));
        weight_grad_row<K>(d, ring, y, g.data(), acc);
    }
}

// Calls fn(std::integral_constant<int, k>) for a kernel size with compiled row kernels (the MS-DWC's odd
// sizes up to 9); returns false, calling nothing, for any other: the one list of supported sizes.
template <typename Fn>
bool with_kernel_size(int64_t k, Fn&& fn) {
    switch (k) {
        case 1: fn(std::integral_constant<int, 1>{}); return true;
        case 3: fn(std::integral_constant<int, 3>{}); return true;
        case 5: fn(std::integral_constant<int, 5>{}); return true;
        case 7: fn(std::integral_constant<int, 7>{}); return true;
        case 9: fn(std::integral_constant<int, 9>{}); return true;
        default: return false;
    }
}

}  // namespace

extern "C" {

// Whether k x k has compiled row kernels; the Python side convolves nothing else here.
int msrasr_depthwise_supports(int64_t k) { return with_kernel_size(k, [](auto) {}); }

// out = bias + sum over taps of x shifted times the tap's weights (bias may be null).
void msrasr_depthwise_forward(const float* x, const float* weight, const float* bias, float* out, int64_t b,
                              int64_t h, int64_t w, int64_t c, int64_t k, int threads) {
    const Image d{b, h, w, c, k};
    const std::vector<float> wp = padded_weights(d, weight);
    std::vector<float> bp(d.cp(), 0.0f);
    if (bias) std::memcpy(bp.data(), bias, c * sizeof(float));
#pragma omp parallel num_threads(threads)
    {
        with_kernel_size(k, [&](auto size) { forward_rows<decltype(size)::value>(d, x, wp.data(), bp.data(), out); });
    }
}

// gw (k, k, C) = sum over images and pixels of x shifted by the tap times grad (written, not added to).
void msrasr_depthwise_weight_grad(const float* x, const float* grad, float* gw, int64_t b, int64_t h, int64_t w,
                                  int64_t c, int64_t k, int threads) {
    const Image d{b, h, w, c, k};
    const int64_t cp = d.cp(), taps = k * k;
    std::vector<std::vector<float>> partial;
#pragma omp parallel num_threads(threads)
    {
#pragma omp single
        partial.assign(omp_get_num_threads(), std::vector<float>());
        std::vector<float>& acc = partial[omp_get_thread_num()];
        acc.assign(taps * cp, 0.0f);
        with_kernel_size(k, [&](auto size) { weight_grad_rows<decltype(size)::value>(d, x, grad, acc.data()); });
    }
    for (int64_t t = 0; t < taps; ++t)
        for (int64_t ch = 0; ch < c; ++ch) {
            float s = 0.0f;
            for (const auto& part : partial) s += part[t * cp + ch];
            gw[t * c + ch] = s;
        }
}

}  // extern "C"
