// CPU kernels of the top-k L2-affinity memory read (schemas and math: csrc/memory_read.cpp;
// the dense read is in memory_read_dense_kernel_impl.h, the shared helpers in memory_read_common.h).
//
// Per batch item, qk (Ck, N), mk (Ck, M), mv (Cv, M), a = 2 * scale, bias_i = -scale |mk_i|^2,
// s_ij = a <mk_i, qk_j> + bias_i.
//
// The affinity is a GEMM: it is computed one (memory tile x query block) at a time into a small
// per-thread scratch with at::mm (MKL, single-threaded inside our at::parallel_for), and consumed
// at once, so no (M, N) matrix ever exists. The loops run memory tiles outermost and each
// thread's query blocks inside, so a tile of mk/mv is read from DRAM once and reused from cache.
//
// forward: the scratch is query-major (nq, mt), so each query's scores are contiguous; a
//   running k-buffer per query with threshold = its current k-th best rejects almost every score
//   with one vectorised compare. Then softmax over the k kept, and a sparse readout per block of
//   32 value channels, transposed once into a per-thread scratch so each kept entry is one row.
// backward: gathers/scatters over the kept entries only, again one channel row at a time:
//   dp_jt = <g_j, mv_idx>, grad_mv[:, idx] += w g_j, ds = w (dp - <w, dp>),
//   grad_qk_j = a sum_t ds_jt mk_idx, grad_mk_idx += ds (a qk_j - 2 scale mk_idx).
//
// float16/bfloat16 inputs are computed in float32 (converted once per call).
//
// Compiled once per instruction set into namespace VOS_CPU_ISA (memory_read_kernel.cpp,
// cpu_isa_variants.h): no include guard, every header included at the top.
#include <ATen/Dispatch.h>
#include <ATen/ops/mm.h>
#include <c10/core/GradMode.h>

#include <limits>
#include <tuple>
#include <vector>

#include "memory_read_common.h"

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace {

using namespace memory_read_cpu;

constexpr int64_t kQueryBlock = 128;  // queries per GEMM block (at most)
constexpr int64_t kScanWidth = 16;     // scores tested per vectorised threshold compare

// Channel rows per task for the sparse passes: enough that a task is worth waking a thread.
int64_t row_grain(int64_t gathers_per_row) {
  return std::max<int64_t>(4, (int64_t(1) << 16) / std::max<int64_t>(1, gathers_per_row));
}

// ---------------------------------------------------------------------------------------------
// top-k selection: one query's running k-buffer (values, memory indices) in `val`/`idx`, kept
// as a binary heap whose root is the weakest entry: the smallest value, among equal values the
// highest index. A new score enters iff it is strictly greater than the root's; scanning indices
// in increasing order then keeps, among equal scores, the lowest indices. Replacing the root
// costs O(log k). (`lo` is unused and kept 0: the weakest entry is always slot 0.)
template <typename T>
struct RunningTopK {
  T* val;
  int64_t* idx;
  int64_t k, count, lo;
  bool nan;

  bool weaker(int64_t s, int64_t t) const {
    return val[s] < val[t] || (val[s] == val[t] && idx[s] > idx[t]);
  }
  void sift_down(int64_t s) {
    const T v = val[s];
    const int64_t i = idx[s];
    for (;;) {
      int64_t child = 2 * s + 1;
      if (child >= count) break;
      if (child + 1 < count && weaker(child + 1, child)) ++child;
      if (!(val[child] < v || (val[child] == v && idx[child] > i))) break;
      val[s] = val[child];
      idx[s] = idx[child];
      s = child;
    }
    val[s] = v;
    idx[s] = i;
  }
  void push(T v, int64_t i) {  // while filling; heapify once full
    val[count] = v;
    idx[count] = i;
    if (++count == k)
      for (int64_t s = k / 2 - 1; s >= 0; --s) sift_down(s);
  }
  void offer(T v, int64_t i) {  // v is known to beat the root
    val[0] = v;
    idx[0] = i;
    sift_down(0);
  }
  void offer_checked(T v, int64_t i) {
    if (v > val[0]) offer(v, i);
    else if (v != v) nan = true;
  }
  // Offer scores s_i = a * dot[i] + bias[i] of memory entries first + i, i < n.
  void scan(const T* dot, const T* bias, T a, int64_t first, int64_t n) {
    int64_t i = 0;
    for (; count < k && i < n; ++i) {
      const T v = a * dot[i] + bias[i];
      nan |= v != v;
      push(v, first + i);
    }
#if VOS_CPU_ISA_AVX512
    if constexpr (std::is_same_v<T, float>) {
      const __m512 va = _mm512_set1_ps(a);
      alignas(64) float v16[16];
      for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_fmadd_ps(va, _mm512_loadu_ps(dot + i), _mm512_loadu_ps(bias + i));
        // "not <=" is also true for NaN, which must be seen
        __mmask16 hit = _mm512_cmp_ps_mask(v, _mm512_set1_ps(val[0]), _CMP_NLE_UQ);
        if (!hit) continue;
        _mm512_store_ps(v16, v);
        while (hit) {  // increasing index order; the threshold only rises
          const int u = __builtin_ctz(hit);
          hit &= hit - 1;
          offer_checked(v16[u], first + i + u);
        }
      }
    }
#endif
    for (; i + kScanWidth <= n; i += kScanWidth) {
      const T threshold = val[0];
      bool hit = false;
      for (int64_t u = 0; u < kScanWidth; ++u) hit |= !(a * dot[i + u] + bias[i + u] <= threshold);
      if (!hit) continue;
      for (int64_t u = 0; u < kScanWidth; ++u) offer_checked(a * dot[i + u] + bias[i + u], first + i + u);
    }
    for (; i < n; ++i) offer_checked(a * dot[i] + bias[i], first + i);
  }
  // Sort by decreasing score (ties: increasing index) and turn the scores into softmax weights.
  void finish() {
    for (int64_t t = 1; t < k; ++t) {
      const T v = val[t];
      const int64_t i = idx[t];
      int64_t u = t;
      for (; u > 0 && (val[u - 1] < v || (val[u - 1] == v && idx[u - 1] > i)); --u) {
        val[u] = val[u - 1];
        idx[u] = idx[u - 1];
      }
      val[u] = v;
      idx[u] = i;
    }
    const T top = val[0];
    T sum = 0;
    for (int64_t t = 0; t < k; ++t) sum += (val[t] = std::exp(val[t] - top));
    const T inv = nan ? std::numeric_limits<T>::quiet_NaN() : T(1) / sum;
    for (int64_t t = 0; t < k; ++t) val[t] *= inv;
  }
};

