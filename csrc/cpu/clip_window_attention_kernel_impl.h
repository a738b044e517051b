// CPU kernels of clip window attention (ops.md §4; geometry in clip_window_attention.h).
//
// Per window (n <= wt*wh*ww real tokens) and head h (d = C / heads channels), with the window's
// rows Q, K, V (n x d) gathered in place from the strided (B, L, H, W, C) inputs:
//   S = Q K^T * scale + Bias,   Bias[i, j] = table[index(i, j), h]
//   P = softmax_rows(S),  O = P V                               (scattered back to out)
// Backward, with dO gathered like Q (P recomputed; nothing is saved but the inputs):
//   dV = P^T dO,  dP = dO V^T,  delta_i = sum_j P_ij dP_ij (= dO_i . O_i),
//   dS = P * (dP - delta),  dQ = dS K * scale,  dK = dS^T Q * scale,  dTable[index(i, j), h] += dS_ij
// Every token belongs to exactly one window, so dQ, dK, dV are written once, without atomics.
//
// Work: the forward runs one task per (batch, window, head), window-major, so a thread gathers
// each window's whole token rows (all heads, one contiguous read per token) once into L2-sized
// buffers and takes every head's operands from there. The backward runs one task per window
// group g (windows g, g + G, g + 2G, ... in order, G = 32 fixed, every head): each task sums its
// own table gradient and the groups are reduced in a fixed order, so the result does not depend
// on the thread count. The small products run in a register-blocked kernel on GCC/Clang vector
// types (64-byte vectors with AVX-512, 32-byte otherwise) over per-thread buffers whose rows are
// padded to whole vectors; softmax uses a vectorised exp (float) or std::exp (double).
//
// Compiled once per instruction set into namespace VOS_CPU_ISA (clip_window_attention_kernel.cpp,
// cpu_isa_variants.h): no include guard, every header included at the top.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "clip_window_attention.h"

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace {

using clip_window::Axis;
using clip_window::Geometry;

// The cpu_default copy (SSE2) passes 32-byte vectors between its own internal functions; GCC
// warns that their ABI differs from an AVX build's, which cannot matter for internal functions.
#pragma GCC diagnostic ignored "-Wpsabi"

#if VOS_CPU_ISA_AVX512
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int64_t size = kVecBytes / sizeof(T);
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// 64-byte aligned scratch, zero-filled once (padding lanes then only ever hold finite values).
template <typename T>
struct Scratch {
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> ptr;
  explicit Scratch(int64_t count) {
    const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(count, 1) * sizeof(T), 64));
    ptr.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    TORCH_CHECK(ptr, "clip_window_attention: out of memory for ", bytes, " bytes of scratch");
    std::memset(ptr.get(), 0, bytes);
  }
  T* get() const { return ptr.get(); }
};

// C[MR x NV*VL] = A[MR x K] B[K x NV*VL]; A, B, C row-major; B and C rows vector-aligned.
template <typename T, int MR, int NV>
inline void gemm_tile(int64_t K, const T* __restrict__ A, int64_t lda, const T* __restrict__ B, int64_t ldb,
                      T* __restrict__ C, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int64_t VL = Vec<T>::size;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const V*>(B + k * ldb + v * VL);
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(C + r * ldc + v * VL) = acc[r][v];
}

constexpr int kRows = 8;  // M is rounded up to this many rows (the buffers have the room)

// Rows [0, M) of C = A B, column block [j, j + NV*VL), MR rows at a time (M rounded up to MR).
template <typename T, int MR, int NV>
inline void gemm_columns(int64_t M, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; i += MR) gemm_tile<T, MR, NV>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc);
}

