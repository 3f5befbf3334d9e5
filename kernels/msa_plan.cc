// MSA CUDA planner (see msa_plan.h): work items, split-KV choice, workspace
// layout. Pure CPU code.
#include "kernels/msa_plan.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "absl/strings/str_cat.h"

namespace asymcache::msa {
namespace {

constexpr size_t kAlign = 256;
constexpr int32_t kForcedChunkMultiple = 64;  // the kernels' KV tile

size_t AlignUp(size_t value) { return (value + kAlign - 1) / kAlign * kAlign; }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Upper bound on unsplit items: decode sequences take one tile, prefill
// sequences ceil(rows / tile) <= rows / tile + 1, per kv head.
int64_t UnsplitItemBound(const AttentionShape& shape, int64_t max_batch, int64_t max_total_q) {
  const int64_t rows = max_total_q * shape.group_size();
  return static_cast<int64_t>(shape.num_kv_heads) *
         (CeilDiv(rows, kMsaPrefillTileRows) + max_batch);
}

struct Layout {
  size_t items_offset, merge_groups_offset, q_pos_offset, page_ids_offset, page_pos_offset,
      page_token_start_offset, upload_bytes, partial_out_offset, partial_lse_offset, device_bytes;
};

Layout ComputeLayout(int64_t num_items, int64_t num_groups, int64_t total_q, int64_t total_pages,
                     int64_t partial_rows, int32_t head_dim) {
  Layout l{};
  size_t at = 0;
  l.items_offset = at;
  at = AlignUp(at + static_cast<size_t>(num_items) * sizeof(MsaWorkItem));
  l.merge_groups_offset = at;
  at = AlignUp(at + static_cast<size_t>(num_groups) * sizeof(MsaMergeGroup));
  l.q_pos_offset = at;
  at = AlignUp(at + static_cast<size_t>(total_q) * sizeof(int32_t));
  l.page_ids_offset = at;
  at = AlignUp(at + static_cast<size_t>(total_pages) * sizeof(int32_t));
  l.page_pos_offset = at;
  at = AlignUp(at + static_cast<size_t>(total_pages) * sizeof(int32_t));
  l.page_token_start_offset = at;
  at = AlignUp(at + static_cast<size_t>(total_pages) * sizeof(int32_t));
  l.upload_bytes = at;
  l.partial_out_offset = at;
  at = AlignUp(at + static_cast<size_t>(partial_rows) * head_dim * sizeof(float));
  l.partial_lse_offset = at;
  at = AlignUp(at + static_cast<size_t>(partial_rows) * sizeof(float));
  l.device_bytes = at;
  return l;
}

absl::Status CheckShapeSupported(const AttentionShape& shape) {
  if (absl::Status status = shape.Validate(); !status.ok()) return status;
  if (shape.dtype != DType::kBFloat16 && shape.dtype != DType::kFloat16) {
    return absl::InvalidArgumentError("MSA CUDA supports dtype bf16 and fp16 only");
  }
  return absl::OkStatus();
}

// An item before splitting: one (sequence, kv head, query tile).
struct TileItem {
  MsaWorkItem item;
  bool decode;
};

// Rows in the first tile of a prefill-class sequence of `rows` packed rows;
// every later tile is full (kMsaPrefillTileRows).
//
// kLeastWork puts the partial tile first. Why that is the least modeled work
// of any grouping of the rows into tiles (contiguous or not): a tile's work
// MsaTileModeledWork(kv_end) depends only on its largest query position and
// never decreases with it (q_pos strictly increases within a sequence, so
// keys_visible does not decrease). Tiles hold at most C = 128 / G tokens
// (cut on token boundaries). Rank the tokens from the highest position down
// and the tiles by their largest position, descending: tokens 1 .. i*C + 1
// cannot fit in i tiles, so at least i + 1 tiles reach token i*C + 1's
// position, i.e. tile i + 1 does. Any grouping has at least ceil(n / C)
// tiles, and the sum of their work is at least the sum over i of the work
// at token i*C + 1's position (plus the fixed cost of ceil(n / C) tiles).
// Full tiles cut from the last token back end exactly at tokens 1, C + 1,
// 2C + 1, ... and number ceil(n / C): they meet the bound. Against
// kFromFirstRow (same tile count), the i-th highest tile of either rule ends
// at token i*C + 1 (kLeastWork) or at a token no lower, since kFromFirstRow's
// first k - i tiles hold (k - i) * C >= n - i*C tokens: no ranked tile's key
// range grows, so the split-KV search and the workspace bound (a function of
// the tile count) see no more work than before.
int32_t FirstTileRows(int32_t rows, MsaPrefillTiling tiling) {
  if (tiling == MsaPrefillTiling::kLeastWork && rows % kMsaPrefillTileRows != 0) {
    return rows % kMsaPrefillTileRows;
  }
  return std::min(rows, kMsaPrefillTileRows);
}

}  // namespace

absl::Status MsaPlanOptions::Validate() const {
  if (num_sms <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_sms must be positive, got ", num_sms));
  }
  if (target_ctas_per_sm <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("target_ctas_per_sm must be positive, got ", target_ctas_per_sm));
  }
  if (min_kv_chunk_tokens < 128 || min_kv_chunk_tokens % 128 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "min_kv_chunk_tokens must be a positive multiple of 128, got ", min_kv_chunk_tokens));
  }
  if (forced_kv_chunk_tokens < 0 || forced_kv_chunk_tokens % kForcedChunkMultiple != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forced_kv_chunk_tokens must be 0 or a positive multiple of 64, got ",
        forced_kv_chunk_tokens));
  }
  if (prefill_kernel != MsaPrefillKernel::kAuto && prefill_kernel != MsaPrefillKernel::kMma &&
      prefill_kernel != MsaPrefillKernel::kWgmma &&
      prefill_kernel != MsaPrefillKernel::kWgmmaOverlap) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill_kernel must be kAuto, kMma, kWgmma or kWgmmaOverlap, got ",
        static_cast<int32_t>(prefill_kernel)));
  }
  if (prefill_tiling != MsaPrefillTiling::kFromFirstRow &&
      prefill_tiling != MsaPrefillTiling::kLeastWork) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill_tiling must be kFromFirstRow (0) or kLeastWork (1), got ",
        static_cast<int32_t>(prefill_tiling)));
  }
  return absl::OkStatus();
}

