// Schemas of the min-background aggregation kernels (the public agame-vos / CRVOS / TTVOS
// ``softmax_aggregate`` rule). Device kernels: cpu/, cuda/.
//
//   min_background_aggregate_forward(q (B, O, 2, S), eps) -> out (B, O+1, S)
//   min_background_aggregate_backward(grad_out (B, O+1, S), q (B, O, 2, S), eps)
//       -> grad_q (B, O, 2, S)
//
// The Python op flattens the spatial dims to S; these kernels take exactly 4-D tensors.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  m.def("min_background_aggregate_forward(Tensor q, float eps) -> Tensor");
  m.def("min_background_aggregate_backward(Tensor grad_out, Tensor q, float eps) -> Tensor");
}