// C[M x N] = A[M x K] B[K x N] for N a multiple of the vector length; rows up to M rounded to
// kRows are computed (and must exist in A and C). Tiles hold 16 accumulator vectors (4 x 4 or
// 8 x 2) or 8 (8 x 1), which fits the 32 AVX-512 registers with room for the B row.
template <typename T>
void small_gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                int64_t ldc) {
  constexpr int64_t VL = Vec<T>::size;
  int64_t j = 0;
  for (; j + 4 * VL <= N; j += 4 * VL) gemm_columns<T, 4, 4>(M, K, A, lda, B + j, ldb, C + j, ldc);
  for (; j + 2 * VL <= N; j += 2 * VL) gemm_columns<T, 8, 2>(M, K, A, lda, B + j, ldb, C + j, ldc);
  for (; j < N; j += VL) gemm_columns<T, 8, 1>(M, K, A, lda, B + j, ldb, C + j, ldc);
}

// exp on whole vectors: 2^k * p(r), x = k ln2 + r, |r| <= ln2/2, p = degree-6 Taylor (rel. error
// ~1e-7); inputs below -87 (including -inf) give exactly 0. Softmax only feeds it x <= 0.
inline Vec<float>::type exp_vec(Vec<float>::type x) {
  using V = Vec<float>::type;
  typedef int32_t VI __attribute__((vector_size(kVecBytes)));
  const auto underflow = x < -87.0f;
  V xc = x < -87.0f ? V{} - 87.0f : x;
  xc = xc > 88.0f ? V{} + 88.0f : xc;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const V k = (xc * 1.44269504088896341f + magic) - magic;
  const V r = (xc - k * 0.693359375f) + k * 2.12194440e-4f;  // ln2 split in a hi and a lo part
  V p = V{} + (1.0f / 720.0f);
  p = p * r + (1.0f / 120.0f);
  p = p * r + (1.0f / 24.0f);
  p = p * r + (1.0f / 6.0f);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VI bits = (__builtin_convertvector(k, VI) + 127) << 23;
  const V result = p * (V)bits;  // same-size vector cast: a bit reinterpretation
  return underflow ? V{} : result;
}

// row[0:n] <- softmax(row[0:n]); row[n:padded] must already hold -inf.
inline void softmax_row(float* row, int64_t n, int64_t padded) {
  using V = Vec<float>::type;
  constexpr int64_t VL = Vec<float>::size;
  V vmax = V{} - std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < padded; j += VL) {
    const V x = *reinterpret_cast<const V*>(row + j);
    vmax = x > vmax ? x : vmax;
  }
  float mx = vmax[0];
  for (int64_t l = 1; l < VL; ++l) mx = std::max(mx, static_cast<float>(vmax[l]));
  V sum = V{};
  for (int64_t j = 0; j < padded; j += VL) {
    V* p = reinterpret_cast<V*>(row + j);
    *p = exp_vec(*p - mx);
    sum += *p;
  }
  float total = 0.f;
  for (int64_t l = 0; l < VL; ++l) total += sum[l];
  const float inv = 1.f / total;
  for (int64_t j = 0; j < padded; j += VL) *reinterpret_cast<V*>(row + j) *= inv;
}

inline void softmax_row(double* row, int64_t n, int64_t padded) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += (row[j] = std::exp(row[j] - mx));
  for (int64_t j = 0; j < n; ++j) row[j] /= total;
  for (int64_t j = n; j < padded; ++j) row[j] = 0;  // padding columns: probability 0, like the float path
}

// sum_j a[j] b[j] over whole vectors (length a multiple of the vector length).
template <typename T>
inline T row_dot(const T* a, const T* b, int64_t padded) {
  using V = typename Vec<T>::type;
  V acc = V{};
  for (int64_t j = 0; j < padded; j += Vec<T>::size)
    acc += *reinterpret_cast<const V*>(a + j) * *reinterpret_cast<const V*>(b + j);
  T total = 0;
  for (int64_t l = 0; l < Vec<T>::size; ++l) total += acc[l];
  return total;
}

// dst[j * ldd + i] = src[i * lds + j] for i < rows, j < cols.
template <typename T>
inline void transpose(const T* src, int64_t lds, T* dst, int64_t ldd, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ldd + i] = src[i * lds + j];
}

