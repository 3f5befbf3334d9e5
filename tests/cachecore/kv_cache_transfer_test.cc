// KvCache's block-transfer and lease-handoff methods: CommitStep's counts,
// ReleaseStepKeepPins, RenewLease, PinForExport, LookupPositions and the
// import path (AllocateForImport -> FinishImport | AbortImport).
//
// Links cachecore and GoogleTest only; time comes from a FakeClock (no sleeps).
// Every scenario ends with CheckConsistency() (index <-> pool invariant and
// the pool's counters).
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "cachecore/block_hash.h"
#include "cachecore/clock.h"
#include "cachecore/eviction_policy.h"
#include "cachecore/kv_cache.h"
#include "cachecore/model_config.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

constexpr int kB = 16;  // tiny model block_tokens

std::unique_ptr<KvCache> MakeCache(FakeClock* clock, int64_t capacity) {
  KvCacheOptions options;
  options.model = *ModelConfig::Named("tiny");
  options.capacity_blocks = capacity;
  options.lease_timeout = absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<EvictionPolicy>> policy = MakeEvictionPolicy("lru", nullptr);
  EXPECT_TRUE(policy.ok()) << policy.status();
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      KvCache::Create(options, *std::move(policy), clock);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return *std::move(cache);
}

std::vector<TokenId> Tokens(int n, int base = 0) {
  std::vector<TokenId> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = base + i;
  return t;
}

// Plans, commits and releases one step; the context's blocks end up indexed
// and evictable. Returns the plan.
StepPlan Store(KvCache& cache, SequenceId sequence, const std::vector<TokenId>& tokens,
               const std::string& salt = "s") {
  absl::StatusOr<StepLease> lease = cache.BeginStep(StepRequest{salt, sequence, tokens});
  EXPECT_TRUE(lease.ok()) << lease.status();
  if (!lease.ok()) return StepPlan{};
  EXPECT_TRUE(cache.CommitStep(lease->lease_id).ok());
  EXPECT_TRUE(cache.ReleaseStep(lease->lease_id).ok());
  return lease->plan;
}

// The pool and index counters a failed call must leave unchanged, as one
// string so that a difference prints readably.
std::string Snapshot(const KvCache& cache) {
  const KvCache::Stats s = cache.GetStats();
  return absl::StrCat("free=", s.pool.free, " writing=", s.pool.writing,
                      " evictable=", s.pool.sealed_evictable, " pinned=", s.pool.pinned,
                      " in_transfer=", s.pool.in_transfer, " evictions=", s.pool.evictions,
                      " indexed=", s.indexed_blocks, " leases=", s.active_leases);
}

#define EXPECT_CONSISTENT(cache)                                   \
  do {                                                             \
    const absl::Status _consistent = (cache).CheckConsistency();   \
    EXPECT_TRUE(_consistent.ok()) << _consistent;                  \
  } while (0)

// ---------------------------------------------------------------- CommitStep

TEST(KvCacheTransferTest, CommitResultCountsSealedAndDuplicateBlocks) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 16);
  const std::vector<TokenId> context = Tokens(40);  // 2 full blocks + a partial one
  auto a = cache->BeginStep(StepRequest{"s", 1, context});
  auto b = cache->BeginStep(StepRequest{"s", 2, context});  // misses: a is not committed
  // c shares a's first two blocks and has one more (48 tokens = 3 full blocks).
  auto c = cache->BeginStep(StepRequest{"s", 3, Tokens(48)});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  ASSERT_EQ(b->plan.hit_tokens, 0);
  ASSERT_EQ(c->plan.hit_tokens, 0);

  KvCache::CommitResult ra;
  ASSERT_TRUE(cache->CommitStep(a->lease_id, &ra).ok());
  EXPECT_EQ(ra.sealed_blocks, 3);
  EXPECT_EQ(ra.duplicate_blocks, 0);

  KvCache::CommitResult rb;
  ASSERT_TRUE(cache->CommitStep(b->lease_id, &rb).ok());
  EXPECT_EQ(rb.sealed_blocks, 0);
  EXPECT_EQ(rb.duplicate_blocks, 3);

  KvCache::CommitResult rc;
  ASSERT_TRUE(cache->CommitStep(c->lease_id, &rc).ok());
  EXPECT_EQ(rc.sealed_blocks, 1);     // the third full block (a's third is partial)
  EXPECT_EQ(rc.duplicate_blocks, 2);  // the two blocks a indexed first
  EXPECT_EQ(cache->GetStats().indexed_blocks, 4);
  // Duplicates stay private (writing) until release.
  EXPECT_EQ(cache->GetStats().pool.writing, 3 + 2);

  // A failed commit leaves the result untouched.
  KvCache::CommitResult untouched{-7, -8};
  EXPECT_EQ(cache->CommitStep(a->lease_id, &untouched).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache->CommitStep(999, &untouched).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(untouched.sealed_blocks, -7);
  EXPECT_EQ(untouched.duplicate_blocks, -8);

  for (const auto& lease : {a, b, c}) ASSERT_TRUE(cache->ReleaseStep(lease->lease_id).ok());
  EXPECT_EQ(cache->GetStats().pool.writing, 0);
  EXPECT_EQ(cache->GetStats().pool.free, 16 - 4);
  EXPECT_CONSISTENT(*cache);
}

