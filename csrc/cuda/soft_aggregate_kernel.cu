// CUDA kernels of soft aggregation (math: csrc/cpu/soft_aggregate_kernel.cpp).
//
// One thread per pixel; the object loop reads each plane coalesced (pixels are contiguous),
// and everything is computed in float32 (float64 for double). The forward re-reads prob in its
// second loop (an L2 hit at these sizes) instead of keeping O ratios in registers, so any O works.
// The backward keeps the prefix products in a float32 scratch tensor (B, O, S): exact at p = 1,
// where dividing the full product by (1 - p_o) would not be.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "soft_aggregate.h"

namespace vos_kernels {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t ratio_of(acc_t x, acc_t lo, acc_t hi) {
  const acc_t q = x < lo ? lo : (x > hi ? hi : x);
  return q / (acc_t(1) - q);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    soft_aggregate_forward_kernel(const scalar_t* __restrict__ prob, scalar_t* __restrict__ out, int64_t O, int64_t S,
                                  acc_t lo, acc_t hi) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  const int64_t b = blockIdx.y;
  const scalar_t* p = prob + b * O * S + s;
  acc_t bg = acc_t(1), ratio_sum = acc_t(0);
  // Neither loop is unrolled: unrolled, the float64 kernel kept more values live across the
  // divisions (whose slow path is a call) and spilled 8-20 B on sm_80 or sm_90 (ptxas, nvcc 13.0).
#pragma unroll 1
  for (int64_t o = 0; o < O; ++o) {
    const acc_t x = static_cast<acc_t>(p[o * S]);
    bg *= acc_t(1) - x;
    ratio_sum += ratio_of(x, lo, hi);
  }
  const acc_t r_bg = ratio_of(bg, lo, hi);
  const acc_t inv = acc_t(1) / (ratio_sum + r_bg);
  // The output pointer is formed only now: live across the loop's divisions (whose slow path is a
  // call), it was spilled to the stack in the float64 kernel.
  scalar_t* y = out + b * (O + 1) * S + s;
  y[0] = static_cast<scalar_t>(r_bg * inv);
#pragma unroll 1
  for (int64_t o = 0; o < O; ++o) {
    y[(o + 1) * S] = static_cast<scalar_t>(ratio_of(static_cast<acc_t>(p[o * S]), lo, hi) * inv);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    soft_aggregate_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ prob,
                                   scalar_t* __restrict__ grad_prob, acc_t* __restrict__ prefix, int64_t O, int64_t S,
                                   acc_t lo, acc_t hi) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  const int64_t b = blockIdx.y;
  const scalar_t* p = prob + b * O * S + s;
  const scalar_t* g = grad_out + b * (O + 1) * S + s;
  scalar_t* gp = grad_prob + b * O * S + s;
  acc_t* pre = prefix + b * O * S + s;
  // g_c - dot is formed as (g_c - g_d) - D with d the dominant channel and
  // D = sum_c out_c (g_c - g_d): no cancellation when out_d ~ 1 (see the CPU kernel).
  acc_t bg = acc_t(1), ratio_sum = acc_t(0), r_max = acc_t(-1), g_max = acc_t(0);
  for (int64_t o = 0; o < O; ++o) {
    const acc_t x = static_cast<acc_t>(p[o * S]);
    pre[o * S] = bg;
    bg *= acc_t(1) - x;
    const acc_t r = ratio_of(x, lo, hi);
    ratio_sum += r;
    if (r > r_max) {
      r_max = r;
      g_max = static_cast<acc_t>(g[(o + 1) * S]);
    }
  }
  const acc_t g_bg = static_cast<acc_t>(g[0]);
  const acc_t r_bg = ratio_of(bg, lo, hi);
  if (r_bg > r_max) {
    r_max = r_bg;
    g_max = g_bg;
  }
  const acc_t inv = acc_t(1) / (ratio_sum + r_bg);
  acc_t shift = r_bg * (g_bg - g_max);
  for (int64_t o = 0; o < O; ++o) {
    shift += ratio_of(static_cast<acc_t>(p[o * S]), lo, hi) * (static_cast<acc_t>(g[(o + 1) * S]) - g_max);
  }
  shift *= inv;
  const acc_t gq_bg =
      (bg >= lo && bg <= hi) ? ((g_bg - g_max) - shift) * inv * (acc_t(1) + r_bg) * (acc_t(1) + r_bg) : acc_t(0);
  acc_t suffix = acc_t(1);
  for (int64_t o = O - 1; o >= 0; --o) {
    const acc_t x = static_cast<acc_t>(p[o * S]);
    const acc_t r = ratio_of(x, lo, hi);
    const acc_t gq = (x >= lo && x <= hi)
                         ? ((static_cast<acc_t>(g[(o + 1) * S]) - g_max) - shift) * inv * (acc_t(1) + r) * (acc_t(1) + r)
                         : acc_t(0);
    gp[o * S] = static_cast<scalar_t>(gq - gq_bg * pre[o * S] * suffix);
    suffix *= acc_t(1) - x;
  }
}

dim3 grid_for(int64_t B, int64_t S) {
  TORCH_CHECK(B <= 65535, "soft_aggregate (cuda): batch size must be at most 65535, got ", B);
  return dim3(static_cast<unsigned>((S + kThreads - 1) / kThreads), static_cast<unsigned>(B));
}

at::Tensor soft_aggregate_forward_cuda(const at::Tensor& prob_in, double eps) {
  check_soft_aggregate_forward_args(prob_in);
  c10::cuda::CUDAGuard guard(prob_in.device());
  const at::Tensor prob = prob_in.contiguous();
  const int64_t B = prob.size(0), O = prob.size(1), S = prob.size(2);
  at::Tensor out = at::empty({B, O + 1, S}, prob.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "soft_aggregate_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    soft_aggregate_forward_kernel<scalar_t, acc_t><<<grid_for(B, S), kThreads, 0, stream>>>(
        prob.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), O, S, static_cast<acc_t>(eps),
        static_cast<acc_t>(1.0 - eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor soft_aggregate_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& prob_in, double eps) {
  check_soft_aggregate_backward_args(grad_out_in, prob_in);
  const int64_t B = prob_in.size(0), O = prob_in.size(1), S = prob_in.size(2);
  c10::cuda::CUDAGuard guard(prob_in.device());
  const at::Tensor prob = prob_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_prob = at::empty({B, O, S}, prob.options());
  if (grad_prob.numel() == 0) return grad_prob;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "soft_aggregate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor prefix = at::empty({B, O, S}, prob.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    soft_aggregate_backward_kernel<scalar_t, acc_t><<<grid_for(B, S), kThreads, 0, stream>>>(
        grad_out.const_data_ptr<scalar_t>(), prob.const_data_ptr<scalar_t>(), grad_prob.mutable_data_ptr<scalar_t>(),
        prefix.mutable_data_ptr<acc_t>(), O, S, static_cast<acc_t>(eps), static_cast<acc_t>(1.0 - eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_prob;
}

}  // namespace

TORCH_LIBRARY_IMPL(vos_kernels, CUDA, m) {
  m.impl("soft_aggregate_forward", &soft_aggregate_forward_cuda);
  m.impl("soft_aggregate_backward", &soft_aggregate_backward_cuda);
}

}  // namespace vos_kernels
