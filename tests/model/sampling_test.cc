// Tests of the host sampling rule (model/sampling.h): greedy argmax (ties,
// NaN), temperature sampling with top-p, determinism in (seed, position) and a
// coarse check of the sampled distribution.
//
// Seeds are fresh each run (ASYMCACHE_TEST_SEED replays one) and printed in
// every failure message.
#include "model/sampling.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_backend.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::model {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

class SamplingTest : public ::testing::Test {
 protected:
  SamplingTest() : seed_(msa::testing::FreshSeed()), rng_(seed_) {}
  void SetUp() override { ::testing::Test::RecordProperty("seed", std::to_string(seed_)); }

  uint64_t seed_;
  std::mt19937_64 rng_;
};

TEST(ArgmaxTokenTest, LowestIndexAmongTies) {
  EXPECT_EQ(ArgmaxToken(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f}), 1);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{5.0f, 5.0f}), 0);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{-2.0f, -1.0f, -1.0f}), 1);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{-kInf, -kInf, -kInf}), 0);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{0.0f, kInf, kInf}), 1);
}

TEST(ArgmaxTokenTest, NaNIsNeverChosenUnlessAllAreNaN) {
  EXPECT_EQ(ArgmaxToken(std::vector<float>{kNaN, 1.0f, kNaN, 5.0f, 5.0f}), 3);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{kNaN, -kInf}), 1);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{2.0f, kNaN}), 0);
  EXPECT_EQ(ArgmaxToken(std::vector<float>{kNaN, kNaN, kNaN}), 0);
}

TEST(SampleGumbelTest, StandardGumbelAndAFunctionOfSeedPositionAndToken) {
  // 200k draws over positions and tokens: mean Euler-Mascheroni 0.5772,
  // variance pi^2 / 6 = 1.645 (standard errors 0.0029 and ~0.007).
  constexpr int kDraws = 200000;
  double sum = 0.0;
  double sum2 = 0.0;
  std::set<double> seen;
  for (int i = 0; i < kDraws; ++i) {
    const double g = SampleGumbel(42, i / 1000, i % 1000);
    ASSERT_TRUE(std::isfinite(g)) << i;
    sum += g;
    sum2 += g * g;
    if (i < 10000) seen.insert(g);
  }
  const double mean = sum / kDraws;
  EXPECT_NEAR(mean, 0.5772156649, 0.02);
  EXPECT_NEAR(sum2 / kDraws - mean * mean, M_PI * M_PI / 6.0, 0.05);
  EXPECT_EQ(seen.size(), 10000u);
  EXPECT_EQ(SampleGumbel(1, 7, 3), SampleGumbel(1, 7, 3));
  EXPECT_NE(SampleGumbel(1, 7, 3), SampleGumbel(2, 7, 3));
  EXPECT_NE(SampleGumbel(1, 7, 3), SampleGumbel(1, 8, 3));
  EXPECT_NE(SampleGumbel(1, 7, 3), SampleGumbel(1, 7, 4));
}

TEST_F(SamplingTest, GreedyWhenTemperatureIsNotPositive) {
  std::vector<float> logits(64);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& logit : logits) logit = normal(rng_);
  const int32_t argmax = ArgmaxToken(logits);
  for (float temperature : {0.0f, -1.0f, -0.0f}) {
    for (int64_t position = 0; position < 50; ++position) {
      SamplingParams params;
      params.temperature = temperature;
      params.top_p = 0.5f;
      params.seed = rng_();
      ASSERT_EQ(SampleToken(logits, params, position), argmax) << "seed " << seed_;
    }
  }
}

TEST_F(SamplingTest, SmallTopPIsGreedyAndFullTopPSamplesOthers) {
  // Near-flat logits: with top_p = 1 many tokens get drawn; with a tiny top_p
  // the nucleus is the single most likely token.
  std::vector<float> logits(32);
  std::uniform_real_distribution<float> uniform(0.0f, 0.5f);
  for (float& logit : logits) logit = uniform(rng_);
  const int32_t argmax = ArgmaxToken(logits);
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = rng_();
  std::set<int32_t> drawn;
  for (int64_t position = 0; position < 500; ++position) {
    params.top_p = 1e-6f;
    ASSERT_EQ(SampleToken(logits, params, position), argmax) << "seed " << seed_;
    params.top_p = 1.0f;
    const int32_t token = SampleToken(logits, params, position);
    ASSERT_GE(token, 0);
    ASSERT_LT(token, 32);
    drawn.insert(token);
  }
  EXPECT_GT(drawn.size(), 20u) << "seed " << seed_;
}

