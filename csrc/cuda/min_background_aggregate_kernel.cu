// CUDA kernels of min-background aggregation (math: csrc/cpu/min_background_aggregate_kernel.cpp).
//
// One thread per pixel; the object loops read each plane coalesced (pixels are contiguous) and
// re-read q instead of keeping O odds in registers (L2 hits at these sizes), so any O works.
// Everything is computed in float32 (float64 for double). No scratch memory: the backward
// recomputes the odds in its last loop.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "min_background_aggregate.h"

namespace vos_kernels {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t clamp_eps(acc_t x, acc_t lo, acc_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

template <typename acc_t>
__device__ __forceinline__ acc_t inside(acc_t x, acc_t lo, acc_t hi) {
  return (x >= lo && x <= hi) ? acc_t(1) : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    min_background_aggregate_forward_kernel(const scalar_t* __restrict__ q, scalar_t* __restrict__ out, int64_t O,
                                            int64_t S, acc_t lo, acc_t hi) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  const int64_t b = blockIdx.y;
  const scalar_t* qb = q + b * O * 2 * S + s;  // a_k at qb[2k S], f_k at qb[(2k+1) S]
  scalar_t* y = out + b * (O + 1) * S + s;
  acc_t minimum = static_cast<acc_t>(qb[0]);
  for (int64_t k = 1; k < O; ++k) {
    const acc_t x = static_cast<acc_t>(qb[2 * k * S]);
    minimum = x < minimum ? x : minimum;
  }
  const acc_t odds_bg = clamp_eps(minimum, lo, hi) / clamp_eps(acc_t(1) - minimum, lo, hi);
  acc_t total = odds_bg;
  for (int64_t k = 0; k < O; ++k) {
    total += clamp_eps(static_cast<acc_t>(qb[(2 * k + 1) * S]), lo, hi) /
             clamp_eps(static_cast<acc_t>(qb[2 * k * S]), lo, hi);
  }
  const acc_t inv = acc_t(1) / total;
  y[0] = static_cast<scalar_t>(odds_bg * inv);
  for (int64_t k = 0; k < O; ++k) {
    const acc_t odds = clamp_eps(static_cast<acc_t>(qb[(2 * k + 1) * S]), lo, hi) /
                       clamp_eps(static_cast<acc_t>(qb[2 * k * S]), lo, hi);
    y[(k + 1) * S] = static_cast<scalar_t>(odds * inv);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    min_background_aggregate_backward_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ q,
                                             scalar_t* __restrict__ grad_q, int64_t O, int64_t S, acc_t lo, acc_t hi) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  const int64_t b = blockIdx.y;
  const scalar_t* qb = q + b * O * 2 * S + s;
  const scalar_t* g = grad_out + b * (O + 1) * S + s;
  scalar_t* gq = grad_q + b * O * 2 * S + s;
  // The minimum and its first index (torch.min's choice on ties).
  acc_t minimum = static_cast<acc_t>(qb[0]);
  int64_t argmin = 0;
  for (int64_t k = 1; k < O; ++k) {
    const acc_t x = static_cast<acc_t>(qb[2 * k * S]);
    if (x < minimum) {
      minimum = x;
      argmin = k;
    }
  }
  const acc_t one_minus = acc_t(1) - minimum;
  const acc_t c_one_minus = clamp_eps(one_minus, lo, hi);
  const acc_t odds_bg = clamp_eps(minimum, lo, hi) / c_one_minus;
  const acc_t g_bg = static_cast<acc_t>(g[0]);
  // Sum of odds and the dominant channel d: g_j - dot is formed as (g_j - g_d) - D with
  // D = sum_j out_j (g_j - g_d), without cancellation when out_d ~ 1 (see the CPU kernel).
  acc_t total = odds_bg, odds_max = odds_bg, g_max = g_bg;
  for (int64_t k = 0; k < O; ++k) {
    const acc_t odds = clamp_eps(static_cast<acc_t>(qb[(2 * k + 1) * S]), lo, hi) /
                       clamp_eps(static_cast<acc_t>(qb[2 * k * S]), lo, hi);
    total += odds;
    if (odds > odds_max) {
      odds_max = odds;
      g_max = static_cast<acc_t>(g[(k + 1) * S]);
    }
  }
  const acc_t inv = acc_t(1) / total;
  acc_t shift = odds_bg * (g_bg - g_max);
  for (int64_t k = 0; k < O; ++k) {
    const acc_t odds = clamp_eps(static_cast<acc_t>(qb[(2 * k + 1) * S]), lo, hi) /
                       clamp_eps(static_cast<acc_t>(qb[2 * k * S]), lo, hi);
    shift += odds * (static_cast<acc_t>(g[(k + 1) * S]) - g_max);
  }
  shift *= inv;
  const acc_t t_bg = ((g_bg - g_max) - shift) * inv;
  const acc_t grad_min = t_bg * (inside(minimum, lo, hi) + inside(one_minus, lo, hi) * odds_bg) / c_one_minus;
  for (int64_t k = 0; k < O; ++k) {
    const acc_t x_a = static_cast<acc_t>(qb[2 * k * S]), x_f = static_cast<acc_t>(qb[(2 * k + 1) * S]);
    const acc_t c_a = clamp_eps(x_a, lo, hi);
    const acc_t odds = clamp_eps(x_f, lo, hi) / c_a;
    const acc_t t_over_ca = ((static_cast<acc_t>(g[(k + 1) * S]) - g_max) - shift) * inv / c_a;
    const acc_t from_min = k == argmin ? grad_min : acc_t(0);
    gq[2 * k * S] = static_cast<scalar_t>(from_min - inside(x_a, lo, hi) * t_over_ca * odds);
    gq[(2 * k + 1) * S] = static_cast<scalar_t>(inside(x_f, lo, hi) * t_over_ca);
  }
}

dim3 grid_for(int64_t B, int64_t S) {
  TORCH_CHECK(B <= 65535, "min_background_aggregate (cuda): batch size must be at most 65535, got ", B);
  return dim3(static_cast<unsigned>((S + kThreads - 1) / kThreads), static_cast<unsigned>(B));
}

at::Tensor min_background_aggregate_forward_cuda(const at::Tensor& q_in, double eps) {
  check_min_background_aggregate_forward_args(q_in);
  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous();
  const int64_t B = q.size(0), O = q.size(1), S = q.size(3);
  at::Tensor out = at::empty({B, O + 1, S}, q.options());
  if (out.numel() == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "min_background_aggregate_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        min_background_aggregate_forward_kernel<scalar_t, acc_t><<<grid_for(B, S), kThreads, 0, stream>>>(
            q.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), O, S, static_cast<acc_t>(eps),
            static_cast<acc_t>(1.0 - eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

at::Tensor min_background_aggregate_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& q_in, double eps) {
  check_min_background_aggregate_backward_args(grad_out_in, q_in);
  const int64_t B = q_in.size(0), O = q_in.size(1), S = q_in.size(3);
  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_q = at::empty({B, O, 2, S}, q.options());
  if (grad_q.numel() == 0) return grad_q;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "min_background_aggregate_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        min_background_aggregate_backward_kernel<scalar_t, acc_t><<<grid_for(B, S), kThreads, 0, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), grad_q.mutable_data_ptr<scalar_t>(),
            O, S, static_cast<acc_t>(eps), static_cast<acc_t>(1.0 - eps));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_q;
}

}  // namespace

TORCH_LIBRARY_IMPL(vos_kernels, CUDA, m) {
  m.impl("min_background_aggregate_forward", &min_background_aggregate_forward_cuda);
  m.impl("min_background_aggregate_backward", &min_background_aggregate_backward_cuda);
}

}  // namespace vos_kernels
