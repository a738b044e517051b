// CUDA kernels of the TTVOS template update (math: ../template_update.cpp). Compile-checked for
// sm_80/sm_90; they mirror the Triton kernels' split path, which is verified under the Triton
// interpreter (vos_kernels/triton/template_update.py).
//
// Forward: one kernel (after one memset of its scratch). Block (b * row block, column block,
// split) computes a 64 x 64 tile of key @ value^T over its share of the P positions (shared-
// memory tiles, 4 x 4 outputs per thread, accumulation in float / double), adds it into a
// scratch with atomics, and counts its arrival on the row block. Splitting P fills the GPU
// when B * Nt * Ct / 64^2 tiles are too few (B = 4, Nt = Ct = 128: 16 tiles on 132 SMs). The
// block that arrives last finishes the row block: one warp per row, two sweeps over the
// columns read from L2 (online max and sum, then normalise, blend, store). The scores never go
// between kernels.
//
// Backward: the elementwise pass (one warp per row) here; the two GEMMs are at::bmm (cuBLAS)
// in the composite template_update_backward (template_update.cpp).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>

#include "template_update.h"

namespace vos_kernels {
namespace {

constexpr int kTileRows = 64;       // rows (Nt) per tile
constexpr int kTileCols = 64;       // columns (Ct) per tile
constexpr int kTileP = 16;          // positions per shared-memory step
constexpr int kThreads = 256;       // 16 x 16 threads, 4 x 4 outputs each
constexpr int kWarps = kThreads / 32;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Merge of two (max, sum of exp(x - max)) pairs of an online softmax.
template <typename acc_t>
__device__ __forceinline__ void warp_max_sum(acc_t& m, acc_t& s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const acc_t m_other = __shfl_xor_sync(0xffffffffu, m, offset);
    const acc_t s_other = __shfl_xor_sync(0xffffffffu, s, offset);
    const acc_t m_new = m > m_other ? m : m_other;
    // exp(-inf - -inf) would be NaN: a lane that saw no column contributes nothing.
    s = (m == m_new ? s : (s == acc_t(0) ? acc_t(0) : s * exp(m - m_new))) +
        (m_other == m_new ? s_other : (s_other == acc_t(0) ? acc_t(0) : s_other * exp(m_other - m_new)));
    m = m_new;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) template_update_forward_kernel(
    const scalar_t* __restrict__ key, const scalar_t* __restrict__ value, const scalar_t* __restrict__ template_,
    const scalar_t* __restrict__ weight, scalar_t* __restrict__ out, scalar_t* __restrict__ incoming,
    acc_t* scratch, unsigned int* counters, int64_t Nt, int64_t Ct, int64_t P, acc_t scale, int64_t stride_kb,
    int64_t stride_kn, int64_t stride_kp, int64_t stride_vb, int64_t stride_vc, int64_t stride_vp,
    int64_t p_per_split, bool has_template) {
  __shared__ acc_t key_tile[kTileP][kTileRows + 1];
  __shared__ acc_t value_tile[kTileP][kTileCols + 1];
  __shared__ bool is_last;
  const int64_t row_blocks = (Nt + kTileRows - 1) / kTileRows;
  const int64_t b = blockIdx.x / row_blocks;
  const int64_t row0 = (blockIdx.x % row_blocks) * kTileRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  const int64_t p_begin = static_cast<int64_t>(blockIdx.z) * p_per_split;
  const int64_t p_end = std::min(P, p_begin + p_per_split);
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const scalar_t* key_b = key + b * stride_kb;
  const scalar_t* value_b = value + b * stride_vb;

  acc_t acc[4][4] = {};
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kTileP) {
    // Consecutive threads take consecutive positions (coalesced when stride_kp == 1).
    for (int idx = tid; idx < kTileRows * kTileP; idx += kThreads) {
      const int r = idx / kTileP, p = idx % kTileP;
      const int64_t row = row0 + r, pos = p0 + p;
      key_tile[p][r] = (row < Nt && pos < p_end) ? static_cast<acc_t>(key_b[row * stride_kn + pos * stride_kp])
                                                  : acc_t(0);
    }
    for (int idx = tid; idx < kTileCols * kTileP; idx += kThreads) {
      const int c = idx / kTileP, p = idx % kTileP;
      const int64_t col = col0 + c, pos = p0 + p;
      value_tile[p][c] = (col < Ct && pos < p_end)
                             ? static_cast<acc_t>(value_b[col * stride_vc + pos * stride_vp])
                             : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < kTileP; ++p) {
      acc_t k[4], v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        k[i] = key_tile[p][ty + 16 * i];
        v[i] = value_tile[p][tx + 16 * i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += k[i] * v[j];
    }
    __syncthreads();
  }

  // Partial scores into the scratch (B, Nt, Ct), then count this block's arrival.
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = row0 + ty + 16 * i;
    if (row >= Nt) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx + 16 * j;
      if (col < Ct) atomicAdd(scratch + (b * Nt + row) * Ct + col, acc[i][j]);
    }
  }
  __threadfence();  // this thread's additions are visible device-wide before the arrival
  __syncthreads();
  if (tid == 0) {
    const unsigned int arrivals = gridDim.y * gridDim.z;
    is_last = atomicAdd(counters + blockIdx.x, 1u) == arrivals - 1;
  }
  __syncthreads();
  if (!is_last) return;
  __threadfence();  // see every other block's additions

