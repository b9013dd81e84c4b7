// Softmax attention with an additive bias within windows of tokens, forward and backward, a panel of rows
// at a time: no N x N map is written to memory, where a PyTorch attention makes a dozen passes over every
// map entry in the forward and backward (what the CPU spent its time on at window 16).
//
// Built at run time by msrasr_arch/archs/native/__init__.py with the machine's C++ compiler (-march=native)
// and loaded through ctypes. One call serves one part of a group of windows (see archs/window.py): W
// windows x H heads x R regions of `size` tokens each; a region's tokens are `tokens[region * size + i]`
// of the window's N (all N in order where tokens is null, R = 1). q, k (W, H, N, E), v, out, dout (W, H, N, C)
// and dq, dk, dv are read and written in place through (window, head, token) strides, the last dimension
// contiguous, so the network's token-major layouts need no copies; bias and dbias are the (H, N, N) maps, or
// a computing layer's relative-position table (M, H) and its gradient (see Part);
// lse (W * H * R, size) holds each row's log-sum-exp, from which the backward recomputes the probabilities.
// The parallel loops use OpenMP: linked against libgomp.so.1, the library shares the runtime (and the
// threads) that PyTorch's wheel has already loaded under that name.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#include "common.h"

namespace {

using namespace msrasr;

typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

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
#if (defined(__x86_64__) || defined(__i386__)) && defined(__AVX__)
    asm("" : "+x"(x));  // one 256-bit register: only where AVX provides them
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

// A row of logits to exp(row - shift) over s entries, zero past them; returns their sum.
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

// dst[0..n) = src[0..n) and dst[0..n) += src[0..n), n small (a window's side).
inline void copy_run(int64_t n, const float* src, float* dst) {
    int64_t x = 0;
    for (; x + 8 <= n; x += 8) store(dst + x, load(src + x));
    for (; x < n; ++x) dst[x] = src[x];
}

inline void add_run(int64_t n, const float* src, float* dst) {
    int64_t x = 0;
    for (; x + 8 <= n; x += 8) store(dst + x, load(dst + x) + load(src + x));
    for (; x < n; ++x) dst[x] += src[x];
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

// The part of the windows one call serves.
struct Part {
    int64_t heads, regions, n;
    const int64_t* tokens;  // regions * size, or null: one region of all n tokens in order
    const float* bias;      // (heads, n, n), or null where `table` gives the bias
    // A relative-position table (M, heads), M = (2 ws - 1)^2, n = ws^2 tokens in raster order: the bias of
    // tokens (yi, xi), (yj, xj) is table[(yi - yj + ws - 1) * (2 ws - 1) + xi - xj + ws - 1] (SwinIR's index).
    // Read so, a computing layer's map is never built: its rows are runs of a head's table, which stays in L1,
    // where the (heads, n, n) map made a pass through memory each way per window (and a gather and a scatter).
    const float* table;
    int64_t ws;
    int64_t token(int64_t region, int64_t size, int64_t i) const { return tokens ? tokens[region * size + i] : i; }
    int64_t tw() const { return 2 * ws - 1; }
    int64_t entries() const { return tw() * tw(); }
    // A head's table reversed, entry (i, j) is at row(i) + offset(j): for a row, ws consecutive entries per key
    // row of the window, in order.
    int64_t row(int64_t t) const { return entries() - 1 - ((t / ws + ws - 1) * tw() + t % ws + ws - 1); }
    int64_t offset(int64_t t) const { return (t / ws) * tw() + t % ws; }
};

// A window of a token-major tensor (each token's heads side by side: the network's qkv, v and proj input)
// copied head by head into a thread's buffer in one pass over its rows. A block (one head) reading the
// tensor in place takes a few floats of every row, scattered over the window, and ran markedly slower than
// on contiguous blocks. Head-major tensors are used in place.
struct Staged {
    View src;
    int64_t heads, n, width;
    bool copy;
    std::vector<float> buf;
    int64_t win = -1;

    Staged(View s, int64_t heads_, int64_t n_, int64_t width_)
        : src(s), heads(heads_), n(n_), width(width_), copy(s.st > s.sh), buf(copy ? heads_ * n_ * width_ : 0) {}

    // The tensor as a View whose window `w` holds window w's rows.
    View at(int64_t w) {
        if (!copy) return src;
        if (w != win) {
            for (int64_t t = 0; t < n; ++t)
                for (int64_t h = 0; h < heads; ++h)
                    std::memcpy(buf.data() + (h * n + t) * width, src.row(w, h, t), width * sizeof(float));
            win = w;
        }
        return View{buf.data(), 0, n * width, width};
    }
};

// The same for a tensor written: a block's rows go to the buffer, and the blocks written of a window go out to
// the tensor, token by token, when the thread moves on to another window or finishes (only those: another
// thread may write the window's other heads or regions).
struct StagedOut {
    View dst;
    const Part& part;
    int64_t size, width;
    bool copy;
    std::vector<float> buf;
    std::vector<char> written;  // per (head, region) block of the window
    int64_t win = -1;

    StagedOut(View d, const Part& p, int64_t size_, int64_t width_)
        : dst(d), part(p), size(size_), width(width_), copy(d.st > d.sh), buf(copy ? p.heads * p.n * width_ : 0),
          written(p.heads * p.regions, 0) {}

    // Where block (head h, region) of window w is written.
    View at(int64_t w, int64_t h, int64_t region) {
        if (!copy) return dst;
        if (w != win) {
            flush();
            win = w;
        }
        written[h * part.regions + region] = 1;
        return View{buf.data(), 0, part.n * width, width};
    }

    void flush() {
        if (!copy || win < 0) return;
        for (int64_t i = 0; i < part.regions * size; ++i) {
            const int64_t region = i / size, t = part.token(region, size, i % size);
            for (int64_t h = 0; h < part.heads; ++h)
                if (written[h * part.regions + region])
                    std::memcpy(dst.out(win, h, t), buf.data() + (h * part.n + t) * width, width * sizeof(float));
        }
        std::fill(written.begin(), written.end(), 0);
        win = -1;
    }
};

// One thread's buffers, sized for one block.
struct Work {
    std::vector<float> kt, vt, kp, vp, l, ds, o, qr, dor;
    std::vector<float> dkt, dvt;
    std::vector<int64_t> tok, off;  // the block's tokens and (table mode, regions) their table offsets
    std::vector<float> rel;  // table mode: the head's column of the table, reversed (see Part::row)
    int64_t rel_head = -1;

    explicit Work(const Shape& d, bool backward)
        : kt(d.e * d.ld()), vt(backward ? d.c * d.ld() : 0), kp(backward ? d.s * d.ep : 0), vp(backward ? 0 : d.s * d.cp),
          l(PANEL * d.sp), ds(backward ? PANEL * d.sp : 0), o(PANEL * std::max(d.ep, d.cp)), qr(PANEL * d.e),
          dor(backward ? PANEL * d.c : 0), dkt(backward ? d.e * d.ld() : 0), dvt(backward ? d.c * d.ld() : 0),
          tok(d.s), off(d.s) {}

    // The block's tokens, k transposed (E, ld) and, for the forward, v padded (S, cp); for the backward, v
    // transposed (C, ld) and k padded (S, ep).
    void load(const Shape& d, const Part& part, const View& k, const View& v, int64_t w, int64_t h,
              int64_t region, bool backward) {
        for (int64_t j = 0; j < d.s; ++j) tok[j] = part.token(region, d.s, j);
        if (part.table) {
            // Offsets for a region's gathered entries; a whole window's rows go by runs.
            if (part.tokens) for (int64_t j = 0; j < d.s; ++j) off[j] = part.offset(tok[j]);
            if (h != rel_head) {
                rel.resize(part.entries());
                const int64_t last = part.entries() - 1;
                for (int64_t m = 0; m <= last; ++m) rel[last - m] = part.table[m * part.heads + h];
                rel_head = h;
            }
        }
        transpose_from(d, k, w, h, d.e, kt.data());
        if (backward) {
            pad_rows_from(k, w, h, d.e, kp.data(), d.ep);
            transpose_from(d, v, w, h, d.c, vt.data());
        } else {
            pad_rows_from(v, w, h, d.c, vp.data(), d.cp);
        }
    }

    // The block's rows of x (W, H, N, width) transposed to (width, ld), zero past the block's tokens.
    void transpose_from(const Shape& d, const View& x, int64_t w, int64_t h, int64_t width, float* dst) const {
        for (int64_t i = 0; i < width; ++i) std::fill(dst + i * d.ld() + d.s, dst + (i + 1) * d.ld(), 0.0f);
        for (int64_t j = 0; j < d.s; ++j) {
            const float* xj = x.row(w, h, tok[j]);
            for (int64_t i = 0; i < width; ++i) dst[i * d.ld() + j] = xj[i];
        }
    }

    // The block's rows of x (W, H, N, width) in token order, each padded with zeros to ld floats.
    void pad_rows_from(const View& x, int64_t w, int64_t h, int64_t width, float* dst, int64_t ld) const {
        for (size_t j = 0; j < tok.size(); ++j) {
            std::memcpy(dst + j * ld, x.row(w, h, tok[j]), width * sizeof(float));
            std::fill(dst + j * ld + width, dst + (j + 1) * ld, 0.0f);
        }
    }

    // Logits of rows [i0, i0 + n) into l (n, sp): bias + q k^T, zero past s; q's rows copied to qr (n, E).
    void logits(const Shape& d, const Part& part, const View& q, int64_t w, int64_t h, int64_t i0, int64_t n) {
        const float* bias = part.bias ? part.bias + h * part.n * part.n : nullptr;
        for (int64_t i = 0; i < n; ++i) {
            const int64_t ti = tok[i0 + i];
            std::memcpy(qr.data() + i * d.e, q.row(w, h, ti), d.e * sizeof(float));
            float* li = l.data() + i * d.sp;
            if (part.table) {
                const float* ri = rel.data() + part.row(ti);
                if (part.tokens) {
                    for (int64_t j = 0; j < d.s; ++j) li[j] = ri[off[j]];
                } else {
                    // A run of ws floats per key row, copied in vectors: a memcpy call per run cost more than
                    // the copy.
                    for (int64_t y = 0; y < part.ws; ++y) copy_run(part.ws, ri + y * part.tw(), li + y * part.ws);
                }
            } else {
                const float* bi = bias + ti * part.n;
                if (part.tokens) for (int64_t j = 0; j < d.s; ++j) li[j] = bi[tok[j]];
                else std::memcpy(li, bi, d.s * sizeof(float));
            }
            std::fill(li + d.s, li + d.sp, 0.0f);
        }
        gemm(n, d.sp, d.e, qr.data(), d.e, 1, kt.data(), d.ld(), l.data(), d.sp, true);
    }
};

void forward_block(const Shape& d, const Part& part, Work& w, const View& q, const View& k, const View& v,
                   const View& out, float* lse, int64_t win, int64_t h, int64_t region) {
    w.load(d, part, k, v, win, h, region, false);
    float scale[PANEL];
    for (int64_t i0 = 0; i0 < d.s; i0 += PANEL) {
        const int64_t n = std::min(PANEL, d.s - i0);
        float* l = w.l.data();
        w.logits(d, part, q, win, h, i0, n);
        for (int64_t i = 0; i < n; ++i) {
            const float mx = max_row(d, l + i * d.sp);
            const float total = exp_row(d, l + i * d.sp, mx);
            scale[i] = 1.0f / total;
            if (lse) lse[i0 + i] = mx + std::log(total);
        }
        gemm(n, d.cp, d.s, l, d.sp, 1, w.vp.data(), d.cp, w.o.data(), d.cp, false);
        for (int64_t i = 0; i < n; ++i) {
            float* oi = out.out(win, h, w.tok[i0 + i]);
            for (int64_t x = 0; x < d.c; ++x) oi[x] = w.o[i * d.cp + x] * scale[i];
        }
    }
}

// dbias: the head's (n, n) map, written (first) or added to at the block's entries.
void backward_block(const Shape& d, const Part& part, Work& w, const View& q, const View& k, const View& v,
                    const View& out, const View& dout, const float* lse, const View& dq, const View& dk,
                    const View& dv, float* dbias, bool first, int64_t win, int64_t h, int64_t region) {
    w.load(d, part, k, v, win, h, region, true);
    std::fill(w.dkt.begin(), w.dkt.end(), 0.0f);
    std::fill(w.dvt.begin(), w.dvt.end(), 0.0f);
    for (int64_t i0 = 0; i0 < d.s; i0 += PANEL) {
        const int64_t n = std::min(PANEL, d.s - i0);
        float* p = w.l.data();
        float* ds = w.ds.data();
        w.logits(d, part, q, win, h, i0, n);
        float rowsum[PANEL];
        for (int64_t i = 0; i < n; ++i) {
            exp_row(d, p + i * d.sp, lse[i0 + i]);
            const int64_t ti = w.tok[i0 + i];
            const float* doi = dout.row(win, h, ti);
            const float* oi = out.row(win, h, ti);
            float rs = 0.0f;
            for (int64_t x = 0; x < d.c; ++x) rs += doi[x] * oi[x];
            rowsum[i] = rs;
            std::memcpy(w.dor.data() + i * d.c, doi, d.c * sizeof(float));
        }
        // dP = dout v^T, then dS = P * (dP - rowsum), the softmax's backward (rowsum = dout . out).
        gemm(n, d.sp, d.c, w.dor.data(), d.c, 1, w.vt.data(), d.ld(), ds, d.sp, false);
        for (int64_t i = 0; i < n; ++i) {
            float* dsi = ds + i * d.sp;
            const float* pi = p + i * d.sp;
            const float rs = rowsum[i];
            for (int64_t j = 0; j < d.sp; j += 8) store(dsi + j, load(pi + j) * (load(dsi + j) - rs));
            if (dbias && part.table) {
                // dbias here is the thread's (heads, M) sums of the table's gradient, each head's reversed.
                float* dr = dbias + h * part.entries() + part.row(w.tok[i0 + i]);
                if (part.tokens) {
                    for (int64_t j = 0; j < d.s; ++j) dr[w.off[j]] += dsi[j];
                } else {
                    for (int64_t y = 0; y < part.ws; ++y) add_run(part.ws, dsi + y * part.ws, dr + y * part.tw());
                }
            } else if (dbias) {
                float* db = dbias + w.tok[i0 + i] * part.n;
                if (part.tokens) for (int64_t j = 0; j < d.s; ++j) db[w.tok[j]] += dsi[j];
                else if (first) std::memcpy(db, dsi, d.s * sizeof(float));
                else for (int64_t j = 0; j < d.s; ++j) db[j] += dsi[j];
            }
        }
        // Transposed, dV^T += dout^T P and dK^T += q^T dS: the head width is the rows, which need no padding
        // (columns go 16 at a time; rows of 10 by two tiles of 5). Then dQ = dS k.
        gemm(d.c, d.sp, n, w.dor.data(), 1, d.c, p, d.sp, w.dvt.data(), d.ld(), true);
        gemm(d.e, d.sp, n, w.qr.data(), 1, d.e, ds, d.sp, w.dkt.data(), d.ld(), true);
        gemm(n, d.ep, d.s, ds, d.sp, 1, w.kp.data(), d.ep, w.o.data(), d.ep, false);
        for (int64_t i = 0; i < n; ++i)
            std::memcpy(dq.out(win, h, w.tok[i0 + i]), w.o.data() + i * d.ep, d.e * sizeof(float));
    }
    for (int64_t j = 0; j < d.s; ++j) {
        float* dkj = dk.out(win, h, w.tok[j]);
        float* dvj = dv.out(win, h, w.tok[j]);
        for (int64_t x = 0; x < d.e; ++x) dkj[x] = w.dkt[x * d.ld() + j];
        for (int64_t x = 0; x < d.c; ++x) dvj[x] = w.dvt[x * d.ld() + j];
    }
}

}  // namespace

extern "C" {

// The library's interface version; the loader refuses a library that reports another.
int msrasr_window_attention_version() { return 5; }

// out = softmax(q k^T + bias) v within each region of each window and head; lse written when not null.
// strides: (window, head, token) of q, k, v, out in turn. The bias: the (heads, n, n) map `bias`, or, where
// that is null, the relative-position table `table` (M, heads) of windows of side ws (see Part).
void msrasr_window_attention_forward(const float* q, const float* k, const float* v, float* out,
                                     const int64_t* strides, const float* bias, const float* table, int64_t ws,
                                     const int64_t* tokens, float* lse, int64_t windows, int64_t heads,
                                     int64_t regions, int64_t size, int64_t n, int64_t e, int64_t c, int threads) {
    const Shape d(size, e, c);
    const Part part{heads, regions, n, tokens, bias, bias ? nullptr : table, ws};
    const View qv = view(q, strides), kv = view(k, strides + 3), vv = view(v, strides + 6), ov = view(out, strides + 9);
    const int64_t hr = heads * regions, m = windows * hr;
#pragma omp parallel num_threads(threads)
    {
        Work w(d, false);
        Staged sq(qv, heads, n, e), sk(kv, heads, n, e), sv(vv, heads, n, c);
        StagedOut so(ov, part, size, c);
        // Window by window (a thread's blocks are consecutive), each window staged once for its heads.
#pragma omp for schedule(static)
        for (int64_t b = 0; b < m; ++b) {
            const int64_t r = b % hr, win = b / hr, h = r / regions;
            forward_block(d, part, w, sq.at(win), sk.at(win), sv.at(win), so.at(win, h, r % regions),
                          lse ? lse + b * size : nullptr, win, h, r % regions);
        }
        so.flush();
    }
}

// Gradients of the forward above: dq, dk, dv written at the part's tokens (strides: q, k, v, out, dout, dq, dk,
// dv). dbias, when not null, gets the bias's gradient summed over the windows: for the map, (heads, n, n) at the
// part's entries, added to what it holds or, for a part of whole windows without add_dbias, written over it
// (no zeroing pass before); for the table, (M, heads), always added to. Threads split the (head, region) blocks,
// whose entries of the map are disjoint; each sums its share of the table's gradient apart.
void msrasr_window_attention_backward(const float* q, const float* k, const float* v, const float* out,
                                      const float* dout, float* dq, float* dk, float* dv, const int64_t* strides,
                                      const float* bias, const float* table, int64_t ws, const int64_t* tokens,
                                      const float* lse, float* dbias, int add_dbias, int64_t windows, int64_t heads,
                                      int64_t regions, int64_t size, int64_t n, int64_t e, int64_t c, int threads) {
    const Shape d(size, e, c);
    const Part part{heads, regions, n, tokens, bias, bias ? nullptr : table, ws};
    const View qv = view(q, strides), kv = view(k, strides + 3), vv = view(v, strides + 6),
               ov = view(out, strides + 9), dov = view(dout, strides + 12), dqv = view(dq, strides + 15),
               dkv = view(dk, strides + 18), dvv = view(dv, strides + 21);
    const int64_t hr = heads * regions;
#pragma omp parallel num_threads(threads)
    {
        Work w(d, true);
        Staged sq(qv, heads, n, e), sk(kv, heads, n, e), sv(vv, heads, n, c), so(ov, heads, n, c),
            sdo(dov, heads, n, c);
        StagedOut sdq(dqv, part, size, e), sdk(dkv, part, size, e), sdv(dvv, part, size, c);
        std::vector<float> dtable(part.table && dbias ? heads * part.entries() : 0, 0.0f);  // (heads, M)
        // Each thread takes a share of the (head, region) blocks, whose entries of dbias are disjoint, and goes
        // through the windows, its blocks of one window after another (each window staged once).
        const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t r0 = hr * id / nt, r1 = hr * (id + 1) / nt;
        for (int64_t win = 0; win < windows && r0 < r1; ++win)
            for (int64_t r = r0; r < r1; ++r) {
                const int64_t h = r / regions, region = r % regions;
                backward_block(d, part, w, sq.at(win), sk.at(win), sv.at(win), so.at(win), sdo.at(win),
                               lse + (win * hr + r) * size, sdq.at(win, h, region), sdk.at(win, h, region),
                               sdv.at(win, h, region),
                               !dbias ? nullptr : part.table ? dtable.data() : dbias + h * n * n,
                               win == 0 && !add_dbias, win, h, region);
            }
        sdq.flush();
        sdk.flush();
        sdv.flush();
        if (!dtable.empty()) {
#pragma omp critical
            for (int64_t h = 0; h < heads; ++h)
                for (int64_t m = 0; m < part.entries(); ++m)
                    dbias[m * heads + h] += dtable[h * part.entries() + part.entries() - 1 - m];
        }
    }
}

}  // extern "C"
