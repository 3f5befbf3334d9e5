#include "cachecore/block_pool.h"

#include <iostream>
#include <map>
#include <random>
#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cachecore/block_hash.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<EvictionPolicy> Lru() {
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy = MakeEvictionPolicy("lru", nullptr);
  EXPECT_TRUE(policy.ok()) << policy.status();
  return *std::move(policy);
}

IndexedBlockInfo Info(BlockId id, uint64_t tag, int64_t position = 0) {
  IndexedBlockInfo info;
  info.id = id;
  info.hash = BlockHash{tag, ~tag};
  info.position = position;
  info.tokens = 16;
  info.owner = 7;
  return info;
}

void ExpectStatsAddUp(const BlockPool& pool) {
  const BlockPool::Stats s = pool.GetStats();
  EXPECT_EQ(s.free + s.writing + s.sealed_evictable + s.pinned + s.in_transfer, s.capacity);
}

class BlockPoolTest : public ::testing::Test {
 protected:
  FakeClock clock_;
};

TEST_F(BlockPoolTest, OptionsValidate) {
  EXPECT_EQ(BlockPoolOptions{0}.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(BlockPoolOptions{-3}.Validate().message(), HasSubstr("capacity_blocks"));
  EXPECT_TRUE(BlockPoolOptions{1}.Validate().ok());
}

TEST_F(BlockPoolTest, LifecycleFreeWritingSealedPinnedEvictableFree) {
  BlockPool pool(BlockPoolOptions{2}, Lru(), &clock_);
  std::vector<EvictedBlock> evicted;
  absl::StatusOr<std::vector<BlockId>> ids = pool.Allocate(1, 7, &evicted);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const BlockId id = (*ids)[0];
  EXPECT_EQ(pool.state(id), BlockState::kWriting);
  {
    absl::StatusOr<BlockPool::PinHandle> writer = pool.Seal(Info(id, 1));
    ASSERT_TRUE(writer.ok()) << writer.status();
    EXPECT_EQ(pool.state(id), BlockState::kPinned);
    EXPECT_EQ(pool.pin_count(id), 1);
    std::optional<BlockPool::PinHandle> reader = pool.PinIfIndexed(id, BlockHash{1, ~uint64_t{1}});
    ASSERT_TRUE(reader.has_value());
    EXPECT_EQ(pool.pin_count(id), 2);
    reader->Reset();
    EXPECT_FALSE(reader->valid());
    EXPECT_EQ(pool.pin_count(id), 1);
    ExpectStatsAddUp(pool);
  }
  EXPECT_EQ(pool.state(id), BlockState::kSealed);
  EXPECT_EQ(pool.GetStats().sealed_evictable, 1);
  pool.WithPolicy([](const EvictionPolicy& p) { EXPECT_EQ(p.evictable_count(), 1u); });

  // Fill the rest: the free block goes first, then the sealed one is evicted.
  ids = pool.Allocate(2, 8, &evicted);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(evicted.size(), 1u);
  EXPECT_EQ(evicted[0].id, id);
  EXPECT_EQ(evicted[0].hash, (BlockHash{1, ~uint64_t{1}}));
  EXPECT_EQ(pool.GetStats().evictions, 1);
  EXPECT_EQ(pool.GetStats().writing, 2);
  // The evicted id was reused: an old index hit must not pin it.
  EXPECT_FALSE(pool.PinIfIndexed(id, BlockHash{1, ~uint64_t{1}}).has_value());
  EXPECT_TRUE(pool.AbortMany(*ids).ok());
  EXPECT_EQ(pool.GetStats().free, 2);
  ExpectStatsAddUp(pool);
}

TEST_F(BlockPoolTest, AllocateIsAllOrNothingAndNeverEvictsPinned) {
  BlockPool pool(BlockPoolOptions{4}, Lru(), &clock_);
  std::vector<EvictedBlock> evicted;
  auto ids = pool.Allocate(4, 1, &evicted);
  ASSERT_TRUE(ids.ok());
  std::vector<IndexedBlockInfo> infos;
  for (int i = 0; i < 4; ++i) infos.push_back(Info((*ids)[i], 100 + i, 16 * i));
  BlockPool::PinSet pins;
  ASSERT_TRUE(pool.SealMany(infos, &pins).ok());
  EXPECT_EQ(pins.size(), 4u);
  // Keep blocks 0 and 1 pinned by a second holder, release the writer pins.
  std::vector<BlockHash> hashes = {infos[0].hash, infos[1].hash};
  std::vector<BlockId> keep = {infos[0].id, infos[1].id};
  BlockPool::PinSet held;
  std::vector<bool> ok;
  EXPECT_EQ(pool.PinIndexedMany(keep, hashes, SequenceId{3}, &held, &ok), 2);
  pins.Reset();
  EXPECT_EQ(pool.GetStats().pinned, 2);
  EXPECT_EQ(pool.GetStats().sealed_evictable, 2);

  const BlockPool::Stats before = pool.GetStats();
  auto fail = pool.Allocate(3, 1, &evicted);
  EXPECT_EQ(fail.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(fail.status().message(), HasSubstr("free=0"));
  EXPECT_THAT(fail.status().message(), HasSubstr("evictable=2"));
  EXPECT_THAT(fail.status().message(), HasSubstr("pinned=2"));
  EXPECT_TRUE(evicted.empty());
  const BlockPool::Stats after = pool.GetStats();
  EXPECT_EQ(before.sealed_evictable, after.sealed_evictable);
  EXPECT_EQ(before.evictions, after.evictions);

  auto two = pool.Allocate(2, 1, &evicted);
  ASSERT_TRUE(two.ok());
  ASSERT_EQ(evicted.size(), 2u);
  for (const EvictedBlock& e : evicted) {
    EXPECT_NE(e.id, infos[0].id);
    EXPECT_NE(e.id, infos[1].id);
  }
  EXPECT_EQ(pool.state(infos[0].id), BlockState::kPinned);
  EXPECT_EQ(pool.Allocate(0, 1, nullptr)->size(), 0u);
  EXPECT_EQ(pool.Allocate(-1, 1, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BlockPoolTest, MisuseIsFailedPreconditionAndChangesNothing) {
  BlockPool pool(BlockPoolOptions{3}, Lru(), &clock_);
  auto ids = pool.Allocate(2, 1, nullptr);
  ASSERT_TRUE(ids.ok());
  const BlockId a = (*ids)[0], b = (*ids)[1];
  // Seal of a free block, of an out-of-range id, twice in one batch.
  EXPECT_EQ(pool.Seal(Info(2, 5)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.Seal(Info(99, 5)).status().code(), absl::StatusCode::kFailedPrecondition);
  BlockPool::PinSet pins;
  std::vector<IndexedBlockInfo> twice = {Info(a, 1), Info(a, 2)};
  absl::Status dup = pool.SealMany(twice, &pins);
  EXPECT_EQ(dup.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(dup.message(), HasSubstr("twice"));
  EXPECT_EQ(pool.state(a), BlockState::kWriting);
  EXPECT_EQ(pool.pin_count(a), 0);
  std::vector<BlockId> abort_twice = {b, b};
  EXPECT_EQ(pool.AbortMany(abort_twice).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.state(b), BlockState::kWriting);
  // Partial batch with one bad entry: nothing sealed.
  std::vector<IndexedBlockInfo> mixed = {Info(a, 1), Info(2, 2)};
  EXPECT_EQ(pool.SealMany(mixed, &pins).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.state(a), BlockState::kWriting);
  // Pin / invalidate of a writing block.
  EXPECT_EQ(pool.PinSealed(a).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.Invalidate(a).status().code(), absl::StatusCode::kFailedPrecondition);
  // Seal, then: abort of a sealed block, invalidate of a pinned block.
  auto writer = pool.Seal(Info(a, 1));
  ASSERT_TRUE(writer.ok());
  EXPECT_EQ(pool.Abort(a).code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<EvictedBlock> inv = pool.Invalidate(a);
  EXPECT_EQ(inv.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(inv.status().message(), HasSubstr("pinned"));
  writer->Reset();
  inv = pool.Invalidate(a);
  ASSERT_TRUE(inv.ok());
  EXPECT_EQ(inv->hash, (BlockHash{1, ~uint64_t{1}}));
  EXPECT_EQ(pool.state(a), BlockState::kFree);
  pool.WithPolicy([](const EvictionPolicy& p) { EXPECT_EQ(p.tracked_count(), 0u); });
  ExpectStatsAddUp(pool);
}

TEST_F(BlockPoolTest, SealRejectsBadTokensOrPositionAndChangesNothing) {
  BlockPool pool(BlockPoolOptions{4}, Lru(), &clock_);
  absl::StatusOr<std::vector<BlockId>> ids = pool.Allocate(2, 7, nullptr);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const BlockId a = (*ids)[0];
  const BlockId b = (*ids)[1];
  auto expect_unchanged = [&] {
    EXPECT_EQ(pool.state(a), BlockState::kWriting);
    EXPECT_EQ(pool.state(b), BlockState::kWriting);
    EXPECT_EQ(pool.GetStats().writing, 2);
    EXPECT_EQ(pool.GetStats().pinned, 0);
    pool.WithPolicy([](const EvictionPolicy& p) { EXPECT_EQ(p.tracked_count(), 0u); });
  };
  IndexedBlockInfo zero_tokens = Info(b, 2);
  zero_tokens.tokens = 0;
  IndexedBlockInfo negative_tokens = Info(b, 2);
  negative_tokens.tokens = -5;
  IndexedBlockInfo negative_position = Info(b, 2, /*position=*/-16);
  for (const IndexedBlockInfo& bad : {zero_tokens, negative_tokens, negative_position}) {
    absl::StatusOr<BlockPool::PinHandle> single = pool.Seal(bad);
    EXPECT_EQ(single.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(single.status().message(), HasSubstr("tokens="));
    expect_unchanged();
    // In a batch, a valid first entry is not sealed either (all or nothing).
    BlockPool::PinSet pins;
    const std::vector<IndexedBlockInfo> batch = {Info(a, 1), bad};
    const absl::Status status = pool.SealMany(batch, &pins);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(status.message(), HasSubstr("position="));
    EXPECT_TRUE(pins.empty());
    expect_unchanged();
  }
  ExpectStatsAddUp(pool);
  // The same blocks seal once the identity is valid.
  BlockPool::PinSet pins;
  ASSERT_TRUE(pool.SealMany({Info(a, 1), Info(b, 2, 16)}, &pins).ok());
  EXPECT_EQ(pool.GetStats().pinned, 2);
}

TEST_F(BlockPoolTest, TransferPath) {
  BlockPool pool(BlockPoolOptions{2}, Lru(), &clock_);
  auto ids = pool.AllocateForTransfer(2, 1, nullptr);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(pool.GetStats().in_transfer, 2);
  EXPECT_TRUE(pool.Abort((*ids)[1]).ok());
  auto pin = pool.Seal(Info((*ids)[0], 9));
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(pool.state((*ids)[0]), BlockState::kPinned);
  EXPECT_EQ(pool.GetStats().in_transfer, 0);
  ExpectStatsAddUp(pool);
}

TEST_F(BlockPoolTest, HandlesMoveAndUnpinOnce) {
  BlockPool pool(BlockPoolOptions{1}, Lru(), &clock_);
  auto ids = pool.Allocate(1, 1, nullptr);
  auto writer = pool.Seal(Info((*ids)[0], 4));
  ASSERT_TRUE(writer.ok());
  BlockPool::PinHandle moved = std::move(*writer);
  EXPECT_FALSE(writer->valid());
  EXPECT_TRUE(moved.valid());
  EXPECT_EQ(pool.pin_count(0), 1);
  BlockPool::PinHandle other;
  other = std::move(moved);
  EXPECT_EQ(pool.pin_count(0), 1);
  auto extra = pool.PinSealed(0);
  ASSERT_TRUE(extra.ok());
  EXPECT_EQ(pool.pin_count(0), 2);
  BlockPool::PinSet set;
  std::vector<BlockId> id = {0};
  std::vector<BlockHash> hash = {BlockHash{4, ~uint64_t{4}}};
  std::vector<bool> pinned;
  pool.PinIndexedMany(id, hash, std::nullopt, &set, &pinned);
  BlockPool::PinSet set2 = std::move(set);
  EXPECT_TRUE(set.empty());
  EXPECT_EQ(pool.pin_count(0), 3);
  BlockPool::PinSet merged;
  merged.Absorb(std::move(set2));
  EXPECT_EQ(merged.size(), 1u);
  merged.Reset();
  other.Reset();
  extra->Reset();
  EXPECT_EQ(pool.pin_count(0), 0);
  EXPECT_EQ(pool.state(0), BlockState::kSealed);
}

// Random operations against a model of what must hold: capacity never
// exceeded, pinned/writing blocks never evicted, counters consistent, no leak.
void RunRandomPoolOps(uint32_t seed, const std::string& policy_name) {
  SCOPED_TRACE(testing::Message() << "seed " << seed << " policy " << policy_name);
  FakeClock clock;
  const ModelConfig model;
  CostModel cost(model, CostModel::DefaultCpu(model));
  auto policy = MakeEvictionPolicy(policy_name, &cost);
  ASSERT_TRUE(policy.ok()) << policy.status();
  constexpr int kCapacity = 64;
  BlockPool pool(BlockPoolOptions{kCapacity}, *std::move(policy), &clock);
  std::mt19937 rng(seed);
  std::set<BlockId> writing;
  std::map<BlockId, BlockHash> sealed;          // what the pool should hold
  std::vector<BlockPool::PinHandle> pins;       // random holders
  uint64_t next_tag = 1;
  for (int step = 0; step < 3000; ++step) {
    clock.Advance(absl::Milliseconds(1 + rng() % 50));
    const int op = static_cast<int>(rng() % 6);
    if (op == 0) {
      const int64_t n = rng() % 8;
      std::vector<EvictedBlock> evicted;
      auto ids = pool.Allocate(n, rng() % 5, &evicted);
      if (!ids.ok()) {
        ASSERT_EQ(ids.status().code(), absl::StatusCode::kResourceExhausted);
        ASSERT_TRUE(evicted.empty());
        continue;
      }
      for (const EvictedBlock& e : evicted) {
        ASSERT_EQ(sealed.count(e.id), 1u) << "evicted a block that was not sealed";
        ASSERT_EQ(sealed[e.id], e.hash);
        for (const auto& p : pins) ASSERT_NE(p.id(), e.id) << "evicted a pinned block";
        sealed.erase(e.id);
      }
      for (BlockId id : *ids) ASSERT_TRUE(writing.insert(id).second);
    } else if (op == 1 && !writing.empty()) {
      const BlockId id = *writing.begin();
      writing.erase(id);
      const uint64_t tag = next_tag++;
      auto pin = pool.Seal(Info(id, tag));
      ASSERT_TRUE(pin.ok());
      sealed[id] = BlockHash{tag, ~tag};
      if (rng() % 2) pins.push_back(*std::move(pin));
    } else if (op == 2 && !writing.empty()) {
      const BlockId id = *writing.rbegin();
      writing.erase(id);
      ASSERT_TRUE(pool.Abort(id).ok());
    } else if (op == 3 && !sealed.empty()) {
      auto it = sealed.begin();
      std::advance(it, rng() % sealed.size());
      auto pin = pool.PinIfIndexed(it->first, it->second);
      ASSERT_TRUE(pin.has_value());
      pins.push_back(*std::move(pin));
    } else if (op == 4 && !pins.empty()) {
      const size_t i = rng() % pins.size();
      pins.erase(pins.begin() + static_cast<std::ptrdiff_t>(i));
    } else if (op == 5 && !sealed.empty()) {
      auto it = sealed.begin();
      std::advance(it, rng() % sealed.size());
      const bool is_pinned = pool.pin_count(it->first) > 0;
      absl::StatusOr<EvictedBlock> dropped = pool.Invalidate(it->first);
      ASSERT_EQ(dropped.ok(), !is_pinned);
      if (dropped.ok()) sealed.erase(it);
    }
    const BlockPool::Stats s = pool.GetStats();
    ASSERT_EQ(s.free + s.writing + s.sealed_evictable + s.pinned + s.in_transfer, kCapacity);
    ASSERT_EQ(s.writing, static_cast<int64_t>(writing.size()));
    ASSERT_EQ(s.sealed_evictable + s.pinned, static_cast<int64_t>(sealed.size()));
    pool.WithPolicy([&](const EvictionPolicy& p) {
      ASSERT_EQ(static_cast<int64_t>(p.evictable_count()), s.sealed_evictable);
      ASSERT_EQ(p.tracked_count(), sealed.size());
    });
  }
  pins.clear();
  ASSERT_TRUE(pool.AbortMany(std::vector<BlockId>(writing.begin(), writing.end())).ok());
  const BlockPool::Stats s = pool.GetStats();
  EXPECT_EQ(s.pinned, 0);
  EXPECT_EQ(s.writing, 0);
  EXPECT_EQ(s.free + s.sealed_evictable, kCapacity);
  // Everything sealed is evictable again: the whole capacity can be allocated.
  EXPECT_TRUE(pool.Allocate(kCapacity, 1, nullptr).ok());
}

TEST(BlockPoolRandomTest, FixedSeedsEveryPolicy) {
  for (const std::string& name : EvictionPolicyNames()) {
    for (uint32_t seed : {1u, 2u, 3u}) RunRandomPoolOps(seed, name);
  }
}

TEST(BlockPoolRandomTest, FreshSeed) {
  const uint32_t seed = std::random_device{}();
  std::cout << "BlockPoolRandomTest.FreshSeed seed " << seed << "\n";
  for (const std::string& name : EvictionPolicyNames()) RunRandomPoolOps(seed, name);
}

}  // namespace
}  // namespace asymcache