// ---------------------------------------------------------------- ReleaseStepKeepPins

TEST(KvCacheTransferTest, ReleaseStepKeepPinsHandsOverResidentAndSealedPages) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  Store(*cache, 1, Tokens(32));  // 2 blocks indexed, evictable
  // Hits the 2 stored blocks, allocates 2 more, commits them.
  auto lease = cache->BeginStep(StepRequest{"s", 2, Tokens(64)});
  ASSERT_TRUE(lease.ok());
  ASSERT_EQ(lease->plan.hit_tokens, 32);
  ASSERT_TRUE(cache->CommitStep(lease->lease_id).ok());

  absl::StatusOr<BlockPool::PinSet> pins = cache->ReleaseStepKeepPins(lease->lease_id);
  ASSERT_TRUE(pins.ok()) << pins.status();
  std::vector<BlockId> pinned(pins->ids().begin(), pins->ids().end());
  std::vector<BlockId> expected = lease->plan.page_ids;
  std::sort(pinned.begin(), pinned.end());
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(pinned, expected);
  EXPECT_EQ(cache->GetStats().active_leases, 0);
  EXPECT_EQ(cache->GetStats().pool.pinned, 4);
  for (BlockId id : lease->plan.page_ids) EXPECT_EQ(cache->pool().pin_count(id), 1) << id;
  // The lease is gone; the pins are not.
  EXPECT_EQ(cache->ReleaseStep(lease->lease_id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache->ReleaseStepKeepPins(lease->lease_id).status().code(),
            absl::StatusCode::kNotFound);
  // 4 free blocks, 4 pinned: a 5-block step cannot evict the handed-over pins.
  EXPECT_EQ(cache->BeginStep(StepRequest{"s", 3, Tokens(80, 5000)}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->GetStats().pool.pinned, 4);
  EXPECT_CONSISTENT(*cache);

  pins->Reset();
  EXPECT_EQ(cache->GetStats().pool.pinned, 0);
  EXPECT_EQ(cache->GetStats().pool.sealed_evictable, 4);
  EXPECT_CONSISTENT(*cache);
}

TEST(KvCacheTransferTest, ReleaseStepKeepPinsFreesUncommittedAndDuplicateBlocks) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  Store(*cache, 1, Tokens(32));  // 2 blocks indexed
  // Uncommitted: hits 2, allocates 2 that are never written.
  auto uncommitted = cache->BeginStep(StepRequest{"s", 2, Tokens(64)});
  ASSERT_TRUE(uncommitted.ok());
  ASSERT_EQ(uncommitted->plan.allocated.size(), 2u);
  ASSERT_EQ(cache->GetStats().pool.writing, 2);
  absl::StatusOr<BlockPool::PinSet> resident = cache->ReleaseStepKeepPins(uncommitted->lease_id);
  ASSERT_TRUE(resident.ok()) << resident.status();
  EXPECT_EQ(resident->size(), 2u);  // only the resident pages
  EXPECT_EQ(cache->GetStats().pool.writing, 0);
  EXPECT_EQ(cache->GetStats().pool.free, 6);
  EXPECT_EQ(cache->GetStats().pool.pinned, 2);
  for (BlockId id : uncommitted->plan.allocated) {
    EXPECT_EQ(cache->pool().state(id), BlockState::kFree) << id;
  }
  EXPECT_CONSISTENT(*cache);
  resident->Reset();

  // Committed with duplicates only: nothing to hand over, the duplicates are freed.
  const std::vector<TokenId> other = Tokens(32, 900);
  auto first = cache->BeginStep(StepRequest{"s", 3, other});
  auto second = cache->BeginStep(StepRequest{"s", 4, other});
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE(cache->CommitStep(first->lease_id).ok());
  KvCache::CommitResult dup;
  ASSERT_TRUE(cache->CommitStep(second->lease_id, &dup).ok());
  ASSERT_EQ(dup.duplicate_blocks, 2);
  absl::StatusOr<BlockPool::PinSet> none = cache->ReleaseStepKeepPins(second->lease_id);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(cache->GetStats().pool.writing, 0);
  for (BlockId id : second->plan.allocated) {
    EXPECT_EQ(cache->pool().state(id), BlockState::kFree) << id;
  }
  ASSERT_TRUE(cache->ReleaseStep(first->lease_id).ok());
  EXPECT_EQ(cache->GetStats().pool.pinned, 0);
  EXPECT_EQ(cache->GetStats().indexed_blocks, 4);
  EXPECT_CONSISTENT(*cache);

  const absl::StatusOr<BlockPool::PinSet> unknown = cache->ReleaseStepKeepPins(777);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("777"));
}