// out[b, c, j] = sum_t w[b, j, t] * mv[b, c, idx[b, j, t]].
// Per block of kReadoutChannels channels, the block of mv is first transposed into a per-thread
// (M, kReadoutChannels) scratch (at most 64 KB of it per 512 entries; 10 MB at M = 81000), so each
// kept entry is one contiguous 128-byte row: N k row gathers of vectorised FMAs per block instead
// of N k kReadoutChannels scalar gathers, and no full (M, Cv) transposed copy of mv.
constexpr int64_t kReadoutChannels = 32;

template <typename T>
void sparse_readout(const View3<T>& value, const int64_t* idx, const T* w, T* out, int64_t B, int64_t Cv,
                    int64_t M, int64_t N, int64_t k) {
  constexpr int64_t CB = kReadoutChannels;
  const int64_t blocks = (Cv + CB - 1) / CB;
  const int64_t grain = N * k * CB * B * blocks < (int64_t(1) << 18) ? B * blocks : 1;
  at::parallel_for(0, B * blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> rows(M * CB);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = (task % blocks) * CB, cb = std::min(CB, Cv - c0);
      if (cb < CB) std::fill(rows.begin(), rows.end(), T(0));
      for (int64_t i0 = 0; i0 < M; i0 += 256) {  // transpose in chunks that stay in L1
        const int64_t i1 = std::min(M, i0 + 256);
        for (int64_t c = 0; c < cb; ++c) {
          const T* src = value.row(b, c0 + c);
          for (int64_t i = i0; i < i1; ++i) rows[i * CB + c] = src[i * value.s2];
        }
      }
      const int64_t* ib = idx + b * N * k;
      const T* wb = w + b * N * k;
      T* ob = out + (b * Cv + c0) * N;
      for (int64_t j = 0; j < N; ++j) {
        T acc[CB] = {};
        for (int64_t t = j * k; t < j * k + k; ++t) {
          const T* r = rows.data() + ib[t] * CB;
          const T wt = wb[t];
          for (int64_t c = 0; c < CB; ++c) acc[c] += wt * r[c];
        }
        for (int64_t c = 0; c < cb; ++c) ob[c * N + j] = acc[c];
      }
    }
  });
}

