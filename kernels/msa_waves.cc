// The MSA launch model (see msa_waves.h). Pure CPU code.
#include "kernels/msa_waves.h"

#include <algorithm>
#include <functional>
#include <vector>

namespace asymcache::msa {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// CTA slots an item takes in the split-KV target: the prefill kernel runs
// 8 warps per CTA (one CTA per SM), the decode kernel 4.
int64_t SlotsOf(bool decode) { return decode ? 1 : 2; }

// Wave balancing of the prefill launch (one 8-warp CTA per SM). A prefill
// class of at least a wave of items is not split to fill the GPU, but its
// last wave can be nearly empty: 160 items of equal length on 132 SMs take
// two item-times for 1.2 item-times of work (the 512-token chunk plus four
// rebuild holes of msa_h100.md's mixed batch). Model: a piece's time is its
// keys plus kPieceCostKeys; the block scheduler hands out pieces in plan
// order (descending keys) to the SM that frees first (list scheduling, LPT);
// a split plan pays kMergeCostKeys once for its merge launch.
constexpr int64_t kPieceCostKeys =  // Q tile load, epilogue, partial-state write
    kMsaTileFixedWork * kMsaKeyTileKeys;
constexpr int64_t kMergeCostKeys = 256;  // the merge launch
constexpr double kMinWaveGain = 0.08;    // a split must predict >= 8% less time
constexpr int kWaveCandidates = 12;      // chunks tried, from max_kv / 4 up

// Scratch of one launch-model evaluation, reused across candidate chunks.
struct Scratch {
  std::vector<int64_t> remainders;  // one piece per item: its last (or only) piece
  std::vector<int64_t> finish;      // min-heap of the SMs' finish times
};

// Makespan (in keys) of the items cut at `chunk` keys (0 = uncut) on `slots`
// SMs; -1 when the cut needs more than `max_extra_pieces` pieces beyond one
// per item (the workspace bound). `sorted_keys` descending.
//
// Exactly the list schedule of all pieces in descending size, computed
// without materializing it: every piece but an item's last is a full
// `chunk` (the largest size there is), so the full pieces come first and,
// all equal, land round-robin on the empty SMs; the items' last pieces follow
// in descending order onto the SM that frees first (while SMs are still
// empty, the next empty one). Equal pieces are interchangeable, so the finish
// times (as a multiset) are those of scheduling the sorted list one piece at
// a time.
int64_t PrefillMakespan(absl::Span<const int32_t> sorted_keys, int64_t chunk, int32_t slots,
                        int64_t max_extra_pieces, Scratch& scratch) {
  const int64_t sms = std::max(slots, 1);
  int64_t full_pieces = 0;
  scratch.remainders.clear();
  for (const int64_t keys : sorted_keys) {
    const int64_t n = chunk > 0 ? std::max<int64_t>(1, CeilDiv(keys, chunk)) : 1;
    full_pieces += n - 1;
    scratch.remainders.push_back(keys - (n - 1) * chunk + kPieceCostKeys);
  }
  if (full_pieces > max_extra_pieces) return -1;
  if (scratch.remainders.empty()) return 0;
  // Items cut into the same number of pieces keep their keys' order, so the
  // remainders are usually sorted already.
  if (full_pieces > 0 && !std::is_sorted(scratch.remainders.begin(), scratch.remainders.end(),
                                         std::greater<int64_t>())) {
    std::sort(scratch.remainders.begin(), scratch.remainders.end(), std::greater<int64_t>());
  }
  const int64_t full_cost = chunk + kPieceCostKeys;
  std::vector<int64_t>& finish = scratch.finish;
  // After the round-robin, the last `sms - full_pieces % sms` SMs hold one
  // full piece fewer than the first ones (all of them, with no remainder).
  const int64_t low = (full_pieces / sms) * full_cost;
  const size_t high_sms = static_cast<size_t>(full_pieces % sms);
  finish.assign(static_cast<size_t>(sms), low);
  for (size_t i = 0; i < high_sms; ++i) finish[i] += full_cost;
  // The least-loaded SMs take the first pieces one each, in order: each is
  // at `low`, below or at every other SM (a remainder is at most a full
  // piece), so the list schedule would pick them in turn.
  size_t next = 0;
  for (size_t sm = high_sms; next < scratch.remainders.size() && sm < finish.size(); ++sm, ++next) {
    finish[sm] += scratch.remainders[next];
  }
  if (next < scratch.remainders.size()) {
    std::make_heap(finish.begin(), finish.end(), std::greater<int64_t>());
    for (; next < scratch.remainders.size(); ++next) {
      // The earliest-free SM takes the piece.
      std::pop_heap(finish.begin(), finish.end(), std::greater<int64_t>());
      finish.back() += scratch.remainders[next];
      std::push_heap(finish.begin(), finish.end(), std::greater<int64_t>());
    }
  }
  return *std::max_element(finish.begin(), finish.end()) + (full_pieces > 0 ? kMergeCostKeys : 0);
}

// No cut at `chunk` can finish before its largest piece or before the
// perfectly balanced load: a lower bound on PrefillMakespan, to skip
// candidates that cannot beat the best so far (the result is unchanged).
int64_t MakespanLowerBound(absl::Span<const int32_t> sorted_keys, int64_t chunk, int32_t slots) {
  int64_t pieces = 0;
  int64_t keys_total = 0;
  for (const int64_t keys : sorted_keys) {
    pieces += chunk > 0 ? std::max<int64_t>(1, CeilDiv(keys, chunk)) : 1;
    keys_total += keys;
  }
  const bool split = pieces > static_cast<int64_t>(sorted_keys.size());
  const int64_t largest =
      (split ? chunk : (sorted_keys.empty() ? 0 : int64_t{sorted_keys.front()})) + kPieceCostKeys;
  const int64_t balanced = CeilDiv(keys_total + pieces * kPieceCostKeys, std::max(slots, 1));
  return std::max(largest, balanced) + (split ? kMergeCostKeys : 0);
}

// The slot search: the smallest 128-aligned chunk >= min_kv_chunk_tokens that
// keeps the class within num_sms * target_ctas_per_sm CTA slots (0 = none
// needed: the chunk would reach the largest item).
int32_t SlotSearchChunk(absl::Span<const int32_t> item_keys, bool decode,
                        const MsaSplitOptions& options) {
  if (item_keys.empty()) return 0;
  const int64_t target = static_cast<int64_t>(std::max(options.num_sms, 1)) *
                         std::max(options.target_ctas_per_sm, 1);
  const int32_t max_kv = *std::max_element(item_keys.begin(), item_keys.end());
  auto slots_with_chunk = [&](int64_t c) {
    int64_t n = 0;
    for (const int32_t keys : item_keys) n += std::max<int64_t>(1, CeilDiv(keys, c));
    return SlotsOf(decode) * n;
  };
  // slots_with_chunk is non-increasing in the chunk.
  int64_t lo = options.min_kv_chunk_tokens / 128;
  int64_t hi = std::max<int64_t>(lo, CeilDiv(max_kv, 128));
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (slots_with_chunk(mid * 128) <= target) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo * 128 < max_kv ? static_cast<int32_t>(lo * 128) : 0;
}

// A prefill class's cut and the modeled length of its launch.
struct PrefillChoice {
  int32_t chunk = 0;
  int64_t makespan = 0;
};

// Among `base_chunk` and the candidate chunks, the one of least makespan if
// it predicts >= kMinWaveGain less time than `base_chunk`, else base_chunk.
// Candidates whose lower bound cannot beat the best so far are skipped, and
// so are those needing more than `max_extra_pieces` extra pieces.
template <typename Candidates>
PrefillChoice BestOf(absl::Span<const int32_t> sorted_keys, int32_t num_sms, int64_t max_extra_pieces,
                     int32_t base_chunk, int64_t base_makespan, Candidates candidates,
                     Scratch& scratch) {
  int64_t best = base_makespan;
  int64_t best_chunk = base_chunk;
  candidates([&](int64_t chunk) {
    if (MakespanLowerBound(sorted_keys, chunk, num_sms) >= best) return;
    const int64_t makespan = PrefillMakespan(sorted_keys, chunk, num_sms, max_extra_pieces, scratch);
    if (makespan >= 0 && makespan < best) {
      best = makespan;
      best_chunk = chunk;
    }
  });
  if (static_cast<double>(best) <= (1.0 - kMinWaveGain) * static_cast<double>(base_makespan)) {
    return {static_cast<int32_t>(best_chunk), best};
  }
  return {base_chunk, base_makespan};
}

// The prefill class's cut (0 = unsplit) and launch length. A class that
// fills `target` slots is cut only where that balances its waves (at most
// `target` extra pieces; candidates max_kv * (1/4 + 3/4 * j / 12), j = 0..11,
// 128-aligned, >= min_chunk), skipped when the unsplit launch is already
// within kMinWaveGain of the balanced load. A smaller class takes the slot
// search's chunk: the smallest 128-aligned chunk >= min_chunk that keeps its
// pieces within the target; with balance_small_prefill, a smaller one
// (slot_chunk * j / 12, j = 1..11) where the model predicts >= 8% less time:
// more, shorter pieces that the block scheduler packs several to an SM.
PrefillChoice ChoosePrefill(absl::Span<const int32_t> sorted_keys, const MsaSplitOptions& options,
                            bool allow_split, Scratch& scratch) {
  const int32_t num_sms = std::max(options.num_sms, 1);
  const int64_t target = static_cast<int64_t>(num_sms) * std::max(options.target_ctas_per_sm, 1);
  const int64_t unsplit_slots = SlotsOf(false) * static_cast<int64_t>(sorted_keys.size());
  const int64_t max_kv = sorted_keys.empty() ? 0 : sorted_keys.front();
  const int64_t min_chunk = options.min_kv_chunk_tokens;
  if (!allow_split || unsplit_slots >= target) {
    const int64_t unsplit = PrefillMakespan(sorted_keys, 0, num_sms, target, scratch);
    if (!allow_split) return {0, unsplit};
    int64_t total = 0;
    for (const int32_t keys : sorted_keys) total += keys + kPieceCostKeys;
    // No cut can beat the perfectly balanced time: skip when that is near.
    if (unsplit <= (1.0 + kMinWaveGain) * static_cast<double>(total) / num_sms) return {0, unsplit};
    return BestOf(sorted_keys, num_sms, target, 0, unsplit,
                  [&](auto try_chunk) {
                    for (int j = 0; j < kWaveCandidates; ++j) {
                      const double fraction = 0.25 + 0.75 * j / kWaveCandidates;
                      const int64_t chunk = std::max<int64_t>(
                          min_chunk,
                          CeilDiv(static_cast<int64_t>(fraction * static_cast<double>(max_kv)), 128) *
                              128);
                      if (chunk < max_kv) try_chunk(chunk);
                    }
                  },
                  scratch);
  }
  // The slot search keeps the pieces within `target` slots, so within the
  // piece bound: the base makespan always exists.
  const int32_t slot_chunk = SlotSearchChunk(sorted_keys, /*decode=*/false, options);
  const int64_t base = PrefillMakespan(sorted_keys, slot_chunk, num_sms, target, scratch);
  if (slot_chunk == 0 || !options.balance_small_prefill) return {slot_chunk, base};
  return BestOf(sorted_keys, num_sms, target, slot_chunk, base,
                [&](auto try_chunk) {
                  for (int j = 1; j < kWaveCandidates; ++j) {
                    const int64_t chunk = std::max<int64_t>(
                        min_chunk, CeilDiv(int64_t{slot_chunk} * j / kWaveCandidates, 128) * 128);
                    if (chunk < slot_chunk) try_chunk(chunk);
                  }
                },
                scratch);
}

// Sorted descending copy of `keys` in `out` (no copy work when already sorted).
absl::Span<const int32_t> SortedDescending(absl::Span<const int32_t> keys,
                                           std::vector<int32_t>& out) {
  if (std::is_sorted(keys.begin(), keys.end(), std::greater<int32_t>())) return keys;
  out.assign(keys.begin(), keys.end());
  std::sort(out.begin(), out.end(), std::greater<int32_t>());
  return out;
}

}  // namespace

