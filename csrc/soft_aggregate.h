// Argument checks of the soft aggregation kernels, shared by the CPU and CUDA entry points.
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"

namespace vos_kernels {

// prob must be (B, O, S) floating.
inline void check_soft_aggregate_forward_args(const at::Tensor& prob) {
  TORCH_CHECK(prob.dim() == 3, "soft_aggregate_forward: prob must be (B, O, S), got shape ", prob.sizes());
  VOS_CHECK_FLOATING("soft_aggregate_forward", "prob", prob);
}

// prob (B, O, S) and grad_out (B, O+1, S), one dtype and one device.
inline void check_soft_aggregate_backward_args(const at::Tensor& grad_out, const at::Tensor& prob) {
  TORCH_CHECK(prob.dim() == 3, "soft_aggregate_backward: prob must be (B, O, S), got shape ", prob.sizes());
  const int64_t B = prob.size(0), O = prob.size(1), S = prob.size(2);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == B && grad_out.size(1) == O + 1 && grad_out.size(2) == S,
              "soft_aggregate_backward: grad_out must be (B, O+1, S) = (", B, ", ", O + 1, ", ", S, "), got ",
              grad_out.sizes());
  VOS_CHECK_SAME_DTYPE("soft_aggregate_backward", "grad_out", grad_out, "prob", prob);
  VOS_CHECK_SAME_DEVICE("soft_aggregate_backward", "grad_out", grad_out, "prob", prob);
}

}  // namespace vos_kernels
