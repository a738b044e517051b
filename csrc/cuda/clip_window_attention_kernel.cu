// CUDA kernels of clip window attention (math: csrc/cpu/clip_window_attention_kernel.cpp,
// geometry: clip_window_attention.h). Compile-checked for sm_80/sm_90; not yet run on a GPU.
//
// One block per (window, head). The window's real tokens are indexed by their full-window
// position r < NF = wt*wh*ww (r is a real token when its clip coordinate lies inside the clip:
// border windows are partial, nothing is padded or copied). Rows are read in place through the
// inputs' strides into shared memory (in the accumulation type: float, or double for double).
//
// forward: K, V of the window in shared memory; one thread per query row with an online
//   softmax over the window's keys (max-rescaled running sum), O = sum_j p_j v_j / l.
// backward: K, V, Q, dO in shared memory.
//   phase A, one thread per query i: lse_i, delta_i = sum_j P_ij dP_ij, dQ_i = sum_j dS_ij k_j * scale
//   phase B, one thread per key j:   dK_j = sum_i dS_ij q_i * scale, dV_j = sum_i P_ij dO_i
//   (recomputing P_ij = exp(s_ij - lse_i)), so dQ, dK, dV need no atomics; the table gradient is
//   summed per block in shared memory (atomics) and added to the global table once per entry.
// Per-thread accumulators of length d live in shared memory, so any head dim works.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "clip_window_attention.h"

namespace vos_kernels {
namespace {

using clip_window::Axis;
using clip_window::Geometry;

constexpr int kThreads = 64;

struct Strides5 {
  int64_t b, t, h, w, c;
};

Strides5 strides_of(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4)}; }

struct Launch {
  Geometry geo;
  int64_t heads, d, windows;
};

// Clip coordinates of full-window position r of window `window`; returns the token offset in a
// tensor with strides s, or -1 when r is not a real token. code: the bias code of r.
// The divisions are 32-bit (window < gridDim.x <= INT32_MAX, checked at launch; r < wt * wh * ww,
// bounded by the shared-memory check): an int64 division is a call on the GPU. Only the memory
// offset is 64-bit.
__device__ __forceinline__ int64_t token_offset(const Geometry& g, uint32_t window, uint32_t r, const Strides5& s,
                                                int64_t* code) {
  const auto wt = static_cast<uint32_t>(g.t.window), wh = static_cast<uint32_t>(g.h.window),
             ww = static_cast<uint32_t>(g.w.window);
  const auto cw = static_cast<uint32_t>(g.w.count), ch = static_cast<uint32_t>(g.h.count),
             ct = static_cast<uint32_t>(g.t.count);
  uint32_t rest = window;
  const uint32_t kw = rest % cw;
  rest /= cw;
  const uint32_t kh = rest % ch;
  rest /= ch;
  const uint32_t kt = rest % ct;
  const uint32_t b = rest / ct;
  const uint32_t lt = r / (wh * ww), lh = (r / ww) % wh, lw = r % ww;
  const int64_t t = static_cast<int64_t>(kt * wt + lt) - g.t.front, h = static_cast<int64_t>(kh * wh + lh) - g.h.front,
                w = static_cast<int64_t>(kw * ww + lw) - g.w.front;
  *code = g.code(lt, lh, lw);
  if (t < 0 || t >= g.t.size || h < 0 || h >= g.h.size || w < 0 || w >= g.w.size) return -1;
  return static_cast<int64_t>(b) * s.b + t * s.t + h * s.h + w * s.w;
}