TEST_F(SamplingTest, NucleusIsTheShortestPrefixReachingTopP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (tokens permuted): top_p = 0.75 keeps
  // the two most likely tokens, in the ratio 5 : 3.
  const std::vector<double> probs = {0.15, 0.5, 0.05, 0.3};
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  SamplingParams params;
  params.temperature = 1.0f;
  params.top_p = 0.75f;
  params.seed = rng_();
  int counts[4] = {0, 0, 0, 0};
  constexpr int kDraws = 8000;
  for (int64_t position = 0; position < kDraws; ++position) {
    ++counts[SampleToken(logits, params, position)];
  }
  EXPECT_EQ(counts[0], 0) << "seed " << seed_;
  EXPECT_EQ(counts[2], 0) << "seed " << seed_;
  EXPECT_NEAR(static_cast<double>(counts[1]) / kDraws, 0.625, 0.03) << "seed " << seed_;
}

TEST_F(SamplingTest, EqualProbabilitiesOrderByLowerIndex) {
  // Four equal logits, top_p = 0.5: the nucleus is tokens 0 and 1.
  const std::vector<float> logits(4, 0.25f);
  SamplingParams params;
  params.temperature = 0.8f;
  params.top_p = 0.5f;
  params.seed = rng_();
  std::set<int32_t> drawn;
  for (int64_t position = 0; position < 400; ++position) {
    drawn.insert(SampleToken(logits, params, position));
  }
  EXPECT_EQ(drawn, (std::set<int32_t>{0, 1})) << "seed " << seed_;
}

// Two almost equal logits swap places in a weight order under a 1e-7 change
// (another summation order, a cached vs a recomputed K/V). Gumbel-max never
// depends on that order: the sample changes only if these two are the best
// two scores and within 2e-7 / T of each other.
TEST_F(SamplingTest, NearlyEqualLogitsSwappingOrderDoNotChangeTheSample) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(256);
  for (float& l : logits) l = normal(rng_);
  logits[17] = 1.5f;
  logits[200] = 1.5f + 1e-7f;  // 200 ranks above 17 here ...
  std::vector<float> nudged = logits;
  nudged[200] = 1.5f - 1e-7f;  // ... and below it here
  int changed = 0;
  for (float top_p : {1.0f, 0.9f}) {
    SamplingParams params;
    params.temperature = 0.7f;
    params.top_p = top_p;
    params.seed = rng_();
    for (int64_t position = 0; position < 2000; ++position) {
      changed += SampleToken(logits, params, position) != SampleToken(nudged, params, position);
    }
  }
  EXPECT_EQ(changed, 0) << "seed " << seed_;
}

// Every logit of a large, flat vocabulary perturbed by up to 1e-4 (what a
// cached vs a recomputed context does to bf16 logits, scaled down): a sample
// changes only when the best two of the nucleus's Gumbel scores are within
// their perturbation (|da - db| / T, on average (2/3)e-4 / T), about 1e-4 of
// the draws (an independent check of 2000 such tests: mean 0.09 changes, at
// most 2). A single uniform draw walked along the
// cumulative sum (the previous rule) changes when the sum of the
// perturbations before it moves past the draw: it changed 6-30% of the draws
// here (measured with a 32k vocabulary and 2000 draws), and 33-135 of the
// 1024 draws of this test.
TEST_F(SamplingTest, PerturbingEveryLogitSlightlyRarelyChangesTheSample) {
  constexpr int kVocab = 8192;
  constexpr int kVectors = 16;   // logit vectors, each with its own perturbation
  constexpr int kPositions = 64;  // draws per vector
  std::uniform_real_distribution<float> flat(0.0f, 0.5f);
  std::uniform_real_distribution<float> jitter(-1e-4f, 1e-4f);
  std::vector<float> logits(kVocab);
  std::vector<float> perturbed(kVocab);
  int changed = 0;
  for (int v = 0; v < kVectors; ++v) {
    for (int i = 0; i < kVocab; ++i) {
      logits[i] = flat(rng_);
      perturbed[i] = logits[i] + jitter(rng_);
    }
    SamplingParams params;
    params.temperature = 0.7f;
    params.top_p = v % 2 == 0 ? 1.0f : 0.95f;
    params.seed = rng_();
    for (int64_t position = 0; position < kPositions; ++position) {
      changed += SampleToken(logits, params, position) != SampleToken(perturbed, params, position);
    }
  }
  // 1024 draws, expected ~0.1 changes; Poisson(0.1) exceeds 5 with
  // probability ~1e-9.
  EXPECT_LE(changed, 5) << "seed " << seed_;
}

