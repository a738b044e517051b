// Helpers shared by the CPU memory_read kernels (memory_read_kernel_impl.h: top-k,
// memory_read_dense_kernel_impl.h: dense). Math and schemas: csrc/memory_read.cpp.
//
// Per batch item, qk (Ck, N), mk (Ck, M), mv (Cv, M), a = 2 * scale, bias_i = -scale |mk_i|^2:
//   s_ij = a <mk_i, qk_j> + bias_i.
//
// Included by the kernel bodies, once per instruction-set namespace (no include guard);
// VOS_CPU_ISA_AVX512 selects the AVX-512 paths (cpu_isa_variants.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#if VOS_CPU_MULTI_ISA
// GCC 12 flags the AVX-512 intrinsics' own _mm512_undefined_ps() as "maybe uninitialized" when
// they inline into our loops (a known false positive); silence it for this translation unit.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>  // usable in any translation unit: each intrinsic carries its own target
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace memory_read_cpu {

constexpr int64_t kMemoryTile = 1024;  // memory entries per GEMM tile (at most)

// Strided 3-D view of a tensor's data: element (b, c, i) at ptr[b*s0 + c*s1 + i*s2].
template <typename T>
struct View3 {
  const T* ptr;
  int64_t s0, s1, s2;
  explicit View3(const at::Tensor& t)
      : ptr(t.const_data_ptr<T>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)) {}
  const T* row(int64_t b, int64_t c) const { return ptr + b * s0 + c * s1; }
};

// Blocks of at most `max_block` that split `n` evenly into a multiple of the thread count; one
// block (no threads woken) when the whole call is small (`work`: multiply-adds of the call).
inline int64_t even_block(int64_t n, int64_t max_block, int64_t work) {
  if (work < (int64_t(1) << 18)) return std::max<int64_t>(1, std::min(n, max_block));
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t blocks = (n + max_block - 1) / max_block;
  blocks = ((blocks + threads - 1) / threads) * threads;
  blocks = std::max<int64_t>(1, std::min(blocks, n));
  return (n + blocks - 1) / blocks;
}

// ---------------------------------------------------------------------------------------------
// exp for the softmax: Cephes expf (Cody-Waite reduction x = n ln2 + r, degree-6 polynomial in r,
// ~1 ulp), 0 below -87.3; NaN stays NaN. The arguments here are scores minus their running max
// (<= 0, or a rounding error above 0); they are clamped at 88 so 2^n never overflows the float.
constexpr float kExpLow = -87.3f, kExpHigh = 88.0f;

inline float exp_scalar(float x) {
  if (x < kExpLow) return 0.0f;
  x = std::min(x, kExpHigh);  // std::min(NaN, c) returns its first argument: NaN stays NaN
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 127] after the clamps
  float pow2;
  std::memcpy(&pow2, &bits, sizeof(pow2));
  return y * pow2;
}
inline double exp_scalar(double x) { return std::exp(x); }

#if VOS_CPU_ISA_AVX512
// The same exp on 16 lanes (scalef applies 2^n without integer tricks).
inline __m512 exp16(__m512 x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpLow), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_set1_ps(kExpHigh), x);  // min_ps returns its 2nd operand on NaN: NaN stays
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(y, n));
}

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << remaining) - 1u);
}
#endif

// x[j] = exp(x[j] - shift[j]) and sum[j] += x[j], j < n: one memory row of the online softmax.
template <typename T>
inline void exp_shifted_accumulate(T* x, const T* shift, T* sum, int64_t n) {
#if VOS_CPU_ISA_AVX512
  if constexpr (std::is_same_v<T, float>) {
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail_mask(n - j);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), _mm512_maskz_loadu_ps(m, shift + j)));
      _mm512_mask_storeu_ps(x + j, m, e);
      _mm512_mask_storeu_ps(sum + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, sum + j), e));
    }
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) {
    x[j] = exp_scalar(x[j] - shift[j]);
    sum[j] += x[j];
  }
}

// One memory row i of the dense backward, over queries j < n:
//   p[j] = exp(a p[j] + bias - lse[j])            (p holds <mk_i, qk_j> on entry)
//   dp[j] = p[j] (dp[j] - delta[j])               (dp holds <mv_i, g_j> on entry)
// and returns sum_j dp[j] (the row sum that feeds grad_mk's norm term).
template <typename T>
inline T softmax_backward_row(T* p, T* dp, T a, T bias, const T* lse, const T* delta, int64_t n) {
#if VOS_CPU_ISA_AVX512
  if constexpr (std::is_same_v<T, float>) {
    __m512 total = _mm512_setzero_ps();
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(bias);
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 m = tail_mask(n - j);
      const __m512 s = _mm512_sub_ps(_mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, p + j), vb),
                                     _mm512_maskz_loadu_ps(m, lse + j));
      const __m512 prob = _mm512_maskz_mov_ps(m, exp16(s));
      const __m512 ds = _mm512_mul_ps(prob, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + j),
                                                          _mm512_maskz_loadu_ps(m, delta + j)));
      _mm512_mask_storeu_ps(p + j, m, prob);
      _mm512_mask_storeu_ps(dp + j, m, ds);
      total = _mm512_add_ps(total, ds);
    }
    return _mm512_reduce_add_ps(total);
  }
