// Softmax attention with an additive bias over blocks of window tokens, forward and backward, a panel of
// rows at a time: no N x N map is written to memory, where a PyTorch attention makes a dozen passes over
// every map entry in the forward and backward (what the CPU spent its time on at window 16).
//
// Built at run time by msrasr_arch/archs/native/__init__.py with the machine's C++ compiler (-march=native)
// and loaded through ctypes; every tensor is a contiguous float32 block:
//   q, k (M, S, E), v (M, S, C), bias (HR, S, S): block m attends with bias block m % HR,
//   out (M, S, C), lse (M, S): each row's log-sum-exp, from which the backward recomputes the probabilities.
// GCC vector extensions rather than intrinsics: the same source lowers to AVX-512, AVX2, SSE or NEON.
// The parallel loops use OpenMP: linked against libgomp.so.1, the library shares the runtime (and the
// threads) that PyTorch's wheel has already loaded under that name.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

inline v8 load(const float* p) { v8 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v8 x) { std::memcpy(p, &x, sizeof x); }
inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

inline float hsum(v8 x) {
    v4 lo, hi;
    std::memcpy(&lo, &x, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&x) + sizeof lo, sizeof hi);
    lo += hi;
    return (lo[0] + lo[2]) + (lo[1] + lo[3]);
}

inline float hmax(v8 x) {
    float s = x[0];
    for (int i = 1; i < 8; ++i) s = x[i] > s ? x[i] : s;
    return s;
}

// exp by Cephes' expf for x <= 0 (logits less their maximum or their log-sum-exp): x = n ln2 + r,
// |r| <= ln2 / 2, a degree-6 polynomial in r, times 2^n (about 1 ulp). n is rounded by adding 1.5 * 2^23,
// which needs the compiler not to reassociate (no -ffast-math).
inline v8 vexp(v8 x) {
    x = x < -87.33654f ? splat(-87.33654f) : x;
    v8 t = x * 1.44269504088896341f + 12582912.0f;
    v8i n = (v8i)t - 0x4B400000;
    t = t - 12582912.0f;
    v8 r = x - t * 0.693359375f;
    r = r - t * -2.12194440e-4f;
    v8 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // n >= -126 at the clamp: 2^n is a normal float.
    return p * (v8)((n + 127) << 23);
}

// Keep x in a register: left alone, GCC folds B's loads into every FMA that uses them (MR times per row of
// B), and the tile runs at the load ports' pace, 12 loads for 8 FMAs, instead of the FMA units'.
inline void pin(v8& x) {
#if defined(__x86_64__) || defined(__i386__)
    asm("" : "+x"(x));
#else
    (void)x;
#endif
}

// C[MR x 16] (+)= A[MR x K] B[K x 16], A[i, k] at a[i * ars + k * acs] (so A may be a transposed view), B and C
// row-major. Eight independent sums of two vectors each keep both FMA units busy behind their latency.
template <int MR>
inline void tile(int64_t kk, const float* a, int64_t ars, int64_t acs, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
    v8 acc[MR][2];
    for (int i = 0; i < MR; ++i) {
        acc[i][0] = accumulate ? load(c + i * ldc) : v8{};
        acc[i][1] = accumulate ? load(c + i * ldc + 8) : v8{};
    }
    for (int64_t k = 0; k < kk; ++k) {
        v8 b0 = load(b + k * ldb), b1 = load(b + k * ldb + 8);
        pin(b0);
        pin(b1);
        for (int i = 0; i < MR; ++i) {
            const v8 ai = splat(a[i * ars + k * acs]);
            acc[i][0] += ai * b0;
            acc[i][1] += ai * b1;
        }
    }
    for (int i = 0; i < MR; ++i) {
        store(c + i * ldc, acc[i][0]);
        store(c + i * ldc + 8, acc[i][1]);
    }
}

