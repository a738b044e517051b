// Schemas of the clip window attention kernels (docs/ops.md §4). Device kernels: cpu/, cuda/.
// Window geometry (membership, partial border windows, bias index): clip_window_attention.h.
//
//   clip_window_attention_forward(query, key, value (B, L, H, W, C), rel_pos_bias (T, heads)?,
//       num_heads, window [wt, wh, ww], shift [st, sh, sw], scale) -> out (B, L, H, W, C)
//   clip_window_attention_backward(grad_out, query, key, value, rel_pos_bias?, num_heads, window,
//       shift, scale) -> (grad_query, grad_key, grad_value (B, L, H, W, C), grad_rel_pos_bias)
//
// Inputs may have any strides (the kernels read each window's tokens in place); outputs are
// contiguous. grad_rel_pos_bias has the table's shape, or shape (0,) when no table is given.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  m.def(
      "clip_window_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? rel_pos_bias, "
      "int num_heads, int[] window, int[] shift, float scale) -> Tensor");
  m.def(
      "clip_window_attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, "
      "Tensor? rel_pos_bias, int num_heads, int[] window, int[] shift, float scale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}