template <typename acc_t>
__device__ __forceinline__ acc_t dot_rows(const acc_t* a, const acc_t* b, int64_t d) {
  acc_t s = 0;
  for (int64_t c = 0; c < d; ++c) s += a[c] * b[c];
  return s;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_row(const scalar_t* x, int64_t offset, int64_t c0, int64_t sc, int64_t d,
                                         acc_t* dst) {
  for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<acc_t>(x[offset + (c0 + c) * sc]);
}

template <typename acc_t>
__device__ __forceinline__ acc_t bias_of(const acc_t* table, const Geometry& g, int64_t heads, int64_t head,
                                         int64_t code_i, int64_t code_j) {
  return table == nullptr ? acc_t(0) : table[(code_i - code_j + g.center()) * heads + head];
}

// Shared memory: K, V (NF x d), per-thread q and accumulator slices, int codes (-1: no token).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) clip_window_attention_forward_kernel(
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
    const acc_t* __restrict__ table, scalar_t* __restrict__ out, Strides5 sq, Strides5 sk, Strides5 sv, Strides5 so,
    Launch p, acc_t scale) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t nf = p.geo.full_tokens(), d = p.d, head = blockIdx.y, c0 = head * d;
  const uint32_t window = blockIdx.x;
  acc_t* K = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* V = K + nf * d;
  acc_t* Q = V + nf * d + threadIdx.x * d;
  acc_t* A = V + nf * d + kThreads * d + threadIdx.x * d;
  int* codes = reinterpret_cast<int*>(V + nf * d + 2 * kThreads * d);
  for (int64_t r = threadIdx.x; r < nf; r += kThreads) {
    int64_t code;
    const int64_t ok = token_offset(p.geo, window, r, sk, &code);
    codes[r] = ok < 0 ? -1 : static_cast<int>(code);
    if (ok >= 0) {
      load_row(k, ok, c0, sk.c, d, K + r * d);
      load_row(v, token_offset(p.geo, window, r, sv, &code), c0, sv.c, d, V + r * d);
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < nf; i += kThreads) {
    if (codes[i] < 0) continue;
    int64_t code_i;
    load_row(q, token_offset(p.geo, window, i, sq, &code_i), c0, sq.c, d, Q);
    for (int64_t c = 0; c < d; ++c) A[c] = 0;
    acc_t m = -INFINITY, l = 0;
    for (int64_t j = 0; j < nf; ++j) {
      if (codes[j] < 0) continue;
      const acc_t s = dot_rows(Q, K + j * d, d) * scale + bias_of(table, p.geo, p.heads, head, code_i, codes[j]);
      const acc_t m_new = s > m ? s : m;
      const acc_t alpha = exp(m - m_new), e = exp(s - m_new);
      l = l * alpha + e;
      for (int64_t c = 0; c < d; ++c) A[c] = A[c] * alpha + e * V[j * d + c];
      m = m_new;
    }
    const int64_t oo = token_offset(p.geo, window, i, so, &code_i);
    for (int64_t c = 0; c < d; ++c) out[oo + c0 + c] = static_cast<scalar_t>(A[c] / l);
  }
}