// ---------------------------------------------------------------- RenewLease

TEST(KvCacheTransferTest, RenewLeasePushesTheDeadline) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);  // lease_timeout 10 s
  auto renewed = cache->BeginStep(StepRequest{"s", 1, Tokens(32)});
  auto plain = cache->BeginStep(StepRequest{"s", 2, Tokens(32, 500)});
  ASSERT_TRUE(renewed.ok() && plain.ok());
  clock.Advance(absl::Seconds(8));
  ASSERT_TRUE(cache->RenewLease(renewed->lease_id).ok());  // deadline 18 s
  clock.Advance(absl::Seconds(2));                        // 10 s: plain expires
  EXPECT_EQ(cache->ExpireLeases(), 1);
  EXPECT_EQ(cache->RenewLease(plain->lease_id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache->GetStats().active_leases, 1);
  EXPECT_EQ(cache->GetStats().pool.writing, 2);  // the renewed lease's blocks
  clock.Advance(absl::Seconds(7));               // 17 s
  EXPECT_EQ(cache->ExpireLeases(), 0);
  // Renewal still works on an uncommitted lease, and commit works after it.
  ASSERT_TRUE(cache->CommitStep(renewed->lease_id).ok());  // commit renews: 27 s
  clock.Advance(absl::Seconds(9));                          // 26 s
  EXPECT_EQ(cache->ExpireLeases(), 0);
  clock.Advance(absl::Seconds(1));  // 27 s
  EXPECT_EQ(cache->ExpireLeases(), 1);
  EXPECT_EQ(cache->GetStats().active_leases, 0);
  EXPECT_EQ(cache->GetStats().pool.sealed_evictable, 2);
  const absl::Status gone = cache->RenewLease(renewed->lease_id);
  EXPECT_EQ(gone.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(gone.message(), HasSubstr("RenewLease"));
  EXPECT_EQ(cache->RenewLease(0).code(), absl::StatusCode::kNotFound);
  EXPECT_CONSISTENT(*cache);
}

// ---------------------------------------------------------------- PinForExport

TEST(KvCacheTransferTest, PinForExportPinsOnlyIndexedBlocksInRequestOrder) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  const std::vector<TokenId> context = Tokens(64);
  const StepPlan stored = Store(*cache, 1, context);  // h0..h3, evictable
  const std::vector<BlockHash> h = ChainHashes("s", context, kB);
  ASSERT_EQ(h.size(), 4u);
  // A block being written (not indexed) must not be exported.
  auto writing = cache->BeginStep(StepRequest{"s", 2, Tokens(16, 700)});
  ASSERT_TRUE(writing.ok());
  const BlockHash writing_hash = writing->plan.hashes[0];
  const BlockHash missing{0x1234, 0x5678};

  const std::vector<BlockHash> request = {h[3], missing, h[0], writing_hash, h[2]};
  KvCache::ExportedBlocks exported = cache->PinForExport(request);
  ASSERT_EQ(exported.blocks.size(), 3u);
  ASSERT_EQ(exported.pins.size(), 3u);
  const int order[3] = {3, 0, 2};
  for (size_t i = 0; i < 3; ++i) {
    const int k = order[i];
    const IndexedBlockInfo& info = exported.blocks[i];
    EXPECT_EQ(info.hash, h[static_cast<size_t>(k)]) << i;
    EXPECT_EQ(info.id, stored.page_ids[static_cast<size_t>(k)]) << i;
    EXPECT_EQ(info.position, k * kB) << i;
    EXPECT_EQ(info.tokens, kB) << i;
    EXPECT_EQ(info.parent_hash, k == 0 ? BlockHash{} : h[static_cast<size_t>(k - 1)]) << i;
    EXPECT_EQ(cache->pool().pin_count(info.id), 1) << i;
  }
  EXPECT_EQ(cache->pool().pin_count(stored.page_ids[1]), 0);
  EXPECT_EQ(cache->GetStats().pool.pinned, 3);
  EXPECT_CONSISTENT(*cache);

  // Pressure: 3 free + 1 evictable (h1). 5 blocks cannot be had; 4 evict only h1.
  EXPECT_EQ(cache->BeginStep(StepRequest{"s", 3, Tokens(80, 3000)}).status().code(),
            absl::StatusCode::kResourceExhausted);
  auto pressure = cache->BeginStep(StepRequest{"s", 3, Tokens(64, 3000)});
  ASSERT_TRUE(pressure.ok()) << pressure.status();
  const std::vector<int64_t> positions = cache->LookupPositions(h);
  EXPECT_EQ(positions, (std::vector<int64_t>{0, -1, 32, 48}));
  ASSERT_TRUE(cache->ReleaseStep(pressure->lease_id).ok());
  ASSERT_TRUE(cache->ReleaseStep(writing->lease_id).ok());

  exported.pins.Reset();
  EXPECT_EQ(cache->GetStats().pool.pinned, 0);
  EXPECT_CONSISTENT(*cache);

  // Nothing asked, nothing resident: empty, not an error.
  KvCache::ExportedBlocks empty = cache->PinForExport({});
  EXPECT_TRUE(empty.blocks.empty());
  EXPECT_TRUE(empty.pins.empty());
  const std::vector<BlockHash> misses = {missing, h[1]};
  KvCache::ExportedBlocks none = cache->PinForExport(misses);
  EXPECT_TRUE(none.blocks.empty());
  EXPECT_TRUE(none.pins.empty());
  EXPECT_CONSISTENT(*cache);
}