  // Last block of the row block: finish rows row0 .. row0 + 63, one warp per row.
  const int warp = tid / 32, lane = tid % 32;
  acc_t a = 1, c = 1;
  if (has_template) {
    const acc_t w = static_cast<acc_t>(weight[b]);
    c = acc_t(1) / (acc_t(1) + w);
    a = w * c;
  }
  for (int r = warp; r < kTileRows; r += kWarps) {
    const int64_t row = row0 + r;
    if (row >= Nt) break;
    const int64_t base = (b * Nt + row) * Ct;
    // __ldcg: read from L2, where the other blocks' atomics landed (never a stale L1 line).
    acc_t m = -INFINITY, s = 0;
    for (int64_t col = lane; col < Ct; col += 32) {
      const acc_t x = __ldcg(scratch + base + col) * scale;
      if (x > m) {
        s = s * exp(m - x) + acc_t(1);
        m = x;
      } else {
        s += exp(x - m);
      }
    }
    warp_max_sum(m, s);
    const acc_t inv = acc_t(1) / s;
    for (int64_t col = lane; col < Ct; col += 32) {
      const acc_t i = exp(__ldcg(scratch + base + col) * scale - m) * inv;
      if (has_template) {
        incoming[base + col] = static_cast<scalar_t>(i);
        out[base + col] = static_cast<scalar_t>(static_cast<acc_t>(template_[base + col]) * c + i * a);
      } else {
        out[base + col] = static_cast<scalar_t>(i);
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) template_update_backward_scores_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ incoming,
    const scalar_t* __restrict__ template_, const scalar_t* __restrict__ weight, acc_t* __restrict__ grad_scores,
    scalar_t* __restrict__ grad_template, acc_t* __restrict__ weight_partial, int64_t rows, int64_t Nt, int64_t Ct,
    acc_t scale, bool has_template) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  acc_t a = 1, c = 1;
  if (has_template) {
    const acc_t w = static_cast<acc_t>(weight[row / Nt]);
    c = acc_t(1) / (acc_t(1) + w);
    a = w * c;
  }
  const int64_t base = row * Ct;
  acc_t dot = 0, partial = 0;
  for (int64_t col = lane; col < Ct; col += 32) {
    const acc_t g = static_cast<acc_t>(grad_out[base + col]);
    const acc_t i = static_cast<acc_t>(incoming[base + col]);
    dot += g * i;
    if (has_template) {
      partial += g * (i - static_cast<acc_t>(template_[base + col]));
      grad_template[base + col] = static_cast<scalar_t>(g * c);
    }
  }
  dot = warp_sum(dot);
  partial = warp_sum(partial);
  const acc_t factor = a * scale;
  for (int64_t col = lane; col < Ct; col += 32) {
    const acc_t g = static_cast<acc_t>(grad_out[base + col]);
    const acc_t i = static_cast<acc_t>(incoming[base + col]);
    grad_scores[base + col] = factor * i * (g - dot);
  }
  if (has_template && lane == 0) weight_partial[row] = partial * c * c;
}

int multiprocessor_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return std::max(count, 1);
}

