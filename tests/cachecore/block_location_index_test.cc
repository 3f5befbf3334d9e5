#include "cachecore/block_location_index.h"

#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

BlockHash H(uint64_t i) { return BlockHash{i * 0x9e3779b97f4a7c15ULL + 1, i}; }

TEST(BlockLocationIndexOptionsTest, RejectsBadValuesNamingTheField) {
  BlockLocationIndexOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.shards = 3;
  EXPECT_NE(o.Validate().message().find("shards"), std::string::npos);
  o = {};
  o.max_members = 0;
  EXPECT_NE(o.Validate().message().find("max_members"), std::string::npos);
  o = {};
  o.max_entries = 0;
  EXPECT_NE(o.Validate().message().find("max_entries"), std::string::npos);
  EXPECT_EQ(BlockLocationIndex::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BlockLocationIndexTest, StoredRemovedAndLookup) {
  BlockLocationIndex index({});
  EXPECT_TRUE(index.AddStored(0, H(1), 10, 0));
  EXPECT_TRUE(index.AddStored(0, H(2), 11, 16));
  EXPECT_TRUE(index.AddStored(1, H(2), 7, 16));
  EXPECT_EQ(index.size(), 3);
  EXPECT_EQ(index.MemberEntries(0), 2);
  EXPECT_EQ(index.MemberEntries(1), 1);

  std::vector<BlockHolders> out;
  index.Lookup({H(1), H(3), H(2)}, &out);
  ASSERT_EQ(out.size(), 3u);
  ASSERT_EQ(out[0].size(), 1u);
  EXPECT_EQ(out[0][0].member, 0u);
  EXPECT_EQ(out[0][0].block, 10);
  EXPECT_TRUE(out[1].empty());
  ASSERT_EQ(out[2].size(), 2u);
  EXPECT_EQ(out[2][1].position, 16);

  EXPECT_TRUE(index.ApplyRemoved(0, H(2), 11));
  EXPECT_FALSE(index.ApplyRemoved(0, H(2), 11));  // already gone
  EXPECT_FALSE(index.ApplyRemoved(2, H(1), 10));  // member 2 never held it
  index.Lookup({H(2)}, &out);
  ASSERT_EQ(out[0].size(), 1u);
  EXPECT_EQ(out[0][0].member, 1u);
  EXPECT_EQ(index.size(), 2);
}

// A REMOVED of an evicted copy that arrives after the STORED of a newer copy
// of the same hash must not drop the newer copy.
TEST(BlockLocationIndexTest, StaleRemovedIsIgnored) {
  BlockLocationIndex index({});
  ASSERT_TRUE(index.AddStored(3, H(9), /*block=*/5, 0));
  ASSERT_TRUE(index.AddStored(3, H(9), /*block=*/8, 0));  // newer copy replaces
  EXPECT_EQ(index.size(), 1);
  EXPECT_FALSE(index.ApplyRemoved(3, H(9), 5));  // stale
  EXPECT_EQ(index.stale_removed(), 1);
  std::vector<BlockHolders> out;
  index.Lookup({H(9)}, &out);
  ASSERT_EQ(out[0].size(), 1u);
  EXPECT_EQ(out[0][0].block, 8);
  EXPECT_TRUE(index.ApplyRemoved(3, H(9), 8));
  EXPECT_EQ(index.size(), 0);
  EXPECT_EQ(index.MemberEntries(3), 0);
}

TEST(BlockLocationIndexTest, RemoveMemberDropsOnlyThatMember) {
  BlockLocationIndexOptions o;
  o.shards = 4;
  BlockLocationIndex index(o);
  for (uint64_t i = 0; i < 1000; ++i) {
    ASSERT_TRUE(index.AddStored(static_cast<MemberSlot>(i % 3), H(i), static_cast<BlockId>(i), 0));
    if (i % 2 == 0) {
      ASSERT_TRUE(index.AddStored(7, H(i), 1, 0));
    }
  }
  EXPECT_EQ(index.size(), 1500);
  EXPECT_EQ(index.RemoveMember(7), 500);
  EXPECT_EQ(index.MemberEntries(7), 0);
  EXPECT_EQ(index.size(), 1000);
  EXPECT_EQ(index.RemoveMember(1), 333);
  std::vector<BlockHolders> out;
  index.Lookup({H(1), H(2), H(3)}, &out);
  EXPECT_TRUE(out[0].empty());   // member 1 only
  ASSERT_EQ(out[1].size(), 1u);  // member 2, member 7 gone
  EXPECT_EQ(out[1][0].member, 2u);
  EXPECT_EQ(out[2][0].member, 0u);
}

TEST(BlockLocationIndexTest, BoundedEntriesDropNewHashesButStillUpdateKnownOnes) {
  BlockLocationIndexOptions o;
  o.max_entries = 3;
  BlockLocationIndex index(o);
  EXPECT_TRUE(index.AddStored(0, H(1), 1, 0));
  EXPECT_TRUE(index.AddStored(0, H(2), 2, 16));
  EXPECT_TRUE(index.AddStored(1, H(1), 3, 0));
  EXPECT_FALSE(index.AddStored(1, H(2), 4, 16));  // full: new entry dropped
  EXPECT_EQ(index.dropped_stored(), 1);
  EXPECT_TRUE(index.AddStored(0, H(2), 9, 16));   // same (hash, member): updated in place
  EXPECT_EQ(index.size(), 3);
  EXPECT_TRUE(index.ApplyRemoved(0, H(2), 9));
  EXPECT_TRUE(index.AddStored(1, H(2), 4, 16));   // room again
  EXPECT_EQ(index.MemberEntries(1), 2);
}

// Lookup answers in request order whatever the shard grouping, under
// concurrent writers (run under TSan/ASan in the sanitizer builds).
TEST(BlockLocationIndexTest, ConcurrentEventsAndLookups) {
  BlockLocationIndex index({});
  constexpr int kPerThread = 5000;
  std::vector<std::thread> writers;
  for (MemberSlot m = 0; m < 4; ++m) {
    writers.emplace_back([&index, m] {
      for (int i = 0; i < kPerThread; ++i) {
        index.AddStored(m, H(static_cast<uint64_t>(i)), i, int64_t{i} * 16);
        if (i % 4 == 0) index.ApplyRemoved(m, H(static_cast<uint64_t>(i)), i);
      }
    });
  }
  std::vector<BlockHash> hashes;
  for (int i = 0; i < 256; ++i) hashes.push_back(H(static_cast<uint64_t>(i)));
  std::vector<BlockHolders> out;
  for (int round = 0; round < 50; ++round) {
    index.Lookup(hashes, &out);
    for (size_t i = 0; i < hashes.size(); ++i) {
      for (const BlockLocation& l : out[i]) {
        EXPECT_EQ(l.block, static_cast<BlockId>(i));
        EXPECT_EQ(l.position, static_cast<int64_t>(i) * 16);
      }
    }
  }
  for (auto& t : writers) t.join();
  EXPECT_EQ(index.size(), 4 * (kPerThread - kPerThread / 4));
  index.Lookup(hashes, &out);
  for (size_t i = 0; i < hashes.size(); ++i) EXPECT_EQ(out[i].size(), i % 4 == 0 ? 0u : 4u);
}

}  // namespace
}  // namespace asymcache
