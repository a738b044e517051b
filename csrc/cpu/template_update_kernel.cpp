// CPU kernels of the TTVOS template update (math: ../template_update.cpp).
//
// Forward. The cost is the P-long product key @ value^T (2 B Nt Ct P FLOPs); everything else
// touches only B Nt Ct numbers. So the product goes to MKL (at::bmm_out, the value^T operand a
// transposed view, no copy) and writes straight into the buffer that will hold I (the output
// itself when there is no template); one parallel pass over the B*Nt rows then turns each row
// of scores into I in place (scale, max, exp, normalise) and blends it into the output while
// the row is in L1. No scores tensor is allocated and the scores are read back once, from cache.
//
// Backward. One parallel pass over the rows computes the softmax backward (grad_scores), the
// template gradient and per-row partial sums of the weight gradient (summed per batch item in a
// fixed order afterwards: deterministic); the two GEMMs are at::bmm in template_update.cpp.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "template_update.h"

namespace vos_kernels {
namespace {

using template_update::compute_type;

// Rows per parallel task: enough work per task to amortise scheduling (a row is Ct numbers).
int64_t rows_per_task(int64_t Ct) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(Ct, 1)); }

// scores (B*Nt, Ct) in acc_t, turned into I in place; I is also written to `incoming` (scalar_t)
// when that is a different buffer, and out = template * c + I * w * c when a template is given.
template <typename scalar_t, typename acc_t>
void forward_epilogue(acc_t* scores, scalar_t* incoming, scalar_t* out, const scalar_t* template_,
                      const std::vector<acc_t>& weight, int64_t B, int64_t Nt, int64_t Ct, acc_t scale) {
  const bool has_template = template_ != nullptr;
  at::parallel_for(0, B * Nt, rows_per_task(Ct), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      acc_t* s = scores + row * Ct;
      acc_t max = -std::numeric_limits<acc_t>::infinity();
      for (int64_t j = 0; j < Ct; ++j) max = std::max(max, s[j]);
      acc_t sum = 0;
      for (int64_t j = 0; j < Ct; ++j) {
        // scale > 0, so max(s * scale) = max(s) * scale.
        const acc_t e = std::exp((s[j] - max) * scale);
        s[j] = e;
        sum += e;
      }
      const acc_t inv = acc_t(1) / sum;
      if (has_template) {
        const acc_t w = weight[row / Nt];
        const acc_t c = acc_t(1) / (acc_t(1) + w), a = w * c;
        const scalar_t* t = template_ + row * Ct;
        scalar_t* y = out + row * Ct;
        scalar_t* inc = incoming + row * Ct;
        for (int64_t j = 0; j < Ct; ++j) {
          const acc_t i = s[j] * inv;
          inc[j] = static_cast<scalar_t>(i);
          y[j] = static_cast<scalar_t>(static_cast<acc_t>(t[j]) * c + i * a);
        }
      } else {
        scalar_t* y = out + row * Ct;
        for (int64_t j = 0; j < Ct; ++j) y[j] = static_cast<scalar_t>(s[j] * inv);
      }
    }
  });
}

std::vector<double> weights_as_double(const std::optional<at::Tensor>& weight) {
  if (!weight.has_value()) return {};
  const at::Tensor w = weight->to(at::kDouble).contiguous();
  return std::vector<double>(w.const_data_ptr<double>(), w.const_data_ptr<double>() + w.numel());
}

std::tuple<at::Tensor, at::Tensor> template_update_forward_cpu(const at::Tensor& key, const at::Tensor& value,
                                                               const std::optional<at::Tensor>& template_opt,
                                                               const std::optional<at::Tensor>& weight_opt,
                                                               double scale) {
  constexpr const char* op = "template_update_forward";
  const auto [B, Nt, Ct, P] = template_update::check_forward_args(op, key, value, template_opt, weight_opt);
  TORCH_CHECK(scale > 0, op, ": scale must be > 0, got ", scale);
  const bool has_template = template_opt.has_value();
  const auto dtype = key.scalar_type(), ctype = compute_type(dtype);
  at::Tensor out = at::empty({B, Nt, Ct}, key.options());
  at::Tensor incoming = has_template ? at::empty({B, Nt, Ct}, key.options()) : at::empty({0}, key.options());
  if (out.numel() == 0) return {out, incoming};
  // The GEMM's destination: I's own buffer, unless it must be wider than the input dtype.
  at::Tensor scores = ctype != dtype ? at::empty({B, Nt, Ct}, key.options().dtype(ctype))
                                     : (has_template ? incoming : out);
  at::bmm_out(scores, key.to(ctype), value.to(ctype).transpose(1, 2));
  const at::Tensor tmpl = has_template ? template_opt->contiguous() : at::Tensor();
  const std::vector<double> w64 = weights_as_double(weight_opt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "template_update_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<acc_t> w(w64.begin(), w64.end());
    forward_epilogue<scalar_t, acc_t>(scores.mutable_data_ptr<acc_t>(),
                                      has_template ? incoming.mutable_data_ptr<scalar_t>() : nullptr,
                                      out.mutable_data_ptr<scalar_t>(),
                                      has_template ? tmpl.const_data_ptr<scalar_t>() : nullptr, w, B, Nt, Ct,
                                      static_cast<acc_t>(scale));
  });
  return {out, incoming};
}

