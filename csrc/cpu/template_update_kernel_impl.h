// CPU kernels of the TTVOS template update (math: ../template_update.cpp).
//
// Forward. The cost is the P-long product key @ value^T (2 B Nt Ct P FLOPs); everything else
// touches only B Nt Ct numbers. One parallel region does it all: each task owns a block of
// rows of one batch item, multiplies them with MKL (at::mm_out, single-threaded inside the
// region; value^T is a transposed view, no copy) straight into the buffer that will hold I
// (the output itself when there is no template), then turns those rows into I in place (scale,
// max, exp, normalise) and blends them into the output while they are in L1/L2. No scores
// tensor is allocated and there is a single fork/join (extra ones cost milliseconds on a busy
// machine). Tasks are sized so that their count is a multiple of the thread count. When that
// cannot fill the threads (few items, many threads) the product runs as one multithreaded
// at::bmm_out into the same buffer, followed by the row pass.
//
// Backward, with a = w c (1 without a template), c = 1 / (1 + w):
//   grad_scores = a * scale * I * (g - rowsum(g * I)),  grad_template = g c,
//   grad_weight = c^2 sum(g * (I - T)),  grad_key = grad_scores @ value,
//   grad_value = grad_scores^T @ key.
// Again one parallel region: task (b, h) owns row block h and column block h of item b; it
// computes the rows' dot products, its block of grad_scores rows (for grad_key) and of columns
// (for grad_value) into task-local scratch, and runs the two GEMMs on them. The weight
// gradient is summed per item from per-row partials in a fixed order (deterministic).
//
// Compiled once per instruction set into namespace VOS_CPU_ISA (template_update_kernel.cpp,
// cpu_isa_variants.h): no include guard, every header included at the top.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "template_update.h"

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace {

using template_update::compute_type;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows per task of the row-only passes: enough work per task to amortise scheduling.
int64_t rows_per_task(int64_t Ct) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(Ct, 1)); }

// Blocks per batch item so that B * blocks is a multiple of the thread count (balanced tasks),
// keeping blocks of at least 16 rows (smaller GEMMs lose MKL's efficiency).
int64_t blocks_per_item(int64_t B, int64_t extent, int64_t threads) {
  const int64_t wanted = threads / std::gcd(B, threads);
  return std::max<int64_t>(1, std::min(wanted, extent / 16));
}

std::vector<double> weights_as_double(const std::optional<at::Tensor>& weight) {
  if (!weight.has_value()) return {};
  const at::Tensor w = weight->to(at::kDouble).contiguous();
  return std::vector<double>(w.const_data_ptr<double>(), w.const_data_ptr<double>() + w.numel());
}

// Blend coefficients of batch item b: out = T c + I a.
template <typename acc_t>
inline void blend_coefficients(const std::vector<acc_t>& weight, int64_t b, acc_t& a, acc_t& c) {
  if (weight.empty()) {
    a = 1;
    c = 1;
    return;
  }
  c = acc_t(1) / (acc_t(1) + weight[b]);
  a = weight[b] * c;
}

// Turns rows [begin, end) of scores (acc_t, B*Nt x Ct) into I in place and writes the outputs.
template <typename scalar_t, typename acc_t>
struct ForwardRows {
  acc_t* scores;
  scalar_t* incoming;        // I in the input dtype, or nullptr (no template: out is I)
  scalar_t* out;
  const scalar_t* template_; // nullptr without a template
  std::vector<acc_t> weight; // empty without a template
  int64_t Nt, Ct;
  acc_t scale;