TEST_F(SamplingTest, DeterministicInSeedAndPosition) {
  std::vector<float> logits(128);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (float& logit : logits) logit = normal(rng_);
  SamplingParams params;
  params.temperature = 1.3f;
  params.top_p = 0.95f;
  params.seed = rng_();
  std::vector<int32_t> first;
  for (int64_t position = 0; position < 200; ++position) {
    first.push_back(SampleToken(logits, params, position));
  }
  // The same (seed, position) gives the same token, in any call order.
  for (int64_t position = 199; position >= 0; --position) {
    ASSERT_EQ(SampleToken(logits, params, position), first[position]) << "seed " << seed_;
  }
  // Another seed gives another sequence of draws.
  SamplingParams other = params;
  other.seed = params.seed ^ 0x9E3779B97F4A7C15ull;
  int differ = 0;
  for (int64_t position = 0; position < 200; ++position) {
    differ += SampleToken(logits, other, position) != first[position];
  }
  EXPECT_GT(differ, 20) << "seed " << seed_;
}

TEST_F(SamplingTest, FrequenciesFollowTheTemperedSoftmax) {
  constexpr int kVocab = 8;
  std::vector<float> logits(kVocab);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& logit : logits) logit = normal(rng_);
  SamplingParams params;
  params.temperature = 0.7f;
  params.top_p = 1.0f;
  params.seed = rng_();
  double max_logit = logits[ArgmaxToken(logits)];
  std::vector<double> expected(kVocab);
  double total = 0.0;
  for (int i = 0; i < kVocab; ++i) {
    expected[i] = std::exp((logits[i] - max_logit) / params.temperature);
    total += expected[i];
  }
  constexpr int kDraws = 20000;
  std::vector<int> counts(kVocab, 0);
  for (int64_t position = 0; position < kDraws; ++position) {
    ++counts[SampleToken(logits, params, position)];
  }
  for (int i = 0; i < kVocab; ++i) {
    // A standard deviation of the frequency is at most 0.0036; 0.02 is > 5 sigma.
    EXPECT_NEAR(static_cast<double>(counts[i]) / kDraws, expected[i] / total, 0.02)
        << "token " << i << " seed " << seed_;
  }
}

TEST(SampleTokenTest, NaNAndMinusInfLogitsAreNeverSampled) {
  const std::vector<float> logits = {kNaN, 0.0f, kNaN, 0.0f};
  SamplingParams params;
  params.temperature = 1.0f;
  for (int64_t position = 0; position < 200; ++position) {
    const int32_t token = SampleToken(logits, params, position);
    ASSERT_TRUE(token == 1 || token == 3) << token;
  }
  EXPECT_EQ(SampleToken(std::vector<float>{kNaN, kNaN}, params, 3), 0);
  // A +inf logit takes all the mass.
  EXPECT_EQ(SampleToken(std::vector<float>{0.0f, kInf, 1.0f}, params, 5), 1);
  // Nothing but -inf and NaN: no weight anywhere, the argmax (first -inf).
  EXPECT_EQ(SampleToken(std::vector<float>{kNaN, -kInf, -kInf}, params, 5), 1);
  EXPECT_EQ(SampleToken(std::vector<float>{-kInf, -kInf}, params, 6), 0);
  // -inf logits next to finite ones are never sampled.
  for (int64_t position = 0; position < 200; ++position) {
    const std::vector<float> logits = {-kInf, 0.0f, -kInf, 0.0f};
    const int32_t token = SampleToken(logits, params, position);
    ASSERT_TRUE(token == 1 || token == 3) << token;
  }
}

}  // namespace
}  // namespace asymcache::model
