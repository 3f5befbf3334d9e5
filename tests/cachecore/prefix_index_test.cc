#include "cachecore/prefix_index.h"

#include <random>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace asymcache {
namespace {

using ::testing::HasSubstr;
using Entry = PrefixIndex::Entry;

BlockHash H(uint64_t x) { return BlockHash{x * 0x9E3779B97F4A7C15ull, x}; }

TEST(PrefixIndexTest, InsertLookupEraseReplace) {
  PrefixIndex index;
  EXPECT_FALSE(index.Lookup(H(1)).has_value());
  ASSERT_TRUE(index.Insert(H(1), Entry{5, 32}).ok());
  EXPECT_TRUE(index.Insert(H(1), Entry{5, 32}).ok());  // idempotent
  const absl::Status clash = index.Insert(H(1), Entry{6, 32});
  EXPECT_EQ(clash.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(clash.message(), HasSubstr("block 5"));
  EXPECT_EQ(index.Lookup(H(1)), (Entry{5, 32}));
  EXPECT_FALSE(index.Replace(H(1), 6, Entry{7, 32}));
  EXPECT_TRUE(index.Replace(H(1), 5, Entry{7, 32}));
  EXPECT_EQ(index.Lookup(H(1))->id, 7);
  EXPECT_FALSE(index.EraseIf(H(1), 5));  // not the current block
  EXPECT_EQ(index.size(), 1u);
  EXPECT_TRUE(index.EraseIf(H(1), 7));
  EXPECT_EQ(index.size(), 0u);
  EXPECT_FALSE(index.EraseIf(H(1), 7));
}

TEST(PrefixIndexTest, LookupManyAgreesWithLookup) {
  PrefixIndex index;
  std::mt19937 rng(11);
  std::vector<BlockHash> probes;
  for (uint64_t i = 0; i < 3000; ++i) {
    if (rng() % 2) {
      ASSERT_TRUE(index.Insert(H(i), Entry{static_cast<BlockId>(i), int64_t(i) * 16}).ok());
    }
    probes.push_back(H(i));
  }
  std::shuffle(probes.begin(), probes.end(), rng);
  for (size_t n : {size_t{0}, size_t{3}, probes.size()}) {
    std::vector<Entry> out;
    index.LookupMany(absl::MakeConstSpan(probes).first(n), &out);
    ASSERT_EQ(out.size(), n);
    for (size_t i = 0; i < n; ++i) {
      const std::optional<Entry> one = index.Lookup(probes[i]);
      ASSERT_EQ(one.has_value(), out[i].id != kNoBlock);
      if (one) {
        ASSERT_EQ(*one, out[i]);
      }
    }
  }
  EXPECT_EQ(index.Snapshot().size(), index.size());
}

TEST(PrefixIndexTest, ConcurrentWritersOnDisjointKeys) {
  PrefixIndex index;
  constexpr int kThreads = 4, kPerThread = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&index, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const uint64_t key = uint64_t(t) * kPerThread + i;
        ASSERT_TRUE(index.Insert(H(key), Entry{static_cast<BlockId>(key), 0}).ok());
        if (i % 2) {
          ASSERT_TRUE(index.EraseIf(H(key), static_cast<BlockId>(key)));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(index.size(), size_t{kThreads} * kPerThread / 2);
}

}  // namespace
}  // namespace asymcache
