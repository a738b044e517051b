// CPU kernels of the dense L2-affinity memory read (top_k = None; schemas and math:
// csrc/memory_read.cpp). Per batch item, s_ij = a <mk_i, qk_j> + bias_i with a = 2 scale and
// bias_i = -scale |mk_i|^2; w_:j = softmax_i(s_:j); out_:j = sum_i w_ij mv_:i.
//
// Forward: flash-style online softmax over memory tiles, the FLOPs in two GEMMs per
//   (memory tile x query block) through at::mm (MKL, single-threaded inside our parallel_for):
//     S = mk_tile^T qk_block (mt, n), memory-major so the per-query max/sum vectorise across
//     queries; P = exp(S - running max) with an AVX-512 exp; acc (Cv, n) = acc * rescale + mv_tile P.
//   Threads own query blocks (no reduction); memory tiles run outermost, so a tile of mk/mv is read
//   from DRAM once and reused from cache by the thread's query blocks. Extra memory: the (Cv, N)
//   accumulators (like the output), O(N) softmax statistics and a (mt, nq) scratch per thread.
// Backward: recompute P = exp(S - lse) per tile; dP = mv^T g, dS = P (dP - <g, out>);
//   grad_mv += g P^T, grad_mk += a qk dS^T - 2 scale mk rowsum(dS), grad_qk += a mk dS.
//   Threads own memory tiles (grad_mk/grad_mv columns); grad_qk is reduced over threads.
//
// Tile sizes (measured with 1 thread at T = 1 and 5, O = 1 and 4; all blocks are multiples of
// 16, see gemm_block):
// - forward: a thread's queries form as few blocks as possible (N = 1620 on two threads:
//   816 + 804), since MKL re-packs the (Cv, mt) value tile for every block; 256 memory entries
//   per tile keep the (mt, n) probability tile within the 1 MB L2 (256 x 816 x 4 B = 0.8 MB).
//   Versus 128 x 1024 tiles: 69 -> 86 GFLOP/s per core (O = 1, T = 1), MKL's mm peak being ~90.
// - backward: 512 queries x 256 memory entries (two such tiles, P and dP, 1 MB): the K = nq
//   GEMMs (grad_mv, grad_mk) want nq large, the L2 wants the tiles small. Versus 128 x 1024:
//   ~20 % faster (O = 1, T = 1 and 5).
//
// float16/bfloat16 inputs are computed in float32 (converted once per call).
//
// Compiled once per instruction set into namespace VOS_CPU_ISA (memory_read_dense_kernel.cpp,
// cpu_isa_variants.h): no include guard, every header included at the top.
#include <ATen/Dispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>

#include <limits>
#include <tuple>
#include <vector>

