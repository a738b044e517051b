// Pieces shared by the CPU aggregation kernels (soft_aggregate, min_background_aggregate).
//
// Both kernels walk the pixels in chunks of kChunk, build the O + 1 odds of every pixel of a
// chunk in a scratch of (O + 1) x kChunk accumulators, and end the same way: the output is the
// odds normalised over the channels, out_j = odds_j / sum_i odds_i.
//
// Included by the kernel bodies, once per instruction-set namespace (no include guard).

#include <algorithm>
#include <cstdint>

namespace vos_kernels {
namespace VOS_CPU_ISA {
namespace aggregate_cpu {

constexpr int64_t kChunk = 256;  // pixels per task: (O+1) * 256 floats of scratch fit in L1/L2

template <typename acc_t>
inline acc_t clamp_eps(acc_t x, acc_t lo, acc_t hi) {
  return std::min(std::max(x, lo), hi);
}

// odds: O + 1 channels of n <= kChunk pixels, channel j at odds + j * kChunk; inv_sum: n
// scratch. Writes y[j * S + i] = odds_j[i] / sum_j odds_j[i], the sum taken in the channel order
// 0, 1, ..., O (the public codes' order, so results match them to the last bit).
template <typename acc_t, typename scalar_t>
inline void write_normalised_odds(const acc_t* odds, int64_t O, int64_t n, acc_t* inv_sum, scalar_t* y,
                                  int64_t S) {
  for (int64_t i = 0; i < n; ++i) inv_sum[i] = odds[i];
  for (int64_t j = 1; j <= O; ++j) {
    const acc_t* oj = odds + j * kChunk;
    for (int64_t i = 0; i < n; ++i) inv_sum[i] += oj[i];
  }
  for (int64_t i = 0; i < n; ++i) inv_sum[i] = acc_t(1) / inv_sum[i];
  for (int64_t j = 0; j <= O; ++j) {
    const acc_t* oj = odds + j * kChunk;
    scalar_t* yj = y + j * S;
    for (int64_t i = 0; i < n; ++i) yj[i] = static_cast<scalar_t>(oj[i] * inv_sum[i]);
  }
}

}  // namespace aggregate_cpu
}  // namespace VOS_CPU_ISA
}  // namespace vos_kernels