// Strides of one (B, L, H, W, C) tensor.
struct Strides5 {
  int64_t b, t, h, w, c;
  explicit Strides5(const at::Tensor& x)
      : b(x.stride(0)), t(x.stride(1)), h(x.stride(2)), w(x.stride(3)), c(x.stride(4)) {}
  int64_t token(int64_t bi, int64_t ti, int64_t hi, int64_t wi) const { return bi * b + ti * t + hi * h + wi * w; }
};

// The tokens of one window: element offsets in each tensor, position m in the full window
// (row of the dense bias matrix) and bias code (see Geometry).
struct WindowTokens {
  int64_t n = 0;
  bool full = false;
  std::vector<int64_t> q, k, v, g, o, m, code;
  explicit WindowTokens(int64_t capacity) {
    for (auto* vec : {&q, &k, &v, &g, &o, &m, &code}) vec->resize(capacity);
  }
  // window = flat index over (batch, kt, kh, kw).
  void load(const Geometry& geo, int64_t window, const Strides5& sq, const Strides5& sk, const Strides5& sv,
            const Strides5* sg, const Strides5& so) {
    int64_t rest = window;
    const int64_t kw = rest % geo.w.count;
    rest /= geo.w.count;
    const int64_t kh = rest % geo.h.count;
    rest /= geo.h.count;
    const int64_t kt = rest % geo.t.count;
    const int64_t b = rest / geo.t.count;
    n = 0;
    for (int64_t t = geo.t.begin(kt); t < geo.t.end(kt); ++t) {
      const int64_t lt = geo.t.local(t, kt);
      for (int64_t h = geo.h.begin(kh); h < geo.h.end(kh); ++h) {
        const int64_t lh = geo.h.local(h, kh);
        for (int64_t w = geo.w.begin(kw); w < geo.w.end(kw); ++w) {
          const int64_t lw = geo.w.local(w, kw);
          q[n] = sq.token(b, t, h, w);
          k[n] = sk.token(b, t, h, w);
          v[n] = sv.token(b, t, h, w);
          if (sg) g[n] = sg->token(b, t, h, w);
          o[n] = so.token(b, t, h, w);
          m[n] = (lt * geo.h.window + lh) * geo.w.window + lw;
          code[n] = geo.code(lt, lh, lw);
          ++n;
        }
      }
    }
    full = n == geo.full_tokens();
  }
};

// rows[r * ld + c] = x[token[r] + c * stride_c] for r < n, c < C: a window's whole token rows
// (every head), read once per window; the per-head operands are then taken from L1/L2.
template <typename scalar_t, typename acc_t>
inline void gather_rows(const scalar_t* x, const int64_t* token, int64_t n, int64_t C, int64_t stride_c,
                        acc_t* rows, int64_t ld) {
  for (int64_t r = 0; r < n; ++r) {
    const scalar_t* src = x + token[r];
    acc_t* dst = rows + r * ld;
    if (stride_c == 1) {
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c * stride_c]);
    }
  }
}

// The (n x d) slice of head h of gathered rows as a GEMM B operand (vector-aligned rows): the
// rows themselves when the slice starts on a vector boundary, else a copy into `copy`.
template <typename acc_t>
inline const acc_t* head_operand(const acc_t* rows, int64_t ld, int64_t n, int64_t c0, int64_t d, acc_t* copy,
                                 int64_t ld_copy, int64_t* ld_out) {
  if (c0 % Vec<acc_t>::size == 0 && d % Vec<acc_t>::size == 0) {
    *ld_out = ld;
    return rows + c0;
  }
  for (int64_t r = 0; r < n; ++r) std::memcpy(copy + r * ld_copy, rows + r * ld + c0, d * sizeof(acc_t));
  *ld_out = ld_copy;
  return copy;
}