// ---------------------------------------------------------------- LookupPositions

TEST(KvCacheTransferTest, LookupPositionsReportsIndexedBlocksWithoutPinning) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  const std::vector<TokenId> context = Tokens(40);  // positions 0, 16, 32 (partial)
  Store(*cache, 1, context);
  const std::vector<BlockHash> h = ChainHashes("s", context, kB);
  const std::vector<BlockHash> other_salt = ChainHashes("t", context, kB);
  const std::string before = Snapshot(*cache);
  const std::vector<BlockHash> request = {h[2], other_salt[0], h[0], h[1], h[0]};
  EXPECT_EQ(cache->LookupPositions(request), (std::vector<int64_t>{32, -1, 0, 16, 0}));
  EXPECT_TRUE(cache->LookupPositions({}).empty());
  EXPECT_EQ(Snapshot(*cache), before);  // no pins, no change
  EXPECT_EQ(cache->GetStats().pool.pinned, 0);
  EXPECT_CONSISTENT(*cache);
}

// ---------------------------------------------------------------- import

// The blocks of `tokens` as an exporter describes them (a second cache).
std::vector<IndexedBlockInfo> ExporterInfos(const std::vector<TokenId>& tokens,
                                            const std::string& salt = "s") {
  FakeClock clock;
  auto exporter = MakeCache(&clock, 64);
  Store(*exporter, 42, tokens, salt);
  KvCache::ExportedBlocks exported = exporter->PinForExport(ChainHashes(salt, tokens, kB));
  return exported.blocks;
}

