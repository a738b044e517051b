// Argument checks and helpers shared by the template_update kernels of every device
// (the math is in template_update.cpp). The Python layer validates user input first, with
// friendlier messages; these guard direct calls through torch.ops.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <optional>
#include <tuple>


namespace vos_kernels {
namespace template_update {

// Scores, softmax and blend run in float32 for float16/bfloat16 inputs, else in the input dtype.
inline at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// The checks.h macros need a literal op name; these take it at run time.
inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be a floating-point tensor, got ", t.scalar_type());
}
inline void check_same_dtype(const char* op, const char* na, const at::Tensor& a, const char* nb, const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", na, " and ", nb, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
}
inline void check_same_device(const char* op, const char* na, const at::Tensor& a, const char* nb,
                              const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", na, " and ", nb, " must be on the same device, got ", a.device(),
              " and ", b.device());
}
inline void check_same_shape(const char* op, const char* na, const at::Tensor& a, const char* nb, const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", na, " and ", nb, " must have the same shape, got ", a.sizes(), " and ",
              b.sizes());
}

struct Sizes {
  int64_t B, Nt, Ct, P;
};

// key (B, Nt, P), value (B, Ct, P), template (B, Nt, Ct) and weight (B,) together or neither.
inline Sizes check_forward_args(const char* op, const at::Tensor& key, const at::Tensor& value,
                                const std::optional<at::Tensor>& template_, const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(key.dim() == 3, op, ": key must be (B, Nt, P), got shape ", key.sizes());
  TORCH_CHECK(value.dim() == 3, op, ": value must be (B, Ct, P), got shape ", value.sizes());
  check_floating(op, "key", key);
  check_same_dtype(op, "key", key, "value", value);
  check_same_device(op, "key", key, "value", value);
  const Sizes s{key.size(0), key.size(1), value.size(1), key.size(2)};
  TORCH_CHECK(value.size(0) == s.B && value.size(2) == s.P, op, ": value must be (B, Ct, P) = (", s.B, ", Ct, ",
              s.P, ") like key, got shape ", value.sizes());
  TORCH_CHECK(s.P >= 1, op, ": key and value must have P >= 1 positions, got P = 0");
  TORCH_CHECK(template_.has_value() == weight.has_value(), op,
              ": template and weight must be given together (or neither), got template ",
              template_.has_value() ? "given" : "None", " and weight ", weight.has_value() ? "given" : "None");
  if (template_.has_value()) {
    const at::Tensor& t = *template_;
    TORCH_CHECK(t.dim() == 3 && t.size(0) == s.B && t.size(1) == s.Nt && t.size(2) == s.Ct, op,
                ": template must be (B, Nt, Ct) = (", s.B, ", ", s.Nt, ", ", s.Ct, "), got shape ", t.sizes());
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == s.B, op, ": weight must be (B,) = (", s.B,
                ",), got shape ", weight->sizes());
    check_same_dtype(op, "key", key, "template", t);
    check_same_dtype(op, "key", key, "weight", *weight);
    check_same_device(op, "key", key, "template", t);
    check_same_device(op, "key", key, "weight", *weight);
  }
  return s;
}

// grad_out and incoming (B, Nt, Ct), template/weight as in the forward.
inline Sizes check_scores_args(const char* op, const at::Tensor& grad_out, const at::Tensor& incoming,
                               const std::optional<at::Tensor>& template_, const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(incoming.dim() == 3, op, ": incoming must be (B, Nt, Ct), got shape ", incoming.sizes());
  check_floating(op, "incoming", incoming);
  check_same_shape(op, "grad_out", grad_out, "incoming", incoming);
  check_same_dtype(op, "grad_out", grad_out, "incoming", incoming);
  check_same_device(op, "grad_out", grad_out, "incoming", incoming);
  const Sizes s{incoming.size(0), incoming.size(1), incoming.size(2), 0};
  TORCH_CHECK(template_.has_value() == weight.has_value(), op, ": template and weight must be given together");
  if (template_.has_value()) {
    check_same_shape(op, "template", *template_, "incoming", incoming);
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == s.B, op, ": weight must be (B,) = (", s.B,
                ",), got shape ", weight->sizes());
    check_same_dtype(op, "template", *template_, "incoming", incoming);
    check_same_dtype(op, "weight", *weight, "incoming", incoming);
    check_same_device(op, "template", *template_, "incoming", incoming);
    check_same_device(op, "weight", *weight, "incoming", incoming);
  }
  return s;
}

// Everything the full backward takes: the forward's inputs plus grad_out and incoming (B, Nt, Ct).
inline Sizes check_backward_args(const char* op, const at::Tensor& grad_out, const at::Tensor& key,
                                 const at::Tensor& value, const at::Tensor& incoming,
                                 const std::optional<at::Tensor>& template_, const std::optional<at::Tensor>& weight) {
  const Sizes s = check_forward_args(op, key, value, template_, weight);
  check_scores_args(op, grad_out, incoming, template_, weight);
  TORCH_CHECK(incoming.size(0) == s.B && incoming.size(1) == s.Nt && incoming.size(2) == s.Ct, op,
              ": incoming must be (B, Nt, Ct) = (", s.B, ", ", s.Nt, ", ", s.Ct, "), got shape ", incoming.sizes());
  check_same_dtype(op, "key", key, "incoming", incoming);
  check_same_device(op, "key", key, "incoming", incoming);
  return s;
}

// The two GEMMs of the backward: grad_key = grad_scores @ value, grad_value = grad_scores^T @ key
// (at::bmm: MKL / cuBLAS, strided views taken as they are). Empty (0,) where not needed.
inline std::tuple<at::Tensor, at::Tensor> grads_from_scores(const at::Tensor& grad_scores, const at::Tensor& key,
                                                             const at::Tensor& value, bool need_key, bool need_value) {
  const auto ctype = grad_scores.scalar_type();
  at::Tensor grad_key = at::empty({0}, key.options()), grad_value = at::empty({0}, key.options());
  if (need_key) grad_key = at::bmm(grad_scores, value.to(ctype)).to(key.scalar_type());
  if (need_value) grad_value = at::bmm(grad_scores.transpose(1, 2), key.to(ctype)).to(value.scalar_type());
  return {grad_key, grad_value};
}

}  // namespace template_update
}  // namespace vos_kernels
