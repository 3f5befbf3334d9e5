// Tests of the rotary embeddings (model/rope.h): the default and Llama-3
// scaled frequencies against values from an independent double-precision
// evaluation of Hugging Face's `_compute_llama3_parameters`, cos/sin
// rounding, and the rotate_half rotation (pairing, norm, relative position).
//
// Seeds are fresh each run (ASYMCACHE_TEST_SEED replays one) and printed in
// every failure message.
#include "model/rope.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/llama_config.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::model {
namespace {

LlamaConfig Llama3Rope() {
  LlamaConfig config;  // head_dim 128
  config.head_dim = 128;
  config.rope_theta = 500000.0;
  config.rope_scaling.enabled = true;
  config.rope_scaling.factor = 8.0;
  config.rope_scaling.low_freq_factor = 1.0;
  config.rope_scaling.high_freq_factor = 4.0;
  config.rope_scaling.original_max_position_embeddings = 8192;
  return config;
}

TEST(RopeInvFrequenciesTest, UnscaledIsAGeometricSeries) {
  LlamaConfig config;
  config.head_dim = 64;
  config.rope_theta = 10000.0;
  config.rope_scaling.enabled = false;
  const std::vector<double> inv_freq = RopeInvFrequencies(config);
  ASSERT_EQ(inv_freq.size(), 32u);
  EXPECT_EQ(inv_freq[0], 1.0);
  const double ratio = std::pow(10000.0, -2.0 / 64.0);
  for (size_t i = 1; i < inv_freq.size(); ++i) {
    EXPECT_NEAR(inv_freq[i] / inv_freq[i - 1], ratio, 1e-13) << i;
  }
  EXPECT_NEAR(inv_freq[31], std::pow(10000.0, -62.0 / 64.0), 1e-18);
}

TEST(RopeInvFrequenciesTest, Llama3ScalingMatchesTheHuggingFaceFormula) {
  const std::vector<double> inv_freq = RopeInvFrequencies(Llama3Rope());
  ASSERT_EQ(inv_freq.size(), 64u);
  // Expected values: HF's formula evaluated independently in double.
  struct Golden {
    int index;
    double value;
  };
  const Golden golden[] = {
      {0, 1.0},                        // high frequency: kept
      {1, 0.8146172338565447},         // kept
      {20, 0.016560440080994446},      // kept
      {28, 0.0032114459947525913},     // wavelen 1956 < 2048: kept
      {29, 0.002166570763503359},      // medium: smoothed
      {31, 0.0008567514129196321},     // medium
      {34, 0.00017850781276799638},    // medium
      {35, 0.0007644969883171747 / 8}, // wavelen 8219 > 8192: divided by 8
      {40, 3.428102195952591e-05},     // low: divided
      {63, 3.068925988914511e-07},     // low: divided
  };
  for (const Golden& g : golden) {
    EXPECT_NEAR(inv_freq[g.index], g.value, 1e-15 + 1e-12 * g.value) << "index " << g.index;
  }
  // Scaled frequencies never increase and stay strictly positive.
  for (size_t i = 1; i < inv_freq.size(); ++i) {
    EXPECT_LT(inv_freq[i], inv_freq[i - 1]) << i;
    EXPECT_GT(inv_freq[i], 0.0) << i;
  }
}

TEST(RopeCosSinTest, RoundsDoubleAnglesToFloat) {
  const std::vector<double> inv_freq = RopeInvFrequencies(Llama3Rope());
  std::vector<float> cos(inv_freq.size());
  std::vector<float> sin(inv_freq.size());
  RopeCosSin(inv_freq, 100000, cos.data(), sin.data());
  // cos/sin of 100000 * inv_freq[i] in double (independent evaluation).
  EXPECT_FLOAT_EQ(cos[0], static_cast<float>(-0.9993608074382124));
  EXPECT_FLOAT_EQ(sin[0], static_cast<float>(0.03574879797201651));
  EXPECT_FLOAT_EQ(cos[5], static_cast<float>(-0.6791912053328071));
  EXPECT_FLOAT_EQ(sin[5], static_cast<float>(0.7339613795006987));
  EXPECT_FLOAT_EQ(cos[45], static_cast<float>(0.33446026976185594));
  EXPECT_FLOAT_EQ(sin[45], static_cast<float>(0.9424098513655439));
  EXPECT_FLOAT_EQ(cos[63], static_cast<float>(0.999529121622777));
  EXPECT_FLOAT_EQ(sin[63], static_cast<float>(0.030684442768282773));
  // Exactly the double values rounded once.
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    ASSERT_EQ(cos[i], static_cast<float>(std::cos(100000.0 * inv_freq[i]))) << i;
    ASSERT_EQ(sin[i], static_cast<float>(std::sin(100000.0 * inv_freq[i]))) << i;
  }
  RopeCosSin(inv_freq, 0, cos.data(), sin.data());
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    ASSERT_EQ(cos[i], 1.0f);
    ASSERT_EQ(sin[i], 0.0f);
  }
}