// out[token[r] + c0 + c] = rows[r * ld + c] * factor (out is contiguous, channel stride 1).
template <typename scalar_t, typename acc_t>
inline void scatter_rows(const acc_t* rows, int64_t ld, const int64_t* token, int64_t n, int64_t c0, int64_t d,
                         acc_t factor, scalar_t* out) {
  for (int64_t r = 0; r < n; ++r) {
    scalar_t* dst = out + token[r] + c0;
    const acc_t* src = rows + r * ld;
    for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<scalar_t>(src[c] * factor);
  }
}

// The bias of head h as a dense (NF x NF) matrix over full-window positions, when it is small
// enough to precompute (it always is for Video Swin windows); otherwise the table is indexed.
template <typename acc_t>
struct BiasView {
  const acc_t* table = nullptr;  // (T, heads), contiguous
  std::vector<acc_t> dense;      // (heads, NF, NF) or empty
  int64_t heads = 0, nf = 0, center = 0;

  BiasView(const at::Tensor& table_acc, const Geometry& geo, int64_t num_heads) {
    if (!table_acc.defined()) return;
    table = table_acc.const_data_ptr<acc_t>();
    heads = num_heads;
    nf = geo.full_tokens();
    center = geo.center();
    if (heads * nf * nf > (int64_t{1} << 24)) return;
    dense.resize(heads * nf * nf);
    const int64_t wh = geo.h.window, ww = geo.w.window;
    for (int64_t i = 0; i < nf; ++i) {
      const int64_t ci = geo.code(i / (wh * ww), i / ww % wh, i % ww);
      for (int64_t j = 0; j < nf; ++j) {
        const int64_t row = ci - geo.code(j / (wh * ww), j / ww % wh, j % ww) + center;
        for (int64_t h = 0; h < heads; ++h) dense[(h * nf + i) * nf + j] = table[row * heads + h];
      }
    }
  }
  bool present() const { return table != nullptr; }
};

// S[i, :] = S[i, :] * scale + Bias[i, :] for i < n; S[i, n:padded] = -inf.
template <typename acc_t>
void finish_scores(acc_t* S, int64_t ld, const WindowTokens& tok, int64_t head, acc_t scale,
                   const BiasView<acc_t>& bias) {
  const int64_t n = tok.n;
  for (int64_t i = 0; i < n; ++i) {
    acc_t* row = S + i * ld;
    if (!bias.present()) {
      for (int64_t j = 0; j < n; ++j) row[j] *= scale;
    } else if (!bias.dense.empty()) {
      const acc_t* brow = bias.dense.data() + (head * bias.nf + tok.m[i]) * bias.nf;
      if (tok.full) {
        for (int64_t j = 0; j < n; ++j) row[j] = row[j] * scale + brow[j];
      } else {
        for (int64_t j = 0; j < n; ++j) row[j] = row[j] * scale + brow[tok.m[j]];
      }
    } else {
      const int64_t base = tok.code[i] + bias.center;
      for (int64_t j = 0; j < n; ++j) row[j] = row[j] * scale + bias.table[(base - tok.code[j]) * bias.heads + head];
    }
    for (int64_t j = n; j < ld; ++j) row[j] = -std::numeric_limits<acc_t>::infinity();
  }
}

struct Problem {
  Geometry geo;
  int64_t batch, heads, d, channels, windows;
  double scale;
};

Problem make_problem(const Geometry& geo, const at::Tensor& query, int64_t num_heads, double scale) {
  const int64_t C = query.size(4);
  return Problem{geo, query.size(0), num_heads, C / num_heads, C, query.size(0) * geo.windows(), scale};
}

