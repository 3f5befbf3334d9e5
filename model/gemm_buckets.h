// GEMM row buckets: the token counts whose cuBLASLt algorithm a linear layer
// reuses for every count in between (model/cuda_gemm.cuh).
//
// What: a step's GEMMs have n = the step's query tokens, which adaptive
// chunking makes vary step to step. The first step of each new n paid
// cuBLASLt's heuristic query and the chosen kernels' first load: ~16 ms over
// its repeats on an H100 (docs/results/first_step_h100/). The CUDA backend
// runs every bucket once at creation (warm-up) and can reuse a bucket's
// algorithm for every n in it (CudaBackendOptions::gemm_row_buckets). Counts
// up to kExactGemmRows are their own bucket; above, each octave
// [2^e, 2^(e+1)) has four buckets, so a bucket is at most 25% above any count
// it serves and 1..16384 rows fall into 56 buckets.
//
// Contract: header only, no CUDA; GemmRowBucket(n) >= n for n >= 1, is
// non-decreasing in n, and is its own bucket.
#ifndef ASYMCACHE_MODEL_GEMM_BUCKETS_H_
#define ASYMCACHE_MODEL_GEMM_BUCKETS_H_

#include <cstdint>
#include <vector>

namespace asymcache::model {

inline constexpr int64_t kExactGemmRows = 16;

// The bucket of `n` rows (n <= 0 returns n).
inline int64_t GemmRowBucket(int64_t n) {
  if (n <= kExactGemmRows) return n;
  int64_t octave = 1;  // largest power of two <= n
  while (octave <= n / 2) octave *= 2;
  const int64_t step = octave / 4;
  return (n + step - 1) / step * step;
}

// Every bucket of 1..max_rows, ascending (the counts a warm-up runs); the
// last may exceed max_rows.
inline std::vector<int64_t> GemmRowBuckets(int64_t max_rows) {
  std::vector<int64_t> buckets;
  for (int64_t n = 1; n <= max_rows;) {
    const int64_t b = GemmRowBucket(n);
    buckets.push_back(b);
    n = b + 1;
  }
  return buckets;
}

}  // namespace asymcache::model

#endif  // ASYMCACHE_MODEL_GEMM_BUCKETS_H_