  void operator()(int64_t begin, int64_t end) const {
    for (int64_t row = begin; row < end; ++row) {
      acc_t* s = scores + row * Ct;
      acc_t max = -std::numeric_limits<acc_t>::infinity();
      for (int64_t j = 0; j < Ct; ++j) max = std::max(max, s[j]);
      acc_t sum = 0;
      for (int64_t j = 0; j < Ct; ++j) {
        const acc_t e = std::exp((s[j] - max) * scale);  // scale > 0: max(s * scale) = max(s) * scale
        s[j] = e;
        sum += e;
      }
      const acc_t inv = acc_t(1) / sum;
      scalar_t* y = out + row * Ct;
      if (template_ == nullptr) {
        for (int64_t j = 0; j < Ct; ++j) y[j] = static_cast<scalar_t>(s[j] * inv);
        continue;
      }
      acc_t a, c;
      blend_coefficients(weight, row / Nt, a, c);
      const scalar_t* t = template_ + row * Ct;
      scalar_t* inc = incoming + row * Ct;
      for (int64_t j = 0; j < Ct; ++j) {
        const acc_t i = s[j] * inv;
        inc[j] = static_cast<scalar_t>(i);
        y[j] = static_cast<scalar_t>(static_cast<acc_t>(t[j]) * c + i * a);
      }
    }
  }
};

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
  const at::Tensor key_c = key.to(ctype), value_t = value.to(ctype).transpose(1, 2);
  const at::Tensor tmpl = has_template ? template_opt->contiguous() : at::Tensor();
  const std::vector<double> w64 = weights_as_double(weight_opt);
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = blocks_per_item(B, Nt, threads), rows = ceil_div(Nt, blocks);
  const bool one_region = B * blocks >= threads;
  if (!one_region) at::bmm_out(scores, key_c, value_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "template_update_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ForwardRows<scalar_t, acc_t> finish{scores.mutable_data_ptr<acc_t>(),
                                              has_template ? incoming.mutable_data_ptr<scalar_t>() : nullptr,
                                              out.mutable_data_ptr<scalar_t>(),
                                              has_template ? tmpl.const_data_ptr<scalar_t>() : nullptr,
                                              std::vector<acc_t>(w64.begin(), w64.end()), Nt, Ct,
                                              static_cast<acc_t>(scale)};
    if (!one_region) {
      at::parallel_for(0, B * Nt, rows_per_task(Ct), finish);
      return;
    }
    // ATen calls on the worker threads must see the caller's dispatch state (autograd off).
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, r0 = (task % blocks) * rows, n = std::min(rows, Nt - r0);
        if (n <= 0) continue;
        at::Tensor dst = scores.select(0, b).narrow(0, r0, n);
        at::mm_out(dst, key_c.select(0, b).narrow(0, r0, n), value_t.select(0, b));
        finish(b * Nt + r0, b * Nt + r0 + n);
      }
    });
  });
  return {out, incoming};
}

// Row pieces of the backward; grad_out, incoming and template are contiguous (B*Nt, Ct).
template <typename scalar_t, typename acc_t>
struct BackwardRows {
  const scalar_t* grad_out;
  const scalar_t* incoming;
  const scalar_t* template_;  // nullptr without a template
  std::vector<acc_t> weight;  // empty without a template
  int64_t Nt, Ct;
  acc_t scale;

  acc_t dot(int64_t row) const {
    const scalar_t* g = grad_out + row * Ct;
    const scalar_t* i = incoming + row * Ct;
    acc_t d = 0;
    for (int64_t j = 0; j < Ct; ++j) d += static_cast<acc_t>(g[j]) * static_cast<acc_t>(i[j]);
    return d;
  }

  // grad_scores[row, j0:j1] into ds[0 : j1 - j0].
  void scores(int64_t row, acc_t dot_row, int64_t j0, int64_t j1, acc_t* ds) const {
    acc_t a, c;
    blend_coefficients(weight, row / Nt, a, c);
    const acc_t factor = a * scale;
    const scalar_t* g = grad_out + row * Ct;
    const scalar_t* i = incoming + row * Ct;
    for (int64_t j = j0; j < j1; ++j)
      ds[j - j0] = factor * static_cast<acc_t>(i[j]) * (static_cast<acc_t>(g[j]) - dot_row);
  }