TEST(KvCacheTransferTest, AllocateForImportEvictsAndReportsRemovedBlocks) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 6);
  std::vector<KvEvent> events;
  cache->SetEventListener([&events](const KvEvent& e) { events.push_back(e); });
  Store(*cache, 1, Tokens(64));  // 4 indexed, evictable; 2 free
  events.clear();
  absl::StatusOr<std::vector<BlockId>> ids = cache->AllocateForImport(3);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(ids->size(), 3u);
  for (BlockId id : *ids) EXPECT_EQ(cache->pool().state(id), BlockState::kInTransfer) << id;
  EXPECT_EQ(cache->GetStats().pool.in_transfer, 3);
  EXPECT_EQ(cache->GetStats().pool.evictions, 1);
  EXPECT_EQ(cache->GetStats().indexed_blocks, 3);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, KvEvent::Kind::kRemoved);
  EXPECT_CONSISTENT(*cache);

  ASSERT_TRUE(cache->AbortImport(*ids).ok());
  EXPECT_EQ(cache->GetStats().pool.in_transfer, 0);
  EXPECT_EQ(cache->GetStats().pool.free, 3);
  for (BlockId id : *ids) EXPECT_EQ(cache->pool().state(id), BlockState::kFree) << id;
  EXPECT_EQ(events.size(), 1u);  // nothing was indexed, nothing to report
  // A second abort of the same ids: they are free now.
  EXPECT_EQ(cache->AbortImport(*ids).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_CONSISTENT(*cache);

  absl::StatusOr<std::vector<BlockId>> zero = cache->AllocateForImport(0);
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_TRUE(zero->empty());
  const std::string before = Snapshot(*cache);
  absl::StatusOr<std::vector<BlockId>> negative = cache->AllocateForImport(-1);
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.status().message(), HasSubstr("AllocateForImport"));
  EXPECT_EQ(Snapshot(*cache), before);
  EXPECT_CONSISTENT(*cache);
}

TEST(KvCacheTransferTest, AllocateForImportIntoAPinnedPoolChangesNothing) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 4);
  std::vector<KvEvent> events;
  cache->SetEventListener([&events](const KvEvent& e) { events.push_back(e); });
  auto held = cache->BeginStep(StepRequest{"s", 1, Tokens(48)});  // 3 blocks
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(cache->CommitStep(held->lease_id).ok());  // pinned by the lease
  Store(*cache, 2, Tokens(16, 800));                     // 1 evictable
  auto pin_last = cache->PinContext("s", Tokens(16, 800));
  ASSERT_TRUE(pin_last.ok());
  ASSERT_EQ(pin_last->size(), 1u);  // now every block is pinned
  ASSERT_EQ(cache->GetStats().pool.pinned, 4);
  events.clear();
  const std::string before = Snapshot(*cache);

  absl::StatusOr<std::vector<BlockId>> full = cache->AllocateForImport(1);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(), HasSubstr("AllocateForImport"));
  EXPECT_EQ(Snapshot(*cache), before);
  EXPECT_TRUE(events.empty());

  // One block evictable, two asked: all or nothing, the evictable one survives.
  pin_last->Reset();
  const std::string one_evictable = Snapshot(*cache);
  EXPECT_EQ(cache->AllocateForImport(2).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Snapshot(*cache), one_evictable);
  EXPECT_TRUE(events.empty());
  EXPECT_EQ(cache->GetStats().indexed_blocks, 4);
  ASSERT_TRUE(cache->ReleaseStep(held->lease_id).ok());
  EXPECT_CONSISTENT(*cache);
}

