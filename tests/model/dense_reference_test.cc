// Tests of the dense reference (model/dense_reference.h): against a
// double-precision evaluation of the Llama forward pass written here from the
// formulas (its own rotary angles, attention and norms), one-pass vs
// incremental prompts (bitwise), stop tokens, sampling and input validation.
//
// Seeds are fresh each run (ASYMCACHE_TEST_SEED replays one) and printed in
// every failure message.
#include "model/dense_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "model/llama_config.h"
#include "model/sampling.h"
#include "model/weight_source.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::model {
namespace {

// The logits after `tokens` (positions 0..n-1), everything in double.
// Unscaled rotary embeddings only (the tests use configs without
// rope_scaling; rope_test covers the scaling).
std::vector<double> DoubleLogits(const WeightSource& weights, const std::vector<int32_t>& tokens) {
  const LlamaConfig& c = weights.config();
  const std::vector<TensorSpec>& specs = weights.specs();
  auto tensor = [&](TensorRole role, int32_t layer) {
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].role == role && specs[i].layer == layer) {
        std::vector<float> values(specs[i].elements());
        EXPECT_TRUE(weights.ReadFloat32(i, absl::MakeSpan(values)).ok());
        return std::vector<double>(values.begin(), values.end());
      }
    }
    ADD_FAILURE() << "no tensor for role " << static_cast<int>(role) << " layer " << layer;
    return std::vector<double>();
  };
  // y = W x for W [out][in].
  auto linear = [](const std::vector<double>& w, const std::vector<double>& x, int64_t out) {
    const int64_t in = static_cast<int64_t>(x.size());
    std::vector<double> y(out, 0.0);
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t k = 0; k < in; ++k) y[o] += w[o * in + k] * x[k];
    }
    return y;
  };
  auto rms_norm = [&](const std::vector<double>& x, const std::vector<double>& w) {
    double mean = 0.0;
    for (double v : x) mean += v * v;
    mean /= static_cast<double>(x.size());
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] / std::sqrt(mean + c.rms_norm_eps) * w[i];
    return y;
  };
  const int32_t d = c.head_dim;
  auto rotate = [&](std::vector<double>& v, int32_t heads, int64_t position) {
    for (int32_t h = 0; h < heads; ++h) {
      for (int32_t i = 0; i < d / 2; ++i) {
        const double angle = position * std::pow(c.rope_theta, -2.0 * i / d);
        double& a = v[h * d + i];
        double& b = v[h * d + i + d / 2];
        const double ra = a * std::cos(angle) - b * std::sin(angle);
        const double rb = b * std::cos(angle) + a * std::sin(angle);
        a = ra;
        b = rb;
      }
    }
  };

  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = c.hidden_size;
  const std::vector<double> embedding = tensor(TensorRole::kEmbedding, -1);
  std::vector<std::vector<double>> x(n);
  for (int64_t t = 0; t < n; ++t) {
    x[t].assign(embedding.begin() + tokens[t] * hidden, embedding.begin() + (tokens[t] + 1) * hidden);
  }
  for (int32_t l = 0; l < c.num_layers; ++l) {
    const std::vector<double> attn_norm = tensor(TensorRole::kAttnNorm, l);
    const std::vector<double> wq = tensor(TensorRole::kQProj, l);
    const std::vector<double> wk = tensor(TensorRole::kKProj, l);
    const std::vector<double> wv = tensor(TensorRole::kVProj, l);
    const std::vector<double> wo = tensor(TensorRole::kOProj, l);
    const std::vector<double> mlp_norm = tensor(TensorRole::kMlpNorm, l);
    const std::vector<double> wg = tensor(TensorRole::kGateProj, l);
    const std::vector<double> wu = tensor(TensorRole::kUpProj, l);
    const std::vector<double> wd = tensor(TensorRole::kDownProj, l);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> h = rms_norm(x[t], attn_norm);
      q[t] = linear(wq, h, c.q_dim());
      k[t] = linear(wk, h, c.kv_dim());
      v[t] = linear(wv, h, c.kv_dim());
      rotate(q[t], c.num_q_heads, t);
      rotate(k[t], c.num_kv_heads, t);
    }
    const int32_t group = c.num_q_heads / c.num_kv_heads;
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> attn(c.q_dim(), 0.0);
      for (int32_t head = 0; head < c.num_q_heads; ++head) {
        const int32_t kv_head = head / group;
        std::vector<double> scores(t + 1);
        double max_score = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0.0;
          for (int32_t e = 0; e < d; ++e) dot += q[t][head * d + e] * k[j][kv_head * d + e];
          scores[j] = dot / std::sqrt(static_cast<double>(d));
          max_score = std::max(max_score, scores[j]);
        }
        double total = 0.0;
        for (double& s : scores) total += (s = std::exp(s - max_score));
        for (int64_t j = 0; j <= t; ++j) {
          for (int32_t e = 0; e < d; ++e) {
            attn[head * d + e] += scores[j] / total * v[j][kv_head * d + e];
          }
        }
      }
      const std::vector<double> o = linear(wo, attn, hidden);
      for (int64_t i = 0; i < hidden; ++i) x[t][i] += o[i];
      const std::vector<double> h = rms_norm(x[t], mlp_norm);
      std::vector<double> gate = linear(wg, h, c.intermediate_size);
      const std::vector<double> up = linear(wu, h, c.intermediate_size);
      for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const std::vector<double> down = linear(wd, gate, hidden);
      for (int64_t i = 0; i < hidden; ++i) x[t][i] += down[i];
    }
  }
  const std::vector<double> last = rms_norm(x[n - 1], tensor(TensorRole::kFinalNorm, -1));
  const std::vector<double> head =
      c.tie_word_embeddings ? embedding : tensor(TensorRole::kLmHead, -1);
  return linear(head, last, c.vocab_size);
}