template <int MR>
void rows_of_tiles(int64_t m, int64_t n, int64_t kk, const float* a, int64_t ars, int64_t acs, const float* b,
                   int64_t ldb, float* c, int64_t ldc, bool accumulate) {
    for (int64_t j = 0; j < n; j += 16) {
        int64_t i = 0;
        for (; i + MR <= m; i += MR) tile<MR>(kk, a + i * ars, ars, acs, b + j, ldb, c + i * ldc + j, ldc, accumulate);
        const float* ai = a + i * ars;
        float* ci = c + i * ldc + j;
        switch (m - i) {
            case 3: tile<3>(kk, ai, ars, acs, b + j, ldb, ci, ldc, accumulate); break;
            case 2: tile<2>(kk, ai, ars, acs, b + j, ldb, ci, ldc, accumulate); break;
            case 1: tile<1>(kk, ai, ars, acs, b + j, ldb, ci, ldc, accumulate); break;
            default: break;
        }
    }
}

// C[m x n] (+)= A[m x k] B[k x n] for n a multiple of 16, by tiles of 4, 5 or 6 rows x 16 columns: the row
// count that divides m (a head width of 10 or 30 rows), so that no tile of fewer rows, with too few sums to
// hide the FMA latency, is left over.
void gemm(int64_t m, int64_t n, int64_t kk, const float* a, int64_t ars, int64_t acs, const float* b, int64_t ldb,
          float* c, int64_t ldc, bool accumulate) {
    if (m % 4 && m % 5 == 0) rows_of_tiles<5>(m, n, kk, a, ars, acs, b, ldb, c, ldc, accumulate);
    else if (m % 4 && m % 6 == 0) rows_of_tiles<6>(m, n, kk, a, ars, acs, b, ldb, c, ldc, accumulate);
    else rows_of_tiles<4>(m, n, kk, a, ars, acs, b, ldb, c, ldc, accumulate);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Rows per panel: a panel's logits (32 x 256 floats at window 16, 32 KB) stay in L1/L2 through its passes.
constexpr int64_t PANEL = 32;

struct Shape {
    int64_t s, e, c;
    int64_t sp;  // s rounded up to 32: logits rows, zero (probability) past s
    int64_t ep, cp;  // e and c rounded up to 16, the product's column step
    // Row stride of the (E, S) / (C, S) transposed copies: one vector more than sp, so that rows four apart
    // (4 KB at sp = 256) do not share their low 12 address bits (a store and a later load 4 KB apart alias).
    int64_t ld() const { return sp + 8; }

    Shape(int64_t s_, int64_t e_, int64_t c_)
        : s(s_), e(e_), c(c_), sp(round_up(s_, 32)), ep(round_up(e_, 16)), cp(round_up(c_, 16)) {}
};

// Copy rows of width w (stride w) into rows of stride ld, zero past w; `rows` rows.
void pad_rows(const float* src, int64_t rows, int64_t w, float* dst, int64_t ld) {
    for (int64_t i = 0; i < rows; ++i) {
        std::memcpy(dst + i * ld, src + i * w, w * sizeof(float));
        std::fill(dst + i * ld + w, dst + (i + 1) * ld, 0.0f);
    }
}

// Transpose rows (S, w) into (w, ld), zero past S.
void transpose(const float* src, int64_t s, int64_t w, float* dst, int64_t ld) {
    for (int64_t x = 0; x < w; ++x) {
        float* row = dst + x * ld;
        for (int64_t j = 0; j < s; ++j) row[j] = src[j * w + x];
        std::fill(row + s, row + ld, 0.0f);
    }
}

// Logits of rows [i0, i0 + n) into l (n, sp): bias + q k^T, zero past s.
void logits(const Shape& d, const float* q, const float* bias, const float* kt, int64_t n, float* l) {
    pad_rows(bias, n, d.s, l, d.sp);
    gemm(n, d.sp, d.e, q, d.e, 1, kt, d.ld(), l, d.sp, true);
}

// Row i of l to exp(l - shift) over s entries, zero past them; returns their sum.
float exp_row(const Shape& d, float* row, float shift) {
    std::fill(row + d.s, row + d.sp, -INFINITY);
    v8 sum{};
    for (int64_t j = 0; j < d.sp; j += 8) {
        const v8 p = vexp(load(row + j) - shift);
        store(row + j, p);
        sum += p;
    }
    float total = hsum(sum);
    for (int64_t j = d.s; j < d.sp; ++j) {
        total -= row[j];
        row[j] = 0.0f;
    }
    return total;
}

float max_row(const Shape& d, const float* row) {
    const int64_t whole = d.s - d.s % 8;
    float m = row[0];
    if (whole) {
        v8 mx = load(row);
        for (int64_t j = 8; j < whole; j += 8) {
            const v8 x = load(row + j);
            mx = x > mx ? x : mx;
        }
        m = hmax(mx);
    }
    for (int64_t j = whole; j < d.s; ++j) m = row[j] > m ? row[j] : m;
    return m;
}

// One thread's buffers, sized for one block.
struct Work {
    std::vector<float> kt, vt, kp, vp, l, ds, o, dkt, dvt;

    explicit Work(const Shape& d, bool backward)
        : kt(d.e * d.ld()), vt(backward ? d.c * d.ld() : 0), kp(backward ? d.s * d.ep : 0), vp(backward ? 0 : d.s * d.cp),
          l(PANEL * d.sp), ds(backward ? PANEL * d.sp : 0), o(PANEL * std::max(d.ep, d.cp)),
          dkt(backward ? d.e * d.ld() : 0), dvt(backward ? d.c * d.ld() : 0) {}
};

void forward_block(const Shape& d, Work& w, const float* q, const float* k, const float* v, const float* bias,
                   float* out, float* lse) {
    transpose(k, d.s, d.e, w.kt.data(), d.ld());
    pad_rows(v, d.s, d.c, w.vp.data(), d.cp);
    float scale[PANEL];
    for (int64_t i0 = 0; i0 < d.s; i0 += PANEL) {
        const int64_t n = std::min(PANEL, d.s - i0);
        float* l = w.l.data();
        logits(d, q + i0 * d.e, bias + i0 * d.s, w.kt.data(), n, l);
        for (int64_t i = 0; i < n; ++i) {
            const float mx = max_row(d, l + i * d.sp);
            const float total = exp_row(d, l + i * d.sp, mx);
            scale[i] = 1.0f / total;
            if (lse) lse[i0 + i] = mx + std::log(total);
        }
        gemm(n, d.cp, d.s, l, d.sp, 1, w.vp.data(), d.cp, w.o.data(), d.cp, false);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t x = 0; x < d.c; ++x) out[(i0 + i) * d.c + x] = w.o[i * d.cp + x] * scale[i];
    }
}