int32_t MsaClassKvChunk(absl::Span<const int32_t> item_keys, bool decode,
                        const MsaSplitOptions& options) {
  if (item_keys.empty()) return 0;
  if (decode) {
    // Decode CTAs are small and many share an SM: a class that fills the
    // target is never cut.
    const int64_t target = static_cast<int64_t>(std::max(options.num_sms, 1)) *
                           std::max(options.target_ctas_per_sm, 1);
    if (SlotsOf(true) * static_cast<int64_t>(item_keys.size()) >= target) return 0;
    return SlotSearchChunk(item_keys, /*decode=*/true, options);
  }
  std::vector<int32_t> sorted;
  Scratch scratch;
  return ChoosePrefill(SortedDescending(item_keys, sorted), options, /*allow_split=*/true, scratch)
      .chunk;
}

MsaPrefillLaunch MsaModelPrefillLaunch(absl::Span<const int32_t> item_keys,
                                       const MsaSplitOptions& options, bool allow_split) {
  if (item_keys.empty()) return {};
  std::vector<int32_t> sorted;
  Scratch scratch;
  const PrefillChoice choice =
      ChoosePrefill(SortedDescending(item_keys, sorted), options, allow_split, scratch);
  return {choice.chunk, choice.makespan};
}

int64_t MsaPrefillMakespanKeys(absl::Span<const int32_t> item_keys, int32_t chunk,
                               int32_t num_sms) {
  std::vector<int32_t> sorted;
  Scratch scratch;
  // No piece bound: the caller chose the chunk.
  return PrefillMakespan(SortedDescending(item_keys, sorted), chunk, num_sms, INT64_MAX / 4,
                         scratch);
}

void MsaPrefillTileKeys(int64_t query_tokens, int64_t last_position, int32_t group,
                        int32_t num_kv_heads, std::vector<int32_t>& item_keys) {
  if (query_tokens <= 0 || group <= 0) return;
  const int64_t rows = query_tokens * group;
  if (rows <= kMsaDecodeTileRows) return;
  const int64_t tokens_per_tile = std::max<int64_t>(kMsaPrefillTileRows / group, 1);
  // Full tiles from the last token back; tile t ends at token
  // query_tokens - 1 - t * tokens_per_tile (0-based within the run).
  const int64_t tiles = CeilDiv(query_tokens, tokens_per_tile);
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t keys = std::max<int64_t>(last_position + 1 - t * tokens_per_tile, 1);
    for (int32_t h = 0; h < num_kv_heads; ++h) {
      item_keys.push_back(static_cast<int32_t>(std::min<int64_t>(keys, INT32_MAX)));
    }
  }
}

}  // namespace asymcache::msa