#include "memory_read_common.h"

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace {

using namespace memory_read_cpu;

constexpr int64_t kForwardQueries = 1024;  // forward: queries per block (at most)
constexpr int64_t kForwardTile = 256;      // forward: memory entries per tile (at most)
constexpr int64_t kBackwardQueries = 512;  // backward: queries per block (at most)
constexpr int64_t kBackwardTile = 256;     // backward: memory entries per tile (at most)

// Blocks of at most `max_block` (an even split over the threads, see even_block) rounded up to a
// multiple of 16: MKL's sgemm runs ~20 % slower on C (Cv, 116) than on C (Cv, 128).
int64_t gemm_block(int64_t n, int64_t max_block, int64_t work) {
  return std::min(n, (even_block(n, max_block, work) + 15) / 16 * 16);
}

// The running max of a query moves only when a tile's max exceeds it by more than this (lazy
// rescaling): P = exp(s - running max) then stays <= e^8 (float32 has room to spare) and the
// (Cv, n) accumulators, which do not fit in L2 for several objects, are rescaled only when a
// query's max really jumps (rarely after the first tiles) instead of at almost every tile.
constexpr double kRescaleSlack = 8.0;

// One (mt, n) memory-major score tile of the online softmax, in place: s_ij = a s_ij + bias_i,
// the running per-query max `run_max` (lazily, see kRescaleSlack) and sum `run_sum` updated, NaN
// flags raised, the tile turned into P = exp(s - run_max) and `rescale` = exp(old - new max).
// Returns whether any rescale differs from 1 (the accumulators then need it). `shift` is (n)
// scratch.
template <typename T>
bool online_softmax_tile(T* s, const T* bias, T a, int64_t mt, int64_t n, T* run_max, T* run_sum, char* nan,
                         T* rescale, T* shift) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  std::fill(shift, shift + n, neg_inf);
  for (int64_t i = 0; i < mt; ++i) {  // plain loops: the compiler vectorises them across queries
    T* si = s + i * n;
    const T bi = bias[i];
    for (int64_t j = 0; j < n; ++j) {
      const T v = a * si[j] + bi;
      si[j] = v;
      shift[j] = v > shift[j] ? v : shift[j];
      nan[j] |= v != v;
    }
  }
  bool any_rescale = false;
  for (int64_t j = 0; j < n; ++j) {
    // (the first finite tile max always moves it: -inf + slack = -inf)
    const T new_max = shift[j] > run_max[j] + static_cast<T>(kRescaleSlack) ? shift[j] : run_max[j];
    rescale[j] = new_max == run_max[j] ? T(1) : exp_scalar(run_max[j] - new_max);
    any_rescale |= rescale[j] != T(1);
    run_sum[j] *= rescale[j];
    run_max[j] = new_max;
    shift[j] = new_max == neg_inf ? T(0) : new_max;  // all scores -inf so far: exp(-inf - 0) = 0
  }
  for (int64_t i = 0; i < mt; ++i) exp_shifted_accumulate(s + i * n, shift, run_sum, n);
  return any_rescale;
}