void backward_block(const Shape& d, Work& w, const float* q, const float* k, const float* v, const float* bias,
                    const float* lse, const float* dout, const float* rowsum, float* dq, float* dk, float* dv,
                    float* dbias, bool first) {
    transpose(k, d.s, d.e, w.kt.data(), d.ld());
    transpose(v, d.s, d.c, w.vt.data(), d.ld());
    pad_rows(k, d.s, d.e, w.kp.data(), d.ep);
    std::fill(w.dkt.begin(), w.dkt.end(), 0.0f);
    std::fill(w.dvt.begin(), w.dvt.end(), 0.0f);
    for (int64_t i0 = 0; i0 < d.s; i0 += PANEL) {
        const int64_t n = std::min(PANEL, d.s - i0);
        float* p = w.l.data();
        float* ds = w.ds.data();
        logits(d, q + i0 * d.e, bias + i0 * d.s, w.kt.data(), n, p);
        for (int64_t i = 0; i < n; ++i) exp_row(d, p + i * d.sp, lse[i0 + i]);
        // dP = dout v^T, then dS = P * (dP - rowsum).
        gemm(n, d.sp, d.c, dout + i0 * d.c, d.c, 1, w.vt.data(), d.ld(), ds, d.sp, false);
        for (int64_t i = 0; i < n; ++i) {
            float* dsi = ds + i * d.sp;
            const float* pi = p + i * d.sp;
            const float rs = rowsum[i0 + i];
            for (int64_t j = 0; j < d.sp; j += 8) store(dsi + j, load(pi + j) * (load(dsi + j) - rs));
            if (dbias) {
                float* db = dbias + (i0 + i) * d.s;
                if (first) std::memcpy(db, dsi, d.s * sizeof(float));
                else for (int64_t j = 0; j < d.s; ++j) db[j] += dsi[j];
            }
        }
        // Transposed, dV^T += dout^T P and dK^T += q^T dS: the head width is the rows, which need no padding
        // (columns go 16 at a time; rows of 10 by two tiles of 5). Then dQ = dS k.
        gemm(d.c, d.sp, n, dout + i0 * d.c, 1, d.c, p, d.sp, w.dvt.data(), d.ld(), true);
        gemm(d.e, d.sp, n, q + i0 * d.e, 1, d.e, ds, d.sp, w.dkt.data(), d.ld(), true);
        gemm(n, d.ep, d.s, ds, d.sp, 1, w.kp.data(), d.ep, w.o.data(), d.ep, false);
        for (int64_t i = 0; i < n; ++i)
            std::memcpy(dq + (i0 + i) * d.e, w.o.data() + i * d.ep, d.e * sizeof(float));
    }
    for (int64_t j = 0; j < d.s; ++j) {
        for (int64_t x = 0; x < d.e; ++x) dk[j * d.e + x] = w.dkt[x * d.ld() + j];
        for (int64_t x = 0; x < d.c; ++x) dv[j * d.c + x] = w.dvt[x * d.ld() + j];
    }
}

}  // namespace

