// GoogleTest checks shared by the MSA CPU and CUDA tests: LSE against the
// reference within a tolerance, and rows that see no key written as exact zeros.
//
// Header-only; call from inside a TEST body (uses ADD_FAILURE/ASSERT).
#ifndef ASYMCACHE_TESTS_KERNELS_MSA_EXPECT_H_
#define ASYMCACHE_TESTS_KERNELS_MSA_EXPECT_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gtest/gtest.h"

namespace asymcache::msa::testing {

// Each lse[i] must equal ref_lse[i] within abs_tol + rel_tol * |ref|; a -inf
// reference (no visible key) must be exactly -inf. Reports the first five
// mismatches and expects none.
template <typename LseVector>
void ExpectLseMatchesReference(const LseVector& lse, const std::vector<double>& ref_lse,
                               double abs_tol, double rel_tol) {
  ASSERT_EQ(lse.size(), ref_lse.size());
  int64_t mismatches = 0;
  for (size_t i = 0; i < ref_lse.size(); ++i) {
    const double value = lse[i];
    const bool ok = std::isinf(ref_lse[i])
                        ? (value == -std::numeric_limits<double>::infinity())
                        : std::abs(value - ref_lse[i]) <= abs_tol + rel_tol * std::abs(ref_lse[i]);
    if (!ok && ++mismatches <= 5) {
      ADD_FAILURE() << "lse[" << i << "] = " << value << ", reference " << ref_lse[i];
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// Rows whose reference LSE is -inf saw no key: their output must be exactly 0.
inline void ExpectRowsWithoutKeysAreZero(const std::vector<double>& out,
                                         const std::vector<double>& ref_lse, int64_t head_dim) {
  for (size_t row = 0; row < ref_lse.size(); ++row) {
    if (!std::isinf(ref_lse[row])) continue;
    for (int64_t d = 0; d < head_dim; ++d) {
      ASSERT_EQ(out[row * head_dim + d], 0.0) << "row " << row;
    }
  }
}

}  // namespace asymcache::msa::testing

#endif  // ASYMCACHE_TESTS_KERNELS_MSA_EXPECT_H_
