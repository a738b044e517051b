// CPU kernels of soft aggregation (RGMP Eq. 1).
//
// Per pixel, with objects o = 1..O and x_0 = bg = prod_o (1 - p_o), x_o = p_o:
//   q_c = clamp(x_c, eps, 1 - eps),  r_c = q_c / (1 - q_c),  R = sum_c r_c,  out_c = r_c / R
// which equals softmax(log(q / (1 - q))) without a log or an exp.
//
// Backward, with g = grad_out and m_c = [eps <= x_c <= 1 - eps] (torch.clamp's gradient mask):
//   dot = sum_c g_c out_c
//   gq_c = m_c (g_c - dot) / R * (1 + r_c)^2          since dr/dq = 1/(1-q)^2 = (1+r)^2
//   grad p_o = gq_o - gq_0 * prod_{o' != o} (1 - p_o')  (prefix x suffix products: exact at p = 1)
// (g_c - dot) is not formed as written: when one channel d dominates (out_d ~ 1, r_d up to 1e7)
// the float rounding of dot ~ g_d is multiplied by (1 + r_d)^2 / R ~ r_d and swamps the true
// value. With d = argmax_c r_c and D = sum_c out_c (g_c - g_d) = dot - g_d (a sum of small terms
// for the dominant channel), g_c - dot = (g_c - g_d) - D without cancellation.
//
// Memory-bound: work in chunks of pixels so that each plane's chunk is read from DRAM once and
// the per-chunk scratch (ratios, products) stays in L1/L2.
//
// Compiled once per instruction set into namespace VOS_CPU_ISA (soft_aggregate_kernel.cpp,
// cpu_isa_variants.h): no include guard, every header included at the top.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "soft_aggregate.h"
#include "aggregate_common.h"

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace {

using aggregate_cpu::clamp_eps;
using aggregate_cpu::kChunk;

template <typename scalar_t>
void forward_impl(const scalar_t* __restrict__ prob, scalar_t* __restrict__ out, int64_t B, int64_t O,
                  int64_t S, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lo = static_cast<acc_t>(eps), hi = static_cast<acc_t>(1.0 - eps);
  const int64_t chunks_per_item = (S + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks_per_item, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ratio((O + 1) * kChunk);  // r_c for the chunk, c = 0..O
    acc_t inv_sum[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks_per_item;
      const int64_t s0 = (task % chunks_per_item) * kChunk;
      const int64_t n = std::min(kChunk, S - s0);
      const scalar_t* p = prob + b * O * S + s0;
      scalar_t* y = out + b * (O + 1) * S + s0;
      acc_t* r_bg = ratio.data();
      for (int64_t i = 0; i < n; ++i) r_bg[i] = acc_t(1);
      for (int64_t o = 0; o < O; ++o) {
        const scalar_t* po = p + o * S;
        acc_t* ro = ratio.data() + (o + 1) * kChunk;
        for (int64_t i = 0; i < n; ++i) {
          const acc_t x = static_cast<acc_t>(po[i]);
          r_bg[i] *= acc_t(1) - x;
          const acc_t q = clamp_eps(x, lo, hi);
          ro[i] = q / (acc_t(1) - q);
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const acc_t q = clamp_eps(r_bg[i], lo, hi);
        r_bg[i] = q / (acc_t(1) - q);
      }
      aggregate_cpu::write_normalised_odds(ratio.data(), O, n, inv_sum, y, S);
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ prob,
                   scalar_t* __restrict__ grad_prob, int64_t B, int64_t O, int64_t S, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t lo = static_cast<acc_t>(eps), hi = static_cast<acc_t>(1.0 - eps);
  const int64_t chunks_per_item = (S + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks_per_item, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ratio((O + 1) * kChunk);   // r_c, later gq_c
    std::vector<acc_t> suffix(O * kChunk);        // prod_{o' > o} (1 - p_o')
    acc_t bg[kChunk], inv_sum[kChunk], shift[kChunk], r_max[kChunk], g_max[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks_per_item;
      const int64_t s0 = (task % chunks_per_item) * kChunk;
      const int64_t n = std::min(kChunk, S - s0);
      const scalar_t* p = prob + b * O * S + s0;
      const scalar_t* g = grad_out + b * (O + 1) * S + s0;
      scalar_t* gp = grad_prob + b * O * S + s0;
      // Suffix products, walking objects backwards; bg ends up as the full product.
      for (int64_t i = 0; i < n; ++i) bg[i] = acc_t(1);
      for (int64_t o = O - 1; o >= 0; --o) {
        const scalar_t* po = p + o * S;
        acc_t* so = suffix.data() + o * kChunk;
        for (int64_t i = 0; i < n; ++i) {
          so[i] = bg[i];
          bg[i] *= acc_t(1) - static_cast<acc_t>(po[i]);
        }
      }
      // Ratios r_c, their sum R, and the dominant channel's ratio and upstream gradient g_d.
      for (int64_t i = 0; i < n; ++i) {
        const acc_t q = clamp_eps(bg[i], lo, hi);
        const acc_t r = q / (acc_t(1) - q);
        ratio[i] = r;
        inv_sum[i] = r;
        r_max[i] = r;
        g_max[i] = static_cast<acc_t>(g[i]);
      }
      for (int64_t o = 0; o < O; ++o) {
        const scalar_t* po = p + o * S;
        const scalar_t* gc = g + (o + 1) * S;
        acc_t* rc = ratio.data() + (o + 1) * kChunk;
        for (int64_t i = 0; i < n; ++i) {
          const acc_t q = clamp_eps(static_cast<acc_t>(po[i]), lo, hi);
          const acc_t r = q / (acc_t(1) - q);
          rc[i] = r;
          inv_sum[i] += r;
          const bool larger = r > r_max[i];
          r_max[i] = larger ? r : r_max[i];
          g_max[i] = larger ? static_cast<acc_t>(gc[i]) : g_max[i];
        }
      }
      // D = sum_c out_c (g_c - g_d).
      for (int64_t i = 0; i < n; ++i) {
        inv_sum[i] = acc_t(1) / inv_sum[i];
        shift[i] = acc_t(0);
      }
      for (int64_t c = 0; c <= O; ++c) {
        const scalar_t* gc = g + c * S;
        const acc_t* rc = ratio.data() + c * kChunk;
        for (int64_t i = 0; i < n; ++i) shift[i] += rc[i] * (static_cast<acc_t>(gc[i]) - g_max[i]);
      }
      for (int64_t i = 0; i < n; ++i) shift[i] *= inv_sum[i];
      // gq_c, in place of r_c.
      for (int64_t c = 0; c <= O; ++c) {
        const scalar_t* gc = g + c * S;
        acc_t* rc = ratio.data() + c * kChunk;
        for (int64_t i = 0; i < n; ++i) {
          const acc_t x = c == 0 ? bg[i] : static_cast<acc_t>(p[(c - 1) * S + i]);
          const acc_t one_plus_r = acc_t(1) + rc[i];
          const bool inside = x >= lo && x <= hi;
          const acc_t centred = (static_cast<acc_t>(gc[i]) - g_max[i]) - shift[i];  // g_c - dot
          rc[i] = inside ? centred * inv_sum[i] * one_plus_r * one_plus_r : acc_t(0);
        }
      }
      // grad p_o = gq_o - gq_0 * prefix_o * suffix_o; bg is reused as the running prefix.
      const acc_t* gq_bg = ratio.data();
      for (int64_t i = 0; i < n; ++i) bg[i] = acc_t(1);
      for (int64_t o = 0; o < O; ++o) {
        const scalar_t* po = p + o * S;
        const acc_t* gq = ratio.data() + (o + 1) * kChunk;
        const acc_t* so = suffix.data() + o * kChunk;
        scalar_t* go = gp + o * S;
        for (int64_t i = 0; i < n; ++i) {
          go[i] = static_cast<scalar_t>(gq[i] - gq_bg[i] * bg[i] * so[i]);
          bg[i] *= acc_t(1) - static_cast<acc_t>(po[i]);
        }
      }
    }
  });
}

at::Tensor soft_aggregate_forward_cpu(const at::Tensor& prob_in, double eps) {
  check_soft_aggregate_forward_args(prob_in);
  const at::Tensor prob = prob_in.contiguous();
  const int64_t B = prob.size(0), O = prob.size(1), S = prob.size(2);
  at::Tensor out = at::empty({B, O + 1, S}, prob.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "soft_aggregate_forward_cpu", [&] {
    forward_impl<scalar_t>(prob.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B, O, S, eps);
  });
  return out;
}

at::Tensor soft_aggregate_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& prob_in, double eps) {
  check_soft_aggregate_backward_args(grad_out_in, prob_in);
  const int64_t B = prob_in.size(0), O = prob_in.size(1), S = prob_in.size(2);
  const at::Tensor prob = prob_in.contiguous();
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_prob = at::empty({B, O, S}, prob.options());
  if (grad_prob.numel() == 0) return grad_prob;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, prob.scalar_type(), "soft_aggregate_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_out.const_data_ptr<scalar_t>(), prob.const_data_ptr<scalar_t>(),
                            grad_prob.mutable_data_ptr<scalar_t>(), B, O, S, eps);
  });
  return grad_prob;
}

}  // namespace
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