std::tuple<at::Tensor, at::Tensor> template_update_forward_cuda(const at::Tensor& key, const at::Tensor& value,
                                                                const std::optional<at::Tensor>& template_opt,
                                                                const std::optional<at::Tensor>& weight_opt,
                                                                double scale) {
  constexpr const char* op = "template_update_forward";
  // Plain variables, not structured bindings: the dispatch lambda below captures them, and capturing
  // a structured binding is C++20 (torch 2.11 builds with -std=c++17).
  const template_update::Sizes sizes = template_update::check_forward_args(op, key, value, template_opt, weight_opt);
  const int64_t B = sizes.B, Nt = sizes.Nt, Ct = sizes.Ct, P = sizes.P;
  TORCH_CHECK(scale > 0, op, ": scale must be > 0, got ", scale);
  const c10::cuda::CUDAGuard guard(key.device());
  const bool has_template = template_opt.has_value();
  at::Tensor out = at::empty({B, Nt, Ct}, key.options());
  at::Tensor incoming = has_template ? at::empty({B, Nt, Ct}, key.options()) : at::empty({0}, key.options());
  if (out.numel() == 0) return {out, incoming};
  const at::Tensor tmpl = has_template ? template_opt->contiguous() : out;
  const at::Tensor weight = has_template ? weight_opt->contiguous() : out;
  const int64_t row_blocks = (Nt + kTileRows - 1) / kTileRows, col_blocks = (Ct + kTileCols - 1) / kTileCols;
  TORCH_CHECK(col_blocks <= 65535, op, ": Ct = ", Ct, " is too large for the CUDA kernel (at most ",
              65535 * kTileCols, ")");
  const int64_t tiles = B * row_blocks * col_blocks;
  const int64_t p_steps = (P + kTileP - 1) / kTileP;
  const int64_t target = 2 * static_cast<int64_t>(multiprocessor_count(key.get_device()));
  const int64_t wanted =
      std::clamp<int64_t>(target / std::max<int64_t>(tiles, 1), 1, std::min<int64_t>(p_steps, 65535));
  const int64_t p_per_split = ((p_steps + wanted - 1) / wanted) * kTileP;
  const int64_t split = (P + p_per_split - 1) / p_per_split;
  const auto ctype = at::toOpMathType(key.scalar_type());
  // One memset: the scratch scores and, after them, the arrival counters (zero bits = 0u).
  const int64_t scratch_elems = B * Nt * Ct;
  const int64_t elem_size = static_cast<int64_t>(c10::elementSize(ctype));
  const int64_t counter_bytes = B * row_blocks * static_cast<int64_t>(sizeof(unsigned int));
  const int64_t counter_elems = (counter_bytes + elem_size - 1) / elem_size;
  at::Tensor workspace = at::zeros({scratch_elems + counter_elems}, key.options().dtype(ctype));
  const dim3 grid(static_cast<unsigned int>(B * row_blocks), static_cast<unsigned int>(col_blocks),
                  static_cast<unsigned int>(split));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, key.scalar_type(), "template_update_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* scratch = workspace.mutable_data_ptr<acc_t>();
    auto* counters = reinterpret_cast<unsigned int*>(scratch + scratch_elems);
    template_update_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        key.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), tmpl.const_data_ptr<scalar_t>(),
        weight.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        has_template ? incoming.mutable_data_ptr<scalar_t>() : nullptr, scratch, counters, Nt, Ct, P,
        static_cast<acc_t>(scale), key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1),
        value.stride(2), p_per_split, has_template);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, incoming};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> template_update_backward_scores_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& incoming_in, const std::optional<at::Tensor>& template_opt,
    const std::optional<at::Tensor>& weight_opt, double scale) {
  constexpr const char* op = "template_update_backward_scores";
  // Plain variables (captured by the dispatch lambda; see template_update_forward_cuda).
  const template_update::Sizes sizes =
      template_update::check_scores_args(op, grad_out_in, incoming_in, template_opt, weight_opt);
  const int64_t B = sizes.B, Nt = sizes.Nt, Ct = sizes.Ct;
  const c10::cuda::CUDAGuard guard(incoming_in.device());
  const bool has_template = template_opt.has_value();
  const auto dtype = incoming_in.scalar_type(), ctype = at::toOpMathType(dtype);
  const at::Tensor grad_out = grad_out_in.contiguous(), incoming = incoming_in.contiguous();
  const at::Tensor tmpl = has_template ? template_opt->contiguous() : incoming;
  const at::Tensor weight = has_template ? weight_opt->contiguous() : incoming;
  at::Tensor grad_scores = at::empty({B, Nt, Ct}, incoming.options().dtype(ctype));
  at::Tensor grad_template =
      has_template ? at::empty({B, Nt, Ct}, incoming.options()) : at::empty({0}, incoming.options());
  at::Tensor weight_partial = at::zeros({has_template ? B : 0, Nt}, incoming.options().dtype(ctype));
  const int64_t rows = B * Nt;
  if (rows > 0 && Ct > 0) {
    const int64_t blocks = (rows + kWarps - 1) / kWarps;
    TORCH_CHECK(blocks <= 2147483647LL, op, ": B * Nt = ", rows, " rows is too many for one launch");
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "template_update_backward_scores_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto grid = static_cast<unsigned int>(blocks);
      template_update_backward_scores_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), incoming.const_data_ptr<scalar_t>(), tmpl.const_data_ptr<scalar_t>(),
          weight.const_data_ptr<scalar_t>(), grad_scores.mutable_data_ptr<acc_t>(),
          has_template ? grad_template.mutable_data_ptr<scalar_t>() : nullptr,
          has_template ? weight_partial.mutable_data_ptr<acc_t>() : nullptr, rows, Nt, Ct, static_cast<acc_t>(scale),
          has_template);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor grad_weight = has_template ? at::sum(weight_partial, {1}).to(dtype) : at::empty({0}, incoming.options());
  return {grad_scores, grad_template, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(vos_kernels, CUDA, m) {
  m.impl("template_update_forward", &template_update_forward_cuda);
  m.impl("template_update_backward_scores", &template_update_backward_scores_cuda);
}

}  // namespace vos_kernels