template <typename T>
void dense_forward_impl(const at::Tensor& qk, const at::Tensor& mk, const at::Tensor& mv, double scale,
                        at::Tensor& out, at::Tensor& lse) {
  const int64_t B = qk.size(0), N = qk.size(2), M = mk.size(2), Cv = mv.size(1);
  const at::Tensor bias = l2_bias<T>(mk, scale);
  const T a = static_cast<T>(2.0 * scale);
  const int64_t nq = gemm_block(N, kForwardQueries, N * M * qk.size(1)), blocks = (N + nq - 1) / nq;
  // Accumulators, one contiguous (Cv, nq) block per query block: O(N Cv) like the output.
  at::Tensor acc = at::empty({blocks, Cv, nq}, qk.options());
  std::vector<T> run_max(N), run_sum(N);
  std::vector<char> nan(N);
  T* out_ptr = out.mutable_data_ptr<T>();
  T* lse_ptr = lse.mutable_data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor qk_b = qk.select(0, b), mk_b = mk.select(0, b), mv_b = mv.select(0, b);
    const T* bias_b = bias.const_data_ptr<T>() + b * M;
    std::fill(run_max.begin(), run_max.end(), -std::numeric_limits<T>::infinity());
    std::fill(run_sum.begin(), run_sum.end(), T(0));
    std::fill(nan.begin(), nan.end(), 0);
    at::parallel_for(0, blocks, 1, [&](int64_t q0, int64_t q1) {
      at::Tensor scratch = at::empty({kForwardTile * nq}, qk.options());
      std::vector<T> rescale(nq), shift(nq);
      for (int64_t m0 = 0; m0 < M; m0 += kForwardTile) {
        const int64_t mt = std::min(kForwardTile, M - m0);
        const at::Tensor key_tile_t = mk_b.narrow(1, m0, mt).t(), value_tile = mv_b.narrow(1, m0, mt);
        for (int64_t qb = q0; qb < q1; ++qb) {
          const int64_t j0 = qb * nq, n = std::min(nq, N - j0);
          at::Tensor p = scratch.narrow(0, 0, mt * n).view({mt, n});
          at::mm_out(p, key_tile_t, qk_b.narrow(1, j0, n));  // (mt, n): memory-major
          at::Tensor acc_blk = acc.select(0, qb).narrow(1, 0, n);  // (Cv, n), row stride nq
          const bool any_rescale = online_softmax_tile<T>(p.data_ptr<T>(), bias_b + m0, a, mt, n, run_max.data() + j0,
                                                          run_sum.data() + j0, nan.data() + j0, rescale.data(),
                                                          shift.data());
          if (m0 == 0) {  // the first tile initialises the accumulators (no zero fill)
            at::mm_out(acc_blk, value_tile, p);
            continue;
          }
          if (any_rescale) {
            T* acc_ptr = acc_blk.data_ptr<T>();
            for (int64_t c = 0; c < Cv; ++c)
              for (int64_t j = 0; j < n; ++j) acc_ptr[c * nq + j] *= rescale[j];
          }
          acc_blk.addmm_(value_tile, p);  // (Cv, n) += (Cv, mt) @ (mt, n)
        }
      }
      for (int64_t qb = q0; qb < q1; ++qb) {
        const int64_t j0 = qb * nq, n = std::min(nq, N - j0);
        const T* acc_blk = acc.select(0, qb).const_data_ptr<T>();
        for (int64_t j = j0; j < j0 + n; ++j) {
          lse_ptr[b * N + j] = nan[j] ? std::numeric_limits<T>::quiet_NaN() : run_max[j] + std::log(run_sum[j]);
          run_sum[j] = nan[j] ? std::numeric_limits<T>::quiet_NaN() : T(1) / run_sum[j];
        }
        for (int64_t c = 0; c < Cv; ++c) {
          T* o = out_ptr + (b * Cv + c) * N + j0;
          for (int64_t j = 0; j < n; ++j) o[j] = acc_blk[c * nq + j] * run_sum[j0 + j];
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> memory_read_dense_forward_cpu(const at::Tensor& query_key,
                                                                 const at::Tensor& memory_key,
                                                                 const at::Tensor& memory_value, double scale) {
  check_inputs("memory_read_dense_forward", query_key, memory_key, memory_value);
  c10::NoGradGuard no_grad;
  const at::Tensor qk = compute_tensor(query_key), mk = compute_tensor(memory_key), mv = compute_tensor(memory_value);
  const int64_t B = qk.size(0), N = qk.size(2), Cv = mv.size(1);
  at::Tensor out = at::empty({B, Cv, N}, qk.options());
  at::Tensor lse = at::empty({B, N}, qk.options());
  if (B * N > 0) {
    AT_DISPATCH_FLOATING_TYPES(qk.scalar_type(), "memory_read_dense_forward_cpu", [&] {
      dense_forward_impl<scalar_t>(qk, mk, mv, scale, out, lse);
    });
  }
  return {out.to(query_key.scalar_type()), lse};
}

template <typename T>
void dense_backward_impl(const at::Tensor& g, const at::Tensor& qk, const at::Tensor& mk, const at::Tensor& mv,
                         const at::Tensor& out, const at::Tensor& lse, double scale, at::Tensor& grad_qk,
                         at::Tensor& grad_mk, at::Tensor& grad_mv) {
  const int64_t B = qk.size(0), Ck = qk.size(1), N = qk.size(2), M = mk.size(2);
  const at::Tensor bias = l2_bias<T>(mk, scale);
  const T a = static_cast<T>(2.0 * scale), two_scale = static_cast<T>(2.0 * scale);
  const int64_t work = N * M * (Ck + mv.size(1));
  const int64_t nq = gemm_block(N, kBackwardQueries, work);
  const int64_t mt_max = gemm_block(M, kBackwardTile, work), tiles = (M + mt_max - 1) / mt_max;
  const int64_t threads = at::get_num_threads();
  // delta_j = <g_j, out_j>: the softmax-backward correction, once per query.
  const at::Tensor delta = at::mul(g, out).sum(1);  // (B, N)
  at::Tensor grad_qk_partial = at::zeros({threads, B, Ck, N}, qk.options());
  const View3<T> key(mk);
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor qk_b = qk.select(0, b), mk_b = mk.select(0, b), mv_b = mv.select(0, b), g_b = g.select(0, b);
    const T* bias_b = bias.const_data_ptr<T>() + b * M;
    const T* lse_b = lse.const_data_ptr<T>() + b * N;
    const T* delta_b = delta.const_data_ptr<T>() + b * N;
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor gq = grad_qk_partial.select(0, at::get_thread_num()).select(0, b);
      at::Tensor s_buf = at::empty({mt_max * nq}, qk.options()), dp_buf = at::empty({mt_max * nq}, qk.options());
      std::vector<T> rowsum(mt_max);
      for (int64_t tile = t0; tile < t1; ++tile) {
        const int64_t m0 = tile * mt_max, mt = std::min(mt_max, M - m0);
        const at::Tensor key_tile = mk_b.narrow(1, m0, mt), value_tile = mv_b.narrow(1, m0, mt);
        at::Tensor gmk_tile = grad_mk.select(0, b).narrow(1, m0, mt), gmv_tile = grad_mv.select(0, b).narrow(1, m0, mt);
        std::fill(rowsum.begin(), rowsum.end(), T(0));
        for (int64_t j0 = 0; j0 < N; j0 += nq) {
          const int64_t n = std::min(nq, N - j0);
          at::Tensor p = s_buf.narrow(0, 0, mt * n).view({mt, n}), dp = dp_buf.narrow(0, 0, mt * n).view({mt, n});
          at::mm_out(p, key_tile.t(), qk_b.narrow(1, j0, n));
          at::mm_out(dp, value_tile.t(), g_b.narrow(1, j0, n));
          T* pp = p.data_ptr<T>();
          T* dd = dp.data_ptr<T>();
          for (int64_t i = 0; i < mt; ++i)
            rowsum[i] += softmax_backward_row(pp + i * n, dd + i * n, a, bias_b[m0 + i], lse_b + j0, delta_b + j0, n);
          gmv_tile.addmm_(g_b.narrow(1, j0, n), p.t());                       // (Cv, mt) += g P^T
          gmk_tile.addmm_(qk_b.narrow(1, j0, n), dp.t(), 1, a);               // (Ck, mt) += a qk dS^T
          gq.narrow(1, j0, n).addmm_(key_tile, dp, 1, a);                      // (Ck, n) += a mk dS
        }
        for (int64_t c = 0; c < Ck; ++c) {
          T* gm = gmk_tile.select(0, c).data_ptr<T>();
          const T* mrow = key.row(b, c) + m0 * key.s2;
          for (int64_t i = 0; i < mt; ++i) gm[i] -= two_scale * mrow[i * key.s2] * rowsum[i];
        }
      }
    });
  }
  at::sum_out(grad_qk, grad_qk_partial, 0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_read_dense_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query_key, const at::Tensor& memory_key,
    const at::Tensor& memory_value, const at::Tensor& out, const at::Tensor& lse, double scale) {
  constexpr const char* op = "memory_read_dense_backward";
  check_backward_inputs(op, grad_out, query_key, memory_key, memory_value);
  const int64_t B = query_key.size(0), N = query_key.size(2);
  TORCH_CHECK(out.sizes() == grad_out.sizes(), op, ": out must have the shape of grad_out ", grad_out.sizes(),
              ", got ", out.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == B && lse.size(1) == N, op, ": lse must be (B, N) = (", B, ", ", N,
              "), got ", lse.sizes());
  c10::NoGradGuard no_grad;
  const at::Tensor qk = compute_tensor(query_key), mk = compute_tensor(memory_key), mv = compute_tensor(memory_value);
  const auto ct = qk.scalar_type();
  const at::Tensor g = compute_tensor(grad_out).to(ct), o = compute_tensor(out).to(ct), l = lse.detach().to(ct).contiguous();
  return input_gradients(qk, mk, mv, query_key.scalar_type(), B * N > 0, /*accumulates=*/true,
                         [&](at::Tensor& grad_qk, at::Tensor& grad_mk, at::Tensor& grad_mv) {
                           AT_DISPATCH_FLOATING_TYPES(ct, "memory_read_dense_backward_cpu", [&] {
                             dense_backward_impl<scalar_t>(g, qk, mk, mv, o, l, scale, grad_qk, grad_mk, grad_mv);
                           });
                         });
}

}  // namespace
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
