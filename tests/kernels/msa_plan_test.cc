// The MSA CUDA planner on the CPU (kernels/msa_plan.h): which items a batch
// becomes, and that every split still covers each tile's keys exactly once.
// The kernels that run these plans are checked on a GPU (msa_cuda_test.cc);
// here the plan's structure is.
#include "kernels/msa_plan.h"

#include <algorithm>
#include <cstdio>
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
#include "tests/kernels/msa_expect.h"
#include "tests/kernels/msa_plan_executor.h"
#include "tests/kernels/msa_reference.h"
#include "tests/kernels/msa_test_util.h"

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
// already filled them (wave balancing), adds at most `target` pieces; with
// balance_small_prefill, a prefill class below the target also adds at most
// `target` pieces.
void ExpectEachSplitClassWithinTarget(const Planned& p, const MsaPlanOptions& options) {
  const int64_t target = int64_t{options.num_sms} * options.target_ctas_per_sm;
  if (p.plan.prefill_kv_chunk_tokens > 0) {
    const int64_t tiles = TilesAmong(p, 0, p.plan.num_prefill_items);
    if (2 * tiles < target && !options.balance_small_prefill) {
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

// The planner's tiles of a contiguous chunk are MsaPrefillTileKeys' (what the
// cost model prices), and its prefill chunk is MsaClassKvChunk of them.
TEST(MsaPlanTest, PlannerChunkIsTheLaunchModelsChoice) {
  const AttentionShape shape = Llama8bShape();
  std::mt19937 rng(20261128);
  for (int trial = 0; trial < 40; ++trial) {
    const int32_t q = std::uniform_int_distribution<int32_t>(5, 2600)(rng);
    const int32_t end = q + std::uniform_int_distribution<int32_t>(0, 48'000)(rng);
    SCOPED_TRACE(absl::StrCat(q, " tokens ending at ", end));
    BatchTablesStorage tables;
    int32_t next_page = 0;
    AppendSequence(tables, end, end - q, end, shape.page_size, &next_page);
    MsaPlanOptions unsplit_options;
    unsplit_options.allow_split_kv = false;
    const Planned unsplit = PlanBatch(shape, tables, next_page, unsplit_options);
    std::vector<int32_t> planned_keys;
    for (int32_t i = 0; i < unsplit.plan.num_prefill_items; ++i) {
      planned_keys.push_back(unsplit.items[i].kv_end);
    }
    std::vector<int32_t> model_keys;
    MsaPrefillTileKeys(q, end - 1, shape.group_size(), shape.num_kv_heads, model_keys);
    std::sort(planned_keys.begin(), planned_keys.end());
    std::sort(model_keys.begin(), model_keys.end());
    ASSERT_EQ(planned_keys, model_keys);
    const MsaPlanOptions options;
    const Planned p = PlanBatch(shape, tables, next_page, options);
    EXPECT_EQ(p.plan.prefill_kv_chunk_tokens,
              MsaClassKvChunk(model_keys, /*decode=*/false,
                              MsaSplitOptions{options.num_sms, options.target_ctas_per_sm,
                                              options.min_kv_chunk_tokens,
                                              options.balance_small_prefill}));
  }
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
  // overlap: validated, carried, same work too.
  MsaPlanOptions overlap;
  overlap.prefill_kernel = MsaPrefillKernel::kWgmmaOverlap;
  EXPECT_TRUE(overlap.Validate().ok());
  const Planned c = PlanBatch(shape, tables, next_page, overlap);
  EXPECT_EQ(c.plan.prefill_kernel, MsaPrefillKernel::kWgmmaOverlap);
  ASSERT_EQ(a.items.size(), c.items.size());
}

// max_prefill_tile_rows (kAuto's choice between the wgmma main loops): the
// rows of the largest prefill tile; decode tiles do not count.
TEST(MsaPlanTest, PlanRecordsItsLargestPrefillTile) {
  const AttentionShape shape = Llama8bShape();  // GQA 4
  auto largest = [&](std::vector<std::pair<int32_t, int32_t>> queries) {
    BatchTablesStorage tables;
    int32_t next_page = 0;
    for (const auto& [q_begin, q_end] : queries) {
      AppendSequence(tables, q_end, q_begin, q_end, shape.page_size, &next_page);
    }
    return PlanBatch(shape, tables, next_page, MsaPlanOptions{}).plan.max_prefill_tile_rows;
  };
  EXPECT_EQ(largest({{8191, 8192}}), 0);                  // a decode: no prefill tile
  EXPECT_EQ(largest({{8192, 8208}}), 64);                 // a 16-token rebuild
  EXPECT_EQ(largest({{8192, 8208}, {4095, 4096}}), 64);   // and a decode
  EXPECT_EQ(largest({{8192, 8704}}), 128);                // a 512-token chunk
  EXPECT_EQ(largest({{8192, 8208}, {0, 20}}), 80);        // 64 and 80 rows
}

// Appends a decode sequence shaped like msa_gpu_bench's: `keys` keys in
// `segments` runs of random length, each on fresh pages (so each run ends in a
// partial page) and followed by a hole of 0..48 positions; one query at the
// last key's position.
void AppendSegmentedDecode(BatchTablesStorage& tables, int32_t keys, int32_t segments,
                           int32_t page_size, std::mt19937_64& rng, int32_t* next_page) {
  std::vector<int32_t> cuts(static_cast<size_t>(keys - 1));
  for (int32_t i = 0; i < keys - 1; ++i) cuts[i] = i + 1;
  std::shuffle(cuts.begin(), cuts.end(), rng);
  cuts.resize(static_cast<size_t>(segments - 1));
  std::sort(cuts.begin(), cuts.end());
  cuts.push_back(keys);
  int32_t pos = 0;
  int32_t prev = 0;
  for (const int32_t cut : cuts) {
    for (int32_t off = 0; off < cut - prev; off += page_size) {
      tables.kv_page_ids.push_back((*next_page)++);
      tables.kv_page_pos.push_back(pos + off);
      tables.kv_page_len.push_back(std::min(page_size, cut - prev - off));
    }
    pos += cut - prev;
    prev = cut;
    if (cut != keys) pos += std::uniform_int_distribution<int32_t>(0, 48)(rng);
  }
  tables.kv_indptr.push_back(static_cast<int32_t>(tables.kv_page_ids.size()));
  tables.q_pos.push_back(pos - 1);
  tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
}

// A decode context cut into S segments (each ending in a partial page) is
// planned into the same items as a contiguous one of the same keys: same
// chunk, same key ranges, so the same number of KV tiles per item. Its items
// name the page that holds their first key (item.kv_begin_page), and the
// decode kernel's page walk from there (64 keys a tile, pages first ..
// first + 63, a key's page counted from the page starts inside the tile, the
// next tile's first page likewise; WalkPartialPages) resolves every key to
// the page the key offsets name: no binary search of the offsets per tile (it
// cost an 18% slower 4k decode on an H100 at S = 4, before 2026-11-28).
TEST(MsaPlanTest, SegmentedDecodePlansLikeAContiguousContextAndWalksItsPages) {
  std::mt19937_64 rng(20261128);
  for (const int32_t page_size : {16, 7, 1}) {
    AttentionShape shape = Llama8bShape();
    shape.page_size = page_size;
    for (const auto& [batch, keys] : std::vector<std::pair<int32_t, int32_t>>{
             {1, 1024}, {1, 4096}, {1, 16384}, {8, 1024}, {4, 3000}}) {
      std::multiset<std::pair<int32_t, int32_t>> contiguous_ranges;
      int32_t contiguous_chunk = -1;
      for (const int32_t segments : {1, 4, 64, 256}) {
        SCOPED_TRACE(absl::StrCat("page ", page_size, " B ", batch, " keys ", keys, " S ",
                                  segments));
        BatchTablesStorage tables;
        int32_t next_page = 0;
        for (int32_t b = 0; b < batch; ++b) {
          AppendSegmentedDecode(tables, keys, segments, page_size, rng, &next_page);
        }
        const BatchTables view = tables.view();
        const MsaPlanOptions options;
        const MsaWorkspaceSizes sizes = MsaWorkspaceSizesFor(
            shape, view.batch_size(), view.total_q(), view.total_pages(), options);
        std::vector<uint64_t> host((sizes.host_bytes + 7) / 8 + 2);
        absl::StatusOr<MsaPlan> plan =
            PlanMsa(shape, view, next_page, options, host.data(), sizes.host_bytes);
        ASSERT_TRUE(plan.ok()) << plan.status();
        ASSERT_EQ(plan->num_prefill_items, 0);
        const auto* base = reinterpret_cast<const unsigned char*>(host.data());
        const auto* items = reinterpret_cast<const MsaWorkItem*>(base + plan->items_offset);
        const auto* page_start =
            reinterpret_cast<const int32_t*>(base + plan->page_token_start_offset);
        std::multiset<std::pair<int32_t, int32_t>> ranges;
        std::vector<int32_t> walked;
        for (int32_t i = 0; i < plan->num_items(); ++i) {
          const MsaWorkItem& item = items[i];
          ranges.insert({item.kv_begin, item.kv_end});
          EXPECT_EQ(item.uniform_pages, segments == 1 || page_size == 1 ? 1 : 0);
          // The page holding kv_begin.
          ASSERT_GE(item.kv_begin_page, 0);
          ASSERT_LT(item.kv_begin_page, item.num_pages);
          EXPECT_LE(page_start[item.page_begin + item.kv_begin_page], item.kv_begin);
          if (item.kv_begin_page + 1 < item.num_pages) {
            EXPECT_GT(page_start[item.page_begin + item.kv_begin_page + 1], item.kv_begin);
          }
          testing::WalkPartialPages(item, page_start, 64, &walked);
          for (int32_t j = 0; j < item.kv_end - item.kv_begin; ++j) {
            const int32_t t = item.kv_begin + j;
            const int32_t page = walked[static_cast<size_t>(j)];
            ASSERT_GE(page, 0) << "key " << t << " unclaimed";
            ASSERT_LE(page_start[item.page_begin + page], t);
            if (page + 1 < item.num_pages) {
              ASSERT_GT(page_start[item.page_begin + page + 1], t);
            }
          }
        }
        if (segments == 1) {
          contiguous_ranges = ranges;
          contiguous_chunk = plan->decode_kv_chunk_tokens;
        } else {
          EXPECT_EQ(plan->decode_kv_chunk_tokens, contiguous_chunk);
          EXPECT_EQ(ranges, contiguous_ranges);
        }
      }
    }
  }
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
    options.prefill_tiling = std::bernoulli_distribution(0.5)(rng)
                                 ? MsaPrefillTiling::kLeastWork
                                 : MsaPrefillTiling::kFromFirstRow;
    options.balance_small_prefill = std::bernoulli_distribution(0.5)(rng);
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


// ---- tile forming (MsaPlanOptions::prefill_tiling) ----------------------------

// A query run: positions [start, start + len).
struct QueryRun {
  int32_t start;
  int32_t len;
};

// Appends a sequence whose keys are positions [0, keys) on fresh pages and
// whose queries are `runs` (sorted, disjoint, inside [0, keys)).
void AppendSequenceWithRuns(BatchTablesStorage& tables, int32_t keys,
                            const std::vector<QueryRun>& runs, int32_t page_size,
                            int32_t* next_page) {
  for (int32_t p = 0; p < keys; p += page_size) {
    tables.kv_page_ids.push_back((*next_page)++);
    tables.kv_page_pos.push_back(p);
    tables.kv_page_len.push_back(std::min(page_size, keys - p));
  }
  tables.kv_indptr.push_back(static_cast<int32_t>(tables.kv_page_ids.size()));
  for (const QueryRun& run : runs) {
    for (int32_t q = run.start; q < run.start + run.len; ++q) tables.q_pos.push_back(q);
  }
  tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
}

// The planner's modeled work of a plan: MsaTileModeledWork of every
// (query tile, kv head), i.e. of the largest kv_end among the tile's items.
int64_t ModeledWork(const Planned& p) {
  std::map<std::pair<int32_t, int32_t>, int32_t> tile_end;
  for (const MsaWorkItem& item : p.items) {
    int32_t& end = tile_end[{item.q_token_begin, item.kv_head}];
    end = std::max(end, item.kv_end);
  }
  int64_t work = 0;
  for (const auto& [tile, end] : tile_end) work += MsaTileModeledWork(end);
  return work;
}

// Every (token, kv head) is in exactly one tile, tiles start on token
// boundaries and stay inside one sequence (an unsplit plan: one item a tile).
void ExpectEveryRowInOneTile(const Planned& p, const BatchTables& tables, int32_t group,
                             int32_t kv_heads) {
  std::vector<int32_t> seq_of(tables.total_q());
  for (int32_t s = 0; s < tables.batch_size(); ++s) {
    for (int32_t t = tables.q_indptr[s]; t < tables.q_indptr[s + 1]; ++t) seq_of[t] = s;
  }
  std::vector<int32_t> count(static_cast<size_t>(tables.total_q()) * kv_heads, 0);
  for (const MsaWorkItem& item : p.items) {
    ASSERT_GT(item.num_rows, 0);
    ASSERT_EQ(item.num_rows % group, 0) << "tile not on a token boundary";
    const int32_t last = item.q_token_begin + item.num_rows / group - 1;
    ASSERT_LT(last, tables.total_q());
    EXPECT_EQ(seq_of[item.q_token_begin], seq_of[last]) << "tile crosses sequences";
    EXPECT_EQ(item.q_pos_min, tables.q_pos[item.q_token_begin]);
    for (int32_t t = item.q_token_begin; t <= last; ++t) ++count[t * kv_heads + item.kv_head];
  }
  for (size_t i = 0; i < count.size(); ++i) {
    ASSERT_EQ(count[i], 1) << "token " << i / kv_heads << " kv head " << i % kv_heads;
  }
}

// The least modeled work of any cut of one sequence's tokens (positions
// q_pos, strictly increasing) into runs of at most `tile_tokens`, by dynamic
// programming over every cut point (independent of the planner's rule).
int64_t OptimalSequenceWork(const std::vector<int32_t>& q_pos, int32_t keys,
                            int32_t tile_tokens) {
  const int32_t n = static_cast<int32_t>(q_pos.size());
  std::vector<int64_t> best(n + 1, INT64_MAX);
  best[0] = 0;
  for (int32_t i = 1; i <= n; ++i) {
    // The tile ending at token i - 1 sees keys with position <= q_pos[i - 1].
    const int64_t w = MsaTileModeledWork(std::min(keys, q_pos[i - 1] + 1));
    for (int32_t j = std::max(0, i - tile_tokens); j < i; ++j) {
      best[i] = std::min(best[i], best[j] + w);
    }
  }
  return best[n];
}

// The packed case of bench/gpu/msa_gpu_bench.cc (issue 3), Llama-3-8B shape:
// one sequence of 16448 keys; "without": 16-token holes at 2k, 4k, 6k, 10k,
// 12k, 14k and 64 new tokens at 16k (640 rows: five full tiles); "with": plus
// a 16-token hole at 8k (64 rows); "alone": that hole only. The 16-token
// rebuild's modeled cost packed (with - without) against alone, per kv head
// in 64-key units: kFromFirstRow 195 of 131 (1.49x; the H100 measured 40.4 of
// 26.9 us, 1.50x, docs/results/msa_planner_h100/), kLeastWork 67 of 131
// (0.51x). 0.5 is the floor for 64 rows in 128-row tiles here: "without"
// fills its five tiles, and kLeastWork is the least work of any grouping
// (msa_plan.cc FirstTileRows).
TEST(MsaPlanTest, PackedSixteenTokenRebuildCostsHalfItsStandaloneWork) {
  const AttentionShape shape = Llama8bShape();
  const int32_t keys = 16384 + 64;
  const std::vector<QueryRun> without = {{2048, 16},  {4096, 16},  {6144, 16}, {10240, 16},
                                         {12288, 16}, {14336, 16}, {16384, 64}};
  std::vector<QueryRun> with = without;
  with.insert(with.begin() + 3, QueryRun{8192, 16});
  const std::vector<QueryRun> alone = {{8192, 16}};
  auto plan = [&](const std::vector<QueryRun>& runs, MsaPrefillTiling tiling) {
    BatchTablesStorage tables;
    int32_t pages = 0;
    AppendSequenceWithRuns(tables, keys, runs, shape.page_size, &pages);
    MsaPlanOptions options;  // H100: 132 SMs
    options.prefill_tiling = tiling;
    Planned p = PlanBatch(shape, tables, pages, options);
    ExpectExactCover(p);
    return p;
  };
  struct Costs {
    int64_t alone, without, with;
    int32_t chunk_without, chunk_with;
  };
  auto costs = [&](MsaPrefillTiling tiling) {
    const Planned a = plan(alone, tiling);
    const Planned wo = plan(without, tiling);
    const Planned w = plan(with, tiling);
    return Costs{ModeledWork(a) / shape.num_kv_heads, ModeledWork(wo) / shape.num_kv_heads,
                 ModeledWork(w) / shape.num_kv_heads, wo.plan.prefill_kv_chunk_tokens,
                 w.plan.prefill_kv_chunk_tokens};
  };
  const Costs old = costs(MsaPrefillTiling::kFromFirstRow);
  const Costs rule = costs(MsaPrefillTiling::kLeastWork);
  std::printf("[ packed   ] per kv head, 64-key units: alone %lld; first_row without %lld with "
              "%lld (+%lld, %.2fx alone), chunks %d/%d; least_work without %lld with %lld "
              "(+%lld, %.2fx alone), chunks %d/%d\n",
              static_cast<long long>(old.alone), static_cast<long long>(old.without),
              static_cast<long long>(old.with), static_cast<long long>(old.with - old.without),
              double(old.with - old.without) / old.alone, old.chunk_without, old.chunk_with,
              static_cast<long long>(rule.without), static_cast<long long>(rule.with),
              static_cast<long long>(rule.with - rule.without),
              double(rule.with - rule.without) / rule.alone, rule.chunk_without,
              rule.chunk_with);
  // alone: one 64-row tile of 8208 keys: 129 key tiles + 2.
  EXPECT_EQ(old.alone, 131);
  EXPECT_EQ(rule.alone, 131);
  // without: 640 rows, five full tiles either way.
  EXPECT_EQ(old.without, 975);
  EXPECT_EQ(rule.without, 975);
  EXPECT_EQ(old.with - old.without, 195);
  EXPECT_EQ(rule.with - rule.without, 67);
  EXPECT_LE(rule.with - rule.without, 0.52 * rule.alone);

  // The launch is one wave of split pieces, so its time follows the largest
  // chunk (5504 -> 5248 keys with the rule), not the summed work. With
  // balance_small_prefill the wave-balancing model picks smaller chunks and
  // packs pieces (docs/msa_kernel.md): the chunks and piece counts it gives.
  for (const bool balance : {false, true}) {
    for (const auto& [name, runs] :
         {std::pair<const char*, const std::vector<QueryRun>*>{"alone", &alone},
          {"without", &without},
          {"with", &with}}) {
      BatchTablesStorage tables;
      int32_t pages = 0;
      AppendSequenceWithRuns(tables, keys, *runs, shape.page_size, &pages);
      MsaPlanOptions options;
      options.balance_small_prefill = balance;
      const Planned p = PlanBatch(shape, tables, pages, options);
      ExpectExactCover(p);
      ExpectEachSplitClassWithinTarget(p, options);
      std::printf("[ packed   ] least_work balance_small_prefill=%d %-7s chunk %d, %d items\n",
                  balance ? 1 : 0, name, p.plan.prefill_kv_chunk_tokens, p.plan.num_items());
    }
  }
}

// Random query-segment structures (holes, runs, new tokens; GQA 1..8; a
// sequence's first tile partial or not): kLeastWork covers every row once,
// keeps the tile count, never models more work than kFromFirstRow (sequence
// by sequence), and equals the optimum of every cut found by dynamic
// programming.
TEST(MsaPlanTest, LeastWorkTilingIsOptimalAndNeverCostsMoreThanFirstRowTiling) {
  const uint64_t seed = testing::FreshSeed();
  std::mt19937_64 rng(seed);
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  int64_t total_old = 0;
  int64_t total_rule = 0;
  int rounds_cheaper = 0;
  constexpr int kRounds = 200;
  for (int round = 0; round < kRounds; ++round) {
    const int32_t group = 1 << testing::UniformInt(rng, 0, 3);
    const int32_t kv_heads = testing::UniformInt(rng, 1, 2);
    const AttentionShape shape =
        testing::MakeShape(group * kv_heads, kv_heads, 128, 16, DType::kBFloat16);
    BatchTablesStorage tables;
    int32_t next_page = 0;
    std::vector<std::vector<int32_t>> seq_q_pos;
    std::vector<int32_t> seq_keys;
    const int sequences = testing::UniformInt(rng, 1, 6);
    for (int s = 0; s < sequences; ++s) {
      const int32_t keys = testing::UniformInt(rng, 1, 20000);
      // Query runs at sorted random starts; the last may be new tokens at the end.
      std::vector<QueryRun> runs;
      const int num_runs = testing::UniformInt(rng, 0, 12);
      std::vector<int32_t> starts;
      for (int r = 0; r < num_runs; ++r) starts.push_back(testing::UniformInt(rng, 0, keys - 1));
      if (testing::UniformInt(rng, 0, 1) == 1) {
        starts.push_back(std::max(0, keys - testing::UniformInt(rng, 1, 300)));
      }
      std::sort(starts.begin(), starts.end());
      int32_t next_free = 0;
      for (const int32_t start : starts) {
        const int32_t begin = std::max(start, next_free);
        const int32_t len = std::min(testing::UniformInt(rng, 1, 96), keys - begin);
        if (len <= 0) continue;
        runs.push_back({begin, len});
        next_free = begin + len;
      }
      AppendSequenceWithRuns(tables, keys, runs, shape.page_size, &next_page);
      seq_keys.push_back(keys);
      seq_q_pos.emplace_back();
      for (const QueryRun& r : runs) {
        for (int32_t q = r.start; q < r.start + r.len; ++q) seq_q_pos.back().push_back(q);
      }
    }
    MsaPlanOptions options;
    options.allow_split_kv = false;
    options.prefill_tiling = MsaPrefillTiling::kFromFirstRow;
    const Planned old = PlanBatch(shape, tables, next_page, options);
    options.prefill_tiling = MsaPrefillTiling::kLeastWork;
    const Planned rule = PlanBatch(shape, tables, next_page, options);
    ExpectEveryRowInOneTile(rule, tables.view(), group, kv_heads);
    ExpectEveryRowInOneTile(old, tables.view(), group, kv_heads);
    EXPECT_EQ(rule.plan.num_items(), old.plan.num_items());
    EXPECT_EQ(rule.plan.num_prefill_items, old.plan.num_prefill_items);

    // Per sequence: the rule's tiles against the old ones and the optimum.
    for (int s = 0; s < sequences; ++s) {
      const int32_t q_begin = tables.q_indptr[s];
      const int32_t q_end = tables.q_indptr[s + 1];
      auto work_of = [&](const Planned& p) {
        int64_t w = 0;
        for (const MsaWorkItem& item : p.items) {
          if (item.q_token_begin >= q_begin && item.q_token_begin < q_end) {
            w += MsaTileModeledWork(item.kv_end);
          }
        }
        return w;
      };
      const int64_t w_old = work_of(old);
      const int64_t w_rule = work_of(rule);
      const int32_t rows = (q_end - q_begin) * group;
      const int32_t tile_tokens =
          (rows <= kMsaDecodeTileRows ? kMsaDecodeTileRows : kMsaPrefillTileRows) / group;
      const int64_t optimum =
          kv_heads * OptimalSequenceWork(seq_q_pos[s], seq_keys[s], tile_tokens);
      EXPECT_LE(w_rule, w_old) << "round " << round << " sequence " << s;
      EXPECT_EQ(w_rule, optimum) << "round " << round << " sequence " << s;
    }
    const int64_t w_old = ModeledWork(old);
    const int64_t w_rule = ModeledWork(rule);
    total_old += w_old;
    total_rule += w_rule;
    rounds_cheaper += w_rule < w_old ? 1 : 0;
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "round " << round << ": " << sequences << " sequences, G " << group;
      return;
    }
  }
  std::printf("[ tiling   ] %d random batches: modeled work first_row %lld, least_work %lld "
              "(%.2f%% less); cheaper in %d, equal in %d\n",
              kRounds, static_cast<long long>(total_old), static_cast<long long>(total_rule),
              100.0 * double(total_old - total_rule) / double(total_old), rounds_cheaper,
              kRounds - rounds_cheaper);
}

// Plans of random multi-segment batches, executed on the CPU the way the
// kernels read them (tests/kernels/msa_plan_executor.h), against the dense
// reference: both tilings, unsplit, auto-split on a small GPU and forced
// chunks. Every row is written exactly once (directly or by one merge), every
// partial row once.
class MsaPlanExecutionTest
    : public testing::SeededTest,
      public ::testing::WithParamInterface<std::tuple<MsaPrefillTiling, int32_t, int32_t>> {};

TEST_P(MsaPlanExecutionTest, RandomSegmentStructuresMatchDenseAttention) {
  const auto [tiling, group, page_size] = GetParam();
  const int32_t kv_heads = group == 8 ? 1 : 2;
  for (int round = 0; round < 4; ++round) {
    const DType dtype = testing::UniformInt(rng_, 0, 1) == 0 ? DType::kBFloat16 : DType::kFloat16;
    const int32_t head_dim = testing::UniformInt(rng_, 0, 1) == 0 ? 64 : 128;
    const AttentionShape shape =
        testing::MakeShape(kv_heads * group, kv_heads, head_dim, page_size, dtype);
    std::vector<testing::SequenceLayout> layouts;
    const int sequences = testing::UniformInt(rng_, 1, 3);
    for (int i = 0; i < sequences; ++i) {
      testing::RandomLayoutOptions options;
      options.context_len = testing::UniformInt(rng_, 20, 500);
      options.num_holes = testing::UniformInt(rng_, 0, 3);
      options.hole_at_front = testing::UniformInt(rng_, 0, 1) == 1;
      options.num_q_runs = testing::UniformInt(rng_, 0, 6);
      options.max_q_run_len = 64;
      options.decode_query = testing::UniformInt(rng_, 0, 1) == 1;
      layouts.push_back(testing::RandomLayout(options, rng_));
    }
    testing::BuildOptions build;
    build.aligned_pages = testing::UniformInt(rng_, 0, 1) == 1;
    const testing::TestBatch batch = testing::BuildTestBatch(shape, layouts, build, rng_);
    const BatchTables view = batch.view();
    std::vector<double> ref_out;
    std::vector<double> ref_lse;
    testing::ReferenceAttention(shape, view, batch.q.data(), batch.kv_pool.data(),
                                batch.num_pages, &ref_out, &ref_lse);

    MsaPlanOptions unsplit;
    unsplit.allow_split_kv = false;
    MsaPlanOptions small_gpu;  // few SMs: the auto split cuts long tiles
    small_gpu.num_sms = testing::UniformInt(rng_, 1, 8);
    small_gpu.target_ctas_per_sm = testing::UniformInt(rng_, 1, 4);
    small_gpu.min_kv_chunk_tokens = 128;
    MsaPlanOptions forced;
    forced.forced_kv_chunk_tokens = 64 * testing::UniformInt(rng_, 1, 3);
    MsaPlanOptions balanced = small_gpu;
    balanced.balance_small_prefill = true;
    for (auto [name, options] : {std::pair<const char*, MsaPlanOptions>{"unsplit", unsplit},
                                 {"auto", small_gpu},
                                 {"auto_balanced", balanced},
                                 {"forced", forced}}) {
      options.prefill_tiling = tiling;
      SCOPED_TRACE(absl::StrCat(SeedNote(), " round ", round, " plan ", name, " D ", head_dim,
                                " ", testing::DTypeName(dtype)));
      const MsaWorkspaceSizes sizes = MsaWorkspaceSizesFor(
          shape, view.batch_size(), view.total_q(), view.total_pages(), options);
      std::vector<uint64_t> host((sizes.host_bytes + 7) / 8 + 2);
      absl::StatusOr<MsaPlan> plan =
          PlanMsa(shape, view, batch.num_pages, options, host.data(), sizes.host_bytes);
      ASSERT_TRUE(plan.ok()) << plan.status();
      EXPECT_LE(plan->device_bytes_used, sizes.device_bytes);
      const testing::PlanExecution ex =
          testing::ExecutePlanOnCpu(*plan, host.data(), shape, batch.q.data(),
                                    batch.kv_pool.data());
      EXPECT_EQ(ex.bad_uniform_keys, 0);
      EXPECT_EQ(ex.bad_page_walk_keys, 0);
      for (size_t i = 0; i < ex.writes.size(); ++i) {
        ASSERT_EQ(ex.writes[i], 1) << "row " << i << " (token " << i / shape.num_q_heads << ")";
      }
      for (size_t i = 0; i < ex.partial_writes.size(); ++i) {
        ASSERT_EQ(ex.partial_writes[i], 1) << "partial row " << i;
      }
      EXPECT_LE(testing::RelativeErrorNorm(ex.out, ref_out), 1e-9);
      testing::ExpectLseMatchesReference(ex.lse, ref_lse, 1e-9, 1e-12);
      testing::ExpectRowsWithoutKeysAreZero(ex.out, ref_lse, head_dim);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    TilingGroupPage, MsaPlanExecutionTest,
    ::testing::Combine(::testing::Values(MsaPrefillTiling::kFromFirstRow,
                                         MsaPrefillTiling::kLeastWork),
                       ::testing::Values(1, 2, 4, 8), ::testing::Values(1, 7, 16)),
    [](const auto& info) {
      return absl::StrCat(std::get<0>(info.param) == MsaPrefillTiling::kLeastWork ? "least_work"
                                                                                  : "first_row",
                          "_g", std::get<1>(info.param), "_page", std::get<2>(info.param));
    });

}  // namespace
}  // namespace asymcache::msa