TEST(KvCacheTransferTest, FinishImportIndexesEmitsStoredAndLeavesBlocksEvictable) {
  const std::vector<TokenId> context = Tokens(64);
  const std::vector<IndexedBlockInfo> remote = ExporterInfos(context);
  ASSERT_EQ(remote.size(), 4u);

  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  std::vector<KvEvent> events;
  cache->SetEventListener([&events](const KvEvent& e) { events.push_back(e); });
  absl::StatusOr<std::vector<BlockId>> ids = cache->AllocateForImport(4);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<IndexedBlockInfo> infos = remote;
  for (size_t i = 0; i < infos.size(); ++i) infos[i].id = (*ids)[i];
  // Nothing is visible before the bytes "arrived".
  EXPECT_EQ(cache->LookupPositions(ChainHashes("s", context, kB)),
            (std::vector<int64_t>{-1, -1, -1, -1}));
  EXPECT_TRUE(cache->PinForExport(ChainHashes("s", context, kB)).blocks.empty());

  absl::StatusOr<int64_t> indexed = cache->FinishImport(infos);
  ASSERT_TRUE(indexed.ok()) << indexed.status();
  EXPECT_EQ(*indexed, 4);
  const KvCache::Stats stats = cache->GetStats();
  EXPECT_EQ(stats.indexed_blocks, 4);
  EXPECT_EQ(stats.pool.in_transfer, 0);
  EXPECT_EQ(stats.pool.pinned, 0);
  EXPECT_EQ(stats.pool.sealed_evictable, 4);
  ASSERT_EQ(events.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(events[i].kind, KvEvent::Kind::kStored) << i;
    EXPECT_EQ(events[i].hash, infos[i].hash) << i;
    EXPECT_EQ(events[i].position, infos[i].position) << i;
    EXPECT_EQ(events[i].sequence_number, i + 1) << i;
    const std::optional<PrefixIndex::Entry> entry = cache->index().Lookup(infos[i].hash);
    ASSERT_TRUE(entry.has_value()) << i;
    EXPECT_EQ(entry->id, infos[i].id) << i;
    const std::optional<IndexedBlockInfo> sealed = cache->pool().sealed_info(infos[i].id);
    ASSERT_TRUE(sealed.has_value()) << i;
    EXPECT_EQ(sealed->parent_hash, infos[i].parent_hash) << i;
    EXPECT_EQ(sealed->tokens, infos[i].tokens) << i;
    EXPECT_EQ(cache->pool().pin_count(infos[i].id), 0) << i;
  }
  EXPECT_CONSISTENT(*cache);

  // The same context now hits every page.
  auto hit = cache->BeginStep(StepRequest{"s", 7, context});
  ASSERT_TRUE(hit.ok()) << hit.status();
  EXPECT_EQ(hit->plan.hit_tokens, 64);
  EXPECT_EQ(hit->plan.page_ids, *ids);
  ASSERT_TRUE(cache->ReleaseStep(hit->lease_id).ok());

  // Evictable: a step that needs the whole pool takes them (kRemoved events).
  auto evicting = cache->BeginStep(StepRequest{"s", 8, Tokens(128, 4000)});
  ASSERT_TRUE(evicting.ok()) << evicting.status();
  EXPECT_EQ(cache->GetStats().indexed_blocks, 0);
  EXPECT_EQ(std::count_if(events.begin(), events.end(),
                          [](const KvEvent& e) { return e.kind == KvEvent::Kind::kRemoved; }),
            4);
  ASSERT_TRUE(cache->ReleaseStep(evicting->lease_id).ok());
  EXPECT_CONSISTENT(*cache);
}

