// Window geometry of clip_window_attention, shared by the CPU and CUDA kernels (docs/ops.md §4).
//
// Along one axis of length S with window w and shift s (0 <= s < w), token p belongs to window
//   k(p) = (p + f) / w,   f = (w - s) % w   ("front": virtual tokens before position 0),
// so window k covers the real positions [max(0, k w - f), min(S, (k + 1) w - f)) and there are
// ceil((S + f) / w) windows. A token's coordinate inside its window, (p + f) - k w, is what
// Video Swin's relative_position_index uses; border windows are partial (fewer tokens), never
// padded. Everything here is plain integer arithmetic usable on host and device.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#if defined(__CUDACC__)
#define VOS_HOST_DEVICE __host__ __device__
#else
#define VOS_HOST_DEVICE
#endif

namespace vos_kernels {
namespace clip_window {

struct Axis {
  int64_t size;    // S
  int64_t window;  // w
  int64_t front;   // f = (w - s) % w
  int64_t count;   // number of windows, ceil((S + f) / w)

  VOS_HOST_DEVICE static Axis make(int64_t size, int64_t window, int64_t shift) {
    Axis a{size, window, (window - shift) % window, 0};
    a.count = (size + a.front + window - 1) / window;
    return a;
  }
  // First real position of window k and the number of real positions in it.
  VOS_HOST_DEVICE int64_t begin(int64_t k) const {
    const int64_t v = k * window - front;
    return v > 0 ? v : 0;
  }
  VOS_HOST_DEVICE int64_t end(int64_t k) const {
    const int64_t v = (k + 1) * window - front;
    return v < size ? v : size;
  }
  // Coordinate of real position p inside window k (0 .. w-1).
  VOS_HOST_DEVICE int64_t local(int64_t p, int64_t k) const { return p + front - k * window; }
};

// The three axes (t, h, w) of a clip and the relative-position bias index of Video Swin:
//   index(i, j) = (lt_i - lt_j + wt - 1) (2wh - 1)(2ww - 1) + (lh_i - lh_j + wh - 1)(2ww - 1)
//                 + (lw_i - lw_j + ww - 1)
// which is code(i) - code(j) + center with code = lt (2wh-1)(2ww-1) + lh (2ww-1) + lw.
struct Geometry {
  Axis t, h, w;
  VOS_HOST_DEVICE int64_t windows() const { return t.count * h.count * w.count; }
  VOS_HOST_DEVICE int64_t full_tokens() const { return t.window * h.window * w.window; }
  VOS_HOST_DEVICE int64_t table_rows() const {
    return (2 * t.window - 1) * (2 * h.window - 1) * (2 * w.window - 1);
  }
  VOS_HOST_DEVICE int64_t code(int64_t lt, int64_t lh, int64_t lw) const {
    return (lt * (2 * h.window - 1) + lh) * (2 * w.window - 1) + lw;
  }
  VOS_HOST_DEVICE int64_t center() const { return code(t.window - 1, h.window - 1, w.window - 1); }
};

// Checks of a direct torch.ops call (the Python layer validates user input first) and the
// geometry they imply. Host only.
inline Geometry check_and_make_geometry(const char* op, const at::Tensor& query, const at::Tensor& key,
                                        const at::Tensor& value, const c10::optional<at::Tensor>& bias,
                                        int64_t num_heads, at::IntArrayRef window, at::IntArrayRef shift) {
  TORCH_CHECK(query.dim() == 5, op, ": query must be (B, L, H, W, C), got shape ", query.sizes());
  TORCH_CHECK(key.sizes() == query.sizes() && value.sizes() == query.sizes(), op,
              ": query, key and value must have one shape, got ", query.sizes(), ", ", key.sizes(), ", ",
              value.sizes());
  TORCH_CHECK(query.is_floating_point(), op, ": query must be floating point, got ", query.scalar_type());
  TORCH_CHECK(key.scalar_type() == query.scalar_type() && value.scalar_type() == query.scalar_type(), op,
              ": query, key and value must have one dtype, got ", query.scalar_type(), ", ", key.scalar_type(),
              ", ", value.scalar_type());
  TORCH_CHECK(key.device() == query.device() && value.device() == query.device(), op,
              ": query, key and value must be on one device");
  TORCH_CHECK(num_heads >= 1 && query.size(4) % num_heads == 0, op, ": channels C = ", query.size(4),
              " must be a multiple of num_heads = ", num_heads);
  TORCH_CHECK(window.size() == 3 && shift.size() == 3, op, ": window and shift must have 3 entries, got ",
              window, " and ", shift);
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(window[i] >= 1 && shift[i] >= 0 && shift[i] < window[i], op,
                ": need window >= 1 and 0 <= shift < window per axis, got window ", window, ", shift ", shift);
  }
  Geometry g{Axis::make(query.size(1), window[0], shift[0]), Axis::make(query.size(2), window[1], shift[1]),
             Axis::make(query.size(3), window[2], shift[2])};
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == g.table_rows() && bias->size(1) == num_heads, op,
                ": rel_pos_bias must be (", g.table_rows(), ", ", num_heads, "), got ", bias->sizes());
    TORCH_CHECK(bias->is_floating_point() && bias->device() == query.device(), op,
                ": rel_pos_bias must be a floating tensor on the device of query");
  }
  return g;
}

// check_and_make_geometry for the backward kernels, which also take grad_out: it must match
// query in shape, dtype and device.
inline Geometry check_backward_and_make_geometry(const char* op, const at::Tensor& grad_out, const at::Tensor& query,
                                                 const at::Tensor& key, const at::Tensor& value,
                                                 const c10::optional<at::Tensor>& bias, int64_t num_heads,
                                                 at::IntArrayRef window, at::IntArrayRef shift) {
  const Geometry g = check_and_make_geometry(op, query, key, value, bias, num_heads, window, shift);
  TORCH_CHECK(grad_out.sizes() == query.sizes() && grad_out.scalar_type() == query.scalar_type() &&
                  grad_out.device() == query.device(),
              op, ": grad_out must match query in shape, dtype and device, got ", grad_out.sizes(), " ",
              grad_out.scalar_type(), " on ", grad_out.device());
  return g;
}

}  // namespace clip_window
}  // namespace vos_kernels