class DenseReferenceTest : public ::testing::Test {
 protected:
  DenseReferenceTest() : seed_(msa::testing::FreshSeed()), rng_(seed_) {}

  WeightSource MakeWeights(const LlamaConfig& config) {
    absl::StatusOr<WeightSource> weights = WeightSource::Random(config, rng_());
    EXPECT_TRUE(weights.ok()) << weights.status();
    return std::move(*weights);
  }
  std::vector<int32_t> RandomTokens(const LlamaConfig& config, int32_t count) {
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size) - 1);
    std::vector<int32_t> tokens(count);
    for (int32_t& t : tokens) t = token(rng_);
    return tokens;
  }
  static LlamaConfig Tiny() {
    absl::StatusOr<LlamaConfig> config = LlamaConfig::Named("tiny");
    EXPECT_TRUE(config.ok()) << config.status();
    return *config;
  }

  uint64_t seed_;
  std::mt19937_64 rng_;
};

TEST_F(DenseReferenceTest, MatchesADoublePrecisionForwardPass) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  for (bool tied : {false, true}) {
    LlamaConfig config = Tiny();
    config.tie_word_embeddings = tied;
    if (tied) {
      config.num_q_heads = 8;  // GQA group 4 (q_dim 512 != hidden 256)
      config.num_kv_heads = 2;
    }
    ASSERT_TRUE(config.Validate().ok());
    const WeightSource weights = MakeWeights(config);
    const std::vector<int32_t> prompt = RandomTokens(config, 37);
    DenseGenerateOptions options;
    options.max_new_tokens = 1;
    absl::StatusOr<DenseGeneration> dense = GenerateDense(weights, prompt, options);
    ASSERT_TRUE(dense.ok()) << dense.status();
    ASSERT_EQ(dense->logits.size(), 1u);
    const std::vector<double> expected = DoubleLogits(weights, prompt);
    double max_diff = 0.0;
    double max_ref = 0.0;
    for (size_t i = 0; i < expected.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(dense->logits[0][i] - expected[i]));
      max_ref = std::max(max_ref, std::abs(expected[i]));
    }
    EXPECT_LE(max_diff / max_ref, 1e-5) << "tied " << tied;
  }
}

