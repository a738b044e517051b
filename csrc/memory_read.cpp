// Schemas of the L2-affinity memory read kernels (docs/ops.md §1). Device kernels: cpu/, cuda/.
//
// Per batch item, with a = 2 * scale and bias_i = -scale * |mk_i|^2:
//   s_ij = a <mk_i, qk_j> + bias_i          (the contract's affinity, never materialised)
//
//   memory_read_topk_forward(qk (B, Ck, N), mk (B, Ck, M), mv (B, Cv, M), k, scale)
//       -> out (B, Cv, N), indices (B, N, k) int64, weights (B, N, k)
//     keeps the k largest s_ij of each query j (ties: the lowest i wins; 1 <= k <= M),
//     weights = softmax over the kept scores (sorted by decreasing score), out = sum w mv.
//   memory_read_topk_backward(grad_out, qk, mk, mv, indices, weights, scale)
//       -> grad_qk, grad_mk, grad_mv   (gradient through the kept entries only)
//   memory_read_dense_forward(qk, mk, mv, scale) -> out (B, Cv, N), lse (B, N)
//     softmax over all M entries (online softmax over memory tiles); lse_j = log sum_i exp s_ij.
//   memory_read_dense_backward(grad_out, qk, mk, mv, out, lse, scale)
//       -> grad_qk, grad_mk, grad_mv
//
// weights and lse are float32 (float64 for float64 inputs); out and the gradients have the
// dtype of the inputs. A query whose affinities contain NaN gets a NaN output column.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  m.def("memory_read_topk_forward(Tensor query_key, Tensor memory_key, Tensor memory_value, int k, float scale)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("memory_read_topk_backward(Tensor grad_out, Tensor query_key, Tensor memory_key, Tensor memory_value,"
        " Tensor indices, Tensor weights, float scale) -> (Tensor, Tensor, Tensor)");
  m.def("memory_read_dense_forward(Tensor query_key, Tensor memory_key, Tensor memory_value, float scale)"
        " -> (Tensor, Tensor)");
  m.def("memory_read_dense_backward(Tensor grad_out, Tensor query_key, Tensor memory_key, Tensor memory_value,"
        " Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
}
