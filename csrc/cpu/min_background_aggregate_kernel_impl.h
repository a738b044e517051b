// CPU kernels of min-background aggregation (the public agame-vos ``softmax_aggregate`` rule).
//
// Per pixel, with objects k = 1..O, a_k = q[k, 0] ("not object k"), f_k = q[k, 1] ("object k")
// and c(x) = clamp(x, eps, 1 - eps):
//   b = min_k a_k,  odds_0 = c(b) / c(1 - b),  odds_k = c(f_k) / c(a_k),
//   R = odds_0 + odds_1 + ... + odds_O (in that order),  out_j = odds_j / R.
//
// Backward, with g = grad_out, dot = sum_j g_j out_j and t_j = (g_j - dot) / R = dL/d odds_j,
// and m(x) = [eps <= x <= 1 - eps] (torch.clamp's gradient mask):
//   d f_k = m(f_k) t_k / c(a_k)
//   d a_k = -m(a_k) t_k odds_k / c(a_k)  +  [k == argmin] t_0 (m(b) + m(1 - b) odds_0) / c(1 - b)
// The min's gradient goes to its first minimal index, as torch.min(dim)'s does. (g_j - dot) is
// formed around the dominant channel d = argmax_j odds_j as (g_j - g_d) - sum_i out_i (g_i - g_d):
// odds reach 1e7, and the rounding of a plain dot ~ g_d would be multiplied by that (see
// soft_aggregate_kernel_impl.h).
//
// Memory-bound: work in chunks of pixels so that each plane's chunk is read from DRAM once and
// the per-chunk scratch (odds, minima) stays in L1/L2; the inner loops are plain unit-stride
// float loops that the compiler vectorises (-O3 -march=native).
//
// Compiled once per instruction set into namespace VOS_CPU_ISA (min_background_aggregate_kernel.cpp,
// cpu_isa_variants.h): no include guard, every header included at the top.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "min_background_aggregate.h"
#include "aggregate_common.h"

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace {

using aggregate_cpu::clamp_eps;
using aggregate_cpu::kChunk;

template <typename acc_t>
inline acc_t inside(acc_t x, acc_t lo, acc_t hi) {
  return ((x >= lo) & (x <= hi)) ? acc_t(1) : acc_t(0);  // & : no branch, vectorises
}

// Software prefetch of the next chunk of `planes` planes (stride S) starting at `first`: with
// 2 O input planes (plus O + 1 gradient planes in the backward) the hardware prefetchers fall
// behind (perf, forward at O = 5: ~75% of the time stalled on the first load of each plane chunk).
template <typename scalar_t>
inline void prefetch_next_chunk(const scalar_t* first, int64_t planes, int64_t S, int64_t s0) {
  const int64_t next = s0 + kChunk;
  if (next >= S) return;
  const int64_t bytes = std::min(kChunk, S - next) * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t c = 0; c < planes; ++c) {
    const char* p = reinterpret_cast<const char*>(first + c * S + next);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 3);
  }
}