TEST_F(DenseReferenceTest, OnePassPromptEqualsIncrementalDecodeBitwise) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  const LlamaConfig config = Tiny();
  const WeightSource weights = MakeWeights(config);
  const std::vector<int32_t> prompt = RandomTokens(config, 50);
  DenseGenerateOptions options;
  options.max_new_tokens = 4;
  absl::StatusOr<DenseGeneration> full = GenerateDense(weights, prompt, options);
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ(full->tokens.size(), 4u);

  std::vector<int32_t> longer = prompt;
  longer.push_back(full->tokens[0]);
  longer.push_back(full->tokens[1]);
  options.max_new_tokens = 2;
  absl::StatusOr<DenseGeneration> resumed = GenerateDense(weights, longer, options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  ASSERT_EQ(resumed->tokens.size(), 2u);
  EXPECT_EQ(resumed->tokens[0], full->tokens[2]);
  EXPECT_EQ(resumed->tokens[1], full->tokens[3]);
  EXPECT_EQ(resumed->logits[0], full->logits[2]);
  EXPECT_EQ(resumed->logits[1], full->logits[3]);
}

TEST_F(DenseReferenceTest, SamplesWithTheSharedRuleAndStopsAfterAStopToken) {
  SCOPED_TRACE(testing::Message() << "seed " << seed_);
  const LlamaConfig config = Tiny();
  const WeightSource weights = MakeWeights(config);
  const std::vector<int32_t> prompt = RandomTokens(config, 20);
  DenseGenerateOptions options;
  options.max_new_tokens = 8;
  options.sampling.temperature = 1.5f;
  options.sampling.top_p = 0.9f;
  options.sampling.seed = rng_();
  absl::StatusOr<DenseGeneration> run = GenerateDense(weights, prompt, options);
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->tokens.size(), 8u);
  ASSERT_EQ(run->logits.size(), 8u);
  for (size_t i = 0; i < run->tokens.size(); ++i) {
    EXPECT_EQ(run->tokens[i],
              SampleToken(run->logits[i], options.sampling, static_cast<int64_t>(prompt.size() + i)))
        << "token " << i;
  }

  // Generation ends after emitting the first stop token.
  options.stop_tokens = {run->tokens[3]};
  options.keep_logits = false;
  absl::StatusOr<DenseGeneration> stopped = GenerateDense(weights, prompt, options);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  const size_t first_stop =
      std::find(run->tokens.begin(), run->tokens.end(), run->tokens[3]) - run->tokens.begin();
  EXPECT_EQ(stopped->tokens,
            std::vector<int32_t>(run->tokens.begin(), run->tokens.begin() + first_stop + 1));
  EXPECT_TRUE(stopped->logits.empty());
}

TEST_F(DenseReferenceTest, RejectsBadInputs) {
  const LlamaConfig config = Tiny();
  const WeightSource weights = MakeWeights(config);
  const DenseGenerateOptions good;
  EXPECT_EQ(GenerateDense(weights, {}, good).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad_token = {1, static_cast<int32_t>(config.vocab_size)};
  EXPECT_EQ(GenerateDense(weights, bad_token, good).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> negative = {-1};
  EXPECT_EQ(GenerateDense(weights, negative, good).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> prompt = {1, 2, 3};
  DenseGenerateOptions options;
  options.max_new_tokens = 0;
  EXPECT_EQ(GenerateDense(weights, prompt, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = good;
  options.sampling.top_p = 0.0f;
  EXPECT_EQ(GenerateDense(weights, prompt, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = good;
  options.sampling.temperature = NAN;
  EXPECT_EQ(GenerateDense(weights, prompt, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asymcache::model
