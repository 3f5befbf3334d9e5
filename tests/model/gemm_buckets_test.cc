// GemmRowBucket / GemmRowBuckets (model/gemm_buckets.h): every count maps to
// a bucket at or above it and at most 25% above, buckets are their own
// buckets, the mapping never decreases, and the bucket list is short.
#include "model/gemm_buckets.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace asymcache::model {
namespace {

TEST(GemmBucketsTest, SmallCountsAreExact) {
  for (int64_t n = 1; n <= kExactGemmRows; ++n) EXPECT_EQ(GemmRowBucket(n), n);
  EXPECT_EQ(GemmRowBucket(17), 20);
  EXPECT_EQ(GemmRowBucket(100), 112);
  EXPECT_EQ(GemmRowBucket(2048), 2048);
  EXPECT_EQ(GemmRowBucket(2049), 2560);
}

TEST(GemmBucketsTest, BucketsCoverEveryCountWithinAQuarter) {
  int64_t previous = 0;
  for (int64_t n = 1; n <= 70000; ++n) {
    const int64_t b = GemmRowBucket(n);
    ASSERT_GE(b, n);
    ASSERT_LE(4 * b, 5 * n) << n;  // at most 25% above
    ASSERT_GE(b, previous) << n;
    ASSERT_EQ(GemmRowBucket(b), b) << n;
    previous = b;
  }
}

TEST(GemmBucketsTest, TheListIsEveryDistinctBucketInOrder) {
  const std::vector<int64_t> buckets = GemmRowBuckets(16384);
  EXPECT_EQ(buckets.size(), 56u);
  EXPECT_EQ(buckets.front(), 1);
  EXPECT_EQ(buckets.back(), 16384);
  for (size_t i = 1; i < buckets.size(); ++i) {
    EXPECT_LT(buckets[i - 1], buckets[i]);
    EXPECT_EQ(GemmRowBucket(buckets[i - 1] + 1), buckets[i]);  // nothing in between skipped
  }
  // A bound between buckets ends with the bucket that serves it.
  EXPECT_EQ(GemmRowBuckets(8000).back(), 8192);
  EXPECT_TRUE(GemmRowBuckets(0).empty());
}

}  // namespace
}  // namespace asymcache::model