template <typename T>
void topk_forward_impl(const at::Tensor& qk, const at::Tensor& mk, const at::Tensor& mv, int64_t k, double scale,
                       at::Tensor& out, at::Tensor& indices, at::Tensor& weights) {
  const int64_t B = qk.size(0), N = qk.size(2), M = mk.size(2), Cv = mv.size(1);
  const at::Tensor bias = l2_bias<T>(mk, scale);
  const T a = static_cast<T>(2.0 * scale);
  const int64_t nq = even_block(N, kQueryBlock, N * M * qk.size(1)), blocks = (N + nq - 1) / nq;
  int64_t* idx = indices.mutable_data_ptr<int64_t>();
  T* w = weights.mutable_data_ptr<T>();
  std::vector<int64_t> count(N), lo(N);
  std::vector<char> nan(N);
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor qk_b = qk.select(0, b), mk_b = mk.select(0, b);
    const T* bias_b = bias.const_data_ptr<T>() + b * M;
    int64_t* idx_b = idx + b * N * k;
    T* w_b = w + b * N * k;
    std::fill(count.begin(), count.end(), 0);
    std::fill(nan.begin(), nan.end(), 0);
    at::parallel_for(0, blocks, 1, [&](int64_t q0, int64_t q1) {
      at::Tensor scratch = at::empty({nq * kMemoryTile}, qk.options());
      for (int64_t m0 = 0; m0 < M; m0 += kMemoryTile) {
        const int64_t mt = std::min(kMemoryTile, M - m0);
        const at::Tensor key_tile = mk_b.narrow(1, m0, mt);
        for (int64_t qb = q0; qb < q1; ++qb) {
          const int64_t j0 = qb * nq, n = std::min(nq, N - j0);
          at::Tensor dots = scratch.narrow(0, 0, n * mt).view({n, mt});
          at::mm_out(dots, qk_b.narrow(1, j0, n).t(), key_tile);  // (n, mt): query-major
          const T* d = dots.const_data_ptr<T>();
          for (int64_t r = 0; r < n; ++r) {
            const int64_t j = j0 + r;
            RunningTopK<T> top{w_b + j * k, idx_b + j * k, k, count[j], lo[j], static_cast<bool>(nan[j])};
            top.scan(d + r * mt, bias_b + m0, a, m0, mt);
            count[j] = top.count;
            lo[j] = top.lo;
            nan[j] = top.nan;
          }
        }
      }
      for (int64_t j = q0 * nq; j < std::min(N, q1 * nq); ++j) {
        RunningTopK<T> top{w_b + j * k, idx_b + j * k, k, count[j], lo[j], static_cast<bool>(nan[j])};
        top.finish();
      }
    });
  }
  sparse_readout<T>(View3<T>(mv), idx, w, out.mutable_data_ptr<T>(), B, Cv, M, N, k);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_read_topk_forward_cpu(const at::Tensor& query_key,
                                                                            const at::Tensor& memory_key,
                                                                            const at::Tensor& memory_value,
                                                                            int64_t k, double scale) {
  constexpr const char* op = "memory_read_topk_forward";
  check_inputs(op, query_key, memory_key, memory_value);
  const int64_t M = memory_key.size(2);
  TORCH_CHECK(k >= 1 && k <= M, op, ": k must be in [1, M = ", M, "], got ", k);
  c10::NoGradGuard no_grad;
  const at::Tensor qk = compute_tensor(query_key), mk = compute_tensor(memory_key), mv = compute_tensor(memory_value);
  const int64_t B = qk.size(0), N = qk.size(2), Cv = mv.size(1);
  at::Tensor out = at::empty({B, Cv, N}, qk.options());
  at::Tensor indices = at::empty({B, N, k}, qk.options().dtype(at::kLong));
  at::Tensor weights = at::empty({B, N, k}, qk.options());
  if (B * N > 0) {
    AT_DISPATCH_FLOATING_TYPES(qk.scalar_type(), "memory_read_topk_forward_cpu", [&] {
      topk_forward_impl<scalar_t>(qk, mk, mv, k, scale, out, indices, weights);
    });
  } else {
    out.zero_();
  }
  return {out.to(query_key.scalar_type()), indices, weights};
}

