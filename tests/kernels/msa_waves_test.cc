// The MSA launch model (kernels/msa_waves.h): the list-scheduled makespan,
// the split-KV choice per class, and the tiles of a contiguous query run.
// That PlanMsa cuts its items exactly as MsaClassKvChunk says is checked in
// msa_plan_test.cc (PlannerChunkIsTheLaunchModelsChoice).
#include "kernels/msa_waves.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace asymcache::msa {
namespace {

constexpr int64_t kPieceCost = 128;  // the model's fixed cost per piece, in keys
constexpr int64_t kMergeCost = 256;  // its merge launch

TEST(MsaWavesTest, MakespanCountsWholeWavesOfPieces) {
  const std::vector<int32_t> one_wave(132, 1000);
  EXPECT_EQ(MsaPrefillMakespanKeys(one_wave, 0, 132), 1000 + kPieceCost);
  std::vector<int32_t> one_more = one_wave;
  one_more.push_back(1000);
  EXPECT_EQ(MsaPrefillMakespanKeys(one_more, 0, 132), 2 * (1000 + kPieceCost));
  // Cut at 512: 133 pieces of 512 keys and 133 of 488. The 133rd 512-piece
  // doubles up one SM; 131 of the 488s fill the others, the last two land
  // on SMs already holding 512 + 488; plus the merge.
  EXPECT_EQ(MsaPrefillMakespanKeys(one_more, 512, 132),
            (512 + kPieceCost) + 2 * (488 + kPieceCost) + kMergeCost);
  EXPECT_EQ(MsaPrefillMakespanKeys({}, 0, 132), 0);
}

// A 559-token chunk ending at position ~39k (GQA 4, 8 kv heads): 18 tiles of
// ~39k keys each per head, 144 items on 132 SMs. Unsplit that is two item
// times for 1.09 items of work; the planner cuts it, and the cut's modeled
// time is at least 8% shorter.
TEST(MsaWavesTest, PrefillJustPastOneWaveIsCut) {
  std::vector<int32_t> keys;
  MsaPrefillTileKeys(559, 39'999, /*group=*/4, /*num_kv_heads=*/8, keys);
  ASSERT_EQ(keys.size(), 144u);
  const MsaSplitOptions options;
  const int32_t chunk = MsaClassKvChunk(keys, /*decode=*/false, options);
  EXPECT_GT(chunk, 0);
  EXPECT_LT(chunk, 40'000);
  EXPECT_EQ(chunk % 128, 0);
  const int64_t unsplit = MsaPrefillMakespanKeys(keys, 0, options.num_sms);
  EXPECT_GT(unsplit, 1.9 * (40'000 + kPieceCost));  // a second wave of whole items
  EXPECT_LE(MsaPrefillMakespanKeys(keys, chunk, options.num_sms), 0.92 * unsplit);
}

// Exactly one wave of equal items has nothing to balance.
TEST(MsaWavesTest, OneFullWaveStaysUnsplit) {
  std::vector<int32_t> keys;
  MsaPrefillTileKeys(512, 8703, /*group=*/4, /*num_kv_heads=*/8, keys);
  ASSERT_EQ(keys.size(), 128u);
  EXPECT_EQ(MsaClassKvChunk(keys, /*decode=*/false, MsaSplitOptions{}), 0);
}

TEST(MsaWavesTest, SmallClassesAreSplitToTheTargetAndFullDecodeClassesNever) {
  const MsaSplitOptions options;  // 132 SMs x 2 slots
  // 8 decode items of 16k keys: cut so that 8 x pieces <= 264 slots.
  const std::vector<int32_t> decodes(8, 16'384);
  const int32_t chunk = MsaClassKvChunk(decodes, /*decode=*/true, options);
  ASSERT_GT(chunk, 0);
  EXPECT_EQ(chunk % 128, 0);
  EXPECT_GE(chunk, options.min_kv_chunk_tokens);
  EXPECT_LE(8 * ((16'384 + chunk - 1) / chunk), 264);
  // One 128-key step smaller would need more slots than the target.
  EXPECT_GT(8 * ((16'384 + (chunk - 128) - 1) / (chunk - 128)), 264);
  // 300 decode items fill the target: never cut.
  EXPECT_EQ(MsaClassKvChunk(std::vector<int32_t>(300, 16'384), /*decode=*/true, options), 0);
  EXPECT_EQ(MsaClassKvChunk({}, /*decode=*/false, options), 0);
}

// The list schedule by the book: every piece materialized, sorted
// descending, each to the SM that frees first.
int64_t ReferenceMakespan(const std::vector<int32_t>& keys, int64_t chunk, int32_t sms) {
  std::vector<int64_t> pieces;
  bool split = false;
  for (const int64_t k : keys) {
    const int64_t n = chunk > 0 ? std::max<int64_t>(1, (k + chunk - 1) / chunk) : 1;
    split |= n > 1;
    for (int64_t c = 0; c < n; ++c) {
      pieces.push_back((n == 1 ? k : std::min(k, (c + 1) * chunk) - c * chunk) + kPieceCost);
    }
  }
  std::sort(pieces.begin(), pieces.end(), std::greater<int64_t>());
  std::vector<int64_t> finish(sms, 0);
  for (const int64_t p : pieces) *std::min_element(finish.begin(), finish.end()) += p;
  return *std::max_element(finish.begin(), finish.end()) + (split ? kMergeCost : 0);
}

// The fast makespan (full pieces round-robin, then the items' last pieces)
// is the book's list schedule, on random classes and cuts; the cost model's
// one-pass launch is the planner's chunk and that chunk's makespan.
TEST(MsaWavesTest, FastMakespanIsTheListScheduleAndTheLaunchIsThePlannersChoice) {
  std::mt19937 rng(20261128);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> keys(std::uniform_int_distribution<int>(1, 700)(rng));
    const int32_t max_keys = std::uniform_int_distribution<int32_t>(1, 70'000)(rng);
    for (int32_t& k : keys) k = std::uniform_int_distribution<int32_t>(1, max_keys)(rng);
    const int32_t sms = std::uniform_int_distribution<int32_t>(1, 140)(rng);
    const int64_t chunk =
        trial % 3 == 0 ? 0 : 128 * std::uniform_int_distribution<int64_t>(1, 200)(rng);
    ASSERT_EQ(MsaPrefillMakespanKeys(keys, chunk, sms), ReferenceMakespan(keys, chunk, sms))
        << keys.size() << " items up to " << max_keys << " keys, chunk " << chunk << ", " << sms
        << " SMs";
    MsaSplitOptions options;
    options.num_sms = sms;
    const MsaPrefillLaunch launch = MsaModelPrefillLaunch(keys, options);
    EXPECT_EQ(launch.kv_chunk_tokens, MsaClassKvChunk(keys, /*decode=*/false, options));
    EXPECT_EQ(launch.makespan_keys, ReferenceMakespan(keys, launch.kv_chunk_tokens, sms));
    const MsaPrefillLaunch unsplit = MsaModelPrefillLaunch(keys, options, /*allow_split=*/false);
    EXPECT_EQ(unsplit.kv_chunk_tokens, 0);
    EXPECT_EQ(unsplit.makespan_keys, ReferenceMakespan(keys, 0, sms));
  }
  EXPECT_EQ(MsaModelPrefillLaunch({}, MsaSplitOptions{}).makespan_keys, 0);
}

TEST(MsaWavesTest, TileKeysCutFullTilesFromTheLastTokenBack) {
  std::vector<int32_t> keys;
  // 70 tokens ending at 999, GQA 4: tiles of 32 tokens end at 999, 967, 935
  // (the first tile holds the remaining 6), each repeated for 2 kv heads.
  MsaPrefillTileKeys(70, 999, /*group=*/4, /*num_kv_heads=*/2, keys);
  EXPECT_EQ(keys, (std::vector<int32_t>{1000, 1000, 968, 968, 936, 936}));
  // Four tokens of GQA 4 fit the 16-row decode tile: not a prefill item.
  keys.clear();
  MsaPrefillTileKeys(4, 999, 4, 8, keys);
  EXPECT_TRUE(keys.empty());
  MsaPrefillTileKeys(5, 999, 4, 8, keys);
  EXPECT_EQ(keys, std::vector<int32_t>(8, 1000));
  keys.clear();
  MsaPrefillTileKeys(0, 999, 4, 8, keys);
  EXPECT_TRUE(keys.empty());
}

}  // namespace
}  // namespace asymcache::msa