template <typename scalar_t, typename acc_t>
void backward_scores_impl(const scalar_t* grad_out, const scalar_t* incoming, const scalar_t* template_,
                          const std::vector<acc_t>& weight, acc_t* grad_scores, scalar_t* grad_template,
                          acc_t* weight_partial, int64_t B, int64_t Nt, int64_t Ct, acc_t scale) {
  const bool has_template = template_ != nullptr;
  at::parallel_for(0, B * Nt, rows_per_task(Ct), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* g = grad_out + row * Ct;
      const scalar_t* inc = incoming + row * Ct;
      acc_t a = 1, c = 1;
      if (has_template) {
        const acc_t w = weight[row / Nt];
        c = acc_t(1) / (acc_t(1) + w);
        a = w * c;
      }
      acc_t dot = 0;
      for (int64_t j = 0; j < Ct; ++j) dot += static_cast<acc_t>(g[j]) * static_cast<acc_t>(inc[j]);
      acc_t* ds = grad_scores + row * Ct;
      const acc_t factor = a * scale;
      for (int64_t j = 0; j < Ct; ++j) {
        const acc_t i = static_cast<acc_t>(inc[j]);
        ds[j] = factor * i * (static_cast<acc_t>(g[j]) - dot);
      }
      if (has_template) {
        const scalar_t* t = template_ + row * Ct;
        scalar_t* dt = grad_template + row * Ct;
        acc_t partial = 0;
        for (int64_t j = 0; j < Ct; ++j) {
          const acc_t gj = static_cast<acc_t>(g[j]);
          dt[j] = static_cast<scalar_t>(gj * c);
          partial += gj * (static_cast<acc_t>(inc[j]) - static_cast<acc_t>(t[j]));
        }
        weight_partial[row] = partial * c * c;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> template_update_backward_scores_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& incoming_in, const std::optional<at::Tensor>& template_opt,
    const std::optional<at::Tensor>& weight_opt, double scale) {
  constexpr const char* op = "template_update_backward_scores";
  const auto [B, Nt, Ct, P] = template_update::check_scores_args(op, grad_out_in, incoming_in, template_opt, weight_opt);
  (void)P;
  const bool has_template = template_opt.has_value();
  const auto dtype = incoming_in.scalar_type(), ctype = compute_type(dtype);
  const at::Tensor grad_out = grad_out_in.contiguous(), incoming = incoming_in.contiguous();
  at::Tensor grad_scores = at::empty({B, Nt, Ct}, incoming.options().dtype(ctype));
  at::Tensor grad_template = at::empty({has_template ? B : 0, Nt, Ct}, incoming.options());
  at::Tensor weight_partial = at::empty({has_template ? B * Nt : 0}, incoming.options().dtype(ctype));
  if (!has_template) grad_template = grad_template.view({0});
  if (grad_scores.numel() > 0) {
    const at::Tensor tmpl = has_template ? template_opt->contiguous() : at::Tensor();
    const std::vector<double> w64 = weights_as_double(weight_opt);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "template_update_backward_scores_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const std::vector<acc_t> w(w64.begin(), w64.end());
      backward_scores_impl<scalar_t, acc_t>(
          grad_out.const_data_ptr<scalar_t>(), incoming.const_data_ptr<scalar_t>(),
          has_template ? tmpl.const_data_ptr<scalar_t>() : nullptr, w, grad_scores.mutable_data_ptr<acc_t>(),
          has_template ? grad_template.mutable_data_ptr<scalar_t>() : nullptr,
          has_template ? weight_partial.mutable_data_ptr<acc_t>() : nullptr, B, Nt, Ct, static_cast<acc_t>(scale));
    });
  }
  at::Tensor grad_weight = has_template ? weight_partial.view({B, Nt}).sum(1).to(dtype)
                                        : at::empty({0}, incoming.options());
  return {grad_scores, grad_template, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(vos_kernels, CPU, m) {
  m.impl("template_update_forward", &template_update_forward_cpu);
  m.impl("template_update_backward_scores", &template_update_backward_scores_cpu);
}

}  // namespace vos_kernels