template <typename scalar_t>
void forward_impl(const scalar_t* __restrict__ q, scalar_t* __restrict__ out, int64_t B, int64_t O, int64_t S,
                  double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lo = static_cast<acc_t>(eps), hi = static_cast<acc_t>(1.0 - eps);
  const int64_t chunks_per_item = (S + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks_per_item, 1, [&, lo, hi](int64_t begin, int64_t end) {
    std::vector<acc_t> odds((O + 1) * kChunk);  // odds_j for the chunk, j = 0..O
    acc_t inv_sum[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks_per_item;
      const int64_t s0 = (task % chunks_per_item) * kChunk;
      const int64_t n = std::min(kChunk, S - s0);
      const scalar_t* qb = q + b * O * 2 * S + s0;  // a_k at qb + 2k S, f_k at qb + (2k+1) S
      scalar_t* y = out + b * (O + 1) * S + s0;
      prefetch_next_chunk(q + b * O * 2 * S, 2 * O, S, s0);
      acc_t* odds_bg = odds.data();
      // One pass over the 2 O input planes (each read once): odds_k into the scratch, and the
      // running min_k a_k, kept in odds_bg until it becomes odds_0.
      for (int64_t i = 0; i < n; ++i) odds_bg[i] = std::numeric_limits<acc_t>::infinity();
      for (int64_t k = 0; k < O; ++k) {
        const scalar_t* a = qb + 2 * k * S;
        const scalar_t* f = a + S;
        acc_t* ok = odds.data() + (k + 1) * kChunk;
        for (int64_t i = 0; i < n; ++i) {
          const acc_t x_a = static_cast<acc_t>(a[i]);
          ok[i] = clamp_eps(static_cast<acc_t>(f[i]), lo, hi) / clamp_eps(x_a, lo, hi);
          odds_bg[i] = std::min(odds_bg[i], x_a);
        }
      }
      // odds_0, then the sum in the order bg, 1..O (as the public code), from the scratch.
      for (int64_t i = 0; i < n; ++i) {
        const acc_t m = odds_bg[i];
        odds_bg[i] = clamp_eps(m, lo, hi) / clamp_eps(acc_t(1) - m, lo, hi);
      }
      aggregate_cpu::write_normalised_odds(odds.data(), O, n, inv_sum, y, S);
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ q,
                   scalar_t* __restrict__ grad_q, int64_t B, int64_t O, int64_t S, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lo = static_cast<acc_t>(eps), hi = static_cast<acc_t>(1.0 - eps);
  const int64_t chunks_per_item = (S + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks_per_item, 1, [&, lo, hi](int64_t begin, int64_t end) {
    std::vector<acc_t> odds((O + 1) * kChunk);
    acc_t minimum[kChunk], grad_min[kChunk], inv_sum[kChunk], shift[kChunk], odds_max[kChunk], g_max[kChunk];
    acc_t argmin[kChunk];  // the index as acc_t: all-float loops vectorise
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks_per_item;
      const int64_t s0 = (task % chunks_per_item) * kChunk;
      const int64_t n = std::min(kChunk, S - s0);
      const scalar_t* qb = q + b * O * 2 * S + s0;
      const scalar_t* g = grad_out + b * (O + 1) * S + s0;
      scalar_t* gq = grad_q + b * O * 2 * S + s0;
      prefetch_next_chunk(q + b * O * 2 * S, 2 * O, S, s0);
      prefetch_next_chunk(grad_out + b * (O + 1) * S, O + 1, S, s0);
      // The minimum and its first index (torch.min's choice on ties).
      for (int64_t i = 0; i < n; ++i) {
        minimum[i] = static_cast<acc_t>(qb[i]);
        argmin[i] = acc_t(0);
      }
      for (int64_t k = 1; k < O; ++k) {
        const scalar_t* a = qb + 2 * k * S;
        const acc_t index = static_cast<acc_t>(k);
        for (int64_t i = 0; i < n; ++i) {  // arithmetic, not a branch: random data mispredicts
          const acc_t x = static_cast<acc_t>(a[i]), m = minimum[i];
          const acc_t smaller = static_cast<acc_t>(x < m);
          minimum[i] = std::min(m, x);  // x if x < m: the first minimal index wins ties
          argmin[i] += smaller * (index - argmin[i]);
        }
      }
      // odds_0, d odds_0 / d b (kept in grad_min until multiplied by t_0), the sum R and the
      // dominant channel's odds and upstream gradient.
      for (int64_t i = 0; i < n; ++i) {
        const acc_t m = minimum[i], one_minus = acc_t(1) - m;
        const acc_t c_one_minus = clamp_eps(one_minus, lo, hi);
        const acc_t o = clamp_eps(m, lo, hi) / c_one_minus;
        odds[i] = o;
        grad_min[i] = (inside(m, lo, hi) + inside(one_minus, lo, hi) * o) / c_one_minus;
        inv_sum[i] = o;
        odds_max[i] = o;
        g_max[i] = static_cast<acc_t>(g[i]);
      }
      for (int64_t k = 0; k < O; ++k) {
        const scalar_t* a = qb + 2 * k * S;
        const scalar_t* f = a + S;
        const scalar_t* gk = g + (k + 1) * S;
        acc_t* ok = odds.data() + (k + 1) * kChunk;
        for (int64_t i = 0; i < n; ++i) {
          const acc_t o = clamp_eps(static_cast<acc_t>(f[i]), lo, hi) / clamp_eps(static_cast<acc_t>(a[i]), lo, hi);
          ok[i] = o;
          inv_sum[i] += o;
          const bool larger = o > odds_max[i];
          odds_max[i] = larger ? o : odds_max[i];
          g_max[i] = larger ? static_cast<acc_t>(gk[i]) : g_max[i];
        }
      }
      // D = sum_j out_j (g_j - g_d), so that g_j - dot = (g_j - g_d) - D.
      for (int64_t i = 0; i < n; ++i) {
        inv_sum[i] = acc_t(1) / inv_sum[i];
        shift[i] = acc_t(0);
      }
      for (int64_t j = 0; j <= O; ++j) {
        const scalar_t* gj = g + j * S;
        const acc_t* oj = odds.data() + j * kChunk;
        for (int64_t i = 0; i < n; ++i) shift[i] += oj[i] * (static_cast<acc_t>(gj[i]) - g_max[i]);
      }
      for (int64_t i = 0; i < n; ++i) {
        shift[i] *= inv_sum[i];
        const acc_t t0 = ((static_cast<acc_t>(g[i]) - g_max[i]) - shift[i]) * inv_sum[i];
        grad_min[i] *= t0;
      }
      for (int64_t k = 0; k < O; ++k) {
        const scalar_t* a = qb + 2 * k * S;
        const scalar_t* f = a + S;
        const scalar_t* gk = g + (k + 1) * S;
        const acc_t* ok = odds.data() + (k + 1) * kChunk;
        scalar_t* ga = gq + 2 * k * S;
        scalar_t* gf = ga + S;
        const acc_t index = static_cast<acc_t>(k);
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const acc_t x_a = static_cast<acc_t>(a[i]), x_f = static_cast<acc_t>(f[i]);
          const acc_t t = ((static_cast<acc_t>(gk[i]) - g_max[i]) - shift[i]) * inv_sum[i];
          const acc_t t_over_ca = t / clamp_eps(x_a, lo, hi);
          const acc_t from_min = argmin[i] == index ? grad_min[i] : acc_t(0);
          ga[i] = static_cast<scalar_t>(from_min - inside(x_a, lo, hi) * t_over_ca * ok[i]);
          gf[i] = static_cast<scalar_t>(inside(x_f, lo, hi) * t_over_ca);
        }
      }
    }
  });
}

at::Tensor min_background_aggregate_forward_cpu(const at::Tensor& q_in, double eps) {
  check_min_background_aggregate_forward_args(q_in);
  const at::Tensor q = q_in.contiguous();
  const int64_t B = q.size(0), O = q.size(1), S = q.size(3);
  at::Tensor out = at::empty({B, O + 1, S}, q.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "min_background_aggregate_forward_cpu",
                                  [&] {
                                    forward_impl<scalar_t>(q.const_data_ptr<scalar_t>(),
                                                           out.mutable_data_ptr<scalar_t>(), B, O, S, eps);
                                  });
  return out;
}

at::Tensor min_background_aggregate_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& q_in, double eps) {
  check_min_background_aggregate_backward_args(grad_out_in, q_in);
  const int64_t B = q_in.size(0), O = q_in.size(1), S = q_in.size(3);
  const at::Tensor q = q_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_q = at::empty({B, O, 2, S}, q.options());
  if (grad_q.numel() == 0) return grad_q;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "min_background_aggregate_backward_cpu",
                                  [&] {
                                    backward_impl<scalar_t>(grad_out.const_data_ptr<scalar_t>(),
                                                            q.const_data_ptr<scalar_t>(),
                                                            grad_q.mutable_data_ptr<scalar_t>(), B, O, S, eps);
                                  });
  return grad_q;
}

}  // namespace
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
