// Schemas of the TTVOS template update (Eq. 2-3), and its device-independent backward.
// Device kernels: cpu/template_update_kernel.cpp, cuda/template_update_kernel.cu.
//
//   I   = softmax(key @ value^T * scale, dim=-1)                       (B, Nt, Ct)
//   out = I                                   when template is None
//       = template * c + I * w * c,  c = 1 / (1 + w[b])   otherwise
//
// template_update_forward(key (B, Nt, P), value (B, Ct, P), template (B, Nt, Ct)?, weight (B,)?,
//                         scale) -> (out (B, Nt, Ct), incoming)
//     incoming is I (what the backward needs) when a template is given; without a template out
//     already is I and incoming is an empty (0,) tensor, so I is never written twice.
//
// template_update_backward_scores(grad_out, incoming, template?, weight?, scale)
//     -> (grad_scores (B, Nt, Ct), grad_template (B, Nt, Ct) or (0,), grad_weight (B,) or (0,))
//     The one fused elementwise pass of the backward, with a = w c (1 without a template):
//       grad_scores  = a * scale * I * (g - rowsum(g * I))     (softmax backward, times scale)
//       grad_template = g * c
//       grad_weight  = c^2 * sum(g * (I - template))           (d out / d w = (I - T) c^2)
//     grad_scores is in the compute dtype (float32 for float16/bfloat16 inputs).
//
// template_update_backward(grad_out, key, value, incoming, template?, weight?, scale,
//                          need_key, need_value)
//     -> (grad_key (B, Nt, P), grad_value (B, Ct, P), grad_template, grad_weight)
//     = the scores pass above, then two batched GEMMs (MKL / cuBLAS through at::bmm):
//       grad_key = grad_scores @ value,   grad_value = grad_scores^T @ key.
//     This composite serves CUDA; the CPU registers its own fused version of the same math.
//     Gradients not asked for (need_* false, or no template) are empty (0,) tensors.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

#include "template_update.h"

namespace vos_kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> template_update_backward_composite(
    const at::Tensor& grad_out, const at::Tensor& key, const at::Tensor& value, const at::Tensor& incoming,
    const std::optional<at::Tensor>& template_, const std::optional<at::Tensor>& weight, double scale,
    bool need_key, bool need_value) {
  constexpr const char* op = "template_update_backward";
  template_update::check_backward_args(op, grad_out, key, value, incoming, template_, weight);
  auto [grad_scores, grad_template, grad_weight] =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("vos_kernels::template_update_backward_scores", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const std::optional<at::Tensor>&,
                                                                const std::optional<at::Tensor>&, double)>()
          .call(grad_out, incoming, template_, weight, scale);
  auto [grad_key, grad_value] = template_update::grads_from_scores(grad_scores, key, value, need_key, need_value);
  return {grad_key, grad_value, grad_template, grad_weight};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  m.def("template_update_forward(Tensor key, Tensor value, Tensor? template, Tensor? weight, float scale)"
        " -> (Tensor, Tensor)");
  m.def("template_update_backward_scores(Tensor grad_out, Tensor incoming, Tensor? template, Tensor? weight,"
        " float scale) -> (Tensor, Tensor, Tensor)");
  m.def("template_update_backward(Tensor grad_out, Tensor key, Tensor value, Tensor incoming, Tensor? template,"
        " Tensor? weight, float scale, bool need_key, bool need_value) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vos_kernels, CompositeExplicitAutograd, m) {
  m.impl("template_update_backward", &template_update_backward_composite);
}

}  // namespace vos_kernels