// Shared memory: K, V, Q, dO (NF x d), lse and delta (NF), codes (NF), two accumulator slices per
// thread, the head's table gradient (T).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) clip_window_attention_backward_kernel(
    const scalar_t* __restrict__ g, const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
    const scalar_t* __restrict__ v, const acc_t* __restrict__ table, scalar_t* __restrict__ dq,
    scalar_t* __restrict__ dk, scalar_t* __restrict__ dv, acc_t* __restrict__ dtable, Strides5 sg, Strides5 sq,
    Strides5 sk, Strides5 sv, Strides5 so, Launch p, acc_t scale) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t nf = p.geo.full_tokens(), d = p.d, head = blockIdx.y, c0 = head * d;
  const uint32_t window = blockIdx.x;
  const int64_t rows = p.geo.table_rows();
  acc_t* K = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* V = K + nf * d;
  acc_t* Q = V + nf * d;
  acc_t* G = Q + nf * d;
  acc_t* lse = G + nf * d;
  acc_t* delta = lse + nf;
  acc_t* A1 = delta + nf + threadIdx.x * d;
  acc_t* A2 = delta + nf + kThreads * d + threadIdx.x * d;
  acc_t* tab = delta + nf + 2 * kThreads * d;
  int* codes = reinterpret_cast<int*>(tab + rows);
  for (int64_t t = threadIdx.x; table != nullptr && t < rows; t += kThreads) tab[t] = 0;
  for (int64_t r = threadIdx.x; r < nf; r += kThreads) {
    int64_t code;
    const int64_t ok = token_offset(p.geo, window, r, sk, &code);
    codes[r] = ok < 0 ? -1 : static_cast<int>(code);
    if (ok >= 0) {
      load_row(k, ok, c0, sk.c, d, K + r * d);
      load_row(v, token_offset(p.geo, window, r, sv, &code), c0, sv.c, d, V + r * d);
      load_row(q, token_offset(p.geo, window, r, sq, &code), c0, sq.c, d, Q + r * d);
      load_row(g, token_offset(p.geo, window, r, sg, &code), c0, sg.c, d, G + r * d);
    }
  }
  __syncthreads();
  // Phase A: per query.
  for (int64_t i = threadIdx.x; i < nf; i += kThreads) {
    if (codes[i] < 0) continue;
    acc_t m = -INFINITY, l = 0;
    for (int64_t j = 0; j < nf; ++j) {
      if (codes[j] < 0) continue;
      const acc_t s = dot_rows(Q + i * d, K + j * d, d) * scale + bias_of(table, p.geo, p.heads, head, codes[i], codes[j]);
      const acc_t m_new = s > m ? s : m;
      l = l * exp(m - m_new) + exp(s - m_new);
      m = m_new;
    }
    const acc_t lse_i = m + log(l);
    acc_t dlt = 0;
    for (int64_t j = 0; j < nf; ++j) {
      if (codes[j] < 0) continue;
      const acc_t s = dot_rows(Q + i * d, K + j * d, d) * scale + bias_of(table, p.geo, p.heads, head, codes[i], codes[j]);
      dlt += exp(s - lse_i) * dot_rows(G + i * d, V + j * d, d);
    }
    for (int64_t c = 0; c < d; ++c) A1[c] = 0;
    for (int64_t j = 0; j < nf; ++j) {
      if (codes[j] < 0) continue;
      const acc_t s = dot_rows(Q + i * d, K + j * d, d) * scale + bias_of(table, p.geo, p.heads, head, codes[i], codes[j]);
      const acc_t pij = exp(s - lse_i);
      const acc_t ds = pij * (dot_rows(G + i * d, V + j * d, d) - dlt);
      for (int64_t c = 0; c < d; ++c) A1[c] += ds * K[j * d + c];
    }
    lse[i] = lse_i;
    delta[i] = dlt;
    int64_t code;
    const int64_t oo = token_offset(p.geo, window, i, so, &code);
    for (int64_t c = 0; c < d; ++c) dq[oo + c0 + c] = static_cast<scalar_t>(A1[c] * scale);
  }
  __syncthreads();
  // Phase B: per key.
  for (int64_t j = threadIdx.x; j < nf; j += kThreads) {
    if (codes[j] < 0) continue;
    for (int64_t c = 0; c < d; ++c) A1[c] = A2[c] = 0;
    for (int64_t i = 0; i < nf; ++i) {
      if (codes[i] < 0) continue;
      const acc_t s = dot_rows(Q + i * d, K + j * d, d) * scale + bias_of(table, p.geo, p.heads, head, codes[i], codes[j]);
      const acc_t pij = exp(s - lse[i]);
      const acc_t ds = pij * (dot_rows(G + i * d, V + j * d, d) - delta[i]);
      for (int64_t c = 0; c < d; ++c) {
        A1[c] += ds * Q[i * d + c];
        A2[c] += pij * G[i * d + c];
      }
      if (table != nullptr) atomicAdd(tab + (codes[i] - codes[j] + p.geo.center()), ds);
    }
    int64_t code;
    const int64_t oo = token_offset(p.geo, window, j, so, &code);
    for (int64_t c = 0; c < d; ++c) {
      dk[oo + c0 + c] = static_cast<scalar_t>(A1[c] * scale);
      dv[oo + c0 + c] = static_cast<scalar_t>(A2[c]);
    }
  }
  if (table == nullptr) return;
  __syncthreads();
  for (int64_t t = threadIdx.x; t < rows; t += kThreads) {
    if (tab[t] != acc_t(0)) atomicAdd(dtable + t * p.heads + head, tab[t]);
  }
}

// Dynamic shared memory of one block (layouts above the kernels), for accumulators of acc_bytes
// bytes, a window of `tokens` positions, head dim d and a bias table of table_rows rows. Also
// registered as vos_kernels::_clip_window_attention_cuda_shared_bytes, so that `make gpu-ready`
// reports the launch code's own figure without a GPU.
int64_t shared_bytes(bool backward, int64_t acc_bytes, int64_t tokens, int64_t d, int64_t table_rows) {
  const int64_t accumulators = backward ? 4 * tokens * d + 2 * tokens + 2 * kThreads * d + table_rows
                                        : 2 * tokens * d + 2 * kThreads * d;
  return acc_bytes * accumulators + static_cast<int64_t>(sizeof(int)) * tokens;
}

// The grid of one call: one block per (window, head); the window index must fit the kernels'
// 32-bit index maths (grid.x allows 2^31 - 1 anyway).
Launch make_launch(const char* op, const Geometry& geo, const at::Tensor& query, int64_t num_heads) {
  const Launch p{geo, num_heads, query.size(4) / num_heads, query.size(0) * geo.windows()};
  TORCH_CHECK(p.windows <= INT32_MAX && num_heads <= 65535, op, " (cuda): ", p.windows, " windows x ", num_heads,
              " heads exceed one launch (at most 2^31 - 1 windows and 65535 heads)");
  return p;
}