  // grad_template[row] = g c; returns the row's share of grad_weight, c^2 sum(g (I - T)).
  acc_t template_and_weight(int64_t row, scalar_t* grad_template) const {
    acc_t a, c;
    blend_coefficients(weight, row / Nt, a, c);
    const scalar_t* g = grad_out + row * Ct;
    const scalar_t* i = incoming + row * Ct;
    const scalar_t* t = template_ + row * Ct;
    scalar_t* dt = grad_template + row * Ct;
    acc_t partial = 0;
    for (int64_t j = 0; j < Ct; ++j) {
      const acc_t gj = static_cast<acc_t>(g[j]);
      dt[j] = static_cast<scalar_t>(gj * c);
      partial += gj * (static_cast<acc_t>(i[j]) - static_cast<acc_t>(t[j]));
    }
    return partial * c * c;
  }
};

// Inputs of a backward pass made contiguous, with the outputs that do not depend on the GEMMs.
struct BackwardBuffers {
  at::Tensor grad_out, incoming, tmpl, grad_template, weight_partial;
  std::vector<double> w64;
  BackwardBuffers(const at::Tensor& grad_out_in, const at::Tensor& incoming_in,
                  const std::optional<at::Tensor>& template_opt, const std::optional<at::Tensor>& weight_opt)
      : grad_out(grad_out_in.contiguous()), incoming(incoming_in.contiguous()), w64(weights_as_double(weight_opt)) {
    const int64_t B = incoming.size(0), Nt = incoming.size(1);
    const auto ctype = compute_type(incoming.scalar_type());
    if (template_opt.has_value()) {
      tmpl = template_opt->contiguous();
      grad_template = at::empty(incoming.sizes(), incoming.options());
      weight_partial = at::empty({B, Nt}, incoming.options().dtype(ctype));
    } else {
      grad_template = at::empty({0}, incoming.options());
    }
  }
  bool has_template() const { return tmpl.defined(); }
  at::Tensor grad_weight() const {
    return has_template() ? weight_partial.sum(1).to(incoming.scalar_type()) : at::empty({0}, incoming.options());
  }
  template <typename scalar_t, typename acc_t>
  BackwardRows<scalar_t, acc_t> rows(int64_t Nt, int64_t Ct, double scale) const {
    return {grad_out.const_data_ptr<scalar_t>(), incoming.const_data_ptr<scalar_t>(),
            has_template() ? tmpl.const_data_ptr<scalar_t>() : nullptr,
            std::vector<acc_t>(w64.begin(), w64.end()), Nt, Ct, static_cast<acc_t>(scale)};
  }
};