// ---------------------------------------------------------------------------------------------
template <typename T>
void topk_backward_impl(const at::Tensor& g, const at::Tensor& qk, const at::Tensor& mk, const at::Tensor& mv,
                        const at::Tensor& indices, const at::Tensor& weights, double scale, at::Tensor& grad_qk,
                        at::Tensor& grad_mk, at::Tensor& grad_mv) {
  const int64_t B = qk.size(0), Ck = qk.size(1), N = qk.size(2), M = mk.size(2), Cv = mv.size(1);
  const int64_t k = indices.size(2), Nk = N * k;
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  const T* w = weights.const_data_ptr<T>();
  const View3<T> grad(g), value(mv), key(mk), query(qk);
  const T a = static_cast<T>(2.0 * scale), two_scale = static_cast<T>(2.0 * scale);
  // Pass 1 over the channel rows of mv: dp (reduced over threads) and the grad_mv scatter.
  const int64_t threads = at::get_num_threads();
  std::vector<T> dp_partial(threads * B * Nk, T(0));
  T* gmv = grad_mv.mutable_data_ptr<T>();
  at::parallel_for(0, B * Cv, row_grain(N * k), [&](int64_t begin, int64_t end) {
    T* dp = dp_partial.data() + at::get_thread_num() * B * Nk;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Cv, c = task % Cv;
      const T* row = value.row(b, c);
      for (int64_t i = 0; i < M; i += 64 / sizeof(T)) __builtin_prefetch(row + i * value.s2);
      T* grow = gmv + task * M;
      std::fill(grow, grow + M, T(0));  // zeroing here also brings the row into cache
      const T* gc = grad.row(b, c);
      const int64_t* ib = idx + b * Nk;
      const T* wb = w + b * Nk;
      T* dpb = dp + b * Nk;
      for (int64_t j = 0; j < N; ++j) {
        const T gj = gc[j * grad.s2];
        for (int64_t t = j * k; t < j * k + k; ++t) {
          const int64_t i = ib[t];
          dpb[t] += gj * row[i * value.s2];
          grow[i] += wb[t] * gj;
        }
      }
    }
  });
  // ds_jt = w_jt (dp_jt - sum_t' w_jt' dp_jt'), into the first partial buffer.
  T* ds = dp_partial.data();
  for (int64_t p = 1; p < threads; ++p)
    for (int64_t t = 0; t < B * Nk; ++t) ds[t] += dp_partial[p * B * Nk + t];
  for (int64_t q = 0; q < B * N; ++q) {
    T* d = ds + q * k;
    const T* wq = w + q * k;
    T dot = 0;
    for (int64_t t = 0; t < k; ++t) dot += wq[t] * d[t];
    for (int64_t t = 0; t < k; ++t) d[t] = wq[t] * (d[t] - dot);
  }
  // Pass 2 over the channel rows of mk: grad_qk gathers, grad_mk scatters.
  T* gqk = grad_qk.mutable_data_ptr<T>();
  T* gmk = grad_mk.mutable_data_ptr<T>();
  at::parallel_for(0, B * Ck, row_grain(N * k), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Ck, c = task % Ck;
      const T* row = key.row(b, c);
      const T* qrow = query.row(b, c);
      T* grow = gmk + task * M;
      std::fill(grow, grow + M, T(0));
      const int64_t* ib = idx + b * Nk;
      const T* dsb = ds + b * Nk;
      T* gq = gqk + task * N;
      for (int64_t j = 0; j < N; ++j) {
        const T aq = a * qrow[j * query.s2];
        T acc = 0;
        for (int64_t t = j * k; t < j * k + k; ++t) {
          const int64_t i = ib[t];
          const T m = row[i * key.s2];
          acc += dsb[t] * m;
          grow[i] += dsb[t] * (aq - two_scale * m);
        }
        gq[j] = a * acc;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_read_topk_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query_key, const at::Tensor& memory_key,
    const at::Tensor& memory_value, const at::Tensor& indices, const at::Tensor& weights, double scale) {
  constexpr const char* op = "memory_read_topk_backward";
  check_backward_inputs(op, grad_out, query_key, memory_key, memory_value);
  const int64_t B = query_key.size(0), N = query_key.size(2);
  TORCH_CHECK(indices.dim() == 3 && indices.size(0) == B && indices.size(1) == N && indices.scalar_type() == at::kLong,
              op, ": indices must be int64 (B, N, k), got ", indices.scalar_type(), " ", indices.sizes());
  TORCH_CHECK(weights.sizes() == indices.sizes(), op, ": weights must have the shape of indices ", indices.sizes(),
              ", got ", weights.sizes());
  c10::NoGradGuard no_grad;
  const at::Tensor qk = compute_tensor(query_key), mk = compute_tensor(memory_key), mv = compute_tensor(memory_value);
  const at::Tensor g = compute_tensor(grad_out).to(qk.scalar_type());
  const at::Tensor idx = indices.contiguous(), w = weights.to(qk.scalar_type()).contiguous();
  return input_gradients(qk, mk, mv, query_key.scalar_type(), B * N > 0 && idx.size(2) > 0, /*accumulates=*/false,
                         [&](at::Tensor& grad_qk, at::Tensor& grad_mk, at::Tensor& grad_mv) {
                           AT_DISPATCH_FLOATING_TYPES(qk.scalar_type(), "memory_read_topk_backward_cpu", [&] {
                             topk_backward_impl<scalar_t>(g, qk, mk, mv, idx, w, scale, grad_qk, grad_mk, grad_mv);
                           });
                         });
}

}  // namespace
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