template <typename scalar_t>
void forward_impl(const Problem& pb, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                  const at::Tensor& bias_acc, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VL = Vec<acc_t>::size;
  // np: rows of the token buffers, enough for the GEMMs' rows (kRows at a time) and whole vectors.
  const int64_t nf = pb.geo.full_tokens(), np = round_up(nf, std::max<int64_t>(VL, kRows)), dp = round_up(pb.d, VL),
                d = pb.d;
  const int64_t C = pb.channels, cp = round_up(C, VL);
  const BiasView<acc_t> bias(bias_acc, pb.geo, pb.heads);
  const Strides5 sq(query), sk(key), sv(value), so(out);
  const scalar_t *q = query.const_data_ptr<scalar_t>(), *k = key.const_data_ptr<scalar_t>(),
                 *v = value.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const acc_t scale = static_cast<acc_t>(pb.scale);
  // Tasks are (window, head), window-major: a chunk gathers each of its windows' rows once.
  at::parallel_for(0, pb.windows * pb.heads, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> WQ(np * cp), WK(np * cp), WV(np * cp), Kt(dp * np), V(np * dp), S(np * np), O(np * dp);
    WindowTokens tok(nf);
    int64_t loaded = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t window = task / pb.heads, head = task % pb.heads;
      if (window != loaded) {
        tok.load(pb.geo, window, sq, sk, sv, nullptr, so);
        gather_rows(q, tok.q.data(), tok.n, C, sq.c, WQ.get(), cp);
        gather_rows(k, tok.k.data(), tok.n, C, sk.c, WK.get(), cp);
        gather_rows(v, tok.v.data(), tok.n, C, sv.c, WV.get(), cp);
        loaded = window;
      }
      const int64_t n = tok.n, m_rows = round_up(n, kRows), npad = round_up(n, VL), c0 = head * d;
      TORCH_INTERNAL_ASSERT(m_rows <= np, "clip_window_attention: GEMM rows ", m_rows, " exceed the buffers' ", np);
      transpose(WK.get() + c0, cp, Kt.get(), np, n, d);
      int64_t ldv;
      const acc_t* Vh = head_operand(WV.get(), cp, n, c0, d, V.get(), dp, &ldv);
      small_gemm<acc_t>(m_rows, npad, d, WQ.get() + c0, cp, Kt.get(), np, S.get(), np);
      finish_scores(S.get(), np, tok, head, scale, bias);
      for (int64_t i = 0; i < n; ++i) softmax_row(S.get() + i * np, n, npad);
      small_gemm<acc_t>(m_rows, dp, n, S.get(), np, Vh, ldv, O.get(), dp);
      scatter_rows(O.get(), dp, tok.o.data(), n, c0, d, acc_t(1), o);
    }
  });
}

constexpr int64_t kBackwardGroups = 32;  // fixed: the bias-gradient summation order ignores the thread count