#endif
  T total = 0;
  for (int64_t j = 0; j < n; ++j) {
    p[j] = exp_scalar(a * p[j] + bias - lse[j]);
    dp[j] = p[j] * (dp[j] - delta[j]);
    total += dp[j];
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// bias_i = -scale * |mk_i|^2 for every batch item: (B, M), computed once per call.
template <typename T>
at::Tensor l2_bias(const at::Tensor& mk, double scale) {
  const int64_t B = mk.size(0), Ck = mk.size(1), M = mk.size(2);
  at::Tensor bias = at::empty({B, M}, mk.options().memory_format(at::MemoryFormat::Contiguous));
  const View3<T> key(mk);
  T* out = bias.mutable_data_ptr<T>();
  const int64_t tiles = (M + kMemoryTile - 1) / kMemoryTile;
  at::parallel_for(0, B * tiles, Ck * M < 65536 ? B * tiles : 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, i0 = (task % tiles) * kMemoryTile, n = std::min(kMemoryTile, M - i0);
      T* o = out + b * M + i0;
      std::fill(o, o + n, T(0));
      for (int64_t c = 0; c < Ck; ++c) {
        const T* x = key.row(b, c) + i0 * key.s2;
        for (int64_t i = 0; i < n; ++i) o[i] += x[i * key.s2] * x[i * key.s2];
      }
      for (int64_t i = 0; i < n; ++i) o[i] *= static_cast<T>(-scale);
    }
  });
  return bias;
}

// float16/bfloat16 run in float32; float32/float64 as they are (any strides). Detached: grad
// mode is thread-local and the at::mm calls run in at::parallel_for's worker threads.
inline at::Tensor compute_tensor(const at::Tensor& t) {
  return (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) ? t.detach().to(at::kFloat) : t.detach();
}

inline void check_inputs(const char* op, const at::Tensor& qk, const at::Tensor& mk, const at::Tensor& mv) {
  TORCH_CHECK(qk.dim() == 3 && mk.dim() == 3 && mv.dim() == 3, op,
              ": query_key, memory_key, memory_value must be 3-D (B, C, N|M), got shapes ", qk.sizes(), ", ",
              mk.sizes(), ", ", mv.sizes());
  TORCH_CHECK(qk.is_floating_point(), op, ": query_key must be a floating-point tensor, got ", qk.scalar_type());
  TORCH_CHECK(mk.scalar_type() == qk.scalar_type() && mv.scalar_type() == qk.scalar_type(), op,
              ": query_key, memory_key and memory_value must have one dtype, got ", qk.scalar_type(), ", ",
              mk.scalar_type(), ", ", mv.scalar_type());
  TORCH_CHECK(mk.size(0) == qk.size(0) && mv.size(0) == qk.size(0) && mk.size(1) == qk.size(1) &&
                  mv.size(2) == mk.size(2) && mk.size(2) > 0,
              op, ": expected query_key (B, Ck, N), memory_key (B, Ck, M), memory_value (B, Cv, M) with M > 0, "
              "got ", qk.sizes(), ", ", mk.sizes(), ", ", mv.sizes());
}

// The backward entry points: inputs checked as the forward's, grad_out (B, Cv, N).
inline void check_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& qk,
                                  const at::Tensor& mk, const at::Tensor& mv) {
  check_inputs(op, qk, mk, mv);
  const int64_t B = qk.size(0), N = qk.size(2), Cv = mv.size(1);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == B && grad_out.size(1) == Cv && grad_out.size(2) == N, op,
              ": grad_out must be (B, Cv, N) = (", B, ", ", Cv, ", ", N, "), got ", grad_out.sizes());
}

// The backward entry points' outputs: fresh (grad_qk, grad_mk, grad_mv) shaped like the compute
// tensors qk, mk, mv (zero-filled when the kernel accumulates into them, or when it is not run
// because the call is empty), filled by `kernel(grad_qk, grad_mk, grad_mv)`, returned in `dtype`.
template <typename Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor> input_gradients(const at::Tensor& qk, const at::Tensor& mk,
                                                               const at::Tensor& mv, at::ScalarType dtype, bool run,
                                                               bool accumulates, Kernel&& kernel) {
  const auto fresh = [&](const at::Tensor& t) {
    return accumulates || !run ? at::zeros(t.sizes(), t.options()) : at::empty(t.sizes(), t.options());
  };
  at::Tensor grad_qk = fresh(qk), grad_mk = fresh(mk), grad_mv = fresh(mv);
  if (run) kernel(grad_qk, grad_mk, grad_mv);
  return {grad_qk.to(dtype), grad_mk.to(dtype), grad_mv.to(dtype)};
}

}  // namespace memory_read_cpu
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