MsaWorkspaceSizes MsaWorkspaceSizesFor(const AttentionShape& shape, int32_t max_batch,
                                       int32_t max_total_q, int32_t max_total_pages,
                                       const MsaPlanOptions& options) {
  const int64_t batch = std::max<int32_t>(max_batch, 0);
  const int64_t total_q = std::max<int32_t>(max_total_q, 0);
  const int64_t pages = std::max<int32_t>(max_total_pages, 0);
  const int64_t unsplit = UnsplitItemBound(shape, batch, total_q);
  int64_t items = unsplit;
  if (options.forced_kv_chunk_tokens > 0) {
    const int64_t max_keys = pages * std::max<int32_t>(shape.page_size, 1);
    items = unsplit * (1 + CeilDiv(max_keys, options.forced_kv_chunk_tokens));
  } else if (options.allow_split_kv) {
    // Each class (prefill, decode) splits up to the target on its own.
    items = unsplit + 2 * static_cast<int64_t>(std::max(options.num_sms, 1)) *
                          std::max(options.target_ctas_per_sm, 1);
  }
  const bool may_split = options.forced_kv_chunk_tokens > 0 || options.allow_split_kv;
  const int64_t partial_rows = may_split ? items * kMsaPrefillTileRows : 0;
  const Layout layout =
      ComputeLayout(items, unsplit, total_q, pages, partial_rows, std::max(shape.head_dim, 1));
  return MsaWorkspaceSizes{layout.upload_bytes, layout.device_bytes};
}

