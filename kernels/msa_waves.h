// The MSA launch model: how the planner cuts one class of work items (the
// prefill launch or the decode launch) into KV chunks, and how long the
// prefill launch takes in "keys" under the block scheduler's waves.
//
// Contract: pure functions of their arguments (no state, thread-safe), the
// single source of the split-KV choice. PlanMsa (msa_plan.cc) cuts its items
// with MsaClassKvChunk; the cost model (cachecore/cost_model.h, with a
// calibration's attention.num_sms > 0) prices a step's prefill attention with
// MsaPrefillTileKeys + MsaModelPrefillLaunch (the same choice), so the time it
// predicts follows the launch the kernels will run (docs/calibration.md,
// "Prefill waves"). Items are given by their keys (kv_end: the keys the item's
// query tile sees), one per (query tile, kv head), in any order.
#ifndef ASYMCACHE_KERNELS_MSA_WAVES_H_
#define ASYMCACHE_KERNELS_MSA_WAVES_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace asymcache::msa {

// Packed query rows per tile of the two kernels (decode: one 16-row tile per
// sequence and kv head; prefill: 128-row tiles).
inline constexpr int32_t kMsaDecodeTileRows = 16;
inline constexpr int32_t kMsaPrefillTileRows = 128;

// The planner's cost model of one (query tile, kv head) before any KV split,
// in 64-key units (the kernels' KV tile): the key tiles it scans, [0, kv_end),
// plus a fixed cost per tile (Q tile load, epilogue, partial-state write; 128
// keys, the wave-balancing model's per-piece cost). kv_end >= 0.
inline constexpr int64_t kMsaKeyTileKeys = 64;
inline constexpr int64_t kMsaTileFixedWork = 2;
inline constexpr int64_t MsaTileModeledWork(int64_t kv_end) {
  return (kv_end + kMsaKeyTileKeys - 1) / kMsaKeyTileKeys + kMsaTileFixedWork;
}

// The split-KV knobs MsaPlanOptions passes down (same meanings and defaults).
struct MsaSplitOptions {
  int32_t num_sms = 132;             // streaming multiprocessors (H100 SXM: 132)
  int32_t target_ctas_per_sm = 2;    // 4-warp CTA slots per SM a class should fill
  int32_t min_kv_chunk_tokens = 256; // smallest chunk of a split (multiple of 128)
  bool balance_small_prefill = true; // see MsaPlanOptions::balance_small_prefill
};

// The KV chunk (0 = unsplit) the planner cuts one class at, from its items'
// keys. A class needing fewer than num_sms * target_ctas_per_sm CTA slots (a
// decode item takes one, a 128-row prefill item two) is split to about that
// many: the smallest 128-aligned chunk >= min_kv_chunk_tokens that stays
// within the target (prefill: then, with balance_small_prefill, a smaller one
// where the wave model predicts >= 8% less time). A prefill class that fills
// the target is cut only where that balances its waves; a decode class that
// does is never cut. Empty `item_keys`: 0.
int32_t MsaClassKvChunk(absl::Span<const int32_t> item_keys, bool decode,
                        const MsaSplitOptions& options);

// A prefill launch as the planner would cut it: its KV chunk (0 = unsplit)
// and its modeled length in keys (MsaPrefillMakespanKeys at that chunk).
struct MsaPrefillLaunch {
  int32_t kv_chunk_tokens = 0;
  int64_t makespan_keys = 0;
};
// MsaClassKvChunk(item_keys, /*decode=*/false, options) and the launch's
// length in one pass (the cost model's call: the search computes both);
// allow_split = false: the unsplit launch (MsaPlanOptions::allow_split_kv).
// Empty `item_keys`: {0, 0}.
MsaPrefillLaunch MsaModelPrefillLaunch(absl::Span<const int32_t> item_keys,
                                       const MsaSplitOptions& options, bool allow_split = true);

// Modeled length of a prefill launch in keys: its items cut at `chunk` keys
// (0 = uncut) handed out in descending size to whichever of `num_sms` SMs
// frees first (list scheduling, one 8-warp CTA per SM), each piece costing
// its keys plus a fixed 128, plus 256 for the merge launch when anything is
// cut. 0 for no items.
int64_t MsaPrefillMakespanKeys(absl::Span<const int32_t> item_keys, int32_t chunk,
                               int32_t num_sms);

// Appends the prefill items' keys of `query_tokens` consecutive query tokens
// ending at absolute position `last_position` of a sequence whose keys are
// its positions 0..last_position (no holes), for GQA group size `group`
// (query heads per kv head) and `num_kv_heads` heads: the planner's
// kLeastWork tiling (full 128-row tiles from the last row back), one entry
// per (tile, kv head). Nothing for query_tokens <= 0; a run whose rows fit
// the decode tile (query_tokens * group <= 16) is a decode item, not
// appended.
void MsaPrefillTileKeys(int64_t query_tokens, int64_t last_position, int32_t group,
                        int32_t num_kv_heads, std::vector<int32_t>& item_keys);

}  // namespace asymcache::msa

#endif  // ASYMCACHE_KERNELS_MSA_WAVES_H_