extern "C" {

// The library's interface version; the loader refuses a library that reports another.
int msrasr_window_attention_version() { return 2; }

// out (M, S, C) = softmax(q k^T + bias) v per block; lse (M, S) written when not null.
void msrasr_window_attention_forward(const float* q, const float* k, const float* v, const float* bias,
                                     float* out, float* lse, int64_t m, int64_t s, int64_t e, int64_t c,
                                     int64_t hr, int threads) {
    const Shape d(s, e, c);
#pragma omp parallel num_threads(threads)
    {
        Work w(d, false);
        // Blocks in bias-major order, so that a thread's consecutive blocks share their bias block (256 KB at
        // window 16, which stays in L2 across them; taken in storage order, six heads' blocks would not).
        const int64_t per = m / hr;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < m; ++t) {
            const int64_t b = t % per * hr + t / per;
            forward_block(d, w, q + b * s * e, k + b * s * e, v + b * s * c, bias + (b % hr) * s * s, out + b * s * c,
                          lse ? lse + b * s : nullptr);
        }
    }
}

// Gradients of the forward above given dout (M, S, C) and rowsum (M, S) = sum_c dout * out:
// dq, dk (M, S, E) and dv (M, S, C) written; dbias (HR, S, S), when not null, gets the sum over the blocks
// that share a bias block, added to what it holds where add_dbias is set, else written over it (no zeroing
// pass before). Threads split the bias blocks, so no two write the same dbias entry.
void msrasr_window_attention_backward(const float* q, const float* k, const float* v, const float* bias,
                                      const float* lse, const float* dout, const float* rowsum,
                                      float* dq, float* dk, float* dv, float* dbias, int add_dbias, int64_t m,
                                      int64_t s, int64_t e, int64_t c, int64_t hr, int threads) {
    const Shape d(s, e, c);
#pragma omp parallel num_threads(threads)
    {
        Work w(d, true);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < hr; ++r) {
            for (int64_t b = r; b < m; b += hr) {
                const int64_t bs = b * s;
                backward_block(d, w, q + bs * e, k + bs * e, v + bs * c, bias + r * s * s, lse + bs, dout + bs * c,
                               rowsum + bs, dq + bs * e, dk + bs * e, dv + bs * c, dbias ? dbias + r * s * s : nullptr,
                               b == r && !add_dbias);
            }
        }
    }
}

}  // extern "C"