// The elementwise pass alone (the op CUDA's composite backward mirrors; on CPU it is the
// fallback of the fused backward and is tested directly).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_scores(const BackwardBuffers& buf, double scale) {
  const int64_t B = buf.incoming.size(0), Nt = buf.incoming.size(1), Ct = buf.incoming.size(2);
  const auto dtype = buf.incoming.scalar_type();
  at::Tensor grad_scores = at::empty({B, Nt, Ct}, buf.incoming.options().dtype(compute_type(dtype)));
  if (grad_scores.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "template_update_backward_scores_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto rows = buf.rows<scalar_t, acc_t>(Nt, Ct, scale);
      acc_t* ds = grad_scores.mutable_data_ptr<acc_t>();
      scalar_t* dt = buf.has_template() ? buf.grad_template.mutable_data_ptr<scalar_t>() : nullptr;
      acc_t* partial = buf.has_template() ? buf.weight_partial.mutable_data_ptr<acc_t>() : nullptr;
      at::parallel_for(0, B * Nt, rows_per_task(Ct), [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          rows.scores(row, rows.dot(row), 0, Ct, ds + row * Ct);
          if (partial != nullptr) partial[row] = rows.template_and_weight(row, dt);
        }
      });
    });
  } else if (buf.has_template()) {
    buf.weight_partial.zero_();
  }
  return {grad_scores, buf.grad_template, buf.grad_weight()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> template_update_backward_scores_cpu(
    const at::Tensor& grad_out, const at::Tensor& incoming, const std::optional<at::Tensor>& template_opt,
    const std::optional<at::Tensor>& weight_opt, double scale) {
  template_update::check_scores_args("template_update_backward_scores", grad_out, incoming, template_opt, weight_opt);
  return backward_scores(BackwardBuffers(grad_out, incoming, template_opt, weight_opt), scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> template_update_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& key, const at::Tensor& value, const at::Tensor& incoming,
    const std::optional<at::Tensor>& template_opt, const std::optional<at::Tensor>& weight_opt, double scale,
    bool need_key, bool need_value) {
  const auto [B, Nt, Ct, P] = template_update::check_backward_args("template_update_backward", grad_out, key, value,
                                                                   incoming, template_opt, weight_opt);
  const BackwardBuffers buf(grad_out, incoming, template_opt, weight_opt);
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = blocks_per_item(B, std::min(Nt, Ct), threads);
  if (B * blocks < threads || Nt == 0 || Ct == 0) {  // cannot fill the threads: multithreaded GEMMs instead
    auto [grad_scores, grad_template, grad_weight] = backward_scores(buf, scale);
    auto [grad_key, grad_value] = template_update::grads_from_scores(grad_scores, key, value, need_key, need_value);
    return {grad_key, grad_value, grad_template, grad_weight};
  }
  const auto dtype = key.scalar_type(), ctype = compute_type(dtype);
  const at::Tensor key_c = key.to(ctype), value_c = value.to(ctype);
  at::Tensor grad_key = at::empty({need_key ? B : 0, Nt, P}, key.options().dtype(ctype));
  at::Tensor grad_value = at::empty({need_value ? B : 0, Ct, P}, key.options().dtype(ctype));
  const int64_t rows = ceil_div(Nt, blocks), cols = ceil_div(Ct, blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "template_update_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto rows_of = buf.rows<scalar_t, acc_t>(Nt, Ct, scale);
    scalar_t* dt = buf.has_template() ? buf.grad_template.mutable_data_ptr<scalar_t>() : nullptr;
    acc_t* partial = buf.has_template() ? buf.weight_partial.mutable_data_ptr<acc_t>() : nullptr;
    const at::ThreadLocalState caller_state;  // see the forward
    at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      std::vector<acc_t> dots(Nt);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, h = task % blocks;
        const int64_t r0 = h * rows, nr = std::max<int64_t>(0, std::min(rows, Nt - r0));
        const int64_t c0 = h * cols, nc = std::max<int64_t>(0, std::min(cols, Ct - c0));
        const int64_t first = b * Nt;
        // Dot products of every row of the item (the column block needs them all).
        for (int64_t r = 0; r < Nt; ++r) dots[r] = rows_of.dot(first + r);
        for (int64_t r = r0; r < r0 + nr; ++r)
          if (partial != nullptr) partial[first + r] = rows_of.template_and_weight(first + r, dt);
        // grad_scores rows [r0, r0 + nr), all columns: grad_key rows = them @ value.
        if (need_key && nr > 0) {
          at::Tensor ds_rows = at::empty({nr, Ct}, key_c.options());
          acc_t* ds = ds_rows.mutable_data_ptr<acc_t>();
          for (int64_t r = 0; r < nr; ++r) rows_of.scores(first + r0 + r, dots[r0 + r], 0, Ct, ds + r * Ct);
          at::Tensor dst = grad_key.select(0, b).narrow(0, r0, nr);
          at::mm_out(dst, ds_rows, value_c.select(0, b));
        }
        // grad_scores columns [c0, c0 + nc), all rows: grad_value rows = their transpose @ key.
        if (need_value && nc > 0) {
          at::Tensor ds_cols = at::empty({Nt, nc}, key_c.options());
          acc_t* ds = ds_cols.mutable_data_ptr<acc_t>();
          for (int64_t r = 0; r < Nt; ++r) rows_of.scores(first + r, dots[r], c0, c0 + nc, ds + r * nc);
          at::Tensor dst = grad_value.select(0, b).narrow(0, c0, nc);
          at::mm_out(dst, ds_cols.t(), key_c.select(0, b));
        }
      }
    });
  });
  const at::Tensor empty = at::empty({0}, key.options());
  return {need_key ? grad_key.to(dtype) : empty, need_value ? grad_value.to(dtype) : empty, buf.grad_template,
          buf.grad_weight()};
}

}  // namespace
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
