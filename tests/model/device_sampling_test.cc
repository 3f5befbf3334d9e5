// Tests of SampleOnDevice (model/device_sampling.h): the CUDA backend's
// sampler on hand-made logits equals the host rule (SampleToken) row for row,
// on the rows no model produces: NaN and infinite logits, ties, underflowing
// weights, a one-token nucleus, top_p = 1 over a large vocabulary. Bad
// arguments are refused on every machine; the device comparisons skip
// (GTEST_SKIP with the reason) where there is no GPU.
//
// Seeds are fresh each run (ASYMCACHE_TEST_SEED replays one) and printed in
// every failure message.
#include "model/device_sampling.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/msa_cuda.h"
#include "model/model_backend.h"
#include "model/sampling.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::model {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

bool HaveGpu(std::string* why) {
  absl::StatusOr<msa::GpuInfo> gpu = msa::QueryGpu(0);
  if (gpu.ok()) return true;
  *why = gpu.status().ToString();
  return false;
}

// Runs the rows on the device and expects each token to be SampleToken's.
void ExpectDeviceFollowsHost(const std::vector<std::vector<float>>& rows,
                             const std::vector<SamplingParams>& params,
                             const std::vector<int64_t>& positions, uint64_t seed) {
  const size_t vocab = rows.front().size();
  std::vector<float> logits;
  for (const std::vector<float>& row : rows) {
    ASSERT_EQ(row.size(), vocab);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  absl::StatusOr<std::vector<int32_t>> tokens =
      SampleOnDevice(logits, static_cast<int64_t>(vocab), params, positions);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ((*tokens)[i], SampleToken(rows[i], params[i], positions[i]))
        << "row " << i << " temperature " << params[i].temperature << " top_p "
        << params[i].top_p << " position " << positions[i] << " (seed " << seed << ")";
  }
}

TEST(SampleOnDeviceTest, BadArgumentsAreRefusedEverywhere) {
  const std::vector<float> logits(8, 0.0f);
  const std::vector<SamplingParams> one = {{1.0f, 1.0f, 7}};
  const std::vector<int64_t> position = {3};
  auto code = [](const absl::StatusOr<std::vector<int32_t>>& r) { return r.status().code(); };
  EXPECT_EQ(code(SampleOnDevice(logits, 0, one, position)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(SampleOnDevice(logits, 8, {}, {})), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(SampleOnDevice(logits, 4, one, position)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(SampleOnDevice(logits, 8, one, {})), absl::StatusCode::kInvalidArgument);
  const std::vector<SamplingParams> hot = {{kInf, 1.0f, 7}};
  EXPECT_EQ(code(SampleOnDevice(logits, 8, hot, position)), absl::StatusCode::kInvalidArgument);
  const std::vector<SamplingParams> no_top_p = {{1.0f, 0.0f, 7}};
  EXPECT_EQ(code(SampleOnDevice(logits, 8, no_top_p, position)),
            absl::StatusCode::kInvalidArgument);
  const std::vector<SamplingParams> nan_top_p = {{1.0f, kNaN, 7}};
  EXPECT_EQ(code(SampleOnDevice(logits, 8, nan_top_p, position)),
            absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<std::vector<int32_t>> bad = SampleOnDevice(logits, 4, one, position);
  EXPECT_NE(bad.status().message().find("need 4 logits"), std::string::npos) << bad.status();
}

TEST(SampleOnDeviceTest, EdgeRowsFollowTheHostRule) {
  std::string why;
  if (!HaveGpu(&why)) GTEST_SKIP() << "no GPU for the device sampler: " << why;
  const uint64_t seed = msa::testing::FreshSeed();
  std::mt19937_64 rng(seed);
  const std::vector<std::vector<float>> rows = {
      {kNaN, 1.0f, kNaN, 5.0f, 5.0f, 0.0f, kNaN, 4.9f},            // NaN among ties
      {0.0f, kInf, 1.0f, kInf, 0.0f, 0.0f, 0.0f, 0.0f},             // +inf takes all
      {kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, kNaN},             // every logit NaN
      {kNaN, -kInf, -kInf, kNaN, -kInf, -kInf, -kInf, -kInf},       // no weight anywhere
      {0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f},     // equal weights
      {0.0f, -1e4f, -1e4f, 0.5f, -3e4f, 0.1f, -kInf, -1e4f},        // underflowing weights
      {3.0f, 1.0f, 2.0f, 0.5f, -1.0f, 2.9f, 0.0f, 1.5f},            // a one-token nucleus
      {3.0f, 1.0f, 2.0f, 0.5f, -1.0f, 2.9f, 0.0f, 1.5f},            // greedy
  };
  const std::vector<float> top_p = {0.9f, 1.0f, 1.0f, 0.5f, 0.5f, 1.0f, 1e-6f, 1.0f};
  const std::vector<float> temperature = {1.0f, 0.7f, 1.0f, 1.0f, 0.8f, 0.5f, 1.3f, 0.0f};
  // Every row at 64 positions: a draw per (seed, position, token).
  for (int64_t position = 0; position < 64; ++position) {
    std::vector<SamplingParams> params;
    std::vector<int64_t> positions;
    for (size_t i = 0; i < rows.size(); ++i) {
      params.push_back({temperature[i], top_p[i], rng()});
      positions.push_back(position * 7 + static_cast<int64_t>(i));
    }
    ExpectDeviceFollowsHost(rows, params, positions, seed);
    if (::testing::Test::HasFailure()) return;
  }
}

// Large vocabularies (the CUDA backend's 128k) of flat and peaked logits,
// top_p 1 (the path where the device's running sum may never reach its scan
// total) and below.
TEST(SampleOnDeviceTest, LargeVocabulariesFollowTheHostRule) {
  std::string why;
  if (!HaveGpu(&why)) GTEST_SKIP() << "no GPU for the device sampler: " << why;
  const uint64_t seed = msa::testing::FreshSeed();
  std::mt19937_64 rng(seed);
  constexpr int kVocab = 128256;
  std::uniform_real_distribution<float> flat(0.0f, 0.5f);
  std::normal_distribution<float> peaked(0.0f, 4.0f);
  std::vector<std::vector<float>> rows(6, std::vector<float>(kVocab));
  for (size_t r = 0; r < rows.size(); ++r) {
    for (float& l : rows[r]) l = r % 2 == 0 ? flat(rng) : peaked(rng);
  }
  const std::vector<float> top_p = {1.0f, 1.0f, 0.9f, 0.9f, 0.5f, 0.99f};
  for (int64_t position = 0; position < 16; ++position) {
    std::vector<SamplingParams> params;
    std::vector<int64_t> positions;
    for (size_t r = 0; r < rows.size(); ++r) {
      params.push_back({0.7f, top_p[r], rng()});
      positions.push_back(1000 + position);
    }
    ExpectDeviceFollowsHost(rows, params, positions, seed);
    if (::testing::Test::HasFailure()) return;
  }
}

}  // namespace
}  // namespace asymcache::model