class ApplyRopeTest : public ::testing::Test {
 protected:
  ApplyRopeTest() : seed_(msa::testing::FreshSeed()), rng_(seed_) {}
  std::vector<float> RandomHead(int32_t dim) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(dim);
    for (float& value : x) value = normal(rng_);
    return x;
  }
  std::vector<float> Rotated(std::vector<float> x, const std::vector<double>& inv_freq,
                             int64_t position) {
    const int32_t half = static_cast<int32_t>(inv_freq.size());
    std::vector<float> cos(half);
    std::vector<float> sin(half);
    RopeCosSin(inv_freq, position, cos.data(), sin.data());
    ApplyRope(cos.data(), sin.data(), half, x.data());
    return x;
  }

  uint64_t seed_;
  std::mt19937_64 rng_;
};

TEST_F(ApplyRopeTest, PairsDimIWithDimIPlusHalf) {
  LlamaConfig config;
  config.head_dim = 64;
  config.rope_theta = 10000.0;
  const std::vector<double> inv_freq = RopeInvFrequencies(config);
  const std::vector<float> x = RandomHead(64);
  const int64_t position = std::uniform_int_distribution<int64_t>(1, 100000)(rng_);
  const std::vector<float> y = Rotated(x, inv_freq, position);
  for (int i = 0; i < 32; ++i) {
    // (x_i + j x_{i+32}) * e^{j angle}, in double.
    const double angle = static_cast<double>(position) * inv_freq[i];
    const double re = x[i] * std::cos(angle) - x[i + 32] * std::sin(angle);
    const double im = x[i + 32] * std::cos(angle) + x[i] * std::sin(angle);
    EXPECT_NEAR(y[i], re, 1e-5) << "seed " << seed_ << " dim " << i;
    EXPECT_NEAR(y[i + 32], im, 1e-5) << "seed " << seed_ << " dim " << i + 32;
  }
  // Position 0 is the identity, bitwise.
  EXPECT_EQ(Rotated(x, inv_freq, 0), x);
}

TEST_F(ApplyRopeTest, PreservesNormsAndDependsOnRelativePositionOnly) {
  const std::vector<double> inv_freq = RopeInvFrequencies(Llama3Rope());
  const std::vector<float> q = RandomHead(128);
  const std::vector<float> k = RandomHead(128);
  auto dot = [](const std::vector<float>& a, const std::vector<float>& b) {
    double sum = 0.0;
    for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
    return sum;
  };
  std::uniform_int_distribution<int64_t> positions(0, 4000);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t p = positions(rng_);
    const int64_t s = positions(rng_);
    const int64_t shift = positions(rng_);
    const std::vector<float> qp = Rotated(q, inv_freq, p);
    EXPECT_NEAR(dot(qp, qp), dot(q, q), 1e-4 * dot(q, q)) << "seed " << seed_;
    const double near = dot(qp, Rotated(k, inv_freq, s));
    const double far = dot(Rotated(q, inv_freq, p + shift), Rotated(k, inv_freq, s + shift));
    EXPECT_NEAR(near, far, 1e-3) << "seed " << seed_ << " p " << p << " s " << s;
  }
}

}  // namespace
}  // namespace asymcache::model
