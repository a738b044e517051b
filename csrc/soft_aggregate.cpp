// Schemas of the soft aggregation kernels (RGMP Eq. 1). Device kernels: cpu/, cuda/.
//
//   soft_aggregate_forward(prob (B, O, S), eps) -> out (B, O+1, S)
//   soft_aggregate_backward(grad_out (B, O+1, S), prob (B, O, S), eps)
//       -> grad_prob (B, O, S)
//
// The Python op flattens the spatial dims to S; these kernels take exactly 3-D tensors.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  m.def("soft_aggregate_forward(Tensor prob, float eps) -> Tensor");
  m.def("soft_aggregate_backward(Tensor grad_out, Tensor prob, float eps) -> Tensor");
}
