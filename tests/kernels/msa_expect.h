// GoogleTest helpers shared by the MSA CPU and CUDA tests: a fixture with a
// fresh logged seed, LSE against the reference within a tolerance, and rows
// that see no key written as exact zeros.
//
// Header-only; call from inside a TEST body (uses ADD_FAILURE/ASSERT).
#ifndef ASYMCACHE_TESTS_KERNELS_MSA_EXPECT_H_
#define ASYMCACHE_TESTS_KERNELS_MSA_EXPECT_H_

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::msa::testing {

// A fresh seeded generator per test (ASYMCACHE_TEST_SEED replays one); the
// seed goes to stdout, the test's XML properties and failure messages.
class SeededTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = FreshSeed();
    rng_.seed(seed_);
    std::printf("[ seed     ] %llu\n", static_cast<unsigned long long>(seed_));
    RecordProperty("seed", std::to_string(seed_));
  }
  std::string SeedNote() const { return absl::StrCat("seed=", seed_); }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

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