TEST(KvCacheTransferTest, FinishImportFreesDuplicatesOfIndexedHashes) {
  const std::vector<TokenId> context = Tokens(48);
  const std::vector<IndexedBlockInfo> remote = ExporterInfos(context);
  ASSERT_EQ(remote.size(), 3u);

  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  // Block 1 of the context was indexed here meanwhile (a local step wrote the
  // first two blocks).
  const StepPlan local = Store(*cache, 1, Tokens(32));
  std::vector<KvEvent> events;
  cache->SetEventListener([&events](const KvEvent& e) { events.push_back(e); });

  absl::StatusOr<std::vector<BlockId>> ids = cache->AllocateForImport(4);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // Import blocks 1 and 2, plus block 2 a second time under another id (two
  // copies of one hash in the same batch).
  std::vector<IndexedBlockInfo> infos = {remote[1], remote[2], remote[2]};
  for (size_t i = 0; i < infos.size(); ++i) infos[i].id = (*ids)[i];
  const BlockId unused = (*ids)[3];

  absl::StatusOr<int64_t> indexed = cache->FinishImport(infos);
  ASSERT_TRUE(indexed.ok()) << indexed.status();
  EXPECT_EQ(*indexed, 1);  // only block 2's first copy
  EXPECT_EQ(cache->pool().state(infos[0].id), BlockState::kFree);  // dup of a local block
  EXPECT_EQ(cache->pool().state(infos[2].id), BlockState::kFree);  // dup within the batch
  EXPECT_EQ(cache->pool().state(infos[1].id), BlockState::kSealed);
  EXPECT_EQ(cache->index().Lookup(remote[1].hash)->id, local.page_ids[1]);  // local copy kept
  EXPECT_EQ(cache->index().Lookup(remote[2].hash)->id, infos[1].id);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, KvEvent::Kind::kStored);
  EXPECT_EQ(events[0].hash, remote[2].hash);
  const KvCache::Stats stats = cache->GetStats();
  EXPECT_EQ(stats.pool.in_transfer, 1);  // `unused`, still ours to finish or abort
  EXPECT_EQ(stats.indexed_blocks, 3);
  ASSERT_TRUE(cache->AbortImport(std::vector<BlockId>{unused}).ok());
  EXPECT_EQ(cache->GetStats().pool.in_transfer, 0);
  EXPECT_EQ(cache->GetStats().pool.free, 8 - 3);
  EXPECT_CONSISTENT(*cache);

  // The whole context now hits.
  auto hit = cache->BeginStep(StepRequest{"s", 9, context});
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->plan.hit_tokens, 48);
  ASSERT_TRUE(cache->ReleaseStep(hit->lease_id).ok());
  EXPECT_CONSISTENT(*cache);
}

