// What the kernels of this folder share: 8-float vectors (GCC vector extensions rather than intrinsics, so
// the same source lowers to AVX-512, AVX2, SSE or NEON) and rows of a (window, head, token, width) tensor
// read through strides. Included by each .cpp; part of the library's cache key (see __init__.py).
#pragma once

#include <cstdint>
#include <cstring>

namespace msrasr {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load(const float* p) { v8 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v8 x) { std::memcpy(p, &x, sizeof x); }
inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

// A (windows, heads, tokens, width) tensor, width contiguous.
struct View {
    const float* p;
    int64_t sw, sh, st;
    const float* row(int64_t w, int64_t h, int64_t t) const { return p + w * sw + h * sh + t * st; }
    float* out(int64_t w, int64_t h, int64_t t) const { return const_cast<float*>(row(w, h, t)); }
};

// A View from its (window, head, token) strides.
inline View view(const float* p, const int64_t* strides) { return View{p, strides[0], strides[1], strides[2]}; }

}  // namespace msrasr