template <typename scalar_t>
void backward_impl(const Problem& pb, const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
                   const at::Tensor& value, const at::Tensor& bias_acc, at::Tensor& gq, at::Tensor& gk, at::Tensor& gv,
                   at::Tensor& gbias_groups) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t VL = Vec<acc_t>::size;
  // np: rows of the token buffers, enough for the GEMMs' rows (kRows at a time) and whole vectors.
  const int64_t nf = pb.geo.full_tokens(), np = round_up(nf, std::max<int64_t>(VL, kRows)), dp = round_up(pb.d, VL),
                d = pb.d;
  const int64_t C = pb.channels, cp = round_up(C, VL), heads = pb.heads;
  const BiasView<acc_t> bias(bias_acc, pb.geo, heads);
  const Strides5 sq(query), sk(key), sv(value), sg(grad_out), so(gq);  // gq, gk, gv: contiguous, one shape
  const scalar_t *q = query.const_data_ptr<scalar_t>(), *k = key.const_data_ptr<scalar_t>(),
                 *v = value.const_data_ptr<scalar_t>(), *g = grad_out.const_data_ptr<scalar_t>();
  scalar_t *dq = gq.mutable_data_ptr<scalar_t>(), *dk = gk.mutable_data_ptr<scalar_t>(),
           *dv = gv.mutable_data_ptr<scalar_t>();
  const int64_t groups = std::min(pb.windows, kBackwardGroups);
  const int64_t table_rows = pb.geo.table_rows();
  acc_t* gtab = gbias_groups.defined() ? gbias_groups.mutable_data_ptr<acc_t>() : nullptr;  // (G, heads, T)
  const acc_t scale = static_cast<acc_t>(pb.scale);
  const bool dense_bias = bias.present() && !bias.dense.empty();
  // Units are groups of windows g, g + G, g + 2G, ... (every head); each sums its own table gradient.
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> WQ(np * cp), WK(np * cp), WV(np * cp), WG(np * cp), Kt(dp * np), Vt(dp * np), Qc(np * dp),
        Kc(np * dp), Gc(np * dp), S(np * np), T(np * np), dS(np * np), R(np * dp);
    std::vector<acc_t> dense_grad(dense_bias ? heads * nf * nf : 0);
    WindowTokens tok(nf);
    for (int64_t unit = begin; unit < end; ++unit) {
      acc_t* unit_tab = gtab ? gtab + unit * heads * table_rows : nullptr;
      std::fill(dense_grad.begin(), dense_grad.end(), acc_t(0));
      for (int64_t window = unit; window < pb.windows; window += groups) {
        tok.load(pb.geo, window, sq, sk, sv, &sg, so);
        const int64_t n = tok.n, m_rows = round_up(n, kRows), npad = round_up(n, VL);
        TORCH_INTERNAL_ASSERT(m_rows <= np, "clip_window_attention: GEMM rows ", m_rows, " exceed the buffers' ", np);
        gather_rows(q, tok.q.data(), n, C, sq.c, WQ.get(), cp);
        gather_rows(k, tok.k.data(), n, C, sk.c, WK.get(), cp);
        gather_rows(v, tok.v.data(), n, C, sv.c, WV.get(), cp);
        gather_rows(g, tok.g.data(), n, C, sg.c, WG.get(), cp);
        for (int64_t head = 0; head < heads; ++head) {
          const int64_t c0 = head * d;
          transpose(WK.get() + c0, cp, Kt.get(), np, n, d);
          transpose(WV.get() + c0, cp, Vt.get(), np, n, d);
          int64_t ldq, ldk, ldg;
          const acc_t* Qh = head_operand(WQ.get(), cp, n, c0, d, Qc.get(), dp, &ldq);
          const acc_t* Kh = head_operand(WK.get(), cp, n, c0, d, Kc.get(), dp, &ldk);
          const acc_t* Gh = head_operand(WG.get(), cp, n, c0, d, Gc.get(), dp, &ldg);
          // P (in S), recomputed.
          small_gemm<acc_t>(m_rows, npad, d, WQ.get() + c0, cp, Kt.get(), np, S.get(), np);
          finish_scores(S.get(), np, tok, head, scale, bias);
          for (int64_t i = 0; i < n; ++i) softmax_row(S.get() + i * np, n, npad);
          // dP = dO V^T, then dS = P * (dP - delta) in place (P is 0 on the padding columns).
          small_gemm<acc_t>(m_rows, npad, d, WG.get() + c0, cp, Vt.get(), np, dS.get(), np);
          for (int64_t i = 0; i < n; ++i) {
            const acc_t* p = S.get() + i * np;
            acc_t* ds = dS.get() + i * np;
            acc_t delta = row_dot(p, ds, npad);
            for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - delta);
          }
          if (unit_tab) {
            for (int64_t i = 0; i < n; ++i) {
              const acc_t* ds = dS.get() + i * np;
              if (dense_bias) {
                acc_t* row = dense_grad.data() + (head * nf + tok.m[i]) * nf;
                if (tok.full) {
                  for (int64_t j = 0; j < n; ++j) row[j] += ds[j];
                } else {
                  for (int64_t j = 0; j < n; ++j) row[tok.m[j]] += ds[j];
                }
              } else {
                acc_t* tab = unit_tab + head * table_rows;
                const int64_t base = tok.code[i] + pb.geo.center();
                for (int64_t j = 0; j < n; ++j) tab[base - tok.code[j]] += ds[j];
              }
            }
          }
          // dV = P^T dO.
          transpose(S.get(), np, T.get(), np, n, n);
          small_gemm<acc_t>(m_rows, dp, n, T.get(), np, Gh, ldg, R.get(), dp);
          scatter_rows(R.get(), dp, tok.o.data(), n, c0, d, acc_t(1), dv);
          // dQ = dS K * scale.
          small_gemm<acc_t>(m_rows, dp, n, dS.get(), np, Kh, ldk, R.get(), dp);
          scatter_rows(R.get(), dp, tok.o.data(), n, c0, d, scale, dq);
          // dK = dS^T Q * scale.
          transpose(dS.get(), np, T.get(), np, n, n);
          small_gemm<acc_t>(m_rows, dp, n, T.get(), np, Qh, ldq, R.get(), dp);
          scatter_rows(R.get(), dp, tok.o.data(), n, c0, d, scale, dk);
        }
      }
      if (unit_tab && dense_bias) {  // fold the dense (NF x NF) gradients into the table rows
        const int64_t wh = pb.geo.h.window, ww = pb.geo.w.window;
        for (int64_t i = 0; i < nf; ++i) {
          const int64_t ci = pb.geo.code(i / (wh * ww), i / ww % wh, i % ww) + pb.geo.center();
          for (int64_t j = 0; j < nf; ++j) {
            const int64_t row = ci - pb.geo.code(j / (wh * ww), j / ww % wh, j % ww);
            for (int64_t head = 0; head < heads; ++head)
              unit_tab[head * table_rows + row] += dense_grad[(head * nf + i) * nf + j];
          }
        }
      }
    }
  });
}