TEST(KvCacheTransferTest, FinishImportRejectsForeignOrRepeatedIdsAndChangesNothing) {
  const std::vector<TokenId> context = Tokens(32);
  const std::vector<IndexedBlockInfo> remote = ExporterInfos(context);
  ASSERT_EQ(remote.size(), 2u);

  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  const StepPlan stored = Store(*cache, 1, Tokens(16, 600));  // a sealed block
  auto writing = cache->BeginStep(StepRequest{"s", 2, Tokens(16, 650)});  // a writing block
  ASSERT_TRUE(writing.ok());
  std::vector<KvEvent> events;
  cache->SetEventListener([&events](const KvEvent& e) { events.push_back(e); });
  absl::StatusOr<std::vector<BlockId>> ids = cache->AllocateForImport(2);
  ASSERT_TRUE(ids.ok()) << ids.status();
  std::vector<BlockId> free_ids;
  for (BlockId id = 0; id < 8; ++id) {
    if (cache->pool().state(id) == BlockState::kFree) free_ids.push_back(id);
  }
  ASSERT_FALSE(free_ids.empty());
  const std::string before = Snapshot(*cache);

  struct Case {
    const char* what;
    BlockId second_id;
    const char* message;
  };
  const Case cases[] = {
      {"sealed block", stored.page_ids[0], "not an import in transfer"},
      {"writing block", writing->plan.allocated[0], "not an import in transfer"},
      {"free block", free_ids[0], "not an import in transfer"},
      {"negative id", -1, "not an import in transfer"},
      {"id past the pool", 8, "not an import in transfer"},
      {"id listed twice", (*ids)[0], "listed twice"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<IndexedBlockInfo> infos = remote;
    infos[0].id = (*ids)[0];
    infos[1].id = c.second_id;
    absl::StatusOr<int64_t> result = cache->FinishImport(infos);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(result.status().message(), HasSubstr(c.message));
    EXPECT_THAT(result.status().message(), HasSubstr(absl::StrCat("block ", c.second_id)));
    EXPECT_EQ(Snapshot(*cache), before);
    EXPECT_TRUE(events.empty());
    EXPECT_EQ(cache->LookupPositions({remote[0].hash, remote[1].hash}),
              (std::vector<int64_t>{-1, -1}));
    EXPECT_EQ(cache->pool().state((*ids)[0]), BlockState::kInTransfer);
    EXPECT_EQ(cache->pool().state((*ids)[1]), BlockState::kInTransfer);
  }
  EXPECT_EQ(cache->pool().state(stored.page_ids[0]), BlockState::kSealed);
  EXPECT_EQ(cache->pool().state(writing->plan.allocated[0]), BlockState::kWriting);
  EXPECT_CONSISTENT(*cache);

  // The import itself is still intact and finishes.
  std::vector<IndexedBlockInfo> infos = remote;
  infos[0].id = (*ids)[0];
  infos[1].id = (*ids)[1];
  absl::StatusOr<int64_t> indexed = cache->FinishImport(infos);
  ASSERT_TRUE(indexed.ok()) << indexed.status();
  EXPECT_EQ(*indexed, 2);
  // Finished ids are no longer in transfer: finishing again is refused.
  EXPECT_EQ(cache->FinishImport(infos).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache->AbortImport(*ids).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(cache->ReleaseStep(writing->lease_id).ok());
  EXPECT_CONSISTENT(*cache);
}

TEST(KvCacheTransferTest, AbortImportFreesAndIsAllOrNothing) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  absl::StatusOr<std::vector<BlockId>> ids = cache->AllocateForImport(3);
  ASSERT_TRUE(ids.ok()) << ids.status();
  const std::string before = Snapshot(*cache);
  // One id twice, or a free id among them: refused, nothing freed.
  const std::vector<BlockId> twice = {(*ids)[0], (*ids)[1], (*ids)[0]};
  EXPECT_EQ(cache->AbortImport(twice).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Snapshot(*cache), before);
  BlockId free_id = kNoBlock;
  for (BlockId id = 0; id < 8 && free_id == kNoBlock; ++id) {
    if (cache->pool().state(id) == BlockState::kFree) free_id = id;
  }
  const std::vector<BlockId> with_free = {(*ids)[0], free_id};
  EXPECT_EQ(cache->AbortImport(with_free).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cache->AbortImport(std::vector<BlockId>{99}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Snapshot(*cache), before);

  ASSERT_TRUE(cache->AbortImport(*ids).ok());
  EXPECT_EQ(cache->GetStats().pool.free, 8);
  EXPECT_EQ(cache->GetStats().pool.in_transfer, 0);
  EXPECT_EQ(cache->GetStats().indexed_blocks, 0);
  EXPECT_CONSISTENT(*cache);
}

// AbortImport is the import's undo: it must not free a block some lease is
// writing (ReleaseStep would then abort the process freeing it twice).
TEST(KvCacheTransferTest, AbortImportRefusesBlocksItDidNotAllocate) {
  FakeClock clock;
  auto cache = MakeCache(&clock, 8);
  auto writing = cache->BeginStep(StepRequest{"s", 1, Tokens(16)});
  ASSERT_TRUE(writing.ok());
  const BlockId lease_block = writing->plan.allocated[0];
  const std::string before = Snapshot(*cache);
  const absl::Status aborted = cache->AbortImport(std::vector<BlockId>{lease_block});
  EXPECT_EQ(aborted.code(), absl::StatusCode::kFailedPrecondition) << aborted;
  EXPECT_EQ(Snapshot(*cache), before);
  if (!aborted.ok()) {
    ASSERT_TRUE(cache->ReleaseStep(writing->lease_id).ok());
    EXPECT_CONSISTENT(*cache);
  }
  // Otherwise the lease's block is already free: releasing the lease would
  // abort the process, so the lease is left to the cache's destructor.
}

}  // namespace
}  // namespace asymcache

namespace asymcache {
namespace {

// Lease ids are unique, never 0, and not consecutive (a client cannot guess
// another client's lease from its own).
TEST(KvCacheLeaseIds, UniqueNonZeroAndNotSequential) {
  FakeClock clock;
  std::unique_ptr<KvCache> cache = MakeCache(&clock, 4096);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<StepLease> lease = cache->BeginStep("s", i + 1, Tokens(16, i * 16));
    ASSERT_TRUE(lease.ok()) << lease.status();
    ids.push_back(lease->lease_id);
    ASSERT_TRUE(cache->ReleaseStep(lease->lease_id).ok());
  }
  int consecutive = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_NE(ids[i], 0u);
    if (i > 0 && ids[i] == ids[i - 1] + 1) ++consecutive;
  }
  EXPECT_EQ(consecutive, 0);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
}

}  // namespace
}  // namespace asymcache