// The dynamic shared memory of one block of `kernel` (forward or backward, accumulators of
// acc_bytes), opted into; or an error that says why the window is too large.
template <typename Kernel>
size_t reserve_shared_memory(Kernel kernel, bool backward, size_t acc_bytes, const Geometry& g, int64_t d) {
  const auto bytes = static_cast<size_t>(shared_bytes(backward, static_cast<int64_t>(acc_bytes), g.full_tokens(), d,
                                                      g.table_rows()));
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(bytes <= static_cast<size_t>(optin), "clip_window_attention (cuda): a window of ", g.full_tokens(),
              " tokens with head dim ", d, " needs ", bytes, " bytes of shared memory; this GPU allows ", optin,
              " (use smaller windows or the triton/cpu backend)");
  if (bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
  return bytes;
}

at::Tensor table_in_acc(const c10::optional<at::Tensor>& bias, const at::Tensor& query) {
  if (!bias.has_value()) return at::Tensor();
  return bias->to(query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

at::Tensor clip_window_attention_forward_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                              const c10::optional<at::Tensor>& rel_pos_bias, int64_t num_heads,
                                              at::IntArrayRef window, at::IntArrayRef shift, double scale) {
  const Geometry geo = clip_window::check_and_make_geometry("clip_window_attention_forward", query, key, value,
                                                            rel_pos_bias, num_heads, window, shift);
  const c10::cuda::CUDAGuard guard(query.device());
  at::Tensor out = at::empty(query.sizes(), query.options());
  if (out.numel() == 0) return out;
  const at::Tensor table = table_in_acc(rel_pos_bias, query);
  const Launch p = make_launch("clip_window_attention_forward", geo, query, num_heads);
  const dim3 grid(static_cast<unsigned>(p.windows), static_cast<unsigned>(num_heads));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "clip_window_attention_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = clip_window_attention_forward_kernel<scalar_t, acc_t>;
    const size_t bytes = reserve_shared_memory(kernel, false, sizeof(acc_t), geo, p.d);
    kernel<<<grid, kThreads, bytes, stream>>>(
        query.const_data_ptr<scalar_t>(), key.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
        table.defined() ? table.const_data_ptr<acc_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        strides_of(query), strides_of(key), strides_of(value), strides_of(out), p, static_cast<acc_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> clip_window_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const c10::optional<at::Tensor>& rel_pos_bias, int64_t num_heads, at::IntArrayRef window, at::IntArrayRef shift,
    double scale) {
  const char* op = "clip_window_attention_backward";
  const Geometry geo = clip_window::check_backward_and_make_geometry(op, grad_out, query, key, value, rel_pos_bias,
                                                                     num_heads, window, shift);
  const c10::cuda::CUDAGuard guard(query.device());
  at::Tensor gq = at::empty(query.sizes(), query.options());
  at::Tensor gk = at::empty(query.sizes(), query.options());
  at::Tensor gv = at::empty(query.sizes(), query.options());
  const at::Tensor table = table_in_acc(rel_pos_bias, query);
  at::Tensor gtable = table.defined() ? at::zeros(table.sizes(), table.options()) : at::Tensor();
  if (gq.numel() > 0) {
    const Launch p = make_launch(op, geo, query, num_heads);
    const dim3 grid(static_cast<unsigned>(p.windows), static_cast<unsigned>(num_heads));
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "clip_window_attention_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto kernel = clip_window_attention_backward_kernel<scalar_t, acc_t>;
      const size_t bytes = reserve_shared_memory(kernel, true, sizeof(acc_t), geo, p.d);
      kernel<<<grid, kThreads, bytes, stream>>>(
          grad_out.const_data_ptr<scalar_t>(), query.const_data_ptr<scalar_t>(), key.const_data_ptr<scalar_t>(),
          value.const_data_ptr<scalar_t>(), table.defined() ? table.const_data_ptr<acc_t>() : nullptr,
          gq.mutable_data_ptr<scalar_t>(), gk.mutable_data_ptr<scalar_t>(), gv.mutable_data_ptr<scalar_t>(),
          gtable.defined() ? gtable.mutable_data_ptr<acc_t>() : nullptr, strides_of(grad_out), strides_of(query),
          strides_of(key), strides_of(value), strides_of(gq), p, static_cast<acc_t>(scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor gbias = rel_pos_bias.has_value() ? gtable.to(rel_pos_bias->scalar_type())
                                              : at::empty({0}, query.options());
  return {gq, gk, gv, gbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vos_kernels, m) {
  m.def("_clip_window_attention_cuda_shared_bytes(bool backward, int acc_bytes, int tokens, int head_dim, "
        "int table_rows) -> int",
        &shared_bytes);
}

TORCH_LIBRARY_IMPL(vos_kernels, CUDA, m) {
  m.impl("clip_window_attention_forward", &clip_window_attention_forward_cuda);
  m.impl("clip_window_attention_backward", &clip_window_attention_backward_cuda);
}

}  // namespace vos_kernels