at::Tensor bias_in_acc(const c10::optional<at::Tensor>& bias, const at::Tensor& query) {
  if (!bias.has_value()) return at::Tensor();
  const auto acc = query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return bias->to(acc).contiguous();
}

at::Tensor clip_window_attention_forward_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                             const c10::optional<at::Tensor>& rel_pos_bias, int64_t num_heads,
                                             at::IntArrayRef window, at::IntArrayRef shift, double scale) {
  const Geometry geo = clip_window::check_and_make_geometry("clip_window_attention_forward", query, key, value,
                                                            rel_pos_bias, num_heads, window, shift);
  at::Tensor out = at::empty(query.sizes(), query.options());
  if (out.numel() == 0) return out;
  const Problem pb = make_problem(geo, query, num_heads, scale);
  const at::Tensor bias = bias_in_acc(rel_pos_bias, query);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "clip_window_attention_forward_cpu",
                                  [&] { forward_impl<scalar_t>(pb, query, key, value, bias, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> clip_window_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const c10::optional<at::Tensor>& rel_pos_bias, int64_t num_heads, at::IntArrayRef window, at::IntArrayRef shift,
    double scale) {
  const Geometry geo = clip_window::check_backward_and_make_geometry(
      "clip_window_attention_backward", grad_out, query, key, value, rel_pos_bias, num_heads, window, shift);
  at::Tensor gq = at::empty(query.sizes(), query.options());
  at::Tensor gk = at::empty(query.sizes(), query.options());
  at::Tensor gv = at::empty(query.sizes(), query.options());
  const at::Tensor bias = bias_in_acc(rel_pos_bias, query);
  at::Tensor gbias = rel_pos_bias.has_value() ? at::zeros(rel_pos_bias->sizes(), rel_pos_bias->options())
                                              : at::empty({0}, query.options());
  if (gq.numel() == 0) return {gq, gk, gv, gbias};
  const Problem pb = make_problem(geo, query, num_heads, scale);
  at::Tensor groups;  // (G, heads, T) per-group table gradients, summed in a fixed order below
  if (bias.defined())
    groups = at::zeros({std::min(pb.windows, kBackwardGroups), num_heads, geo.table_rows()}, bias.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "clip_window_attention_backward_cpu",
                                  [&] { backward_impl<scalar_t>(pb, grad_out, query, key, value, bias, gq, gk, gv, groups); });
  if (bias.defined()) gbias.copy_(groups.sum(0).t());
  return {gq, gk, gv, gbias};
}

}  // namespace
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