absl::StatusOr<MsaPlan> PlanMsa(const AttentionShape& shape, const BatchTables& batch,
                                int64_t num_pool_pages, const MsaPlanOptions& options,
                                void* host_ws, size_t host_bytes) {
  if (absl::Status status = CheckShapeSupported(shape); !status.ok()) return status;
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (absl::Status status = ValidateBatch(shape, batch, num_pool_pages); !status.ok()) {
    return status;
  }
  if (host_ws == nullptr && host_bytes > 0) {
    return absl::InvalidArgumentError("host_ws is null but host_bytes > 0");
  }
  if (reinterpret_cast<uintptr_t>(host_ws) % 16 != 0) {
    return absl::InvalidArgumentError("host_ws must be 16-byte aligned");
  }

  const int32_t group = shape.group_size();
  const int32_t batch_size = batch.batch_size();
  const int32_t total_pages = batch.total_pages();
  const int32_t total_q = batch.total_q();

  // Keys before each page within its sequence, and whether key -> page is a
  // division (all pages but the last full).
  std::vector<int32_t> page_token_start(total_pages);
  std::vector<int32_t> seq_keys(batch_size, 0);
  std::vector<int32_t> seq_uniform(batch_size, 1);
  for (int32_t s = 0; s < batch_size; ++s) {
    int64_t keys = 0;
    for (int32_t p = batch.kv_indptr[s]; p < batch.kv_indptr[s + 1]; ++p) {
      page_token_start[p] = static_cast<int32_t>(keys);
      keys += batch.kv_page_len[p];
      if (p + 1 < batch.kv_indptr[s + 1] && batch.kv_page_len[p] != shape.page_size) {
        seq_uniform[s] = 0;
      }
    }
    if (keys > INT32_MAX / 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", s, " has ", keys, " keys; at most 2^30 supported"));
    }
    seq_keys[s] = static_cast<int32_t>(keys);
  }

  // Keys of sequence s with position <= qp.
  auto keys_visible = [&](int32_t s, int32_t qp) -> int32_t {
    const int32_t begin = batch.kv_indptr[s];
    const int32_t end = batch.kv_indptr[s + 1];
    // First page whose start is > qp.
    const int32_t* first = batch.kv_page_pos.data() + begin;
    const int32_t* last = batch.kv_page_pos.data() + end;
    const int32_t after = static_cast<int32_t>(std::upper_bound(first, last, qp) - first) + begin;
    if (after == begin) return 0;
    const int32_t p = after - 1;
    return page_token_start[p] + std::min(batch.kv_page_len[p], qp - batch.kv_page_pos[p] + 1);
  };

  // 1. Unsplit items.
  std::vector<TileItem> tiles;
  for (int32_t s = 0; s < batch_size; ++s) {
    const int32_t q_begin = batch.q_indptr[s];
    const int32_t q_len = batch.q_indptr[s + 1] - q_begin;
    if (q_len == 0) continue;
    const int32_t rows = q_len * group;
    const bool decode = rows <= kMsaDecodeTileRows;
    // Decode: one tile. Prefill: the first tile's rows, then full tiles.
    // G divides both tile sizes, so every tile starts on a token boundary.
    const int32_t first_rows = decode ? rows : FirstTileRows(rows, options.prefill_tiling);
    for (int32_t r0 = 0; r0 < rows;) {
      const int32_t num_rows = r0 == 0 ? first_rows : std::min(kMsaPrefillTileRows, rows - r0);
      const int32_t first_token = q_begin + r0 / group;
      const int32_t last_token = q_begin + (r0 + num_rows - 1) / group;
      const int32_t kv_end = keys_visible(s, batch.q_pos[last_token]);
      for (int32_t h = 0; h < shape.num_kv_heads; ++h) {
        MsaWorkItem item{};
        item.q_token_begin = first_token;
        item.num_rows = num_rows;
        item.kv_head = h;
        item.page_begin = batch.kv_indptr[s];
        item.num_pages = batch.kv_indptr[s + 1] - batch.kv_indptr[s];
        item.kv_begin = 0;
        item.kv_end = kv_end;
        item.kv_begin_page = 0;
        item.q_pos_min = batch.q_pos[first_token];
        item.partial_row = -1;
        item.uniform_pages = seq_uniform[s];
        tiles.push_back(TileItem{item, decode});
      }
      r0 += num_rows;
    }
  }

  // 2. Chunk sizes, one per class. Prefill and decode items run in two
  // launches, one after the other (msa_kernel.cuh LaunchMsaAttention), so
  // each launch must fill the GPU by itself: a decode batch riding with a
  // prefill chunk is split as the same decodes alone would be, instead of
  // running as one long unsplit CTA per (sequence, KV head) after the
  // prefill launch (step_grid_h200.md: +10 ms on a 56 ms step). The choice
  // per class is MsaClassKvChunk (msa_waves.h), which the cost model shares.
  const MsaSplitOptions split_options{options.num_sms, options.target_ctas_per_sm,
                                      options.min_kv_chunk_tokens, options.balance_small_prefill};
  auto chunk_for = [&](bool decode) -> int32_t {
    if (options.forced_kv_chunk_tokens > 0) return options.forced_kv_chunk_tokens;
    if (!options.allow_split_kv) return 0;
    std::vector<int32_t> item_keys;
    for (const TileItem& t : tiles) {
      if (t.decode == decode) item_keys.push_back(t.item.kv_end);
    }
    return MsaClassKvChunk(item_keys, decode, split_options);
  };
  const int32_t prefill_chunk = chunk_for(/*decode=*/false);
  const int32_t decode_chunk = chunk_for(/*decode=*/true);

  // 3. Split into chunks; prefill items first, then decode; each class in
  // descending cost so the block scheduler approximates LPT.
  std::vector<MsaWorkItem> prefill_items;
  std::vector<MsaWorkItem> decode_items;
  std::vector<MsaMergeGroup> groups;
  int64_t partial_rows = 0;
  for (const TileItem& t : tiles) {
    std::vector<MsaWorkItem>& out = t.decode ? decode_items : prefill_items;
    const int32_t kv_end = t.item.kv_end;
    const int32_t chunk = t.decode ? decode_chunk : prefill_chunk;
    const int64_t chunks = chunk > 0 ? std::max<int64_t>(1, CeilDiv(kv_end, chunk)) : 1;
    if (chunks == 1) {
      out.push_back(t.item);
      continue;
    }
    MsaMergeGroup g{};
    g.q_token_begin = t.item.q_token_begin;
    g.num_rows = t.item.num_rows;
    g.kv_head = t.item.kv_head;
    g.partial_row = static_cast<int32_t>(partial_rows);
    g.num_chunks = static_cast<int32_t>(chunks);
    groups.push_back(g);
    // The sequence's key offsets, to name each chunk's first page.
    const int32_t* seq_start = page_token_start.data() + t.item.page_begin;
    const int32_t* seq_end = seq_start + t.item.num_pages;
    for (int64_t c = 0; c < chunks; ++c) {
      MsaWorkItem item = t.item;
      item.kv_begin = static_cast<int32_t>(c * chunk);
      item.kv_end = static_cast<int32_t>(std::min<int64_t>(kv_end, (c + 1) * chunk));
      // Last page whose first key is <= kv_begin (page 0 starts at key 0).
      item.kv_begin_page =
          static_cast<int32_t>(std::upper_bound(seq_start, seq_end, item.kv_begin) - seq_start) - 1;
      item.partial_row = static_cast<int32_t>(partial_rows + c * t.item.num_rows);
      out.push_back(item);
    }
    partial_rows += chunks * t.item.num_rows;
    if (partial_rows > INT32_MAX / 2) {
      return absl::ResourceExhaustedError("too many partial rows; use a larger chunk");
    }
  }
  auto by_cost = [](const MsaWorkItem& a, const MsaWorkItem& b) {
    return (a.kv_end - a.kv_begin) > (b.kv_end - b.kv_begin);
  };
  std::stable_sort(prefill_items.begin(), prefill_items.end(), by_cost);
  std::stable_sort(decode_items.begin(), decode_items.end(), by_cost);

  const int64_t num_items =
      static_cast<int64_t>(prefill_items.size()) + static_cast<int64_t>(decode_items.size());
  const Layout layout = ComputeLayout(num_items, static_cast<int64_t>(groups.size()), total_q,
                                      total_pages, partial_rows, shape.head_dim);
  if (layout.upload_bytes > host_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("MSA plan needs ", layout.upload_bytes, " host workspace bytes, have ",
                     host_bytes, " (size it with MsaWorkspaceSizesFor)"));
  }

  auto* base = static_cast<unsigned char*>(host_ws);
  if (layout.upload_bytes > 0) std::memset(base, 0, layout.upload_bytes);
  auto copy_to = [&](size_t offset, const void* src, size_t bytes) {
    if (bytes > 0) std::memcpy(base + offset, src, bytes);
  };
  copy_to(layout.items_offset, prefill_items.data(), prefill_items.size() * sizeof(MsaWorkItem));
  copy_to(layout.items_offset + prefill_items.size() * sizeof(MsaWorkItem), decode_items.data(),
          decode_items.size() * sizeof(MsaWorkItem));
  copy_to(layout.merge_groups_offset, groups.data(), groups.size() * sizeof(MsaMergeGroup));
  copy_to(layout.q_pos_offset, batch.q_pos.data(), batch.q_pos.size() * sizeof(int32_t));
  copy_to(layout.page_ids_offset, batch.kv_page_ids.data(),
          batch.kv_page_ids.size() * sizeof(int32_t));
  copy_to(layout.page_pos_offset, batch.kv_page_pos.data(),
          batch.kv_page_pos.size() * sizeof(int32_t));
  copy_to(layout.page_token_start_offset, page_token_start.data(),
          page_token_start.size() * sizeof(int32_t));

  MsaPlan plan;
  plan.num_q_heads = shape.num_q_heads;
  plan.num_kv_heads = shape.num_kv_heads;
  plan.head_dim = shape.head_dim;
  plan.page_size = shape.page_size;
  plan.dtype = shape.dtype;
  plan.batch_size = batch_size;
  plan.total_q = total_q;
  plan.total_pages = total_pages;
  plan.num_pool_pages = num_pool_pages;
  plan.num_prefill_items = static_cast<int32_t>(prefill_items.size());
  plan.num_decode_items = static_cast<int32_t>(decode_items.size());
  for (const TileItem& t : tiles) {
    if (!t.decode) plan.max_prefill_tile_rows = std::max(plan.max_prefill_tile_rows, t.item.num_rows);
  }
  plan.num_merge_groups = static_cast<int32_t>(groups.size());
  plan.num_partial_rows = static_cast<int32_t>(partial_rows);
  plan.prefill_kv_chunk_tokens = prefill_chunk;
  plan.decode_kv_chunk_tokens = decode_chunk;
  plan.kv_chunk_tokens = std::max(prefill_chunk, decode_chunk);
  plan.prefill_kernel = options.prefill_kernel;
  plan.items_offset = layout.items_offset;
  plan.merge_groups_offset = layout.merge_groups_offset;
  plan.q_pos_offset = layout.q_pos_offset;
  plan.page_ids_offset = layout.page_ids_offset;
  plan.page_pos_offset = layout.page_pos_offset;
  plan.page_token_start_offset = layout.page_token_start_offset;
  plan.upload_bytes = layout.upload_bytes;
  plan.partial_out_offset = layout.partial_out_offset;
  plan.partial_lse_offset = layout.partial_lse_offset;
  plan.device_bytes_used = layout.device_bytes;
  return plan;
}

}  // namespace asymcache::msa
