// The MSA CUDA planner on the CPU (kernels/msa_plan.h): which items a batch
// becomes, and that every split still covers each tile's keys exactly once.
// The kernels that run these plans are checked on a GPU (msa_cuda_test.cc);
// here the plan's structure is.
#include "kernels/msa_plan.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/msa.h"

namespace asymcache::msa {
namespace {

// Llama-3-8B attention: 32 q heads, 8 KV heads (GQA 4), head dim 128.
AttentionShape Llama8bShape() {
  AttentionShape shape;
  shape.num_q_heads = 32;
  shape.num_kv_heads = 8;
  shape.head_dim = 128;
  shape.page_size = 16;
  shape.dtype = DType::kBFloat16;
  return shape;
}

// Appends a sequence whose keys are positions [0, keys) on fresh pages and
// whose queries are positions [q_begin, q_end).
void AppendSequence(BatchTablesStorage& tables, int32_t keys, int32_t q_begin, int32_t q_end,
                    int32_t page_size, int32_t* next_page) {
  for (int32_t p = 0; p < keys; p += page_size) {
    tables.kv_page_ids.push_back((*next_page)++);
    tables.kv_page_pos.push_back(p);
    tables.kv_page_len.push_back(std::min(page_size, keys - p));
  }
  tables.kv_indptr.push_back(static_cast<int32_t>(tables.kv_page_ids.size()));
  for (int32_t q = q_begin; q < q_end; ++q) tables.q_pos.push_back(q);
  tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
}

struct Planned {
  MsaPlan plan;
  std::vector<MsaWorkItem> items;
  std::vector<MsaMergeGroup> groups;
};

// Plans `tables` into a workspace sized by MsaWorkspaceSizesFor for exactly
// this batch (so the bound is checked too).
Planned PlanBatch(const AttentionShape& shape, const BatchTablesStorage& tables,
                  int64_t pool_pages, const MsaPlanOptions& options = {}) {
  const BatchTables view = tables.view();
  const MsaWorkspaceSizes sizes =
      MsaWorkspaceSizesFor(shape, view.batch_size(), view.total_q(), view.total_pages(), options);
  std::vector<uint64_t> host((sizes.host_bytes + 7) / 8 + 2);
  absl::StatusOr<MsaPlan> plan =
      PlanMsa(shape, view, pool_pages, options, host.data(), sizes.host_bytes);
  EXPECT_TRUE(plan.ok()) << plan.status();
  Planned out;
  if (!plan.ok()) return out;
  out.plan = *plan;
  EXPECT_LE(plan->device_bytes_used, sizes.device_bytes);
  const auto* base = reinterpret_cast<const unsigned char*>(host.data());
  const auto* items = reinterpret_cast<const MsaWorkItem*>(base + plan->items_offset);
  out.items.assign(items, items + plan->num_items());
  const auto* groups = reinterpret_cast<const MsaMergeGroup*>(base + plan->merge_groups_offset);
  out.groups.assign(groups, groups + plan->num_merge_groups);
  return out;
}

// Every tile (q_token_begin, kv_head) is covered by items whose key ranges
// tile [0, kv_end) exactly; a tile of several items has one merge group with
// that many chunks, whose partial rows its items write.
void ExpectExactCover(const Planned& p) {
  std::map<std::pair<int32_t, int32_t>, std::vector<const MsaWorkItem*>> by_tile;
  for (const MsaWorkItem& item : p.items) {
    by_tile[{item.q_token_begin, item.kv_head}].push_back(&item);
  }
  std::map<std::pair<int32_t, int32_t>, const MsaMergeGroup*> group_of;
  for (const MsaMergeGroup& g : p.groups) group_of[{g.q_token_begin, g.kv_head}] = &g;
  std::vector<std::pair<int32_t, int32_t>> partial_spans;
  for (auto& [tile, items] : by_tile) {
    std::sort(items.begin(), items.end(),
              [](const MsaWorkItem* a, const MsaWorkItem* b) { return a->kv_begin < b->kv_begin; });
    EXPECT_EQ(items.front()->kv_begin, 0);
    for (size_t i = 1; i < items.size(); ++i) {
      EXPECT_EQ(items[i]->kv_begin, items[i - 1]->kv_end) << "gap or overlap in a split tile";
    }
    if (items.size() == 1) {
      EXPECT_EQ(items[0]->partial_row, -1);
      EXPECT_EQ(group_of.count(tile), 0u);
      continue;
    }
    ASSERT_EQ(group_of.count(tile), 1u);
    const MsaMergeGroup& g = *group_of[tile];
    EXPECT_EQ(g.num_chunks, static_cast<int32_t>(items.size()));
    for (size_t c = 0; c < items.size(); ++c) {
      EXPECT_EQ(items[c]->partial_row, g.partial_row + static_cast<int32_t>(c) * g.num_rows);
    }
    partial_spans.emplace_back(g.partial_row, g.partial_row + g.num_chunks * g.num_rows);
  }
  EXPECT_EQ(group_of.size(), p.groups.size());
  std::sort(partial_spans.begin(), partial_spans.end());
  for (size_t i = 1; i < partial_spans.size(); ++i) {
    EXPECT_LE(partial_spans[i - 1].second, partial_spans[i].first) << "partial rows shared";
  }
  if (!partial_spans.empty()) {
    EXPECT_LE(partial_spans.back().second, p.plan.num_partial_rows);
  }
}

// Distinct (query tile, kv head) pairs among items [begin, end).
int64_t TilesAmong(const Planned& p, int32_t begin, int32_t end) {
  std::set<std::pair<int32_t, int32_t>> tiles;
  for (int32_t i = begin; i < end; ++i) tiles.insert({p.items[i].q_token_begin, p.items[i].kv_head});
  return static_cast<int64_t>(tiles.size());
}

// Step 2 of the planner's contract, whenever a class was split: a decode
// class fills at most the target's slots (one each); a prefill class either
// fills at most the target's slots (two each) or, when its unsplit tiles
// already filled them (wave balancing), adds at most `target` pieces.
void ExpectEachSplitClassWithinTarget(const Planned& p, const MsaPlanOptions& options) {
  const int64_t target = int64_t{options.num_sms} * options.target_ctas_per_sm;
  if (p.plan.prefill_kv_chunk_tokens > 0) {
    const int64_t tiles = TilesAmong(p, 0, p.plan.num_prefill_items);
    if (2 * tiles < target) {
      EXPECT_LE(2 * p.plan.num_prefill_items, target);
    } else {
      EXPECT_LE(p.plan.num_prefill_items - tiles, target);
    }
  }
  if (p.plan.decode_kv_chunk_tokens > 0) {
    EXPECT_LE(p.plan.num_decode_items, target);
  }
}

// The step of docs/results/step_grid_h200.md that cost 10 ms more than its
// parts: 4 decodes at 16k context beside a 1024-token chunk at 8192. The
// chunk's 256 prefill items fill the slots, but the decodes run in a launch
// of their own and are split as 4 decodes alone would be.
TEST(MsaPlanTest, DecodesBesideALargePrefillChunkAreSplitOnTheirOwn) {
  const AttentionShape shape = Llama8bShape();
  BatchTablesStorage tables;
  int32_t next_page = 0;
  AppendSequence(tables, 9216, 8192, 9216, shape.page_size, &next_page);  // the chunk
  for (int i = 0; i < 4; ++i) {
    AppendSequence(tables, 16385, 16384, 16385, shape.page_size, &next_page);
  }
  const MsaPlanOptions options;
  const Planned alone_prefill = [&] {
    BatchTablesStorage only;
    int32_t page = 0;
    AppendSequence(only, 9216, 8192, 9216, shape.page_size, &page);
    return PlanBatch(shape, only, page);
  }();
  const Planned alone_decodes = [&] {
    BatchTablesStorage only;
    int32_t page = 0;
    for (int i = 0; i < 4; ++i) AppendSequence(only, 16385, 16384, 16385, shape.page_size, &page);
    return PlanBatch(shape, only, page);
  }();
  const Planned mixed = PlanBatch(shape, tables, next_page, options);

  // 1024 queries x 4 (GQA) = 4096 rows = 32 tiles, x 8 KV heads: 256 items,
  // 512 slots >= the 264 of 132 SMs x 2: unsplit, alone or mixed.
  EXPECT_EQ(mixed.plan.num_prefill_items, 256);
  EXPECT_EQ(mixed.plan.prefill_kv_chunk_tokens, 0);
  EXPECT_EQ(alone_prefill.plan.num_prefill_items, 256);
  // The 32 decode tiles are split exactly as when they run alone.
  EXPECT_GT(mixed.plan.decode_kv_chunk_tokens, 0);
  EXPECT_EQ(mixed.plan.decode_kv_chunk_tokens, alone_decodes.plan.decode_kv_chunk_tokens);
  EXPECT_EQ(mixed.plan.num_decode_items, alone_decodes.plan.num_decode_items);
  EXPECT_GT(mixed.plan.num_decode_items, 4 * 8 * 4);  // each 16k scan in several chunks
  ExpectEachSplitClassWithinTarget(mixed, options);
  ExpectExactCover(mixed);
}

// msa_h100.md's mixed batch without its decodes: a 512-token chunk at 8192
// (128 prefill items, one wave on 132 SMs) plus four 16-token rebuild holes
// at 8192 (32 more items of 64 rows). Unsplit, 160 items of ~8.5k keys take
// two waves; cut, the pieces balance over the SMs. The chunk alone is one
// wave and stays whole.
TEST(MsaPlanTest, PrefillJustPastOneWaveIsCutToBalanceTheWaves) {
  const AttentionShape shape = Llama8bShape();
  const MsaPlanOptions options;
  BatchTablesStorage chunk_only;
  int32_t chunk_pages = 0;
  AppendSequence(chunk_only, 8704, 8192, 8704, shape.page_size, &chunk_pages);
  const Planned alone = PlanBatch(shape, chunk_only, chunk_pages, options);
  EXPECT_EQ(alone.plan.num_prefill_items, 128);
  EXPECT_EQ(alone.plan.prefill_kv_chunk_tokens, 0);

  BatchTablesStorage tables;
  int32_t next_page = 0;
  AppendSequence(tables, 8704, 8192, 8704, shape.page_size, &next_page);
  for (int i = 0; i < 4; ++i) AppendSequence(tables, 8208, 8192, 8208, shape.page_size, &next_page);
  const Planned p = PlanBatch(shape, tables, next_page, options);
  EXPECT_EQ(TilesAmong(p, 0, p.plan.num_prefill_items), 160);
  EXPECT_GT(p.plan.prefill_kv_chunk_tokens, 0);
  EXPECT_LT(p.plan.prefill_kv_chunk_tokens, 8704);
  EXPECT_GT(p.plan.num_prefill_items, 160);
  EXPECT_GT(p.plan.num_merge_groups, 0);
  // List-scheduled on 132 SMs in plan order, the pieces finish well before
  // two whole items would.
  std::vector<int64_t> finish(options.num_sms, 0);
  for (int32_t i = 0; i < p.plan.num_prefill_items; ++i) {
    auto first_free = std::min_element(finish.begin(), finish.end());
    *first_free += p.items[i].kv_end - p.items[i].kv_begin;
  }
  EXPECT_LT(*std::max_element(finish.begin(), finish.end()), 2 * 8192 * 9 / 10);
  ExpectEachSplitClassWithinTarget(p, options);
  ExpectExactCover(p);
}

// Many waves: the last one's slack is small, so nothing is cut.
TEST(MsaPlanTest, LongPrefillOfManyWavesStaysUnsplit) {
  const AttentionShape shape = Llama8bShape();
  BatchTablesStorage tables;
  int32_t next_page = 0;
  AppendSequence(tables, 8192, 0, 8192, shape.page_size, &next_page);  // 2048 items
  const Planned p = PlanBatch(shape, tables, next_page);
  EXPECT_EQ(p.plan.num_prefill_items, 2048);
  EXPECT_EQ(p.plan.prefill_kv_chunk_tokens, 0);
  EXPECT_EQ(p.plan.num_merge_groups, 0);
}

TEST(MsaPlanTest, SmallMixedBatchSplitsBothClassesWithinTheirTargets) {
  const AttentionShape shape = Llama8bShape();
  BatchTablesStorage tables;
  int32_t next_page = 0;
  AppendSequence(tables, 8192 + 64, 8192, 8192 + 64, shape.page_size, &next_page);  // 2 tiles
  AppendSequence(tables, 4097, 4096, 4097, shape.page_size, &next_page);            // a decode
  const MsaPlanOptions options;
  const Planned p = PlanBatch(shape, tables, next_page, options);
  EXPECT_GT(p.plan.prefill_kv_chunk_tokens, 0);
  EXPECT_GT(p.plan.decode_kv_chunk_tokens, 0);
  EXPECT_EQ(p.plan.kv_chunk_tokens,
            std::max(p.plan.prefill_kv_chunk_tokens, p.plan.decode_kv_chunk_tokens));
  ExpectEachSplitClassWithinTarget(p, options);
  ExpectExactCover(p);
}

TEST(MsaPlanTest, NoSplitWhenDisallowedAndForcedChunksSplitBothClasses) {
  const AttentionShape shape = Llama8bShape();
  BatchTablesStorage tables;
  int32_t next_page = 0;
  AppendSequence(tables, 2048, 1024, 2048, shape.page_size, &next_page);
  AppendSequence(tables, 3001, 3000, 3001, shape.page_size, &next_page);
  MsaPlanOptions off;
  off.allow_split_kv = false;
  const Planned unsplit = PlanBatch(shape, tables, next_page, off);
  EXPECT_EQ(unsplit.plan.kv_chunk_tokens, 0);
  EXPECT_EQ(unsplit.plan.num_merge_groups, 0);
  ExpectExactCover(unsplit);

  MsaPlanOptions forced;
  forced.forced_kv_chunk_tokens = 512;
  const Planned split = PlanBatch(shape, tables, next_page, forced);
  EXPECT_EQ(split.plan.prefill_kv_chunk_tokens, 512);
  EXPECT_EQ(split.plan.decode_kv_chunk_tokens, 512);
  ExpectExactCover(split);
}

// Random mixes of decodes, prefill chunks and rebuild runs, on several GPU
// sizes: every plan fits the workspace bound, covers every tile's keys
// exactly once, and keeps each split class within its target.
TEST(MsaPlanTest, PrefillKernelChoiceIsValidatedAndCarriedIntoThePlanOnly) {
  MsaPlanOptions bad;
  bad.prefill_kernel = static_cast<MsaPrefillKernel>(7);
  EXPECT_EQ(bad.Validate().code(), absl::StatusCode::kInvalidArgument);
  const AttentionShape shape = Llama8bShape();
  BatchTablesStorage tables;
  int32_t next_page = 0;
  AppendSequence(tables, 8192 + 512, 8192, 8192 + 512, shape.page_size, &next_page);
  MsaPlanOptions mma;
  mma.prefill_kernel = MsaPrefillKernel::kMma;
  MsaPlanOptions wgmma;
  wgmma.prefill_kernel = MsaPrefillKernel::kWgmma;
  const Planned a = PlanBatch(shape, tables, next_page, mma);
  const Planned b = PlanBatch(shape, tables, next_page, wgmma);
  EXPECT_EQ(a.plan.prefill_kernel, MsaPrefillKernel::kMma);
  EXPECT_EQ(b.plan.prefill_kernel, MsaPrefillKernel::kWgmma);
  // Both kernels use 128-row tiles and one 8-warp CTA per SM: same work.
  ASSERT_EQ(a.items.size(), b.items.size());
  for (size_t i = 0; i < a.items.size(); ++i) {
    EXPECT_EQ(0, std::memcmp(&a.items[i], &b.items[i], sizeof(MsaWorkItem))) << "item " << i;
  }
  EXPECT_EQ(a.plan.kv_chunk_tokens, b.plan.kv_chunk_tokens);
}

TEST(MsaPlanTest, RandomMixedBatchesCoverEveryTileExactlyOnce) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  rng.seed(seed);
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  const AttentionShape shape = Llama8bShape();
  for (int round = 0; round < 60; ++round) {
    BatchTablesStorage tables;
    int32_t next_page = 0;
    const int sequences = std::uniform_int_distribution<int>(1, 24)(rng);
    for (int s = 0; s < sequences; ++s) {
      const int32_t keys = std::uniform_int_distribution<int32_t>(1, 20000)(rng);
      const bool decode = std::bernoulli_distribution(0.7)(rng);
      const int32_t queries =
          decode ? 1 : std::uniform_int_distribution<int32_t>(1, std::min(keys, 2048))(rng);
      AppendSequence(tables, keys, keys - queries, keys, shape.page_size, &next_page);
    }
    MsaPlanOptions options;
    options.num_sms = std::uniform_int_distribution<int32_t>(8, 132)(rng);
    options.target_ctas_per_sm = std::uniform_int_distribution<int32_t>(1, 4)(rng);
    const Planned p = PlanBatch(shape, tables, next_page, options);
    ExpectEachSplitClassWithinTarget(p, options);
    ExpectExactCover(p);
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "round " << round << ": " << sequences << " sequences, num_sms "
                    << options.num_sms;
      return;
    }
  }
}

}  // namespace
}  // namespace asymcache::msa
