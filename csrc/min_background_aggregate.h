// Argument checks of the min-background aggregation kernels, shared by the CPU and CUDA entry points.
#pragma once
#include <ATen/core/Tensor.h>

#include "checks.h"

namespace vos_kernels {

// q must be (B, O, 2, S) floating, O >= 1.
inline void check_min_background_aggregate_forward_args(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 2 && q.size(1) >= 1,
              "min_background_aggregate_forward: q must be (B, O>=1, 2, S), got shape ", q.sizes());
  VOS_CHECK_FLOATING("min_background_aggregate_forward", "q", q);
}

// q (B, O, 2, S) and grad_out (B, O+1, S), one dtype and one device.
inline void check_min_background_aggregate_backward_args(const at::Tensor& grad_out, const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 2 && q.size(1) >= 1,
              "min_background_aggregate_backward: q must be (B, O>=1, 2, S), got shape ", q.sizes());
  const int64_t B = q.size(0), O = q.size(1), S = q.size(3);
  TORCH_CHECK(grad_out.dim() == 3 && grad_out.size(0) == B && grad_out.size(1) == O + 1 && grad_out.size(2) == S,
              "min_background_aggregate_backward: grad_out must be (B, O+1, S) = (", B, ", ", O + 1, ", ", S,
              "), got ", grad_out.sizes());
  VOS_CHECK_SAME_DTYPE("min_background_aggregate_backward", "grad_out", grad_out, "q", q);
  VOS_CHECK_SAME_DEVICE("min_background_aggregate_backward", "grad_out", grad_out, "q", q);
}

}  // namespace vos_kernels
